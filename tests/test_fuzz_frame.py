"""Fuzzing the frame decoder: hostile envelopes, every kind of Content-Length, every split point.

Properties: ``feed``/``eof`` raise nothing but ``FrameError``; valid frames decode identically
however the stream is split; decoding time grows linearly with the input, however it is chunked.
"""

from __future__ import annotations

import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from listener.core.errors import FrameError
from listener.core.frame import MAX_ENVELOPE_BYTES, Frame, FrameDecoder

CAP = 64 * 1024

header_names = st.text(st.characters(blacklist_characters="\n", codec="utf-8"), max_size=30)
header_values = st.text(st.characters(blacklist_characters="\n", codec="utf-8"), max_size=200)
content_lengths = st.one_of(
    st.integers(min_value=0, max_value=300).map(str),
    st.integers(max_value=-1).map(str),
    st.integers(min_value=CAP + 1).map(str),
    st.integers(min_value=1, max_value=6000).map(lambda n: "9" * n),  # past int()'s 4300-digit limit
    st.sampled_from(["", " ", "abc", "12abc", "1e3", "0x10", "+5", "5 ", "\u00b2", "\u0663", "\u0e53",
                     "\uff15", "0" * 40 + "7", "1_0", "\u00bd"]),
    header_values,
)


@st.composite
def envelopes(draw: st.DrawFn) -> bytes:
    """An envelope as a hostile peer might write it: odd lines, duplicates, bad lengths, raw bytes."""
    lines: list[bytes] = []
    for _ in range(draw(st.integers(min_value=0, max_value=8))):
        kind = draw(st.sampled_from(["header", "no-separator", "length", "raw", "long"]))
        if kind == "header":
            lines.append(f"{draw(header_names)}: {draw(header_values)}".encode())
        elif kind == "no-separator":
            lines.append(draw(header_values).replace(": ", "").encode())
        elif kind == "length":
            lines.append(f"Content-Length: {draw(content_lengths)}".encode())
        elif kind == "raw":
            lines.append(draw(st.binary(max_size=100)).replace(b"\n", b""))
        else:
            size = draw(st.integers(min_value=1000, max_value=MAX_ENVELOPE_BYTES + 10))
            lines.append(b"X-Long: " + b"v" * size)
    end = draw(st.sampled_from([b"\n\n", b"\n", b"", b"\r\n\r\n"]))
    return b"\n".join(lines) + end + draw(st.binary(max_size=300))


def decode(data: bytes, cuts: list[int], cap: int = CAP) -> list[Frame]:
    """Feed ``data`` split at ``cuts``, then end the stream; FrameError is the only allowed failure."""
    decoder = FrameDecoder(cap)
    frames: list[Frame] = []
    start = 0
    for cut in [*sorted({c for c in cuts if c <= len(data)}), len(data)]:
        frames += decoder.feed(data[start:cut])
        start = cut
    decoder.eof()
    return frames


def decode_or_reject(data: bytes, cuts: list[int]) -> list[Frame] | None:
    try:
        return decode(data, cuts)
    except FrameError:
        return None


@settings(max_examples=500, deadline=None)
@given(st.lists(envelopes(), min_size=1, max_size=4), st.lists(st.integers(min_value=0), max_size=10))
def test_hostile_envelopes_decode_or_raise_frame_error_only(parts: list[bytes], cuts: list[int]) -> None:
    data = b"".join(parts)
    decode_or_reject(data, [c % (len(data) + 1) for c in cuts])


@settings(max_examples=300, deadline=None)
@given(content_lengths)
def test_any_content_length_is_a_length_within_the_cap_or_broken_framing(value: str) -> None:
    data = f"Content-Type: text/event-plain\nContent-Length: {value}\n\n".encode()
    try:
        FrameDecoder(CAP).feed(data + b"x" * 400)
    except FrameError as exc:
        reason = str(exc)
    else:
        reason = ""
    if reason:
        assert "Content-Length" in reason
        assert len(reason) < 200  # a 6000-digit value is not echoed whole
        return
    value = value.strip()  # the envelope parser strips values
    assert value.isascii()
    assert value.isdigit()
    assert int(value) <= CAP


@pytest.mark.parametrize("value", ["\u00b2", "\u00b9\u00b2", "\u0663", "\uff15", "9" * 5000])
def test_a_non_ascii_or_overlong_content_length_is_broken_framing_not_a_crash(value: str) -> None:
    """Found by fuzzing: ``"²".isdigit()`` is true but ``int("²")`` raises, as it does for > 4300 digits."""
    with pytest.raises(FrameError, match="Content-Length"):
        FrameDecoder(CAP).feed(f"Content-Length: {value}\n\nbody".encode())


