"""A fake FreeSWITCH Event Socket (inbound mode) on 127.0.0.1, port 0, speaking the exact wire protocol.

It sends ``auth/request``, answers ``auth`` / ``event`` / ``api`` / ``exit`` with ``command/reply``
or ``api/response`` as FreeSWITCH 1.10 does, and lets a test push ``text/event-plain`` frames with
byte-accurate Content-Length, raw bytes, a ``text/disconnect-notice``, or an abrupt close.
"""

from __future__ import annotations

import contextlib
import socket
import struct
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import gevent
import gevent.event
import gevent.lock
import gevent.queue
import gevent.server
import structlog

from listener.config.settings import Node
from listener.core.classifier import default_classifier
from listener.core.event import HANGUP_COMPLETE, HEARTBEAT, HangupEvent
from listener.esl.source import Tally
from listener.pipeline import Pipeline

DATA = Path(__file__).parent / "data"
FIXTURES = DATA / "fixtures"


def frame(content_type: str, body: bytes = b"", **headers: str) -> bytes:
    """One ESL frame: envelope, blank line, body; Content-Length exact in bytes."""
    lines = []
    if body:
        lines.append(f"Content-Length: {len(body)}")
    lines.append(f"Content-Type: {content_type}")
    lines += [f"{name.replace('_', '-')}: {value}" for name, value in headers.items()]
    return ("\n".join(lines) + "\n\n").encode() + body


def event_frame(body: bytes) -> bytes:
    return frame("text/event-plain", body)


def split_frames(raw: bytes) -> list[tuple[dict[str, str], bytes]]:
    """Split a wire capture into (envelope headers, body) pairs."""
    frames = []
    pos = 0
    while pos < len(raw):
        end = raw.index(b"\n\n", pos)
        headers = dict(line.split(": ", 1) for line in raw[pos:end].decode().split("\n"))
        length = int(headers.get("Content-Length", "0"))
        frames.append((headers, raw[end + 2 : end + 2 + length]))
        pos = end + 2 + length
    return frames


def capture_bodies(scenario: str, name: str = "hangup_complete.plain.txt") -> list[bytes]:
    """The event bodies of one captured scenario file."""
    return [body for _, body in split_frames((FIXTURES / scenario / name).read_bytes())]


def with_header(body: bytes, name: str, value: str) -> bytes:
    """A plain event body with one header's value replaced (the value is written as given)."""
    lines = body.split(b"\n")
    prefix = name.encode() + b": "
    out = [prefix + value.encode() if line.startswith(prefix) else line for line in lines]
    return b"\n".join(out)


class Session:
    """One accepted connection: the fake's half of the conversation."""

    def __init__(self, sock: socket.socket, server: FakeFreeSWITCH) -> None:
        self.sock = sock
        self.server = server
        self.commands: list[str] = []
        self.subscribed = gevent.event.Event()
        self.closed = gevent.event.Event()
        self._sending = gevent.lock.Semaphore()  # a reply never lands inside a frame a test is sending

    def serve(self) -> None:
        try:
            if self.server.reject_acl:
                self.send(frame("text/rude-rejection", b"Access Denied, go away.\n"))
                return
            self.send(frame("auth/request"))
            buf = b""
            while True:
                data = self.sock.recv(65536)
                if not data:
                    return
                buf += data
                while b"\n\n" in buf:
                    command, buf = buf.split(b"\n\n", 1)
                    if not self.answer(command.decode()):
                        return
        except OSError:
            return
        finally:
            self.close()

    def answer(self, command: str) -> bool:
        """Reply to one command as FreeSWITCH does; False ends the session."""
        self.commands.append(command)
        if self.server.silent or command in self.server.unanswered:
            return True
        if command.startswith("auth "):
            if command[5:] == self.server.password:
                self.send(frame("command/reply", Reply_Text="+OK accepted"))
                return True
            self.send(frame("command/reply", Reply_Text="-ERR invalid"))
            self.disconnect_notice()
            return False
        if command.startswith("event "):
            self.send(frame("command/reply", Reply_Text=f"+OK event listener enabled {command.split()[1]}"))
            self.subscribed.set()
            return True
        if command == "api global_getvar core_uuid":
            self.send(frame("api/response", self.server.core_uuid.encode()))
            return True
        if command.startswith("api "):
            self.send(frame("api/response", b"+OK\n"))
            return True
        if command == "exit":
            self.send(frame("command/reply", Reply_Text="+OK bye"))
            self.disconnect_notice()
            return False
        self.send(frame("command/reply", Reply_Text="-ERR command not found"))
        return True

    # -- what a test does with a session ----------------------------------------------------
    def send(self, data: bytes) -> None:
        with self._sending:
            self.sock.sendall(data)

    def send_event(self, body: bytes) -> None:
        self.send(event_frame(body))

    def disconnect_notice(self) -> None:
        body = b"Disconnected, goodbye.\nSee you at ClueCon! http://www.cluecon.com/\n"
        headers = {"Controlled_Session_UUID": "", "Content_Disposition": "disconnect"}
        self.send(frame("text/disconnect-notice", body, **headers))

    def close(self) -> None:
        if not self.closed.is_set():
            self.closed.set()
            with contextlib.suppress(OSError):
                self.sock.shutdown(socket.SHUT_RDWR)
            self.sock.close()

    def abort(self) -> None:
        """Close with a TCP reset, as a crashed FreeSWITCH would."""
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.closed.set()
        self.sock.close()


