"""A real HTTP receiver on 127.0.0.1 (port 0) with scripted failures, for webhook tests.

Each path answers from its own script (then 200): ``Reply(status, headers)``, ``Slow(seconds)``
(answers 200 after that long, or at close), ``Hold()`` (answers when ``release()`` is called),
``Flood()`` (answers 200 with a chunked body that never ends, until the client hangs up).
Requests are recorded as they arrive. Waiting is done on queues with timeouts; from a gevent
test the wait runs on gevent's thread pool so the hub keeps running meanwhile.
Run as a script (``python tests/webhook_receiver.py``) it prints its URL and answers 200.
"""

from __future__ import annotations

import queue
import socket
import ssl
import threading
from collections import defaultdict, deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import gevent


@dataclass(frozen=True)
class Reply:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Slow:
    seconds: float


@dataclass(frozen=True)
class Hold:
    status: int = 200


@dataclass(frozen=True)
class Flood:
    """200, then a chunked body that never ends (a broken receiver): the client must cut it short."""

    limit_s: float = 30.0


Behaviour = Reply | Slow | Hold | Flood


@dataclass(frozen=True)
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    status: int
    stalled: bool = False
    """Answered only after ``Slow``'s delay: the client had likely given up (not an acknowledgement)."""

    @property
    def webhook_id(self) -> str:
        return self.headers["webhook-id"]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive
    disable_nagle_algorithm = True  # headers and body are two writes: no 40 ms delayed-ACK stall
    server: _Server

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        receiver = self.server.receiver
        behaviour = receiver.next_behaviour(self.path)
        status, headers = 200, {}
        if isinstance(behaviour, Reply):
            status, headers = behaviour.status, behaviour.headers
        received = Received(self.path, {k.lower(): v for k, v in self.headers.items()}, body, status,
                            stalled=isinstance(behaviour, Slow))
        receiver.record(received)
        if isinstance(behaviour, Slow):
            receiver.closing.wait(behaviour.seconds)
        elif isinstance(behaviour, Hold):
            receiver.released.wait(30)
            status = behaviour.status
        elif isinstance(behaviour, Flood):
            self._flood(behaviour.limit_s)
            self.close_connection = True
            receiver.answers.put((self.headers.get("webhook-id", ""), status))
            return
        try:
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("content-length", "2")
            self.end_headers()
            self.wfile.write(b"ok")
        except OSError:
            pass  # the client gave up (timeout): nothing to answer
        receiver.answers.put((self.headers.get("webhook-id", ""), status))

    def _flood(self, limit_s: float) -> None:
        chunk = b"1000\r\n" + b"x" * 4096 + b"\r\n"
        deadline = threading.Event()
        timer = threading.Timer(limit_s, deadline.set)
        timer.daemon = True
        timer.start()
        try:
            self.send_response(200)
            self.send_header("transfer-encoding", "chunked")
            self.end_headers()
            while not deadline.is_set() and not self.server.receiver.closing.is_set():
                self.wfile.write(chunk)
        except OSError:
            pass  # the client hung up: as it should

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    receiver: Receiver


class Receiver:
    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.receiver = self
        self.scheme = "https" if tls else "http"
        if tls is not None:
            self._server.socket = tls.wrap_socket(self._server.socket, server_side=True)
        self._scripts: dict[str, deque[Behaviour]] = defaultdict(deque)
        self.default: Behaviour = Reply()
        """The answer when a path's script is empty (a test may switch it, e.g. to Reply(500))."""
        self._lock = threading.Lock()
        self.received: list[Received] = []
        self._arrivals: queue.Queue[Received] = queue.Queue()
        self.answers: queue.Queue[tuple[str, int]] = queue.Queue()
        """(webhook-id, status) once each answer was written (or the client had gone)."""
        self.released = threading.Event()
        self.closing = threading.Event()
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()

    def refuse(self) -> None:
        """Stop listening: connections are refused until ``listen_again``."""
        self._server.shutdown()
        self._server.server_close()

    def listen_again(self) -> None:
        """Listen again on the same address (SO_REUSEADDR), after ``refuse``."""
        server = _Server(self._server.server_address[:2], _Handler)
        server.receiver = self
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()

    def url(self, path: str = "/hook") -> str:
        host, port = self._server.server_address[:2]
        return f"{self.scheme}://{host}:{port}{path}"

    def script(self, path: str, *behaviours: Behaviour) -> None:
        with self._lock:
            self._scripts[path].extend(behaviours)

    def next_behaviour(self, path: str) -> Behaviour:
        with self._lock:
            script = self._scripts[path]
            return script.popleft() if script else self.default

    def record(self, request: Received) -> None:
        with self._lock:
            self.received.append(request)
        self._arrivals.put(request)

    def get(self, timeout: float = 5.0) -> Received:
        """The next request to arrive (raises ``queue.Empty`` after ``timeout``)."""
        return _blocking(self._arrivals.get, timeout)

    def release(self) -> None:
        self.released.set()

    def close(self) -> None:
        self.closing.set()
        self.released.set()
        self._server.shutdown()
        self._server.server_close()


def _blocking(get: Any, timeout: float) -> Any:
    """Wait on a thread queue without stopping the gevent hub of this thread."""
    return gevent.get_hub().threadpool.apply(get, (True, timeout))


def refused_url() -> str:
    """A URL on 127.0.0.1 where nothing listens (connection refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/hook"


if __name__ == "__main__":
    receiver = Receiver()
    print(receiver.url(), flush=True)
    receiver.closing.wait()
