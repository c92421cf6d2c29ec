"""A minimal webhook receiver, as its own process: HTTP/1.1 keep-alive, answers every POST with 200.

    python -m bench.receiver OUTPUT

It binds 127.0.0.1 (port chosen by the OS) at once and prints ``{"port": P}``, but listens only
after the ``listen`` command: until then a connection is refused, as with a receiver that is down.
Every request is appended to OUTPUT as one line ``<arrival> <webhook-id> <timestamp> <signature>
<body>`` (the compact JSON body has no newline). Commands on stdin, one JSON line answered each:
``listen``; ``target N`` (answers once N distinct webhook-ids of legs have arrived); ``calls N``
(once N distinct webhook-ids of ``call.completed`` have); ``count``; ``quit``. Every answer has
``unique`` (legs), ``calls``, ``requests`` and ``last`` (the last request's arrival).
"""

from __future__ import annotations

import asyncio
import json
import socket
import sys
import time
from typing import BinaryIO

OK = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"
CALL = b'"call.completed"'
"""In a body only as a ``call.completed`` envelope's type: any other body is a leg's."""


def say(**fields: object) -> None:
    sys.stdout.write(json.dumps(fields) + "\n")
    sys.stdout.flush()


class Tally:
    def __init__(self, out: BinaryIO) -> None:
        self.out = out
        self.ids: set[bytes] = set()
        self.call_ids: set[bytes] = set()
        self.requests = 0
        self.last = 0.0
        self.target: tuple[set[bytes], int] | None = None

    def record(self, headers: dict[bytes, bytes], body: bytes) -> None:
        now = time.monotonic()
        webhook_id = headers.get(b"webhook-id", b"-")
        self.out.write(b"%.6f %s %s %s %s\n" % (now, webhook_id, headers.get(b"webhook-timestamp", b"-"),
                                               headers.get(b"webhook-signature", b"-"), body))
        self.requests += 1
        (self.call_ids if CALL in body else self.ids).add(webhook_id)
        self.last = now
        self.answer_if_reached()

    def wait_for(self, ids: set[bytes], count: int) -> None:
        """Answer once ``ids`` (legs' or calls') holds ``count``: now, or at the request that makes it."""
        self.target = (ids, count)
        self.answer_if_reached()

    def answer_if_reached(self) -> None:
        if self.target is not None and len(self.target[0]) >= self.target[1]:
            self.target = None
            self.answer()

    def answer(self) -> None:
        self.out.flush()
        say(unique=len(self.ids), calls=len(self.call_ids), requests=self.requests, last=self.last)


class Http(asyncio.Protocol):
    def __init__(self, tally: Tally) -> None:
        self.tally = tally
        self.buf = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        sock = transport.get_extra_info("socket")
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while (end := self.buf.find(b"\r\n\r\n")) >= 0:
            headers = {}
            for line in self.buf[:end].split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                headers[name.strip().lower()] = value.strip()
            length = int(headers.get(b"content-length", b"0"))
            if len(self.buf) < end + 4 + length:
                return
            body = self.buf[end + 4 : end + 4 + length]
            self.buf = self.buf[end + 4 + length :]
            self.tally.record(headers, body)
            assert self.transport is not None
            self.transport.write(OK)


async def serve(path: str) -> None:
    loop = asyncio.get_running_loop()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    say(port=sock.getsockname()[1])
    with open(path, "wb", buffering=1 << 20) as out:
        tally = Tally(out)
        reader = asyncio.StreamReader()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        while line := (await reader.readline()).decode().split():
            if line[0] == "listen":
                sock.listen(1024)
                await loop.create_server(lambda: Http(tally), sock=sock)
                say(listening=True)
            elif line[0] == "target":
                tally.wait_for(tally.ids, int(line[1]))
            elif line[0] == "calls":
                tally.wait_for(tally.call_ids, int(line[1]))
            elif line[0] == "count":
                tally.answer()
            elif line[0] == "quit":
                break
        out.flush()


if __name__ == "__main__":
    asyncio.run(serve(sys.argv[1]))
