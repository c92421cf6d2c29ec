"""Read saved ESL traffic for ``hangup-listener classify``: every event it holds, in order.

Accepted, detected from the content: raw frames exactly as captured on the wire
(``text/event-plain`` or ``text/event-json``, other frames skipped), bare plain-format events
(``Name: value`` lines, events separated by blank lines), or JSON events (one object, an array of
objects, or one object per line), or one leg's JSON CDR file (mod_json_cdr; ``listener.core.cdr``).
"""

from __future__ import annotations

import json
from collections.abc import Iterator

from listener.core import cdr
from listener.core.errors import EventError
from listener.core.event import HangupEvent, parse_header_block
from listener.core.frame import FrameDecoder

_FRAME_STARTS = (b"Content-Length:", b"Content-Type:")


def read_events(data: bytes, max_frame_bytes: int = 1 << 30) -> Iterator[HangupEvent]:
    """Every event in a capture. Raises EventError / FrameError where the input is unusable."""
    stripped = data.lstrip()
    if stripped.startswith((b"{", b"[")):
        yield from _json_events(stripped)
    elif stripped.startswith(_FRAME_STARTS):
        yield from _frame_events(stripped, max_frame_bytes)
    elif stripped:
        yield from _bare_plain_events(stripped)


def _frame_events(data: bytes, max_frame_bytes: int) -> Iterator[HangupEvent]:
    decoder = FrameDecoder(max_frame_bytes)
    frames = decoder.feed(data)
    decoder.eof()
    for frame in frames:
        if frame.content_type == "text/event-plain":
            yield HangupEvent.from_plain(frame.body)
        elif frame.content_type == "text/event-json":
            yield HangupEvent.from_json(frame.body)


def _bare_plain_events(data: bytes) -> Iterator[HangupEvent]:
    text = data.decode("utf-8", "replace")
    for chunk in text.split("\n\n"):
        headers = parse_header_block(chunk)
        if "Event-Name" in headers:
            yield HangupEvent.from_headers(headers)


def _json_events(data: bytes) -> Iterator[HangupEvent]:
    text = data.decode("utf-8", "replace")
    try:
        whole = json.loads(text)
    except json.JSONDecodeError:
        lines = enumerate(text.splitlines(), 1)
        objects = [_json_line(number, line) for number, line in lines if line.strip()]
    else:
        if cdr.is_cdr(whole):
            yield cdr.event_from_cdr(data)
            return
        objects = whole if isinstance(whole, list) else [whole]
    for obj in objects:
        yield HangupEvent.from_json(json.dumps(obj))


def _json_line(number: int, line: str) -> object:
    try:
        return json.loads(line)
    except json.JSONDecodeError as exc:
        raise EventError(f"line {number}: not JSON: {exc.msg}") from None
