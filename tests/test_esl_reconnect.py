"""Reconnecting against the fake FreeSWITCH: at once after a healthy connection, backoff otherwise.

The source's monotonic clock is injected, so "up for a minute" takes no minute.
"""

from __future__ import annotations

import gevent
import structlog

from listener.config.settings import ESLSettings, Node
from listener.esl.source import ESLSource
from tests.clocks import StepClock
from tests.fakeesl import FakeFreeSWITCH, Recording
from tests.test_esl import wait_for_log

SLOW = ESLSettings(connect_timeout=2, command_timeout=1, liveness_timeout=5, backoff_initial=10,
                   backoff_max=60)
"""A usual first delay of 5-10 s: a reconnect within the test's 5 s can only be the fast one."""






def started(fake: FakeFreeSWITCH, clock: StepClock) -> tuple[ESLSource, gevent.Greenlet]:
    node = Node(name="fs1", port=fake.port)
    source = ESLSource(node, SLOW, Recording(node), structlog.get_logger(), rand=lambda: 0.5, clock=clock)
    return source, gevent.spawn(source.run)


def test_losing_a_connection_up_for_a_minute_reconnects_at_once(logs: list) -> None:
    clock = StepClock(1000.0)
    with FakeFreeSWITCH() as fake:
        source, greenlet = started(fake, clock)
        first = fake.next_session()
        wait_for_log(logs, "esl.connected")
        clock.now += 60.0
        first.abort()  # FreeSWITCH restarts
        fake.next_session()  # within 5 s, though the usual first delay is 7.5 s
        lost = wait_for_log(logs, "esl.connection_lost")
        assert (lost["reconnect_in"], lost["connected_for_s"]) == (0.0, 60.0)
        source.stop()
        greenlet.join(timeout=5)


def test_a_node_that_was_never_healthy_keeps_the_usual_backoff(logs: list) -> None:
    clock = StepClock(1000.0)
    with FakeFreeSWITCH() as fake:
        source, greenlet = started(fake, clock)
        first = fake.next_session()
        wait_for_log(logs, "esl.connected")
        clock.now += 59.0
        first.abort()
        lost = wait_for_log(logs, "esl.connection_lost")
        assert lost["reconnect_in"] == 7.5  # rand 0.5: 3/4 of backoff_initial
        source.stop()
        greenlet.join(timeout=5)
        assert fake.accepted == 1
