"""One endpoint's delivery loop on virtual time: when it wakes, and how it rides out outbox faults.

The loop's clock and its way of waiting are injected (``VirtualTime``): a wait the loop asks for
passes at once in virtual time unless a request is in flight (then the loop really waits for the
request's answer, which wakes it). Requests go to real sockets on 127.0.0.1; the outbox is a real
SQLite file.
"""

from __future__ import annotations

import sqlite3
import time as wall_clock
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import gevent
import gevent.event
import pytest
from structlog.testing import capture_logs
from webhook_receiver import Receiver, refused_url

from listener.config.settings import WebhookConfig
from listener.config.webhooks import decode_secret
from listener.core.clock import SteadyClock
from listener.core.document import LEG_CLASSIFIED
from listener.core.errors import OutboxError
from listener.core.retry import RetrySchedule
from listener.core.signing import Delivered
from listener.outbox.store import PENDING, Outbox
from listener.outbox.writer import OutboxWriter, entry_for
from listener.webhooks.endpoint import Attempted, EndpointDelivery

KEY = decode_secret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw") or b""
START = 1_800_000_000.0
REAL_WAIT_S = 5.0
"""The longest a test waits in real time for a request in flight to be answered."""


class VirtualTime:
    """The loop's clock and its ``pause``: time passes only while the loop sleeps with nothing in flight.

    ``wakeups`` are the virtual times at which a sleep ended by its timeout (the loop woke by itself).
    After ``until`` (or too many wake-ups at one instant: a busy loop) the loop is told to stop.
    """

    def __init__(self, until: float) -> None:
        self.now = START
        self.until = START + until
        self.wakeups: list[float] = []
        self.endpoint: EndpointDelivery | None = None

    def __call__(self) -> float:
        return self.now

    def pause(self, event: gevent.event.Event, seconds: float) -> bool:
        assert self.endpoint is not None
        if event.is_set():
            return True
        if self.endpoint.in_flight:  # the answer wakes the loop; no virtual time passes meanwhile
            return bool(event.wait(REAL_WAIT_S))
        self.now += seconds
        self.wakeups.append(round(self.now - START, 3))
        spinning = len(self.wakeups) > 50 and self.wakeups[-50] == self.wakeups[-1]
        if self.now >= self.until or spinning:
            self.endpoint.stopping = True
        return False


class Recorder:
    """The loop's metrics: every attempt once its outcome is recorded."""

    def __init__(self) -> None:
        self.attempts: list[Attempted] = []

    def delivery_attempted(self, attempt: Attempted) -> None:
        self.attempts.append(attempt)


def hook(url: str, delays: tuple[float, ...] = (5.0, 300.0, 1800.0)) -> WebhookConfig:
    """An endpoint of the legs only: each bare document here is a one-leg call, whose call.completed
    would double the rows these tests count."""
    return WebhookConfig(name="crm", url=url, keys=(KEY,), timeout=2.0, connect_timeout=2.0,
                         retry=RetrySchedule(delays=delays, jitter=0.0), types=frozenset({LEG_CLASSIFIED}))


def doc(n: int) -> dict[str, Any]:
    return {"id": f"call-{n}", "status": "answered", "leg": "a", "direction": "inbound"}


@pytest.fixture
def writer(tmp_path: Path) -> Iterator[Callable[..., OutboxWriter]]:
    made: list[OutboxWriter] = []

    def make(config: WebhookConfig, clock: Callable[[], float], busy_timeout_s: float = 5.0) -> OutboxWriter:
        outbox = Outbox.open(tmp_path / "outbox.sqlite3", busy_timeout_s=busy_timeout_s)
        made.append(OutboxWriter(outbox, [config], clock=clock))
        return made[-1]

    yield make
    for w in made:
        w.close()


