"""The bounded response reader against a corpus of raw answers, each replayed in several read sizes
(as gunicorn tests its parser), and against floods that never let a read block."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import pytest

from listener.webhooks.response import (
    BODY_LIMIT,
    FIELD_LIMIT,
    HEAD_LIMIT,
    ClosedBeforeAnswerError,
    DeadlineExceededError,
    Response,
    ResponseError,
    read_response,
)

OK = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"
BIG = BODY_LIMIT + 1


class Wire:
    """A socket that hands out ``data`` at most ``size`` bytes per recv, then EOF (or a reset)."""

    def __init__(self, data: bytes, size: int, *, then: str = "eof") -> None:
        self.data, self.size, self.then = memoryview(data), size, then
        self.sent = 0

    def recv(self, limit: int) -> bytes:
        piece = bytes(self.data[self.sent:self.sent + min(limit, self.size)])
        self.sent += len(piece)
        if not piece and self.then == "reset":
            raise ConnectionResetError
        return piece


class Flood:
    """A socket that always has bytes ready after ``prefix`` (``per_read`` at most): no read ever blocks."""

    def __init__(self, prefix: bytes = b"", per_read: int = 1 << 20) -> None:
        self.pending, self.per_read, self.sent = prefix, per_read, 0

    def recv(self, limit: int) -> bytes:
        piece = self.pending[:limit] or b"x" * min(limit, self.per_read)
        self.pending = self.pending[len(piece):]
        self.sent += len(piece)
        return piece


def read(data: bytes, size: int, deadline: float = float("inf")) -> Response:
    return read_response(Wire(data, size), deadline)


def chunked(*chunks: bytes, trailer: bytes = b"") -> bytes:
    body = b"".join(b"%x;ext=1\r\n%s\r\n" % (len(c), c) for c in chunks)
    return b"HTTP/1.1 200 OK\r\nTransfer-Encoding: Chunked\r\n\r\n" + body + b"0\r\n" + trailer + b"\r\n"


SIZES = [1, 3, 64, 1 << 20]
READABLE = {
    "content_length": (OK, Response(200, None, True)),
    "no_reason_phrase": (b"HTTP/1.1 204\r\n\r\n", Response(204, None, True)),
    "http_1_0_closes": (b"HTTP/1.0 200 OK\r\ncontent-length: 2\r\n\r\nok", Response(200, None, False)),
    "http_1_0_keep_alive": (b"HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\ncontent-length: 0\r\n\r\n",
                            Response(200, None, True)),
    "connection_close": (b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nok",
                         Response(200, None, False)),
    "chunked_with_extensions_and_trailers": (chunked(b"hello", b" world", trailer=b"x-sum: 1\r\n"),
                                             Response(200, None, True)),
    "gzip_then_chunked": (b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
                          Response(200, None, True)),
    "length_by_close": (b"HTTP/1.1 200 OK\r\n\r\nuntil the end", Response(200, None, False)),
    "coding_not_chunked_ends_with_close": (b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\n\r\nzz",
                                           Response(200, None, False)),
    "not_modified_has_no_body": (b"HTTP/1.1 304 Not Modified\r\ncontent-length: 9\r\n\r\n",
                                 Response(304, None, True)),
    "interim_answers_skipped": (b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 102 Processing\r\n\r\n" + OK,
                                Response(200, None, True)),
    "retry_after_the_first": (
        b"HTTP/1.1 429 Slow\r\nRetry-After:  7 \r\nretry-after: 9\r\ncontent-length: 0\r\n\r\n",
        Response(429, "7", True)),
    "repeated_equal_lengths": (b"HTTP/1.1 200 OK\r\ncontent-length: 2, 2\r\ncontent-length: 2\r\n\r\nok",
                               Response(200, None, True)),
    "a_hundred_fields": (
        b"HTTP/1.1 200 OK\r\n" + b"x-a: 1\r\n" * (FIELD_LIMIT - 1) + b"content-length: 0\r\n\r\n",
        Response(200, None, True)),
    # the head was well-formed: its status stands, the connection is dropped
    "body_over_the_limit": (b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % BIG + b"x" * BIG,
                            Response(200, None, False)),
    "chunked_over_the_limit": (chunked(b"x" * BIG), Response(200, None, False)),
    "a_chunk_size_too_big_to_read": (b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nfffffffff\r\n",
                                     Response(200, None, False)),
    "chunk_size_malformed": (b"HTTP/1.1 500 No\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n",
                             Response(500, None, False)),
    "chunk_longer_than_its_size": (
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n1\r\nxx\r\n0\r\n\r\n",
        Response(200, None, False)),
    "body_cut_short": (b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nok", Response(200, None, False)),
    "chunked_cut_short": (b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhel",
                          Response(200, None, False)),
}
UNREADABLE = {
    "nothing": b"",
    "cut_inside_the_head": b"HTTP/1.1 200 OK\r\ncontent-len",
    "http_2": b"HTTP/2 200\r\n\r\n",
    "not_http": b"SSH-2.0-OpenSSH_9.6\r\n\r\n",
    "status_not_three_digits": b"HTTP/1.1 20 OK\r\n\r\n",
    "a_line_without_a_colon": b"HTTP/1.1 200 OK\r\nnocolon\r\n\r\n",
    "space_before_the_colon": b"HTTP/1.1 200 OK\r\ncontent-length : 0\r\n\r\n",
    "a_folded_line": b"HTTP/1.1 200 OK\r\nx-a: 1\r\n  2\r\n\r\n",
    "lengths_that_differ": b"HTTP/1.1 200 OK\r\ncontent-length: 2, 3\r\n\r\nok",
    "a_negative_length": b"HTTP/1.1 200 OK\r\ncontent-length: -1\r\n\r\n",
    "a_length_not_ascii": "HTTP/1.1 200 OK\r\ncontent-length: \u00b2\r\n\r\n".encode("latin-1"),
    "length_and_chunked": b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ntransfer-encoding: chunked\r\n\r\n",
    "switching_protocols": b"HTTP/1.1 101 Switching Protocols\r\n\r\n",
    "too_many_fields": b"HTTP/1.1 200 OK\r\n" + b"x-a: 1\r\n" * (FIELD_LIMIT + 1) + b"\r\n",
    "a_head_over_64_kib": b"HTTP/1.1 200 OK\r\nx-a: " + b"a" * HEAD_LIMIT + b"\r\n\r\n",
}


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize(("raw", "expected"), READABLE.values(), ids=READABLE.keys())
def test_each_answer_reads_the_same_in_any_read_size(raw: bytes, expected: Response, size: int) -> None:
    assert read(raw, size) == expected


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("raw", UNREADABLE.values(), ids=UNREADABLE.keys())
def test_a_malformed_or_oversized_head_is_a_response_error_in_any_read_size(raw: bytes, size: int) -> None:
    with pytest.raises(ResponseError):
        read(raw, size)


def test_bytes_read_past_the_end_of_the_answer_make_its_connection_unusable() -> None:
    assert read(OK + b"HTTP/1.1 408 Timeout\r\n", 1 << 20) == Response(200, None, False)


@pytest.mark.parametrize("then", ["eof", "reset"])
def test_only_an_end_before_the_first_byte_is_closed_before_an_answer(then: str) -> None:
    with pytest.raises(ClosedBeforeAnswerError):
        read_response(Wire(b"", 1, then=then), float("inf"))
    with pytest.raises(ResponseError) as cut:
        read(b"HTTP/1.1 2", 1)
    assert not isinstance(cut.value, ClosedBeforeAnswerError)


@pytest.mark.parametrize(("prefix", "outcome"), [
    (b"HTTP/1.1 200 OK\r\nx-a: ", ResponseError),
    (b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n", Response(200, None, False)),
    (b"HTTP/1.1 200 OK\r\ncontent-length: 1073741824\r\n\r\n", Response(200, None, False)),
    (b"HTTP/1.1 200 OK\r\n\r\n", Response(200, None, False)),
], ids=["endless_head", "endless_chunk_line", "1_gib_length", "until_close"])
def test_a_flood_is_read_at_most_the_head_and_body_limits(prefix: bytes, outcome: object) -> None:
    wire = Flood(prefix)
    if outcome is ResponseError:
        with pytest.raises(ResponseError, match="over 65536"):
            read_response(wire, float("inf"))
    else:
        assert read_response(wire, float("inf")) == outcome
    assert wire.sent <= HEAD_LIMIT + BODY_LIMIT


def ticking(step: float) -> Iterator[float]:
    return itertools.count(0.0, step)


def test_the_deadline_holds_while_bytes_keep_coming_in_the_head() -> None:
    clock = ticking(1.0).__next__  # each read takes a second; none ever blocks
    wire = Flood(b"HTTP/1.1 200 OK\r\n", per_read=1)
    with pytest.raises(DeadlineExceededError):
        read_response(wire, 10.0, clock)


def test_the_deadline_in_the_body_leaves_the_status_standing_and_the_connection_unused() -> None:
    clock = ticking(1.0).__next__
    wire = Wire(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n" + b"x" * 100, 1)
    assert read_response(wire, 60.0, clock) == Response(200, None, False)
    assert wire.sent == 60  # a byte a second: the 60th read was the last


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize(("data", "keep", "expected"), [
    (OK, 0, b""),
    (OK, 64, b"ok"),
    (b"HTTP/1.1 500 Oops\r\ncontent-length: 11\r\n\r\nhello world", 5, b"hello"),
    (chunked(b"hello", b" world"), 8, b"hello wo"),
    (chunked(b"hello", b" world"), 64, b"hello world"),
])
def test_the_first_bytes_of_the_body_are_kept_only_when_asked(data: bytes, keep: int, expected: bytes,
                                                              size: int) -> None:
    response = read_response(Wire(data, size), float("inf"), keep=keep)
    assert response.body_start == expected
    assert response.reusable


def test_a_body_that_ends_with_the_connection_keeps_what_came_with_the_head() -> None:
    response = read_response(Wire(b"HTTP/1.1 200 OK\r\n\r\nunframed body", 1 << 20), float("inf"), keep=8)
    assert (response.body_start, response.reusable) == (b"unframed", False)
