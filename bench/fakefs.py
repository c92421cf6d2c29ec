"""A fake FreeSWITCH Event Socket, as its own process, that writes the benchmark's events.

    python -m bench.fakefs RUN

It listens on 127.0.0.1 (port chosen by the OS), prints ``{"port": P}``, accepts one client at a
time, answers ``auth``, ``event(s)``, ``api global_getvar core_uuid`` (and any ``api``) as FreeSWITCH
1.10 does, and then takes commands on stdin, one per line, answering each with one JSON line:

- ``burst N``: write the next N events as fast as the socket takes them;
  ``{"sent": N, "first": t, "last": t}`` (``time.monotonic()``, comparable across processes).
- ``rate R SECONDS [PATH]``: write R events per second for SECONDS (or until ``stop``); the
  write time of every event goes to PATH (raw doubles) when given.
- ``stop``: ends a running ``rate``.  ``quit``: exits.

Both write whole calls (``bench.corpus``): a burst that would end inside a call is rounded up to
its last leg, and the call in progress when a rate ends is finished at once; ``sent`` says how
many were written.
"""

from __future__ import annotations

import json
import sys
import time
from array import array

from gevent import monkey

monkey.patch_all()

import gevent  # noqa: E402
import gevent.event  # noqa: E402
import gevent.lock  # noqa: E402
import gevent.queue  # noqa: E402
import gevent.server  # noqa: E402

from bench.corpus import Corpus  # noqa: E402

CORE_UUID = "1b8e5af5-676a-4b2e-91a0-1ac1b56080da"
CHUNK = 1 << 20


def frame(content_type: str, body: bytes = b"", **headers: str) -> bytes:
    lines = [f"Content-Length: {len(body)}"] if body else []
    lines.append(f"Content-Type: {content_type}")
    lines += [f"{name.replace('_', '-')}: {value}" for name, value in headers.items()]
    return ("\n".join(lines) + "\n\n").encode() + body


def say(**fields: object) -> None:
    sys.stdout.write(json.dumps(fields) + "\n")
    sys.stdout.flush()


class Client:
    """The connected listener: command replies and event frames never interleave."""

    def __init__(self, sock: object) -> None:
        self.sock = sock
        self.lock = gevent.lock.Semaphore()
        self.subscribed = gevent.event.Event()
        self.closed = gevent.event.Event()
        self.format = "plain"  # what the listener subscribed to: the same events in that format

    def send(self, data: bytes) -> None:
        with self.lock:
            self.sock.sendall(data)  # type: ignore[attr-defined]

    def serve(self) -> None:
        self.send(frame("auth/request"))
        buf = b""
        try:
            while data := self.sock.recv(65536):  # type: ignore[attr-defined]
                buf += data
                while b"\n\n" in buf:
                    command, buf = buf.split(b"\n\n", 1)
                    self.answer(command.decode())
        except OSError:
            pass
        self.closed.set()

    def answer(self, command: str) -> None:
        if command.startswith("auth "):
            self.send(frame("command/reply", Reply_Text="+OK accepted"))
        elif command.startswith("event"):
            self.format = "json" if command.split()[1:2] == ["json"] else "plain"
            self.send(frame("command/reply", Reply_Text=f"+OK event listener enabled {self.format}"))
            self.subscribed.set()
        elif command == "api global_getvar core_uuid":
            self.send(frame("api/response", CORE_UUID.encode()))
        elif command.startswith("api "):
            self.send(frame("api/response", b"+OK\n"))
        else:
            self.send(frame("command/reply", Reply_Text="+OK"))


class FakeFreeSWITCH:
    def __init__(self, run: int) -> None:
        self.corpus = Corpus(run)
        self.next = 0
        self.clients: gevent.queue.Queue[Client] = gevent.queue.Queue()
        self.client: Client | None = None
        self.stopping = False
        self.server = gevent.server.StreamServer(("127.0.0.1", 0), self._handle)

    def _handle(self, sock: object, _address: object) -> None:
        client = Client(sock)
        self.clients.put(client)
        client.serve()

    def connected(self) -> Client:
        if self.client is None or self.client.closed.is_set():
            self.client = self.clients.get()
            self.client.subscribed.wait()
        return self.client

    def burst(self, count: int) -> None:
        client, start = self.connected(), self.next
        count = self.corpus.whole(start + count) - start
        first = time.monotonic()
        chunk: list[bytes] = []
        size = 0
        for i in range(start, start + count):
            data = self.corpus.frame(i, client.format)
            chunk.append(data)
            size += len(data)
            if size >= CHUNK:
                client.send(b"".join(chunk))
                chunk, size = [], 0
                gevent.sleep(0)  # let a command reply (api global_getvar) in between chunks
        if chunk:
            client.send(b"".join(chunk))
        self.next = start + count
        say(sent=count, start=start, first=first, last=time.monotonic())

    def rate(self, per_s: float, seconds: float, path: str | None) -> None:
        client, start = self.connected(), self.next
        times = array("d")

        def send_until(due: int) -> None:
            while len(times) < due:
                data = self.corpus.frame(start + len(times), client.format)
                times.append(time.monotonic())
                client.send(data)

        begin = time.monotonic()
        total = self.corpus.whole(start + int(per_s * seconds)) - start
        self.stopping = False
        while len(times) < total and not self.stopping:
            send_until(min(int((time.monotonic() - begin) * per_s) + 1, total))
            gevent.sleep(max(begin + len(times) / per_s - time.monotonic(), 0))
        send_until(self.corpus.whole(start + len(times)) - start)  # after a stop: the call in progress
        self.next = start + len(times)
        if path:
            with open(path, "wb") as out:
                times.tofile(out)
        say(sent=len(times), start=start, first=begin, last=time.monotonic())

    def command(self, line: str) -> bool:
        words = line.split()
        if not words:
            return True
        if words[0] == "burst":
            self.burst(int(words[1]))
        elif words[0] == "rate":
            self.rate(float(words[1]), float(words[2]), words[3] if len(words) > 3 else None)
        elif words[0] == "connected":
            say(connected=self.connected().format)
        elif words[0] == "quit":
            return False
        return True


def main() -> None:
    fake = FakeFreeSWITCH(int(sys.argv[1]))
    fake.server.start()
    say(port=fake.server.server_port, mean_frame_bytes=round(fake.corpus.mean_size))
    commands: gevent.queue.Queue[str] = gevent.queue.Queue()

    def read_stdin() -> None:
        while line := gevent.get_hub().threadpool.apply(sys.stdin.readline):  # the hub keeps running
            if line.strip() == "stop":
                fake.stopping = True
            else:
                commands.put(line)
        commands.put("quit")

    gevent.spawn(read_stdin)
    while fake.command(commands.get()):
        pass
    fake.server.stop(timeout=1)


if __name__ == "__main__":
    main()
