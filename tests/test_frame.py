"""The sans-IO frame decoder: real captures in every chunking, and every kind of broken framing."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from listener.core.errors import FrameError
from listener.core.frame import FrameDecoder
from tests.fakeesl import FIXTURES, event_frame, split_frames

WIRE = (FIXTURES / "uas_486" / "plain.txt").read_bytes()
EXPECTED = split_frames(WIRE)


def decode_in_chunks(data: bytes, cuts: list[int]) -> list[bytes]:
    decoder = FrameDecoder()
    bodies = []
    start = 0
    for cut in [*sorted(set(cuts)), len(data)]:
        bodies += [f.body for f in decoder.feed(data[start:cut])]
        start = cut
    decoder.eof()
    return bodies


def test_a_real_capture_decodes_into_its_frames() -> None:
    frames = FrameDecoder().feed(WIRE)
    assert [f.body for f in frames] == [body for _, body in EXPECTED]
    assert {f.content_type for f in frames} == {"text/event-plain"}


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=len(WIRE)), max_size=40))
def test_a_real_capture_decodes_identically_however_it_is_split(cuts: list[int]) -> None:
    assert decode_in_chunks(WIRE, cuts) == [body for _, body in EXPECTED]


def test_every_single_split_point_of_one_frame_gives_the_same_frame() -> None:
    data = event_frame(b"Event-Name: HEARTBEAT\nCore-UUID: x\n")
    for cut in range(len(data) + 1):
        assert decode_in_chunks(data, [cut]) == [b"Event-Name: HEARTBEAT\nCore-UUID: x\n"]


@pytest.mark.parametrize("length", ["-5", "abc", "12abc", "", "1e3", "0x10"])
def test_a_content_length_that_is_not_a_non_negative_integer_is_broken_framing(length: str) -> None:
    with pytest.raises(FrameError, match="not a non-negative integer"):
        FrameDecoder().feed(f"Content-Length: {length}\nContent-Type: text/event-plain\n\n".encode())


def test_a_content_length_over_the_cap_is_refused_before_anything_is_allocated() -> None:
    decoder = FrameDecoder(max_frame_bytes=1024)
    with pytest.raises(FrameError, match="exceeds the frame cap of 1024"):
        decoder.feed(b"Content-Length: 1025\nContent-Type: text/event-plain\n\n")


def test_an_envelope_without_a_blank_line_is_capped() -> None:
    decoder = FrameDecoder()
    line = b"X-Header: " + b"a" * 1000 + b"\n"
    decoder.feed(line * 60)
    with pytest.raises(FrameError, match="without a blank line"):
        decoder.feed(line * 10)


def test_eof_inside_a_body_is_broken_framing() -> None:
    decoder = FrameDecoder()
    assert decoder.feed(b"Content-Length: 50\nContent-Type: text/event-plain\n\nshort") == []
    with pytest.raises(FrameError, match="closed inside a frame"):
        decoder.eof()


def test_eof_between_frames_is_clean() -> None:
    decoder = FrameDecoder()
    assert len(decoder.feed(event_frame(b"Event-Name: HEARTBEAT\n") + b"\n")) == 1
    decoder.eof()


def test_envelope_lines_without_separator_are_ignored_and_non_utf8_replaced() -> None:
    frames = FrameDecoder().feed(b"garbage line\nContent-Type: text/\xffplain\n\n")
    assert frames[0].content_type == "text/\ufffdplain"
    assert frames[0].body == b""


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2000), st.lists(st.integers(min_value=0, max_value=2000), max_size=8))
def test_arbitrary_bytes_either_decode_or_raise_frame_error(data: bytes, cuts: list[int]) -> None:
    with contextlib.suppress(FrameError):
        decode_in_chunks(data, [c for c in cuts if c <= len(data)])
