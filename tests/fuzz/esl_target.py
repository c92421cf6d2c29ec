"""The fuzz target: raw Event Socket bytes -> frames -> events -> classified documents.

``one_input(data)`` is what the coverage-guided harness (``fuzz_esl.py``, atheris) calls and what
``tests/test_fuzz_regressions.py`` replays for every kept input in ``tests/data/fuzz/``. The first
byte of ``data`` picks how the rest is split into reads; the rest is the stream. Only
``FrameError`` (broken framing: the daemon reconnects) and ``EventError`` (one bad event: skipped)
may come out; any other exception is a crash, and a slow input is a hang (the harness' -timeout).
"""

from __future__ import annotations

from functools import cache

from listener.config.settings import Node
from listener.core.classifier import default_classifier
from listener.core.errors import EventError, FrameError
from listener.core.event import HangupEvent
from listener.core.frame import Frame, FrameDecoder
from listener.core.signing import render
from listener.pipeline import Pipeline

MAX_FRAME_BYTES = 64 * 1024
ACCESSORS = [name for name, value in vars(HangupEvent).items() if isinstance(value, property)]


@cache
def pipeline() -> Pipeline:
    return Pipeline(Node(name="fuzz"), default_classifier(), log=None)


def reads(data: bytes) -> list[bytes]:
    """Split the stream as the socket might: one piece, fixed-size pieces, or sizes taken from the data."""
    if not data:
        return []
    mode, stream = data[0], data[1:]
    if mode < 64:
        return [stream]
    if mode < 192:
        size = 1 + mode % 61
        return [stream[i : i + size] for i in range(0, len(stream), size)]
    pieces, pos, step = [], 0, 0
    while pos < len(stream):
        step = 1 + (stream[pos] * 7 + step) % 97
        pieces.append(stream[pos : pos + step])
        pos += step
    return pieces


def handle(frame: Frame) -> None:
    """What the daemon does with a frame: parse events, classify hangups, render their documents."""
    if frame.content_type == "text/event-plain":
        event = HangupEvent.from_plain(frame.body)
    elif frame.content_type == "text/event-json":
        try:
            event = HangupEvent.from_json(frame.body)
        except EventError:
            return
    else:
        return
    for name in ACCESSORS:
        getattr(event, name)
    if event.is_hangup_complete:
        render(pipeline().document(event))


def one_input(data: bytes) -> None:
    decoder = FrameDecoder(MAX_FRAME_BYTES)
    try:
        for piece in reads(data):
            for frame in decoder.feed(piece):
                handle(frame)
        decoder.eof()
    except FrameError:
        return
