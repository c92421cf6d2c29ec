"""The webhook transport against receivers whose answers never end or end too late: every read is
bounded in bytes and in time, the status already read stands, and such a connection is never reused."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from hostile_server import (
    HostileServer,
    endless_chunked,
    endless_head,
    huge_length,
    wait,
)

from listener.core.signing import Delivered, Retry
from listener.webhooks.transport import Transport
from tests.test_transport import config, send

MIB = 1024 * 1024
FLOODED = 16 * MIB
"""More than any client reading 64 KiB and closing can be sent before the server sees it gone
(a few MiB of socket buffers on loopback), far less than the 64 MiB a reader of everything gets."""


@pytest.fixture
def served(request: pytest.FixtureRequest) -> Iterator[HostileServer]:
    server = HostileServer(*request.param)
    yield server
    server.close()


def body_trickle() -> Iterator[bytes]:
    """The whole head at once, then a 100-byte body a byte at a time."""
    yield b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n"
    yield from (b"x" for _ in range(100))


def check_dropped_and_not_reused(server: HostileServer, transport: Transport) -> None:
    """The client closed the connection after reading little of it, and the next request opened another."""
    dropped = wait(server.dropped)
    assert dropped.connection == 0
    assert dropped.written < FLOODED
    assert send(transport, 2) == Delivered(200)
    assert [wait(server.requests)[0], wait(server.requests)[0]] == [0, 1]
    assert server.accepted == 2


@pytest.mark.parametrize(("served", "outcome"), [
    ((endless_chunked,), Delivered(200)),
    ((huge_length(),), Delivered(200)),
    ((endless_head,), Retry("protocol_error")),
], indirect=["served"], ids=["endless_chunked_body", "1_gib_content_length", "endless_header"])
def test_a_flood_is_read_at_most_64_kib_then_dropped_the_status_read_stands(
    served: HostileServer, outcome: object
) -> None:
    t = Transport(config(served.url(), timeout=5.0, connect_timeout=5.0))
    started = time.monotonic()
    assert send(t, 1) == outcome  # a 200 with a body too big is delivered: never sent again
    assert time.monotonic() - started < 3.0  # ended by the read limit (in ms), not the 10 s deadline
    check_dropped_and_not_reused(served, t)


@pytest.mark.parametrize("served", [(body_trickle,)], indirect=True)
def test_a_body_trickled_past_the_deadline_is_cut_off_at_the_deadline_its_status_stands(
    served: HostileServer,
) -> None:
    served.pace_s = 0.1  # a byte per 100 ms: the body alone would take 10 s
    t = Transport(config(served.url(), timeout=0.5, connect_timeout=0.5))  # deadline 1 s
    started = time.monotonic()
    assert send(t, 1) == Delivered(200)
    assert 0.9 < time.monotonic() - started < 2.0
    check_dropped_and_not_reused(served, t)