def test_leading_zeros_are_still_a_small_length() -> None:
    (frame,) = FrameDecoder(CAP).feed(b"Content-Length: " + b"0" * 30 + b"3\n\nabc")
    assert frame.body == b"abc"


valid_frames = st.builds(
    lambda kind, extra, body: (
        (f"Content-Length: {len(body)}\n" if body else "") + f"Content-Type: {kind}\n"
        + "".join(f"X-{n}: {v}\n" for n, v in enumerate(extra))
    ).encode() + b"\n" + body,
    st.sampled_from(["text/event-plain", "command/reply", "api/response", "text/disconnect-notice"]),
    st.lists(header_values.map(lambda v: v.replace(": ", ":").strip()).filter(bool), max_size=4),
    st.binary(max_size=500),
)


@settings(max_examples=100, deadline=None)
@given(st.lists(valid_frames, min_size=1, max_size=5))
def test_valid_frames_decode_the_same_split_at_every_single_boundary(frames: list[bytes]) -> None:
    data = b"".join(frames)
    whole = [(f.headers, f.body) for f in decode(data, [])]
    assert len(whole) == len(frames)
    for cut in range(len(data) + 1):
        assert [(f.headers, f.body) for f in decode(data, [cut])] == whole


@settings(max_examples=100, deadline=None)
@given(st.lists(valid_frames, min_size=1, max_size=5), st.data())
def test_valid_frames_decode_the_same_in_any_chunking(frames: list[bytes], data: st.DataObject) -> None:
    wire = b"".join(frames)
    cuts = data.draw(st.lists(st.integers(min_value=0, max_value=len(wire)), max_size=len(wire)))
    assert [f.body for f in decode(wire, cuts)] == [f.body for f in decode(wire, [])]


@settings(max_examples=50, deadline=None)
@given(st.binary(min_size=1, max_size=2000), st.lists(valid_frames, min_size=1, max_size=3))
def test_after_garbage_a_fresh_decoder_reads_valid_frames(garbage: bytes, frames: list[bytes]) -> None:
    """What a reconnect gives: whatever the garbage did to the old decoder, the new one is clean."""
    decode_or_reject(garbage, [])
    assert len(decode(b"".join(frames), [])) == len(frames)


def _seconds_to_feed_byte_by_byte(data: bytes) -> float:
    decoder = FrameDecoder(CAP)
    started = time.perf_counter()
    for n in range(len(data)):
        decoder.feed(data[n : n + 1])
    return time.perf_counter() - started


def test_an_envelope_trickled_one_byte_at_a_time_costs_linear_time() -> None:
    """Found checking "bounded time per frame": each read searched the whole pending envelope again
    for its blank line (quadratic: ~2 s for one 64 KiB envelope fed byte by byte); now once."""
    envelope = b"Content-Type: text/event-plain\nX-Long: " + b"v" * (MAX_ENVELOPE_BYTES - 100)
    assert _seconds_to_feed_byte_by_byte(envelope) < 1.0  # about 0.1 s; 2 s before the fix


def test_a_blank_line_split_across_two_reads_still_ends_the_envelope() -> None:
    decoder = FrameDecoder(CAP)
    assert decoder.feed(b"Content-Type: command/reply\nReply-Text: +OK\n") == []
    (frame,) = decoder.feed(b"\nContent-Type: api")
    assert frame.headers["Reply-Text"] == "+OK"
    assert decoder.feed(b"/response\nContent-Length: 2\n\nok")[0].body == b"ok"


def test_frames_complete_before_broken_framing_in_the_same_read_ride_on_the_error() -> None:
    """Found by tests/test_fuzz_esl.py: feed raised and the complete frames before were dropped."""
    good = b"Content-Type: text/event-plain\nContent-Length: 3\n\nabc"
    with pytest.raises(FrameError) as caught:
        FrameDecoder(CAP).feed(good + good + b"Content-Length: -1\n\n")
    assert [f.body for f in caught.value.frames] == [b"abc", b"abc"]


@settings(max_examples=100, deadline=None)
@given(st.lists(valid_frames, min_size=1, max_size=4), st.data())
def test_a_stream_cut_anywhere_yields_the_whole_frames_before_the_cut_then_eof_says_so(
    frames: list[bytes], data: st.DataObject,
) -> None:
    wire = b"".join(frames)
    cut = data.draw(st.integers(min_value=0, max_value=len(wire)))
    whole = [(f.headers, f.body) for f in decode(wire, [])]
    decoder = FrameDecoder(CAP)
    got = [(f.headers, f.body) for f in decoder.feed(wire[:cut])]
    assert got == whole[: len(got)]
    ends = [len(b"".join(frames[: n + 1])) for n in range(len(frames))]
    if cut in (0, *ends):
        decoder.eof()  # cut between frames: a clean end
    else:
        with pytest.raises(FrameError, match="closed inside a frame"):
            decoder.eof()
