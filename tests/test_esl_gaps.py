"""Gaps are never silent: a gap across a restart of the listener is logged like one within a run.

The source keeps its node's record in the state file (``listener.esl.nodestate``); the next run's
source reads it and, on its first connection, logs ``esl.gap`` with ``across_restart``. Wall and
monotonic clocks are injected: no test waits for the time it measures.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import gevent
import pytest
import structlog

from listener.config.settings import Node
from listener.esl.nodestate import STATE_FILE, NodeRecord, NodeStateFile
from listener.esl.source import ESLSource
from tests.clocks import StepClock
from tests.fakeesl import FakeFreeSWITCH, Recording, capture_bodies
from tests.test_esl import FAST, wait_for_log

CORE = "1b8e5af5-676a-4b2e-91a0-1ac1b56080da"  # the fake's, and the captures'
NEW_CORE = "2c9f6a10-0000-4000-8000-000000000001"
NOW = 1_765_000_000.0






@pytest.fixture
def fake() -> Iterator[FakeFreeSWITCH]:
    with FakeFreeSWITCH() as server:
        yield server


class Run:
    """One run of the listener for one node: its source, with the state file of ``folder``."""

    def __init__(self, fake: FakeFreeSWITCH, folder: Path, wall: StepClock, *,
                 recovers: bool | None = None) -> None:
        node = Node(name="fs1", port=fake.port)
        self.states = NodeStateFile.load(folder, structlog.get_logger())
        self.pipeline = Recording(node)
        self.source = ESLSource(node, FAST, self.pipeline, structlog.get_logger(), rand=lambda: 0.5,
                                wall=wall, states=self.states, recovers=recovers)
        self.greenlet = gevent.spawn(self.source.run)

    def stop(self) -> None:
        self.source.stop()
        self.greenlet.join(timeout=5)
        assert self.greenlet.dead


def leave_record(folder: Path, record: NodeRecord) -> None:
    """The state file as a previous run left it."""
    NodeStateFile.load(folder, structlog.get_logger()).put("fs1", record, now=True)


def gaps(logs: list[dict[str, object]]) -> list[dict[str, object]]:
    return [entry for entry in logs if entry["event"] == "esl.gap"]


def test_the_first_connection_after_a_restart_logs_the_gap_since_the_last_event(
    fake: FakeFreeSWITCH, tmp_path: Path, logs: list
) -> None:
    leave_record(tmp_path, NodeRecord(CORE, NOW - 100.0, lost_at=NOW - 99.0))
    run = Run(fake, tmp_path, StepClock(NOW))
    fake.next_session()
    gap = wait_for_log(logs, "esl.gap")
    assert gap["gap_s"] == 100.0
    assert gap["across_restart"] is True
    assert (gap["previous_core_uuid"], gap["freeswitch_restarted"]) == (CORE, False)
    assert gap["since"] == "2025-12-06T05:45:00.000+00:00"
    assert gap["measured_from"] == "last_event"  # the previous run recorded the end of its connection
    assert "may be lost: set [[freeswitch]] cdr_dir" in str(gap["note"])
    assert (run.source.stats.gaps, run.source.stats.gap_seconds) == (1, 100.0)
    assert run.source.previous == NodeRecord(CORE, NOW - 100.0, NOW - 99.0)
    run.stop()


def test_a_new_core_uuid_across_the_restart_says_freeswitch_restarted(
    fake: FakeFreeSWITCH, tmp_path: Path, logs: list
) -> None:
    leave_record(tmp_path, NodeRecord(CORE, NOW - 30.0, lost_at=NOW - 30.0))
    fake.core_uuid = NEW_CORE
    run = Run(fake, tmp_path, StepClock(NOW))
    fake.next_session()
    gap = wait_for_log(logs, "esl.gap")
    assert (gap["previous_core_uuid"], gap["freeswitch_restarted"]) == (CORE, True)
    restarted = wait_for_log(logs, "esl.freeswitch_restarted")
    assert (restarted["previous_core_uuid"], restarted["core_uuid"]) == (CORE, NEW_CORE)
    assert run.source.stats.freeswitch_restarts == 1
    run.stop()


def test_a_record_left_by_a_killed_run_is_measured_from_its_last_write(
    fake: FakeFreeSWITCH, tmp_path: Path, logs: list
) -> None:
    leave_record(tmp_path, NodeRecord(CORE, NOW - 7.0))  # the connection was up when it ended
    run = Run(fake, tmp_path, StepClock(NOW))
    fake.next_session()
    gap = wait_for_log(logs, "esl.gap")
    assert (gap["gap_s"], gap["measured_from"]) == (7.0, "last_write")
    run.stop()


def test_with_cdr_recovery_the_gap_line_says_the_hangups_are_recovered(
    fake: FakeFreeSWITCH, tmp_path: Path, logs: list
) -> None:
    leave_record(tmp_path, NodeRecord(CORE, NOW - 5.0, NOW - 5.0))
    run = Run(fake, tmp_path, StepClock(NOW), recovers=True)
    fake.next_session()
    assert "recovered from cdr_dir" in str(wait_for_log(logs, "esl.gap")["note"])
    run.stop()


def test_without_a_record_the_first_connection_logs_no_gap(
    fake: FakeFreeSWITCH, tmp_path: Path, logs: list
) -> None:
    run = Run(fake, tmp_path, StepClock(NOW))
    fake.next_session()
    wait_for_log(logs, "esl.connected")
    run.stop()
    assert gaps(logs) == []
    assert run.source.previous is None


def test_only_the_first_connection_of_a_run_measures_from_the_record(
    fake: FakeFreeSWITCH, tmp_path: Path, logs: list
) -> None:
    leave_record(tmp_path, NodeRecord(CORE, NOW - 60.0, NOW - 60.0))
    run = Run(fake, tmp_path, StepClock(NOW))
    fake.next_session().abort()
    fake.next_session()
    with gevent.Timeout(5):
        while len(gaps(logs)) < 2:
            gevent.sleep(0.005)  # yields to the source under test; bounded by the Timeout
    assert [gap["across_restart"] for gap in gaps(logs)] == [True, False]
    assert gaps(logs)[1]["freeswitch_restarted"] is False
    assert "cdr_dir" in str(gaps(logs)[1]["note"])  # within a run, the same advice
    run.stop()


def test_the_source_keeps_its_record_and_marks_the_end_of_the_connection_at_stop(
    fake: FakeFreeSWITCH, tmp_path: Path
) -> None:
    wall = StepClock(NOW)
    run = Run(fake, tmp_path, wall)
    session = fake.next_session()
    wall.now += 10.0
    session.send_event(capture_bodies("uas_486")[0])
    run.pipeline.get(1)
    wall.now += 20.0
    run.stop()
    record = json.loads((tmp_path / STATE_FILE).read_text())["nodes"]["fs1"]
    assert record == {"core_uuid": CORE, "last_event_at": NOW + 10.0, "lost_at": NOW + 30.0}
    assert NodeStateFile.load(tmp_path, structlog.get_logger()).loaded["fs1"] == NodeRecord(
        CORE, NOW + 10.0, NOW + 30.0)
    assert run.source.last_event_at == NOW + 10.0