class FakeFreeSWITCH:
    """The fake server; ``next_session()`` hands each accepted connection to the test."""

    def __init__(self, password: str = "ClueCon", *, reject_acl: bool = False, silent: bool = False) -> None:
        self.password = password
        self.reject_acl = reject_acl
        self.silent = silent
        self.unanswered: set[str] = set()
        """Commands this fake never answers (as if the reply were stuck behind a backlog)."""
        self.core_uuid = "1b8e5af5-676a-4b2e-91a0-1ac1b56080da"  # the captures' FreeSWITCH
        self.sessions: gevent.queue.Queue[Session] = gevent.queue.Queue()
        self.accepted = 0
        self.server = gevent.server.StreamServer(("127.0.0.1", 0), self._handle)

    def __enter__(self) -> FakeFreeSWITCH:
        self.server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.stop(timeout=1)

    @property
    def port(self) -> int:
        return int(self.server.server_port)

    def _handle(self, sock: socket.socket, _address: object) -> None:
        self.accepted += 1
        session = Session(sock, self)
        self.sessions.put(session)
        session.serve()

    def next_session(self, timeout: float = 5.0, *, subscribed: bool = True) -> Session:
        session = self.sessions.get(timeout=timeout)
        if subscribed and not self.silent and not self.reject_acl:
            assert session.subscribed.wait(timeout), f"no subscription; commands: {session.commands}"
        return session


class Collect:
    """A store that hands every document to the test."""

    def __init__(self) -> None:
        self.documents: gevent.queue.Queue[dict[str, Any]] = gevent.queue.Queue()

    def put(self, documents: Sequence[Any]) -> frozenset[str]:
        """Each leg's document (a pipeline hands ``listener.core.calls.Leg``s; a bare mapping is one)."""
        for item in documents:
            self.documents.put(dict(getattr(item, "document", item)))
        return frozenset()

    def take(self, count: int, timeout: float = 5.0) -> list[dict[str, Any]]:
        return [self.documents.get(timeout=timeout) for _ in range(count)]


class Recording(Pipeline):
    """The real pipeline of one node, which also hands each hangup and heartbeat event to the test.

    ``fail_on``: a Unique-ID whose hangup raises while handled, as a bug in a rule would.
    """

    def __init__(self, node: Node | None = None, log: Any = None, *, fail_on: str | None = None) -> None:
        super().__init__(node or Node("fs1"), default_classifier(), log or structlog.get_logger())
        self.events: gevent.queue.Queue[HangupEvent] = gevent.queue.Queue()
        self.fail_on = fail_on

    def take(self, event: HangupEvent, tally: Tally, ready: list[dict[str, Any]]) -> None:
        super().take(event, tally, ready)
        if event.event_name in (HANGUP_COMPLETE, HEARTBEAT) and event.unique_id != self.fail_on:
            self.events.put(event)

    def document(self, event: HangupEvent) -> dict[str, Any]:
        if self.fail_on is not None and event.unique_id == self.fail_on:
            raise RuntimeError("a bug in a rule")
        return super().document(event)

    def get(self, count: int, timeout: float = 5.0) -> list[HangupEvent]:
        return [self.events.get(timeout=timeout) for _ in range(count)]
