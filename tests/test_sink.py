"""The gevent edge against a real HTTP receiver and a real SQLite file; retry timing on a fake clock."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import gevent
import gevent.queue
import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError
from webhook_receiver import Hold, Receiver, Reply, Slow, refused_url

from listener.config.settings import OutboxConfig, WebhookConfig
from listener.config.webhooks import decode_secret
from listener.core.document import LEG_CLASSIFIED
from listener.core.errors import OutboxClosedError, OutboxError
from listener.core.retry import RetrySchedule
from listener.core.signing import Delivered, GiveUp, Retry
from listener.outbox.store import DEAD, PENDING
from listener.outbox.writer import OutboxWriter
from listener.service.metrics import Metrics
from listener.webhooks import endpoint as delivery
from listener.webhooks import sink as sink_module
from listener.webhooks.endpoint import Attempted
from listener.webhooks.sink import WebhookSink

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
KEY = decode_secret(SECRET) or b""


class FakeClock:
    def __init__(self) -> None:
        self.now = float(int(time.time()))

    def __call__(self) -> float:
        return self.now


def doc(n: int, **extra: Any) -> dict[str, Any]:
    return {"id": f"call-{n}", "status": "answered", "leg": "a", "direction": "inbound", **extra}


def endpoint(name: str, url: str, **kw: Any) -> WebhookConfig:
    kw.setdefault("retry", RetrySchedule(delays=(5.0, 300.0), jitter=0.0, retry_after_max=900.0))
    kw.setdefault("timeout", 2.0)
    kw.setdefault("keys", (KEY,))
    kw.setdefault("types", frozenset({LEG_CLASSIFIED}))  # each bare document is a one-leg call: legs only
    return WebhookConfig(name=name, url=url, **kw)


class Harness:
    def __init__(self, path: Path, webhooks: list[WebhookConfig]) -> None:
        self.clock = FakeClock()
        self.writer = OutboxWriter.open(OutboxConfig(path), webhooks, clock=self.clock)
        self.attempts: gevent.queue.Queue[Attempted] = gevent.queue.Queue()
        self.sink = WebhookSink(self.writer, webhooks, clock=self.clock, wall=self.clock, rng=lambda: 0.5,
                                max_sleep_s=5.0, metrics=self)

    def delivery_attempted(self, attempt: Attempted) -> None:
        self.attempts.put(attempt)

    def put(self, documents: list[dict[str, Any]], *, hand: bool = True) -> frozenset[str]:
        """As the pipeline does: commit, then hand the rows created to their endpoints (or, with ``hand``
        false, as before handing: wake the endpoints that got rows, which claim them)."""
        created = self.writer.put(documents)
        rows = getattr(created, "rows", ())
        if hand and rows:
            self.sink.hand(rows)
        else:
            self.sink.wake(created)
        return created

    def next(self, timeout: float = 5.0) -> Attempted:
        return self.attempts.get(timeout=timeout)

    def rows(self, **kw: Any) -> Any:
        return self.writer.call(self.writer.outbox.list, **kw)

    def advance(self, seconds: float) -> None:
        self.clock.now += seconds
        self.sink.wake()


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[Any]:
    made: list[Harness] = []

    def make(*webhooks: WebhookConfig) -> Harness:
        made.append(Harness(tmp_path / "outbox.sqlite3", list(webhooks)))
        return made[-1]

    yield make
    for h in made:
        h.sink.stop(1.0)
        h.writer.close()


def test_delivers_signed_documents_and_empties_the_outbox(harness: Any, receiver: Receiver) -> None:
    h = harness(endpoint("crm", receiver.url()))
    h.sink.start()
    h.put([doc(1), doc(2, caller="Zoë")])
    got = {}
    for _ in range(2):
        request = receiver.get()
        got[request.webhook_id] = Webhook(SECRET).verify(request.body, request.headers)
    assert {k: v["data"] for k, v in got.items()} == {"call-1": doc(1), "call-2": doc(2, caller="Zoë")}
    assert {v["type"] for v in got.values()} == {"leg.classified"}
    assert {h.next().outcome, h.next().outcome} == {Delivered(200)}
    assert h.rows() == ()
    assert h.sink.counts[("crm", "delivered", "ok")] == 2


def test_only_documents_matching_the_filters_are_stored(harness: Any, receiver: Receiver) -> None:
    h = harness(endpoint("answered", receiver.url(), statuses=frozenset({"answered"})),
                endpoint("outbound", receiver.url(), directions=frozenset({"outbound"})))
    assert h.put([doc(1), doc(2, status="busy")]) == {"answered"}
    assert [(r.endpoint, r.event_id) for r in h.rows()] == [("answered", "call-1")]


def test_retries_follow_the_schedule_and_retry_after_with_the_same_webhook_id(
        harness: Any, receiver: Receiver) -> None:
    receiver.script("/hook", Reply(503), Reply(429, {"Retry-After": "600"}), Reply(200))
    h = harness(endpoint("crm", receiver.url()))
    h.sink.start()
    start = h.clock.now
    h.put([doc(1)])
    assert h.next().outcome == Retry("server_error", 503)
    (row,) = h.rows()
    assert (row.attempts, row.next_at, row.last_error) == (1, start + 5.0, "server_error (503)")

    h.advance(4.0)
    with pytest.raises(gevent.queue.Empty):
        h.next(timeout=0.2)  # not yet due: the loop looked (woken) and found nothing
    h.advance(1.0)
    assert h.next().outcome == Retry("throttled", 429, 600.0)
    (row,) = h.rows()
    assert row.next_at == start + 5.0 + 600.0  # Retry-After 600 beats the scheduled 300

    h.advance(600.0)
    attempt = h.next()
    assert (attempt.attempt, attempt.outcome) == (3, Delivered(200))
    assert h.rows() == ()
    requests = receiver.received
    assert [r.webhook_id for r in requests] == ["call-1"] * 3
    for r in requests:  # each attempt is signed anew over its own timestamp
        when = datetime.fromtimestamp(int(r.headers["webhook-timestamp"]), UTC)
        assert Webhook(SECRET).sign("call-1", when, r.body.decode()) == r.headers["webhook-signature"]
    assert [int(r.headers["webhook-timestamp"]) for r in requests] == [start, start + 5, start + 605]


def test_schedule_exhausted_keeps_the_message_as_dead_and_retry_revives_it(
        harness: Any, receiver: Receiver) -> None:
    receiver.script("/hook", Reply(500), Reply(500))
    h = harness(endpoint("crm", receiver.url(), retry=RetrySchedule(delays=(5.0,), jitter=0.0)))
    h.sink.start()
    h.put([doc(1)])
    assert h.next().outcome == Retry("server_error", 500)
    h.advance(5.0)
    assert h.next().outcome == Retry("server_error", 500)
    (row,) = h.rows()
    assert (row.state, row.attempts) == (DEAD, 2)
    assert row.last_error == "schedule_exhausted after server_error (500)"
    assert h.sink.counts[("crm", "gave_up", "schedule_exhausted")] == 1

    assert h.writer.call(h.writer.outbox.retry_dead, h.clock.now) == 1
    h.sink.wake()
    assert h.next().outcome == Delivered(200)
    assert h.rows() == ()


def test_410_gone_stops_delivery_of_that_message_to_that_endpoint_only(
        harness: Any, receiver: Receiver) -> None:
    receiver.script("/gone", Reply(410))
    h = harness(endpoint("gone", receiver.url("/gone")), endpoint("ok", receiver.url("/ok")))
    h.sink.start()
    h.put([doc(1)])
    outcomes = {(a.endpoint, a.outcome) for a in (h.next(), h.next())}
    assert outcomes == {("gone", GiveUp("gone", 410)), ("ok", Delivered(200))}
    (row,) = h.rows()
    assert (row.endpoint, row.state, row.attempts, row.last_error) == ("gone", DEAD, 1, "gone (410)")


def test_a_response_slower_than_the_timeout_is_a_read_timeout(harness: Any, receiver: Receiver) -> None:
    receiver.script("/hook", Slow(3.0))
    h = harness(endpoint("crm", receiver.url(), timeout=0.3))
    h.sink.start()
    h.put([doc(1)])
    attempt = h.next()
    assert attempt.outcome == Retry("read_timeout")
    assert 0.3 <= attempt.latency_s < 1.5
    h.advance(5.0)
    assert h.next().outcome == Delivered(200)  # a fresh connection, not the half-read one


def test_connection_refused_is_told_apart(harness: Any) -> None:
    h = harness(endpoint("down", refused_url()))
    h.sink.start()
    h.put([doc(1)])
    assert h.next().outcome == Retry("connection_refused")
    assert h.sink.counts[("down", "failed", "connection_refused")] == 1
    (row,) = h.rows()
    assert (row.state, row.last_error) == (PENDING, "connection_refused")


def test_a_dead_endpoint_does_not_delay_a_healthy_one(harness: Any, receiver: Receiver) -> None:
    receiver.script("/dead", *[Hold()] * 2)
    h = harness(endpoint("dead", receiver.url("/dead"), timeout=20.0, max_concurrency=2),
                endpoint("healthy", receiver.url("/ok")))
    h.sink.start()
    started = time.monotonic()
    for n in range(10):
        h.put([doc(n)])
    delivered = [h.next() for _ in range(10)]
    assert {a.endpoint for a in delivered} == {"healthy"}
    assert time.monotonic() - started < 2.0
    assert sum(1 for r in receiver.received if r.path == "/dead") == 2  # bounded concurrency
    receiver.release()


def test_concurrent_puts_share_commits(harness: Any, receiver: Receiver) -> None:
    h = harness(endpoint("crm", receiver.url()))
    commits = []
    take = h.writer.outbox.take

    def counting_take(legs: Any, entries: Any, now: float, calls: Any = None) -> Any:
        commits.append(len(entries))
        return take(legs, entries, now, calls)

    h.writer.outbox.take = counting_take
    greenlets = [gevent.spawn(h.writer.put, [doc(n)]) for n in range(50)]
    gevent.joinall(greenlets, timeout=5, raise_error=True)
    assert [g.value for g in greenlets] == [frozenset({"crm"})] * 50
    assert sum(commits) == 50
    assert len(commits) < 50


def test_an_outbox_failure_that_cannot_clear_stops_ingestion_loudly(harness: Any, receiver: Receiver) -> None:
    h = harness(endpoint("crm", receiver.url()))
    h.sink.start()

    def corrupt(*_: Any) -> Any:
        raise OutboxError("outbox put failed: database disk image is malformed", "SQLITE_CORRUPT")

    h.writer.outbox.take = corrupt
    with pytest.raises(OutboxError) as caught:
        h.put([doc(1)])
    assert caught.value.code == "SQLITE_CORRUPT"
    assert not caught.value.transient
    assert h.writer.failure is caught.value
    assert not h.writer.ready
    assert not h.sink.ready
    assert not h.sink.healthy
    with pytest.raises(OutboxError):
        h.put([doc(2)])


def test_stop_lets_in_flight_requests_finish_within_the_deadline(harness: Any, receiver: Receiver) -> None:
    receiver.script("/hook", Slow(0.3))
    h = harness(endpoint("crm", receiver.url()))
    h.sink.start()
    h.put([doc(1)])
    receiver.get()
    assert h.sink.stop(deadline_s=5.0) is True
    assert h.rows() == ()


def test_stop_past_the_deadline_keeps_the_message_pending(harness: Any, receiver: Receiver) -> None:
    receiver.script("/hook", Hold())
    h = harness(endpoint("crm", receiver.url(), timeout=20.0))
    h.sink.start()
    h.put([doc(1)])
    receiver.get()
    assert h.sink.stop(deadline_s=0.2) is False
    (row,) = h.rows()
    assert (row.state, row.attempts) == (PENDING, 0)
    h.writer.close()
    with pytest.raises(OutboxClosedError):
        h.put([doc(2)])


def test_reconfigure_starts_new_endpoints_retires_changed_ones_and_keeps_removed_rows(
        harness: Any, receiver: Receiver) -> None:
    old_url, new_url = receiver.url("/old"), receiver.url("/new")
    h = harness(endpoint("crm", old_url), endpoint("billing", refused_url()))
    h.sink.start()
    h.put([doc(1)])
    assert receiver.get().path == "/old"
    h.sink.reconfigure([endpoint("crm", new_url), endpoint("analytics", receiver.url("/analytics"))])
    assert set(h.sink.endpoints) == {"crm", "analytics"}
    assert h.sink.endpoints["crm"].config.url == new_url
    h.put([doc(2)])
    paths = {receiver.get().path, receiver.get().path}
    assert paths == {"/new", "/analytics"}
    # the removed endpoint's row is kept (not lost), and new documents are no longer routed to it
    assert [r.event_id for r in h.rows() if r.endpoint == "billing"] == ["call-1"]


def test_a_reload_that_adds_a_secret_signs_every_later_attempt_with_both_a_retry_included(
        harness: Any, receiver: Receiver) -> None:
    new_secret = "whsec_AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="
    receiver.script("/hook", Reply(500))
    h = harness(endpoint("crm", receiver.url()))
    h.sink.start()
    h.put([doc(1)])
    first = receiver.get()
    assert h.next().outcome == Retry("server_error", 500)
    with pytest.raises(WebhookVerificationError):
        Webhook(new_secret).verify(first.body, first.headers)
    h.sink.reconfigure([endpoint("crm", receiver.url(), keys=(KEY, decode_secret(new_secret)))])
    h.advance(5.0)
    retry = receiver.get()
    assert retry.webhook_id == first.webhook_id
    for secret in (SECRET, new_secret):
        assert Webhook(secret).verify(retry.body, retry.headers)["data"] == doc(1)


def test_an_unreachable_endpoint_is_probed_one_message_at_a_time_the_rest_stay_pending(harness: Any) -> None:
    h = harness(endpoint("down", refused_url(), retry=RetrySchedule(delays=(0.0,) * 5, jitter=0.0)))
    h.sink.start()
    h.put([doc(1)])
    assert h.next().outcome == Retry("connection_refused")  # the circuit opens
    h.put([doc(n) for n in range(2, 12)])
    with pytest.raises(gevent.queue.Empty):
        h.next(timeout=0.3)  # due, but not attempted while the circuit is open
    h.advance(1.0)  # the probe's time has come: exactly one message is tried
    assert h.next().outcome == Retry("connection_refused")
    with pytest.raises(gevent.queue.Empty):
        h.next(timeout=0.3)
    rows = h.rows()
    assert len(rows) == 11
    assert sum(r.attempts for r in rows) == 2
    assert all(r.state == PENDING for r in rows)



def test_the_circuit_open_gauge_is_one_while_an_endpoint_refuses_and_lists_every_endpoint(
        harness: Any, receiver: Receiver) -> None:
    h = harness(endpoint("crm", receiver.url()),
                endpoint("bi", refused_url(), statuses=frozenset({"busy"})))
    metrics = Metrics()
    metrics.watch_circuits(lambda: h.sink.endpoints)

    def circuit_open() -> dict[str, float]:
        return {e: metrics.registry.get_sample_value("hangup_listener_webhook_circuit_open", {"endpoint": e})
                for e in ("crm", "bi")}

    h.sink.start()
    receiver.refuse()
    h.put([doc(1)])  # answered: "bi" (busy legs only) gets nothing, and is listed all the same
    assert h.next().outcome == Retry("connection_refused")
    assert circuit_open() == {"crm": 1.0, "bi": 0.0}
    receiver.listen_again()
    h.advance(5.0)  # the row's retry, sent as the probe
    assert h.next().outcome == Delivered(200)
    assert circuit_open() == {"crm": 0.0, "bi": 0.0}


def test_with_more_rows_than_an_endpoint_holds_ready_each_row_is_sent_once(
        harness: Any, receiver: Receiver, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(delivery, "PREFETCH", 3)
    h = harness(endpoint("crm", receiver.url(), max_concurrency=1))
    h.sink.start()
    for n in range(0, 60, 6):
        h.put([doc(n + i) for i in range(6)])  # more than the 3 rows held ready: claimed turn by turn
    for _ in range(60):
        h.next()
    assert sorted(receiver.get().webhook_id for _ in range(60)) == sorted(f"call-{n}" for n in range(60))
    h.sink.stop(1.0)
    assert len(receiver.received) == 60  # nothing sent twice
    assert h.rows() == ()


class SteppingTime:
    """The ``time`` module as the sink sees it: a wall clock that steps when told, a monotonic one."""

    def __init__(self) -> None:
        self.wall = float(int(time.time()))
        self.mono = 1000.0

    def time(self) -> float:
        return self.wall

    def monotonic(self) -> float:
        return self.mono

    def advance(self, seconds: float) -> None:
        self.wall += seconds
        self.mono += seconds


def test_a_wall_clock_step_back_stalls_neither_the_retry_nor_the_probe(
        tmp_path: Path, receiver: Receiver, monkeypatch: pytest.MonkeyPatch) -> None:
    clocks = SteppingTime()
    monkeypatch.setattr(sink_module, "time", clocks)
    hook = endpoint("crm", receiver.url())
    writer = OutboxWriter.open(OutboxConfig(tmp_path / "outbox.sqlite3"), [hook], clock=clocks.time)
    attempts: gevent.queue.Queue[Attempted] = gevent.queue.Queue()
    sink = WebhookSink(writer, [hook], rng=lambda: 0.5, metrics=Recording(attempts))  # the default clock
    try:
        sink.start()
        receiver.refuse()
        sink.wake(writer.put([doc(1)]))
        assert attempts.get(timeout=5.0).outcome == Retry("connection_refused")  # circuit open, retry in 5 s
        clocks.wall -= 3600.0  # NTP steps the wall clock back an hour
        receiver.listen_again()
        clocks.advance(5.0)
        sink.wake()
        assert attempts.get(timeout=2.0).outcome == Delivered(200)  # 5 s later, not an hour and 5 s
        (request,) = receiver.received
        assert int(request.headers["webhook-timestamp"]) == int(clocks.wall)  # signed with the wall clock
    finally:
        sink.stop(1.0)
        writer.close()


class Recording:
    def __init__(self, attempts: gevent.queue.Queue[Attempted]) -> None:
        self.attempts = attempts

    def delivery_attempted(self, attempt: Attempted) -> None:
        self.attempts.put(attempt)


class DueSpy:
    """``Outbox.due`` as the loop calls it, recording the ids of the rows each claim returned."""

    def __init__(self, h: Harness) -> None:
        self.due = h.writer.outbox.due
        self.claimed: list[str] = []
        h.writer.outbox.due = self  # type: ignore[method-assign]

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        rows = self.due(*args, **kwargs)
        self.claimed += [row.event_id for row in rows]
        return rows


def test_rows_handed_by_their_commit_are_sent_without_an_outbox_turn_to_claim_them(
        harness: Any, receiver: Receiver) -> None:
    h = harness(endpoint("crm", receiver.url()))
    h.sink.start()
    h.writer.call(lambda: None)  # the loop's first turn (it finds nothing to claim) is behind us
    spy = DueSpy(h)
    created = h.put([doc(1), doc(2)])
    assert {row.event_id for row in created.rows} == {"call-1", "call-2"}
    assert {receiver.get().webhook_id, receiver.get().webhook_id} == {"call-1", "call-2"}
    assert {h.next().outcome, h.next().outcome} == {Delivered(200)}
    assert spy.claimed == []  # sent as handed: no claim returned them
    h.sink.stop(1.0)
    assert h.rows() == ()  # the outcomes were recorded by the loop's next turn
    assert len(receiver.received) == 2


def test_a_row_handed_while_a_turn_claims_it_too_is_sent_once(harness: Any, receiver: Receiver) -> None:
    """The commit ran before the claim of a turn in flight: the claim returns the rows the commit hands
    too; whichever comes first holds them, the other skips them."""
    h = harness(endpoint("crm", receiver.url()))
    loop = h.sink.endpoints["crm"]
    for round_ in range(20):
        documents = [doc(100 * round_ + i) for i in range(3)]
        created = h.writer.put(documents)
        turn = gevent.spawn(loop._turn, claim=True)  # a turn whose claim will find the rows pending
        if round_ % 2:
            gevent.sleep(0)  # its claim is on the outbox thread now
        h.sink.hand(created.rows)
        turn.join()
        for _ in documents:
            receiver.get()
    h.sink.stop(1.0)
    assert h.rows() == ()
    sent = [r.webhook_id for r in receiver.received]
    assert sorted(sent) == sorted(set(sent))
    assert len(sent) == 60


def test_rows_handed_to_an_endpoint_whose_circuit_is_open_wait_for_its_probe(harness: Any) -> None:
    h = harness(endpoint("down", refused_url()))
    h.sink.start()
    h.put([doc(1)])
    assert h.next().outcome == Retry("connection_refused")  # the circuit opens
    loop = h.sink.endpoints["down"]
    assert loop.circuit.open
    created = h.writer.put([doc(2), doc(3)])
    assert loop.offer(created.rows) is False  # not taken: the probe decides when they go
    assert sorted(r.event_id for r in h.rows(state=PENDING)) == ["call-1", "call-2", "call-3"]
