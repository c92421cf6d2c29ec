"""Reading one HTTP/1.1 response with every part bounded; what the transport keeps of it is the status,
``Retry-After`` and whether the connection may carry another request.

Invariants:

- The head (status line and header fields, interim 1xx answers included) is at most ``HEAD_LIMIT``
  bytes and ``FIELD_LIMIT`` lines; a longer one, or one that is not HTTP/1.x, is a ``ResponseError``.
- Once a well-formed head is read its status is the outcome. The body is read only so the
  connection can carry the next request, at most ``BODY_LIMIT`` bytes of it (chunk framing
  counted). A body over that, framed by the connection's end, malformed, cut short or still
  arriving at the deadline is left unread, and the connection is not reused.
- No read starts after ``deadline`` (monotonic). A peer that keeps bytes coming never lets a recv
  block, so gevent's timer would never get to fire; the byte limits end such a flood within a few
  reads and this check ends it in any case. A recv that blocks is bounded by the socket's timeout
  and by the caller's ``gevent.Timeout``.
- A connection is reusable only after a complete response that allows keep-alive and left no
  byte unread.
- The body's bytes are dropped as they are read, but for its first ``keep`` bytes when asked
  (``hangup-listener webhook test`` shows them); delivery keeps none.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from listener.core.errors import ListenerError

HEAD_LIMIT = 64 * 1024
FIELD_LIMIT = 100
BODY_LIMIT = 64 * 1024
RECV_SIZE = 64 * 1024
_NO_BODY = (204, 304)
_KEPT = ("content-length", "transfer-encoding", "connection", "retry-after")
_STATUS_LINE = re.compile(rb"HTTP/1\.([0-9]) ([0-9]{3})(?: [^\r\n]*)?")
_FIELD_NAME = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_CHUNK_SIZE = re.compile(rb"([0-9A-Fa-f]{1,15})[ \t]*(?:;[^\r\n]*)?")
Socket = Any  # gevent's socket or SSLSocket


class ResponseError(ListenerError):
    """The answer is not an HTTP/1.x response we can read within the limits."""


class ClosedBeforeAnswerError(ResponseError):
    """The connection ended (EOF or reset) before the first byte of an answer."""


class DeadlineExceededError(TimeoutError):
    """The whole request took longer than its deadline."""


class _OverLimitError(Exception):
    """More bytes than the current part of the response may have."""


@dataclass(frozen=True, slots=True)
class Head:
    """A parsed response head: the fields the transport needs, names lowercased, each value as sent."""

    minor: int
    status: int
    fields: Mapping[str, tuple[str, ...]]

    def first(self, name: str) -> str | None:
        values = self.fields.get(name)
        return values[0] if values else None

    def tokens(self, name: str) -> list[str]:
        """A comma-separated list field's items, lowercased (``Connection``, ``Transfer-Encoding``)."""
        return [t.strip().lower() for v in self.fields.get(name, ()) for t in v.split(",") if t.strip()]

    def keep_alive(self) -> bool:
        tokens = self.tokens("connection")
        return "close" not in tokens and (self.minor >= 1 or "keep-alive" in tokens)


@dataclass(frozen=True, slots=True)
class Response:
    """What the transport keeps of a response."""

    status: int
    retry_after: str | None
    reusable: bool
    body_start: bytes = b""
    """The first bytes of the body (chunk framing removed), at most the ``keep`` asked for."""


def parse_head(block: bytes) -> Head:
    """The head of ``block`` (the bytes before the blank line); ``ResponseError`` if malformed."""
    lines = block.split(b"\r\n")
    if len(lines) > FIELD_LIMIT + 1:
        raise ResponseError(f"more than {FIELD_LIMIT} header lines")
    status = _STATUS_LINE.fullmatch(lines[0])
    if status is None:
        raise ResponseError(f"not an HTTP/1.x status line: {lines[0][:80]!r}")
    fields: dict[str, tuple[str, ...]] = {}
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        if not colon or _FIELD_NAME.fullmatch(name) is None or b"\n" in value:
            raise ResponseError(f"a malformed header line: {line[:80]!r}")
        key = name.decode("latin-1").lower()
        if key in _KEPT:
            fields[key] = (*fields.get(key, ()), value.strip(b" \t").decode("latin-1"))
    return Head(int(status.group(1)), int(status.group(2)), fields)


def body_length(head: Head) -> int | None:
    """The body's length, -1 when chunked, None when it ends with the connection (RFC 9112 6.3)."""
    if head.status in _NO_BODY or head.status < 200:
        return 0
    if "transfer-encoding" in head.fields:
        if "content-length" in head.fields:
            raise ResponseError("both transfer-encoding and content-length: ambiguous framing")
        codings = head.tokens("transfer-encoding")
        return -1 if codings and codings[-1] == "chunked" else None
    lengths = {v.strip() for value in head.fields.get("content-length", ()) for v in value.split(",")}
    if not lengths:
        return None
    length = lengths.pop()
    if lengths or not length.isdigit() or not length.isascii():
        raise ResponseError(f"an invalid content-length: {head.fields['content-length']!r}")
    return int(length)


