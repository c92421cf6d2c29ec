"""Under load the reply to the core-UUID query can sit behind thousands of events: that is no reason
to drop a working connection (and every event buffered on it)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import gevent
import gevent.queue
import structlog
from structlog.testing import capture_logs

from listener.app import App
from listener.config.settings import Config, ESLSettings, HealthConfig, Node
from listener.esl.source import ESLSource
from tests.fakeesl import FakeFreeSWITCH, Recording, capture_bodies, event_frame, with_header


def test_a_core_uuid_reply_that_comes_late_keeps_the_connection() -> None:
    """Found by the soak: with a full event queue the reader could not reach the reply within
    command_timeout, the query closed the connection, and everything buffered on it was lost."""
    settings = ESLSettings(command_timeout=0.2, liveness_timeout=5, backoff_initial=0.01, backoff_max=0.05)
    with FakeFreeSWITCH() as fake, capture_logs() as logs:
        fake.unanswered.add("api global_getvar core_uuid")
        events = Recording(Node("fs1", port=fake.port))
        source = ESLSource(Node("fs1", port=fake.port), settings, events, structlog.get_logger())
        loop = gevent.spawn(source.run)
        session = fake.next_session()
        wait_for(logs, "esl.core_uuid_unknown")
        session.send_event(with_header(capture_bodies("uas_486")[0], "Unique-ID", "after-the-timeout"))
        assert events.get(1)[0].unique_id == "after-the-timeout"
        source.stop()
        loop.join(timeout=5)
    assert fake.accepted == 1
    assert "esl.connection_lost" not in [e["event"] for e in logs]


def wait_for(logs: list[dict[str, Any]], event: str) -> None:
    with gevent.Timeout(5, AssertionError(f"no {event}: {[e['event'] for e in logs]}")):
        while event not in [e["event"] for e in logs]:
            gevent.sleep(0.01)  # yields to the greenlets under test; bounded by the Timeout


def test_a_burst_of_hangups_is_handled_in_slices_that_never_stall_the_loop() -> None:
    """Found with the gevent monitor (tests/conftest.py fails any test whose daemon greenlets block
    the loop > 0.1 s): without an outbox no handler yields, and a queue or a socket with data ready
    never switches, so 5000 queued hangups held the loop well past 0.1 s (health, heartbeats wait)."""
    body = capture_bodies("uas_486")[0]
    burst = b"".join(event_frame(with_header(body, "Unique-ID", f"burst-{n:05d}")) for n in range(5000))
    with FakeFreeSWITCH() as fake, capture_logs() as logs:
        config = Config(nodes=(Node("n", port=fake.port),), health=HealthConfig(port=0))
        app = App(config)  # no outbox: the handler never yields
        app.start()
        fake.next_session().send(burst)
        with gevent.Timeout(60, AssertionError("the burst was not classified in time")):
            while sum(e["event"] == "leg.classified" for e in logs) < 5000:
                gevent.sleep(0.05)  # polls the captured log; bounded by the Timeout
        app.stop(timeout=5)
    # the assertion is conftest's: gevent's monitor saw no daemon greenlet block the loop > 0.1 s


class SlowSink:
    """An outbox that takes 5 ms per document: a backlog builds behind it."""

    def __init__(self) -> None:
        self.stored = 0

    def put(self, documents: Sequence[Mapping[str, Any]]) -> frozenset[str]:
        gevent.sleep(0.005 * len(documents))  # the commit's duration, the stimulus that builds the backlog
        self.stored += len(documents)
        return frozenset()


def test_events_still_queued_at_the_stop_deadline_are_counted_loudly() -> None:
    """Found reviewing shutdown for the chaos test: a backlog longer than stop's deadline was
    dropped without a word (the connections' queues die with the process)."""
    body = capture_bodies("uas_486")[0]
    burst = b"".join(event_frame(with_header(body, "Unique-ID", f"late-{n:05d}")) for n in range(1000))
    sink = SlowSink()
    with FakeFreeSWITCH() as fake, capture_logs() as logs:
        config = Config(nodes=(Node("n", port=fake.port),), health=HealthConfig(port=0))
        app = App(config, sink)
        app.start()
        fake.next_session().send(burst)
        with gevent.Timeout(10, AssertionError("nothing stored")):
            while sink.stored < 50:
                gevent.sleep(0.01)  # polls the sink; bounded by the Timeout
        app.stop(timeout=0.2)
        stored = sink.stored
    (abandoned,) = [e for e in logs if e["event"] == "listener.events_abandoned"]
    assert abandoned["log_level"] == "error"
    assert abandoned["node"] == "n"
    assert abandoned["queued"] > 0
    assert stored + abandoned["queued"] <= 1000
