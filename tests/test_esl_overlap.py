"""The commit of one batch runs while the next is taken and prepared: one commit in flight, in order.

Each test drives a connection's processor directly (events put in its queue, the end marker by
``_finish``) with a batch handler whose commits wait for the test to release them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import ClassVar

import gevent
import gevent.event
import gevent.queue
import pytest
import structlog
from structlog.testing import capture_logs

from listener.esl import ESLSettings, ESLSource, HardenedInboundESL, Node
from listener.event import HangupEvent
from tests.fakeesl import FakeFreeSWITCH, capture_bodies, with_header

FAST = ESLSettings(
    connect_timeout=2, command_timeout=1, liveness_timeout=5, backoff_initial=0.01, backoff_max=0.05
)
WAIT_S = 5


def hangup(uid: str) -> HangupEvent:
    return HangupEvent.from_plain(with_header(capture_bodies("uas_486")[0], "Unique-ID", uid))


def heartbeat() -> HangupEvent:
    return HangupEvent.from_plain(b"Event-Name: HEARTBEAT\nCore-UUID: core-1\n")


class Gated:
    """A batch handler whose commits each wait for ``release``; it records what happened, in order."""

    def __init__(self, *, fail_first: bool = False) -> None:
        self.history: list[tuple[str, list[str]]] = []
        self.committed: list[list[str]] = []
        self.fail_next = fail_first
        self._gates: gevent.queue.Queue[None] = gevent.queue.Queue()
        self._seen: dict[tuple[str, str], gevent.event.Event] = {}

    def prepare(self, event: HangupEvent) -> str:
        self.history.append(("prepared", [event.unique_id]))
        self._mark("prepared", event.unique_id)
        return event.unique_id

    def commit(self, prepared: list[str]) -> None:
        self.history.append(("commit_started", prepared))
        self._mark("commit_started", prepared[-1])
        try:
            self._gates.get(timeout=WAIT_S)
        except gevent.GreenletExit:
            self.history.append(("commit_killed", prepared))
            raise
        self.history.append(("commit_returned", prepared))
        if self.fail_next:
            self.fail_next = False
            raise RuntimeError("outbox full")
        self.committed.append(prepared)
        self._mark("commit_returned", prepared[-1])

    def release(self, commits: int = 1) -> None:
        for _ in range(commits):
            self._gates.put(None)

    def wait(self, what: str, uid: str) -> None:
        """Until ``what`` happened to the event ``uid`` (as the last of a commit, for commits)."""
        assert self._seen.setdefault((what, uid), gevent.event.Event()).wait(WAIT_S), f"no {what} of {uid}"

    def _mark(self, what: str, uid: str) -> None:
        self._seen.setdefault((what, uid), gevent.event.Event()).set()

    def kinds(self) -> list[str]:
        return [kind for kind, _ in self.history]


class Processor:
    """One connection (never connected) whose processor runs on its own greenlet; events fed by hand."""

    running: ClassVar[list[gevent.Greenlet]] = []

    def __init__(self, handler: object, settings: ESLSettings = FAST) -> None:
        self.conn = HardenedInboundESL(Node("fs1"), settings, structlog.get_logger())
        self.conn.register_handle("CHANNEL_HANGUP_COMPLETE", handler)
        self.greenlet = gevent.spawn(self.conn.process_events)
        self.running.append(self.greenlet)

    def feed(self, *events: HangupEvent) -> None:
        for event in events:
            self.conn._esl_event_queue.put(event)

    def end(self) -> None:
        self.conn._finish()  # the end marker, as when the connection closes

    def settle(self) -> None:
        """Let every greenlet run until none can go on (all wait for the test)."""
        gevent.idle()


@pytest.fixture(autouse=True)
def _no_processor_outlives_its_test() -> Iterator[None]:
    """A failed test's processor (and its commit) would otherwise log into the next test's capture."""
    yield
    gevent.killall(Processor.running, timeout=WAIT_S)
    Processor.running.clear()


@pytest.fixture
def logs() -> Iterator[list[dict[str, object]]]:
    with capture_logs() as captured:
        yield captured


def test_the_next_batch_is_prepared_while_a_commit_is_in_flight_and_committed_only_after_it() -> None:
    handler = Gated()
    processor = Processor(handler)
    processor.feed(hangup("a"), hangup("b"))
    handler.wait("commit_started", "b")
    processor.feed(hangup("c"), hangup("d"))
    handler.wait("prepared", "d")
    processor.settle()
    assert handler.kinds()[-3:] == ["commit_started", "prepared", "prepared"]  # no second commit yet
    handler.release()
    handler.wait("commit_started", "d")
    assert handler.history[-2:] == [("commit_returned", ["a", "b"]), ("commit_started", ["c", "d"])]
    handler.release()
    processor.end()
    processor.greenlet.join(timeout=WAIT_S)
    assert handler.committed == [["a", "b"], ["c", "d"]]


class Yielding:
    """A batch handler whose commits switch to other greenlets a few times, as the outbox's do."""

    def __init__(self) -> None:
        self.committed: list[str] = []
        self.in_flight = 0
        self.most_in_flight = 0
        self.commits = 0

    def prepare(self, event: HangupEvent) -> str:
        return event.unique_id

    def commit(self, prepared: list[str]) -> None:
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        for _ in range(1 + len(prepared) % 5):
            gevent.sleep(0)  # switches only: lets the feeder and the processor run meanwhile
        self.committed.extend(prepared)
        self.commits += 1
        self.in_flight -= 1