class _Stream:
    """The bytes of one response: buffered, never more than ``limit`` in all, never past ``deadline``."""

    __slots__ = ("buffer", "clock", "deadline", "keep", "kept", "limit", "received", "sock")

    def __init__(self, sock: Socket, deadline: float, clock: Callable[[], float], keep: int = 0) -> None:
        self.sock, self.deadline, self.clock = sock, deadline, clock
        self.buffer = bytearray()
        self.received = 0
        self.limit = HEAD_LIMIT
        self.keep = keep
        self.kept = bytearray()

    def fill(self) -> bool:
        """Receive more; False at the end of the stream."""
        room = self.limit - self.received
        if room <= 0:
            raise _OverLimitError
        if self.clock() >= self.deadline:
            raise DeadlineExceededError
        data = self.sock.recv(min(room, RECV_SIZE))
        self.received += len(data)
        self.buffer += data
        return bool(data)

    def line(self) -> bytes:
        """The next line, its CRLF consumed."""
        start = 0
        while (end := self.buffer.find(b"\r\n", start)) < 0:
            start = max(0, len(self.buffer) - 1)
            if not self.fill():
                raise ResponseError("the connection ended inside a line")
        line = bytes(self.buffer[:end])
        del self.buffer[:end + 2]
        return line

    def skip(self, size: int) -> None:
        """Consume ``size`` bytes."""
        if size - len(self.buffer) > self.limit - self.received:
            raise _OverLimitError
        while len(self.buffer) < size:
            if not self.fill():
                raise ResponseError("the connection ended inside the body")
        if len(self.kept) < self.keep:
            self.kept += self.buffer[:min(size, self.keep - len(self.kept))]
        del self.buffer[:size]


def read_response(sock: Socket, deadline: float, clock: Callable[[], float] = time.monotonic,
                  keep: int = 0) -> Response:
    """Read one response from ``sock`` within the limits and ``deadline``, keeping the first ``keep``
    bytes of its body; see the module's invariants."""
    stream = _Stream(sock, deadline, clock, keep)
    head = _final_head(stream)
    stream.limit = stream.received - len(stream.buffer) + BODY_LIMIT
    ended = _drain(stream, body_length(head))
    reusable = ended and head.keep_alive() and not stream.buffer
    body_start = bytes(stream.kept or stream.buffer[:keep])  # a body left unread: what came with the head
    return Response(head.status, head.first("retry-after"), reusable, body_start)


def _final_head(stream: _Stream) -> Head:
    """The first head that is not an interim (1xx) one."""
    while True:
        head = parse_head(_head_block(stream))
        if head.status >= 200:
            return head
        if head.status == 101:
            raise ResponseError("101 Switching Protocols: never asked for")


def _head_block(stream: _Stream) -> bytes:
    """The bytes up to the blank line ending a head, that line consumed."""
    start = 0
    while (end := stream.buffer.find(b"\r\n\r\n", start)) < 0:
        start = max(0, len(stream.buffer) - 3)
        if not _fill_head(stream):
            if stream.received == 0:
                raise ClosedBeforeAnswerError("the connection ended before an answer")
            raise ResponseError("the connection ended inside the head")
    block = bytes(stream.buffer[:end])
    del stream.buffer[:end + 4]
    return block


def _fill_head(stream: _Stream) -> bool:
    try:
        return stream.fill()
    except _OverLimitError:
        raise ResponseError(f"a head over {HEAD_LIMIT} bytes") from None
    except ConnectionResetError as exc:
        if stream.received == 0:
            raise ClosedBeforeAnswerError("the connection was reset before an answer") from exc
        raise


def _drain(stream: _Stream, length: int | None) -> bool:
    """Read the body to its end; False if it did not end cleanly within the limits and the deadline."""
    try:
        if length is None:
            return False  # it ends with the connection: never read, the connection is closed
        if length >= 0:
            stream.skip(length)
        else:
            _drain_chunked(stream)
    except (_OverLimitError, ResponseError, OSError):  # OSError: TimeoutError and the deadline too
        return False
    return True


def _drain_chunked(stream: _Stream) -> None:
    """Consume a chunked body, its trailer fields included."""
    while True:
        size = _CHUNK_SIZE.fullmatch(stream.line())
        if size is None:
            raise ResponseError("a malformed chunk size line")
        if (length := int(size.group(1), 16)) == 0:
            break
        stream.skip(length)
        if stream.line():
            raise ResponseError("a chunk longer than its size")
    while stream.line():  # trailer fields, up to the blank line
        pass
