"""``DeliveryWorker`` and its child, the real ``python -m listener deliver``: a real outbox, a real receiver.

The child's own log lines go to the test's stdout; the parent's (``webhook.worker_exited``...) are
read here from a queue. Some tests run ``tests/echo_deliverer.py`` instead of the real child, to see
exactly which frames the parent sends and to script the child's reports.
"""

from __future__ import annotations

import signal
import sys
import time
from collections.abc import Iterator, MutableMapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import gevent
import gevent.queue
import pytest
import structlog
from standardwebhooks.webhooks import Webhook
from webhook_receiver import Hold, Receiver, Slow, refused_url

from listener import worker as worker_module
from listener.outbox import PENDING, Delivery
from listener.retry import RetrySchedule
from listener.sink import OutboxWriter
from listener.webhook_config import OutboxConfig, WebhookConfig, decode_secret
from listener.worker import DeliveryWorker
from listener.workerwire import Report

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
KEY = decode_secret(SECRET) or b""
ECHO = Path(__file__).with_name("echo_deliverer.py")
Attempt = tuple[str, str, float]
LogLines = gevent.queue.Queue[MutableMapping[str, Any]]


def doc(n: int, **extra: Any) -> dict[str, Any]:
    return {"id": f"call-{n}", "status": "answered", "leg": "a", "direction": "inbound", **extra}


def endpoint(name: str, url: str, **kw: Any) -> WebhookConfig:
    kw.setdefault("retry", RetrySchedule(delays=(0.2,) * 20, jitter=0.0))
    return WebhookConfig(name=name, url=url, key=KEY, **kw)