def loop(config: WebhookConfig, writer: Any, time: VirtualTime, *, max_sleep_s: float = 60.0,
         metrics: Recorder | None = None) -> EndpointDelivery:
    endpoint = EndpointDelivery(config, writer, clock=time, rng=lambda: 0.5, max_sleep_s=max_sleep_s,
                                counts=Counter(), metrics=metrics, pause=time.pause)
    time.endpoint = endpoint
    return endpoint


def run(endpoint: EndpointDelivery, timeout: float = 20.0) -> None:
    """Run the loop until it stops (``VirtualTime`` stops it), within ``timeout`` real seconds."""
    greenlet = gevent.spawn(endpoint.run)
    try:
        greenlet.join(timeout=timeout)
        assert greenlet.dead, "the loop did not stop in time"
    finally:
        greenlet.kill(block=True, timeout=1.0)
        endpoint.finish(1.0)


def test_a_down_receiver_with_rows_pending_wakes_the_loop_only_at_due_and_probe_times(writer: Any) -> None:
    time = VirtualTime(until=600.0)
    config = hook(refused_url())
    w = writer(config, time)
    w.put([doc(1), doc(2), doc(3)])
    endpoint = loop(config, w, time)
    run(endpoint)
    assert endpoint.crashed is None
    # rng 0.5: probes 0.75, 1.5, 3, 6, 12, 22.5 s apart; each row is retried 5 s, then 300 s after its attempt
    due_or_probe = [5.0, 6.5, 9.5, 305.0, 317.0, 339.5]
    safety_net = [69.5, 129.5, 189.5, 249.5, 399.5, 459.5, 519.5, 579.5, 639.5]  # 60 s without anything due
    assert time.wakeups == sorted(due_or_probe + safety_net)
    rows = w.call(w.outbox.list)
    assert [r.attempts for r in rows] == [3, 3, 3]
    assert all(r.state == PENDING for r in rows)


class FlakyWriter:
    """An ``OutboxWriter`` stand-in running each call at once on a real outbox; it fails the calls
    numbered in ``failing`` (1 is the first) with ``error``, and notes what the loop showed meanwhile."""

    def __init__(self, outbox: Outbox, failing: range, error: OutboxError) -> None:
        self.outbox = outbox
        self.failing = failing
        self.error = error
        self.calls = 0
        self.unavailable_since: list[float | None] = []
        self.endpoint: EndpointDelivery | None = None

    def call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        assert self.endpoint is not None
        self.unavailable_since.append(self.endpoint.outbox_unavailable_since)
        if self.calls in self.failing:
            raise self.error
        return fn(*args, **kwargs)


def flaky(tmp_path: Path, config: WebhookConfig, failing: range, code: str) -> FlakyWriter:
    outbox = Outbox.open(tmp_path / "outbox.sqlite3")
    outbox.put([entry_for(doc(n), [config]) for n in (1, 2, 3)], START)
    return FlakyWriter(outbox, failing, OutboxError("outbox settle failed: database is locked", code))


def test_a_busy_outbox_pauses_the_loop_with_backoff_and_loses_no_outcome(
        tmp_path: Path, receiver: Receiver) -> None:
    config = hook(receiver.url())
    w = flaky(tmp_path, config, range(2, 5), "SQLITE_BUSY")  # the claim works; the next 3 turns fail
    time, metrics = VirtualTime(until=120.0), Recorder()
    with capture_logs() as logs:
        endpoint = loop(config, w, time, metrics=metrics)
        w.endpoint = endpoint
        run(endpoint)
    assert endpoint.crashed is None
    assert w.unavailable_since[:5] == [None, None, START, START, START]  # shown while it lasts
    assert endpoint.outbox_unavailable_since is None
    assert sorted(r.webhook_id for r in receiver.received) == ["call-1", "call-2", "call-3"]  # each once
    assert [a.outcome for a in metrics.attempts] == [Delivered(200)] * 3  # recorded after it came back
    assert w.outbox.list() == ()
    events = [e for e in logs if e["event"].startswith("webhook.outbox_")]
    assert [e["event"] for e in events] == ["webhook.outbox_unavailable", "webhook.outbox_recovered"]
    assert events[0]["code"] == "SQLITE_BUSY"
    assert events[0]["retry_in_s"] == pytest.approx(0.375, abs=0.01)  # rng 0.5: 0.375, 0.75, 1.5 s
    assert events[1]["unavailable_for_s"] == pytest.approx(2.6)
    assert events[1]["failed_turns"] == 3