def test_commits_follow_event_order_one_at_a_time_across_many_batches() -> None:
    handler = Yielding()
    uids = [f"e-{n:04d}" for n in range(1500)]
    processor = Processor(handler, dataclasses.replace(FAST, queue_size=37))

    def feed_all() -> None:
        for n, uid in enumerate(uids):
            processor.feed(hangup(uid))  # blocks while the queue is full
            if n % 11 == 0:
                gevent.sleep(0)  # switches only: batches of many sizes
        processor.end()

    feeder = gevent.spawn(feed_all)
    processor.greenlet.join(timeout=30)
    assert processor.greenlet.dead
    assert feeder.dead
    assert handler.committed == uids
    assert handler.commits > 40
    assert handler.most_in_flight == 1


def test_a_plain_handler_between_runs_of_hangups_keeps_the_order_of_each_name() -> None:
    handler = Gated()
    heartbeats: list[str] = []
    processor = Processor(handler)
    processor.conn.register_handle("HEARTBEAT", lambda event: heartbeats.append(event.event_name))
    processor.feed(hangup("a"), heartbeat(), hangup("b"), hangup("c"))
    handler.wait("prepared", "c")
    processor.settle()
    assert heartbeats == ["HEARTBEAT"]  # not held back by the commit of "a", which is in flight
    handler.release(2)
    processor.end()
    processor.greenlet.join(timeout=WAIT_S)
    assert handler.committed == [["a"], ["b", "c"]]


def test_a_commit_that_raises_logs_each_of_its_events_once_and_processing_goes_on(logs: list) -> None:
    handler = Gated(fail_first=True)
    processor = Processor(handler)
    processor.feed(hangup("a"), hangup("b"))
    handler.wait("commit_started", "b")
    processor.feed(hangup("c"))
    handler.release(2)
    handler.wait("commit_returned", "c")
    processor.end()
    processor.greenlet.join(timeout=WAIT_S)
    failed = [e["channel_uuid"] for e in logs if e["event"] == "call.handler_failed"]
    assert failed == ["a", "b"]
    assert processor.conn.stats.handler_failures == 2
    assert handler.committed == [["c"]]


def test_the_end_marker_drains_and_process_events_returns_after_the_last_commit() -> None:
    handler = Gated()
    processor = Processor(handler)
    processor.feed(hangup("a"))
    handler.wait("commit_started", "a")
    processor.feed(hangup("b"), hangup("c"))
    processor.end()
    handler.wait("prepared", "c")
    handler.release()
    handler.wait("commit_started", "c")
    processor.settle()
    assert not processor.greenlet.dead  # the last commit is still in flight
    handler.release()
    processor.greenlet.join(timeout=WAIT_S)
    assert processor.greenlet.dead
    assert handler.committed == [["a"], ["b", "c"]]
    assert handler.kinds()[-1] == "commit_returned"


def test_queued_counts_the_commit_in_flight_and_the_batch_at_hand() -> None:
    handler = Gated()
    processor = Processor(handler)
    conn = processor.conn
    assert conn.queued == 0
    processor.feed(hangup("a"), hangup("b"))
    handler.wait("commit_started", "b")
    assert conn.queued == 2  # in flight
    processor.feed(hangup("c"))
    handler.wait("prepared", "c")
    processor.feed(hangup("d"))
    assert conn.queued == 4  # 2 in flight, 1 prepared waiting for its commit, 1 queued
    handler.release(3)
    handler.wait("commit_returned", "d")
    processor.settle()
    assert conn.queued == 0
    processor.end()
    processor.greenlet.join(timeout=WAIT_S)


def test_a_commit_in_flight_counts_as_handling_while_the_processor_waits_for_events() -> None:
    handler = Gated()
    processor = Processor(handler)
    stats = processor.conn.stats
    processor.feed(hangup("a"))
    handler.wait("commit_started", "a")
    processor.settle()  # the processor waits for the next event; the commit is still running
    assert stats.handling_since is not None
    handler.release()
    handler.wait("commit_returned", "a")
    processor.settle()
    assert stats.handling_since is None
    processor.end()
    processor.greenlet.join(timeout=WAIT_S)


def test_killing_the_processor_kills_its_commit_in_flight() -> None:
    handler = Gated()
    processor = Processor(handler)
    processor.feed(hangup("a"))
    handler.wait("commit_started", "a")
    processor.greenlet.kill(timeout=WAIT_S)
    assert handler.kinds()[-1] == "commit_killed"


def test_a_connection_that_closes_with_a_commit_in_flight_is_left_only_after_its_last_commit(
    logs: list,
) -> None:
    handler = Gated()
    backoff = gevent.event.Event()
    with FakeFreeSWITCH() as fake:
        source = ESLSource(Node("fs1", port=fake.port), FAST, {"CHANNEL_HANGUP_COMPLETE": handler},
                           structlog.get_logger(), rand=lambda: 0.5)
        source.on_state = lambda s: backoff.set() if s.state == "backoff" else None
        loop = gevent.spawn(source.run)
        session = fake.next_session()
        session.send_event(with_header(capture_bodies("uas_486")[0], "Unique-ID", "first"))
        handler.wait("commit_started", "first")
        for uid in ("second", "third"):
            session.send_event(with_header(capture_bodies("uas_486")[0], "Unique-ID", uid))
        session.close()
        handler.wait("prepared", "third")
        gevent.idle()  # the reader has seen the close: nothing is left for the loop to do
        assert not source._conn.connected
        assert not backoff.is_set()  # the connection is not left while a commit is pending
        assert "esl.connection_lost" not in [e["event"] for e in logs]
        handler.release(3)
        assert backoff.wait(WAIT_S)
        source.stop()
        loop.join(timeout=WAIT_S)
    assert [uid for commit in handler.committed for uid in commit] == ["first", "second", "third"]