@contextmanager
def log_lines() -> Iterator[LogLines]:
    """This process's structlog lines on a queue to wait on (swapped in as ``capture_logs`` does)."""
    lines: LogLines = gevent.queue.Queue()

    def keep(_: Any, method_name: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
        event_dict["log_level"] = method_name
        lines.put(event_dict)
        raise structlog.DropEvent

    processors = structlog.get_config()["processors"]  # the same list instance: bound loggers hold it
    old = processors.copy()
    processors[:] = [keep]
    structlog.configure(processors=processors)
    try:
        yield lines
    finally:
        processors[:] = old
        structlog.configure(processors=processors)


def next_line(lines: LogLines, event: str, timeout: float = 10.0) -> MutableMapping[str, Any]:
    """The next line logged as ``event`` (others are skipped)."""
    with gevent.Timeout(timeout, AssertionError(f"no {event} within {timeout}s")):
        while True:
            line = lines.get()
            if line["event"] == event:
                return line


class Rig:
    """A writer on the outbox file, the worker around it, and the attempts its observers saw."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.attempts: gevent.queue.Queue[Attempt] = gevent.queue.Queue()
        self.writer: OutboxWriter | None = None
        self.worker: DeliveryWorker | None = None

    def make(self, *webhooks: WebhookConfig, outbox: OutboxConfig | None = None,
             **kw: Any) -> DeliveryWorker:
        self.writer = OutboxWriter.open(OutboxConfig(self.path), webhooks)
        self.worker = DeliveryWorker(self.writer, webhooks, outbox or OutboxConfig(self.path), "info", **kw)
        self.worker.observers.append(lambda *attempt: self.attempts.put(attempt))
        return self.worker

    def start(self, *webhooks: WebhookConfig, **kw: Any) -> DeliveryWorker:
        worker = self.make(*webhooks, **kw)
        worker.start()
        return worker

    def put(self, documents: Sequence[dict[str, Any]]) -> int:
        assert self.writer is not None
        return self.writer.put(documents)

    def delivered(self, count: int, timeout: float = 15.0) -> list[Attempt]:
        """Attempts as observed until ``count`` of them were deliveries."""
        seen: list[Attempt] = []

        def done() -> bool:
            return sum(outcome == "delivered" for _, outcome, _ in seen) >= count

        with gevent.Timeout(timeout, False):
            while not done():
                seen.append(self.attempts.get())
        assert done(), f"not {count} deliveries within {timeout}s, saw {seen}"
        return seen

    def rows(self) -> tuple[Delivery, ...]:
        assert self.writer is not None
        rows: tuple[Delivery, ...] = self.writer.call(self.writer.outbox.list)
        return rows

    def close(self) -> None:
        if self.worker is not None:
            self.worker.stop(2.0)
        if self.writer is not None:
            self.writer.close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    made = Rig(tmp_path / "outbox.sqlite3")
    yield made
    made.close()


def test_documents_put_through_the_writer_arrive_signed_once_and_leave_the_outbox(
        rig: Rig, receiver: Receiver) -> None:
    worker = rig.start(endpoint("crm", receiver.url()))
    rig.put([doc(n) for n in range(10)])
    rig.put([doc(n, caller="Zoë") for n in range(10, 20)])
    attempts = rig.delivered(20)
    assert len(attempts) == 20
    assert all(name == "crm" and outcome == "delivered" and 0 < latency < 10
               for name, outcome, latency in attempts)
    got: dict[str, list[dict[str, Any]]] = {}
    for request in receiver.received:
        got.setdefault(request.webhook_id, []).append(Webhook(SECRET).verify(request.body, request.headers))
    expected = {f"call-{n}": [doc(n)] for n in range(10)} | {
        f"call-{n}": [doc(n, caller="Zoë")] for n in range(10, 20)}
    assert got == expected
    assert rig.rows() == ()
    assert (worker.started_count, worker.healthy, worker.crashed) == (1, True, ())


def test_a_child_killed_mid_request_is_restarted_and_delivers_what_was_pending(
        rig: Rig, receiver: Receiver) -> None:
    receiver.script("/hook", Hold())
    with log_lines() as lines:
        worker = rig.start(endpoint("crm", receiver.url(), max_concurrency=1),
                           backoff_initial_s=0.1, backoff_cap_s=0.2)
        rig.put([doc(n) for n in range(5)])
        held = receiver.get(timeout=10)  # one request in flight, four rows claimed behind it
        first = worker._proc
        first.send_signal(signal.SIGKILL)
        exited = next_line(lines, "webhook.worker_exited")
        attempts = rig.delivered(5)
    assert exited["code"] == -signal.SIGKILL
    assert worker.started_count == 2
    assert worker._proc is not first
    assert [outcome for _, outcome, _ in attempts] == ["delivered"] * 5
    ids = [request.webhook_id for request in receiver.received]
    assert sorted(set(ids)) == [f"call-{n}" for n in range(5)]  # nothing lost
    assert ids.count(held.webhook_id) == 2  # sent again, under the same webhook-id (at least once)
    assert rig.rows() == ()


def test_reconfigure_sends_documents_put_afterwards_to_the_new_url(rig: Rig, receiver: Receiver) -> None:
    worker = rig.start(endpoint("crm", receiver.url("/old")))
    rig.put([doc(1)])
    assert receiver.get(timeout=10).path == "/old"
    rig.delivered(1)
    worker.reconfigure([endpoint("crm", receiver.url("/new"))])
    assert worker.wait_applied(10)  # reloads are applied by the child asynchronously
    rig.put([doc(2)])
    request = receiver.get(timeout=10)
    assert (request.path, request.webhook_id) == ("/new", "call-2")
    rig.delivered(1)
    assert [r.path for r in receiver.received] == ["/old", "/new"]
    assert (worker.endpoints, worker.started_count) == (("crm",), 1)  # a reload restarts no process
    assert rig.rows() == ()


def test_a_stop_sent_while_a_reload_waits_for_a_retired_endpoint_is_obeyed_at_once(
        rig: Rig, receiver: Receiver) -> None:
    receiver.script("/hook", Hold())  # the retired endpoint's request is never answered
    worker = rig.start(endpoint("crm", receiver.url()))
    rig.put([doc(1)])
    receiver.get(timeout=10)
    worker.reconfigure([endpoint("billing", refused_url())])  # crm retires: it may wait 10 s for that request
    started = time.monotonic()
    assert worker.stop(1.0) is True  # read and obeyed at once, not after the reload
    assert time.monotonic() - started < 8
    assert [row.event_id for row in rig.rows()] == ["call-1"]  # unanswered: still pending


def test_reconfigure_routes_documents_by_the_new_filters_at_once(rig: Rig, receiver: Receiver) -> None:
    worker = rig.start(endpoint("crm", receiver.url()))
    worker.reconfigure([endpoint("crm", receiver.url(), statuses=frozenset({"busy"}))])
    assert rig.put([doc(1)]) == 0
    assert rig.put([doc(2, status="busy")]) == 1
    assert receiver.get(timeout=10).webhook_id == "call-2"
    rig.delivered(1)
    assert [r.webhook_id for r in receiver.received] == ["call-2"]


def test_stop_lets_a_request_in_flight_finish_within_the_deadline(rig: Rig, receiver: Receiver) -> None:
    receiver.script("/hook", Slow(0.5))
    worker = rig.start(endpoint("crm", receiver.url()))
    rig.put([doc(1)])
    receiver.get(timeout=10)
    child = worker._proc
    started = time.monotonic()
    assert worker.stop(5.0) is True
    assert time.monotonic() - started < 5.0
    assert child.returncode == 0
    assert rig.rows() == ()  # answered 200 within the deadline: acknowledged


def test_stop_with_a_request_never_answered_leaves_its_row_pending_and_returns_after_the_deadline(
        rig: Rig, receiver: Receiver) -> None:
    receiver.script("/hook", Hold())
    worker = rig.start(endpoint("crm", receiver.url()))
    rig.put([doc(1)])
    receiver.get(timeout=10)
    child = worker._proc
    started = time.monotonic()
    stopped = worker.stop(1.0)
    elapsed = time.monotonic() - started
    assert 0.9 < elapsed < 1.0 + 2.0 + 0.5
    (row,) = rig.rows()
    assert (row.event_id, row.state, row.attempts) == ("call-1", PENDING, 0)
    assert (stopped, child.returncode) == (True, 0)  # the child gave the request up in time and exited


def test_stop_sent_while_the_child_is_still_starting_is_obeyed(rig: Rig) -> None:
    worker = rig.start(endpoint("crm", refused_url()))
    assert worker.running.wait(timeout=10)  # the settings frame is written; the child is still importing
    started = time.monotonic()
    assert worker.stop(2.0) is True
    assert time.monotonic() - started < 2.0 + 2.0
    assert worker._proc.returncode == 0


def test_a_reload_sent_while_the_child_is_still_starting_is_applied(rig: Rig, receiver: Receiver) -> None:
    crm, audit = endpoint("crm", receiver.url("/crm")), endpoint("audit", receiver.url("/audit"))
    worker = rig.make(crm)
    assert rig.writer is not None
    rig.writer.set_webhooks([crm, audit])
    rig.put([doc(1)])  # a row for each endpoint, before any child: no wake will follow
    worker.start()
    assert worker.running.wait(timeout=10)
    worker.reconfigure([crm, audit])  # reaches the child in the same read as its first settings
    assert worker.wait_applied(10)
    rig.delivered(2)
    assert sorted(r.path for r in receiver.received) == ["/audit", "/crm"]


def test_the_child_exits_by_itself_at_the_end_of_its_stdin(rig: Rig, receiver: Receiver) -> None:
    with log_lines() as lines:
        worker = rig.start(endpoint("crm", receiver.url()), backoff_initial_s=0.1, backoff_cap_s=0.2)
        rig.put([doc(1)])
        rig.delivered(1)  # the child is up
        child = worker._proc
        child.stdin.close()  # as if the daemon were gone
        assert child.wait(timeout=15) == 0
        assert next_line(lines, "webhook.worker_exited")["code"] == 0


def test_sigterm_does_not_stop_the_child_its_daemon_does(rig: Rig, receiver: Receiver) -> None:
    """systemd signals every process of the unit; the daemon, still draining, stops the child after."""
    worker = rig.start(endpoint("crm", receiver.url()))
    rig.put([doc(1)])
    rig.delivered(1)  # the child is up
    child = worker._proc
    child.send_signal(signal.SIGTERM)
    rig.put([doc(2)])
    rig.delivered(1)
    assert worker._proc is child
    assert child.poll() is None
    assert worker.started_count == 1
    assert worker.stop(2.0)  # the stop frame: exit 0
    assert child.returncode == 0


def test_a_child_that_cannot_open_the_outbox_exits_74_and_is_restarted_with_backoff(
        rig: Rig, tmp_path: Path) -> None:
    with log_lines() as lines:
        worker = rig.start(endpoint("crm", refused_url()), outbox=OutboxConfig(tmp_path),  # a directory
                           backoff_initial_s=0.1, backoff_cap_s=0.4)
        exits = [next_line(lines, "webhook.worker_exited", timeout=15) for _ in range(3)]
        assert [e["code"] for e in exits] == [74] * 3
        assert worker.started_count >= 3
        delays = [e["restart_in_s"] for e in exits]  # ceilings 0.1, 0.2, 0.4 (half of each is jitter)
        assert delays[0] <= 0.1
        assert 0.2 <= delays[2] <= 0.4
        assert (worker.healthy, worker.crashed) == (True, ())  # a restart is not a reported failure


def test_a_report_of_an_unhealthy_child_makes_the_worker_unhealthy(rig: Rig) -> None:
    url = refused_url()
    worker = rig.start(endpoint("crm", url), command=[sys.executable, str(ECHO), "--unhealthy"])
    assert rig.attempts.get(timeout=10) == ("C", url, 0.0)
    assert (worker.healthy, worker.crashed) == (False, ("crm",))


def test_healthy_follows_the_last_report(rig: Rig) -> None:
    worker = rig.make(endpoint("crm", refused_url()))
    assert worker.healthy  # no report yet
    worker._apply(Report((("crm", "failed", 0.2),), False, ("crm",)))
    assert (worker.healthy, worker.crashed) == (False, ("crm",))
    worker._apply(Report((), True))
    assert (worker.healthy, worker.crashed) == (True, ())
    assert [rig.attempts.get_nowait()] == [("crm", "failed", 0.2)]


def test_the_parent_sends_settings_first_a_wake_per_commit_that_created_rows_and_settings_on_reload(
        rig: Rig) -> None:
    first, second = refused_url(), refused_url() + "?v=2"
    worker = rig.start(endpoint("crm", first), command=[sys.executable, str(ECHO)])
    frames = rig.attempts
    assert frames.get(timeout=10) == ("C", first, 0.0)
    rig.put([doc(1), doc(2)])
    assert frames.get(timeout=5) == ("W", "", 0.0)
    rig.put([doc(1)])  # already stored: the commit created no rows, so no wake
    worker.reconfigure([endpoint("crm", second), endpoint("audit", first)])
    assert frames.get(timeout=5) == ("C", f"{second} {first}", 0.0)
    assert frames.empty()
    started = time.monotonic()
    assert worker.stop(5.0) is True  # the echo child exits only on the stop frame (or end of stdin)
    assert time.monotonic() - started < 5.0


def test_wait_applied_follows_the_childs_reports_of_the_settings_in_force(
        rig: Rig, receiver: Receiver) -> None:
    worker = rig.start(endpoint("crm", receiver.url()))
    assert worker.wait_applied(10)  # the first settings
    worker.reconfigure([endpoint("crm", receiver.url("/new"))])
    assert not worker._applied.is_set()  # not before the child says so
    assert worker.wait_applied(10)
    assert worker._report is not None
    assert worker._report.applied == 1


def test_a_report_line_that_cannot_be_read_is_logged_and_the_next_ones_still_count(rig: Rig) -> None:
    with log_lines() as lines:
        worker = rig.start(endpoint("crm", "http://127.0.0.1:9/hook"),
                           command=[sys.executable, str(ECHO), "--garbage"])
        bad = next_line(lines, "webhook.worker_report_unreadable")
    assert bad["line"] == "this is not a report"
    assert worker.wait_applied(10)  # the settings' echo, read after the bad line
    assert worker.started_count == 1


def test_a_child_that_cannot_be_started_is_tried_again_with_backoff(rig: Rig) -> None:
    with log_lines() as lines:
        worker = rig.start(endpoint("crm", "http://127.0.0.1:9/hook"), command=["/nonexistent/deliver"],
                           backoff_initial_s=0.05, backoff_cap_s=0.1)
        failures = [next_line(lines, "webhook.worker_start_failed") for _ in range(2)]
    assert all("nonexistent" in str(f["reason"]) for f in failures)
    assert (worker.started_count, worker.running.is_set()) == (0, False)


def test_wakes_to_a_child_that_stopped_reading_never_block_the_commit_loop(
        rig: Rig, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(worker_module, "SEND_TIMEOUT_S", 0.5)
    deaf = [sys.executable, str(ECHO), "--deaf"]
    worker = rig.start(endpoint("crm", "http://127.0.0.1:9/hook"), command=deaf)
    assert worker.running.wait(timeout=10)
    with gevent.Timeout(10, AssertionError("a wake blocked on a full pipe")):
        for _ in range(30_000):  # 150 KB of wakes: more than a pipe holds
            worker._committed(frozenset({"crm"}))
    with log_lines() as lines:
        assert worker.stop(0.1) is False  # the stop frame does not fit either: killed
        assert "stopped reading" in str(next_line(lines, "webhook.worker_killed")["reason"])
