"""Sans-IO decoding of the Event Socket byte stream into frames.

A frame is an envelope of ``Name: value`` lines ended by a blank line, then exactly
``Content-Length`` bytes of body. The decoder never trusts the peer: an envelope or a body larger
than the configured cap, or a Content-Length that is not a non-negative integer, is broken framing
(``FrameError``) and the caller re-establishes the connection. It never allocates more than it has
received, and bytes that are not UTF-8 are decoded with replacement, never a reason to fail.
"""

from __future__ import annotations

from dataclasses import dataclass

from listener.core.errors import FrameError

DEFAULT_MAX_FRAME_BYTES = 4 * 1024 * 1024
MAX_ENVELOPE_BYTES = 64 * 1024


@dataclass(frozen=True, slots=True)
class Frame:
    """One ESL frame: its envelope headers (as sent, not URL-decoded) and its raw body."""

    headers: dict[str, str]
    body: bytes = b""

    @property
    def content_type(self) -> str:
        return self.headers.get("Content-Type", "")


def parse_envelope(raw: bytes) -> dict[str, str]:
    """Envelope lines to a dict; lines without ``: `` are ignored, the first duplicate wins."""
    headers: dict[str, str] = {}
    for line in raw.decode("utf-8", "replace").split("\n"):
        name, sep, value = line.partition(": ")
        if sep and name not in headers:
            headers[name.strip()] = value.strip()
    return headers


def content_length(headers: dict[str, str], limit: int) -> int:
    """The body length an envelope announces, validated against ``limit``."""
    raw = headers.get("Content-Length")
    if raw is None:
        return 0
    if not (raw.isascii() and raw.isdigit()):  # str.isdigit alone accepts "²", which int() refuses
        raise FrameError("Content-Length is not a non-negative integer")
    digits = raw.lstrip("0") or "0"
    if len(digits) > len(str(limit)) or int(digits) > limit:  # int() refuses > 4300 digits
        shown = digits if len(digits) <= 20 else digits[:20] + "..."
        raise FrameError(f"Content-Length {shown} exceeds the frame cap of {limit} bytes")
    return int(digits)


class FrameDecoder:
    """Feed it bytes as they arrive; it returns every complete frame, in order."""

    def __init__(self, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES) -> None:
        self.max_frame_bytes = max_frame_bytes
        self._buf = bytearray()
        self._pos = 0
        self._pending: dict[str, str] | None = None
        self._need = 0
        self._scanned = 0  # the envelope's blank line is not before this offset: never search twice

    @property
    def buffered(self) -> int:
        """Bytes received but not yet returned as a frame."""
        return len(self._buf) - self._pos

    def feed(self, data: bytes) -> list[Frame]:
        """Add received bytes; return the frames they complete.

        Raises FrameError on broken framing, carrying in ``frames`` those completed before it.
        """
        self._buf += data
        frames: list[Frame] = []
        try:
            while (frame := self._next()) is not None:
                frames.append(frame)
        except FrameError as exc:
            exc.frames = tuple(frames)
            raise
        if self._pos:
            del self._buf[: self._pos]
            self._scanned = max(self._scanned - self._pos, 0)
            self._pos = 0
        return frames

    def eof(self) -> None:
        """The peer closed the stream: a frame left half-received is broken framing."""
        if self._pending is not None or self._buf[self._pos :].strip():
            raise FrameError(f"connection closed inside a frame ({self.buffered} bytes pending)")

    def _next(self) -> Frame | None:
        if self._pending is None and not self._read_envelope():
            return None
        assert self._pending is not None
        end = self._pos + self._need
        if len(self._buf) < end:
            return None
        frame = Frame(self._pending, bytes(self._buf[self._pos : end]))
        self._pos = end
        self._pending = None
        return frame

    def _read_envelope(self) -> bool:
        buf = self._buf
        while self._pos < len(buf) and buf[self._pos] in b"\r\n":
            self._pos += 1  # blank lines between frames carry nothing
        end = buf.find(b"\n\n", max(self._pos, self._scanned - 1))
        if end < 0:
            self._scanned = len(buf)
            if len(buf) - self._pos > MAX_ENVELOPE_BYTES:
                raise FrameError(f"envelope longer than {MAX_ENVELOPE_BYTES} bytes without a blank line")
            return False
        headers = parse_envelope(bytes(buf[self._pos : end]))
        self._need = content_length(headers, self.max_frame_bytes)
        self._pending = headers
        self._pos = end + 2
        return True