def test_a_permanent_outbox_fault_still_ends_the_loop(tmp_path: Path, receiver: Receiver) -> None:
    config = hook(receiver.url())
    w = flaky(tmp_path, config, range(2, 1000), "SQLITE_CORRUPT")
    time = VirtualTime(until=120.0)
    endpoint = loop(config, w, time)
    w.endpoint = endpoint
    run(endpoint)
    assert isinstance(endpoint.crashed, OutboxError)
    assert endpoint.crashed.code == "SQLITE_CORRUPT"
    assert w.calls <= 3  # the failed turn, and the last one of ``finish``: no retries


def test_a_write_lock_held_by_another_client_delays_the_settlement_and_loses_nothing(
        tmp_path: Path, writer: Any, receiver: Receiver) -> None:
    config = hook(receiver.url())
    w = writer(config, wall_clock.time, busy_timeout_s=0.05)
    w.put([doc(1), doc(2), doc(3)])
    other = sqlite3.connect(tmp_path / "outbox.sqlite3", isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # an operator's client holding the write lock
    waiting, recorded, metrics = gevent.event.Event(), gevent.event.Event(), Recorder()

    def pause(event: gevent.event.Event, seconds: float) -> bool:
        if endpoint.outbox_unavailable_since is not None:
            waiting.set()
        if len(metrics.attempts) == 3:
            recorded.set()
        return bool(event.wait(seconds))

    endpoint = EndpointDelivery(config, w, clock=SteadyClock.anchored(wall_clock.time, wall_clock.monotonic),
                                rng=lambda: 0.5, max_sleep_s=60.0, counts=Counter(), metrics=metrics,
                                pause=pause)
    greenlet = gevent.spawn(endpoint.run)
    try:
        assert waiting.wait(REAL_WAIT_S)
        assert sorted(receiver.get().webhook_id for _ in range(3)) == ["call-1", "call-2", "call-3"]
        assert metrics.attempts == []  # sent, not recorded yet
        other.execute("ROLLBACK")
        assert recorded.wait(REAL_WAIT_S)
        assert endpoint.outbox_unavailable_since is None
    finally:
        other.close()
        endpoint.stopping = True
        endpoint.wake()
        greenlet.join(timeout=REAL_WAIT_S)
        endpoint.finish(1.0)
    assert endpoint.crashed is None
    assert [a.outcome for a in metrics.attempts] == [Delivered(200)] * 3
    assert len(receiver.received) == 3  # none sent twice
    assert w.call(w.outbox.list) == ()


def test_stopped_while_the_outbox_is_busy_it_says_what_was_not_recorded_and_is_not_crashed(
        tmp_path: Path, receiver: Receiver) -> None:
    config = hook(receiver.url())
    w = flaky(tmp_path, config, range(2, 1000), "SQLITE_BUSY")
    time = VirtualTime(until=60.0)
    with capture_logs() as logs:
        endpoint = loop(config, w, time)
        w.endpoint = endpoint
        run(endpoint)  # stopped (after 60 s of retries) with the 2xx of all three unrecorded
    assert endpoint.crashed is None
    (unrecorded,) = [e for e in logs if e["event"] == "webhook.outcomes_unrecorded"]
    assert (unrecorded["outcomes"], unrecorded["code"]) == (3, "SQLITE_BUSY")
    rows = w.outbox.list()
    assert [(r.state, r.attempts) for r in rows] == [(PENDING, 0)] * 3  # sent again after a restart
