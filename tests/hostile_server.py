"""A raw HTTP/1.1 server on 127.0.0.1 (port 0) whose answers never end, or end too late, for the
bounded-read tests of the webhook transport.

Each request (head and ``content-length`` body) is answered by the next answer of the script, then
``default``: an ``Answer`` is a function returning the pieces to write, written as fast as the client
reads them, or ``pace_s`` apart. An answer that ends keeps the connection for the next request; one
that runs past ``budget`` bytes (64 MiB, ``None`` for no limit: a guard, so that a client reading
everything cannot eat the machine) is cut off and its connection closed. What the server sees lands
on thread queues a gevent test waits on with timeouts (``wait``), never by sleeping: each request,
and each connection the client dropped, with the bytes written to it by then. Runs on real
threads: no monkey-patching needed.
"""

from __future__ import annotations

import contextlib
import itertools
import queue
import socket
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import gevent

Answer = Callable[[], Iterable[bytes]]
BUDGET = 64 * 1024 * 1024
PIECE = b"x" * 65536


def ok() -> Iterable[bytes]:
    return [b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"]


def endless_chunked() -> Iterator[bytes]:
    """200, then 64 KiB chunks for ever."""
    yield b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
    chunk = b"10000\r\n" + PIECE + b"\r\n"
    while True:
        yield chunk


def huge_length(size: int = 1 << 30) -> Answer:
    """200 with a body of ``size`` bytes (1 GiB by default)."""
    def answer() -> Iterator[bytes]:
        yield b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % size
        for _ in range(size // len(PIECE)):
            yield PIECE
        yield PIECE[: size % len(PIECE)]
    return answer


def endless_head() -> Iterator[bytes]:
    """A status line, then header bytes that never reach the blank line."""
    yield b"HTTP/1.1 200 OK\r\nx-endless: "
    while True:
        yield PIECE


def trickle(raw: bytes) -> Answer:
    """``raw`` a byte at a time (pace it with ``HostileServer(pace_s=...)``)."""
    return lambda: (raw[i:i + 1] for i in range(len(raw)))


@dataclass(frozen=True)
class Dropped:
    connection: int
    written: int
    """Bytes written to the connection by the time the client was found gone."""


class HostileServer:
    def __init__(self, *script: Answer, default: Answer = ok, pace_s: float = 0.0,
                 budget: int | None = BUDGET) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._script: queue.SimpleQueue[Answer] = queue.SimpleQueue()
        for answer in script:
            self._script.put(answer)
        self.default = default
        self.pace_s = pace_s
        self.budget = budget
        self._count = itertools.count()
        self.accepted = 0
        self.requests: queue.Queue[tuple[int, dict[str, str]]] = queue.Queue()
        """(connection index, the request's header fields) as each request arrives."""
        self.dropped: queue.Queue[Dropped] = queue.Queue()
        """Each connection the client closed while or after being answered."""
        self._closing = threading.Event()
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._accept_loop, daemon=True).start()

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def close(self) -> None:
        self._closing.set()
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        with self._lock:
            for conn in self._conns:
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)

    def _accept_loop(self) -> None:
        while not self._closing.is_set():
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                index, self.accepted = self.accepted, self.accepted + 1
                self._conns.append(conn)
            threading.Thread(target=self._serve, args=(conn, index), daemon=True).start()

    def _serve(self, conn: socket.socket, index: int) -> None:
        with conn:
            buffer = b""
            while not self._closing.is_set():
                try:
                    fields, buffer = _read_request(conn, buffer)
                except OSError:
                    fields = None
                if fields is None:
                    self.dropped.put(Dropped(index, 0))
                    return
                self.requests.put((index, fields))
                written = self._answer(conn)
                if written is not None:
                    self.dropped.put(Dropped(index, written))
                    return

    def _answer(self, conn: socket.socket) -> int | None:
        """Write the next answer; None if it ended, else the bytes written when the client was gone."""
        written = 0
        for piece in self._next()():
            if (self.budget is not None and written > self.budget) or self._closing.is_set():
                conn.shutdown(socket.SHUT_RDWR)
                return written
            try:
                conn.sendall(piece)
            except OSError:
                return written
            written += len(piece)
            if self.pace_s and self._closing.wait(self.pace_s):
                return written
        return None

    def _next(self) -> Answer:
        try:
            return self._script.get_nowait()
        except queue.Empty:
            return self.default


def _read_request(conn: socket.socket, buffer: bytes) -> tuple[dict[str, str] | None, bytes]:
    while b"\r\n\r\n" not in buffer:
        data = conn.recv(65536)
        if not data:
            return None, b""
        buffer += data
    head, _, buffer = buffer.partition(b"\r\n\r\n")
    fields = {}
    for line in head.decode("latin-1").split("\r\n")[1:]:
        name, _, value = line.partition(":")
        fields[name.strip().lower()] = value.strip()
    size = int(fields.get("content-length", "0"))
    while len(buffer) < size:
        data = conn.recv(65536)
        if not data:
            return None, b""
        buffer += data
    return fields, buffer[size:]


def wait(q: queue.Queue[Any], timeout: float = 5.0) -> Any:
    """The next item of a thread queue, waited for on gevent's thread pool (the hub keeps running)."""
    return gevent.get_hub().threadpool.apply(q.get, (True, timeout))
