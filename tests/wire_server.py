"""A raw HTTP/1.1 server on 127.0.0.1 (port 0) that counts connections, for the transport's tests.

Each request is answered by the next ``Answer`` of the script (then ``default``): raw response bytes,
written at once or a byte at a time, before or after ``release()``, then the connection is kept,
closed (FIN) or reset (RST). The server records what it sees — connections accepted, the most open
at once, each request, each connection the client closed — on thread queues that a gevent test waits
on with timeouts (``wait``), never by sleeping. Runs on real threads: no monkey-patching needed.
"""

from __future__ import annotations

import contextlib
import queue
import socket
import ssl
import struct
import threading
import time
from dataclasses import dataclass
from typing import Any, Literal

import gevent

OK = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"


@dataclass(frozen=True)
class Answer:
    raw: bytes = OK
    then: Literal["keep", "close", "reset"] = "keep"
    hold: bool = False
    """Answer only after ``release()`` (or when the server closes)."""
    silent: bool = False
    """Never answer; the connection stays open until the server closes."""
    pace_s: float = 0.0
    """Write the answer a byte at a time, this long apart."""
    after_release: bytes = b""
    """Written after the answer once ``release()`` is called (an unsolicited answer to an idle client)."""


@dataclass(frozen=True)
class Seen:
    connection: int
    head: dict[str, str]
    body: bytes
    line: str


class WireServer:
    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.05)
        self.port: int = self._listener.getsockname()[1]
        self._tls = tls
        self._script: queue.SimpleQueue[Answer] = queue.SimpleQueue()
        self.default = Answer()
        self._lock = threading.Lock()
        self.accepted = 0
        self.open = 0
        self.most_open = 0
        self.requests: queue.Queue[Seen] = queue.Queue()
        self.client_closed: queue.Queue[int] = queue.Queue()
        """The index of each connection the client closed (EOF while waiting for a request)."""
        self.server_closed: queue.Queue[int] = queue.Queue()
        """The index of each connection the server closed or reset after its answer."""
        self._released = threading.Event()
        self._closing = threading.Event()
        self._conns: list[socket.socket] = []
        threading.Thread(target=self._accept_loop, daemon=True).start()

    def url(self, path: str = "/hook", scheme: str = "http") -> str:
        return f"{scheme}://127.0.0.1:{self.port}{path}"

    def script(self, *answers: Answer) -> None:
        for answer in answers:
            self._script.put(answer)

    def release(self) -> None:
        self._released.set()

    def close(self) -> None:
        self._closing.set()
        self._released.set()
        self._listener.close()
        with self._lock:
            for conn in self._conns:
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)

    def _accept_loop(self) -> None:
        while not self._closing.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                index, self.accepted = self.accepted, self.accepted + 1
                self.open += 1
                self.most_open = max(self.most_open, self.open)
                self._conns.append(conn)
            threading.Thread(target=self._serve, args=(conn, index), daemon=True).start()

    def _serve(self, conn: socket.socket, index: int) -> None:
        try:
            stream = self._tls.wrap_socket(conn, server_side=True) if self._tls else conn
            self._exchange(stream, index)
        except OSError:
            pass
        finally:
            with self._lock:
                self.open -= 1
            conn.close()

    def _exchange(self, conn: socket.socket, index: int) -> None:
        buffer = b""
        while True:
            head, buffer = _read_until(conn, buffer, b"\r\n\r\n")
            if head is None:
                self.client_closed.put(index)
                return
            line, fields = _parse_head(head)
            body, buffer = _read_exactly(conn, buffer, int(fields.get("content-length", "0")))
            self.requests.put(Seen(index, fields, body, line))
            if not self._answer(conn, self._next()):
                self.server_closed.put(index)
                return

    def _next(self) -> Answer:
        try:
            return self._script.get_nowait()
        except queue.Empty:
            return self.default

    def _answer(self, conn: socket.socket, answer: Answer) -> bool:
        """Write ``answer``; False once the connection is closed or reset."""
        if answer.silent:
            self._closing.wait()
            return False
        if answer.hold:
            self._released.wait(30)
        if answer.pace_s:
            for byte in answer.raw:
                conn.sendall(bytes([byte]))
                time.sleep(answer.pace_s)
        else:
            conn.sendall(answer.raw)
        if answer.after_release:
            self._released.wait(30)
            conn.sendall(answer.after_release)
        if answer.then == "reset":
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        if answer.then != "keep":
            conn.close()
            return False
        return True


def wait(q: queue.Queue[Any], timeout: float = 5.0) -> Any:
    """The next item of a thread queue, waited for on gevent's thread pool (the hub keeps running)."""
    return gevent.get_hub().threadpool.apply(q.get, (True, timeout))


def _read_until(conn: socket.socket, buffer: bytes, end: bytes) -> tuple[bytes | None, bytes]:
    while end not in buffer:
        data = conn.recv(65536)
        if not data:
            return None, b""
        buffer += data
    head, _, rest = buffer.partition(end)
    return head, rest


def _read_exactly(conn: socket.socket, buffer: bytes, size: int) -> tuple[bytes, bytes]:
    while len(buffer) < size:
        data = conn.recv(65536)
        if not data:
            break
        buffer += data
    return buffer[:size], buffer[size:]


def _parse_head(head: bytes) -> tuple[str, dict[str, str]]:
    line, *rest = head.decode("latin-1").split("\r\n")
    fields = {}
    for field in rest:
        name, _, value = field.partition(":")
        fields[name.strip().lower()] = value.strip()
    return line, fields
