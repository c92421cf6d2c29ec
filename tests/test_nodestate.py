"""The per-node state file: loaded once, written whole, at most every few seconds, never fatal."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import structlog

from listener.esl.nodestate import STATE_FILE, NodeRecord, NodeStateFile, gap_note
from tests.clocks import StepClock

CORE = "1b8e5af5-676a-4b2e-91a0-1ac1b56080da"






def test_a_missing_file_loads_no_record(tmp_path: Path, logs: list) -> None:
    states = NodeStateFile.load(tmp_path, structlog.get_logger())
    assert states.loaded == {}
    assert logs == []


def test_records_written_are_loaded_back_by_the_next_run(tmp_path: Path) -> None:
    states = NodeStateFile.load(tmp_path / "state", structlog.get_logger())
    states.put("fs1", NodeRecord(CORE, 1_700_000_000.25, 1_700_000_001.5), now=True)
    states.put("fs2", NodeRecord(None, 1_700_000_002.0))
    states.save()
    again = NodeStateFile.load(tmp_path / "state", structlog.get_logger())
    assert again.loaded == {"fs1": NodeRecord(CORE, 1_700_000_000.25, 1_700_000_001.5),
                            "fs2": NodeRecord(None, 1_700_000_002.0)}


def test_the_folder_is_created_0700_and_the_file_0600_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        states = NodeStateFile.load(tmp_path / "new", structlog.get_logger())
        states.put("fs1", NodeRecord(CORE, 1.0), now=True)
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "new").stat().st_mode) == 0o700
    assert stat.S_IMODE((tmp_path / "new" / STATE_FILE).stat().st_mode) == 0o600
    assert [p.name for p in (tmp_path / "new").iterdir()] == [STATE_FILE]  # no temporary file left


def test_while_events_arrive_it_is_written_at_most_every_interval(tmp_path: Path) -> None:
    clock = StepClock(100.0)
    states = NodeStateFile(tmp_path / STATE_FILE, structlog.get_logger(), clock=clock, interval=5.0)
    for n in range(1000):  # a burst: the first is written, the rest wait for the interval
        states.put("fs1", NodeRecord(CORE, 1000.0 + n))
    assert states.writes == 1
    clock.now += 4.9
    states.put("fs1", NodeRecord(CORE, 2000.0))
    assert states.writes == 1
    clock.now += 0.1
    states.put("fs1", NodeRecord(CORE, 2001.0))
    assert states.writes == 2
    assert json.loads((tmp_path / STATE_FILE).read_text())["nodes"]["fs1"]["last_event_at"] == 2001.0


def test_a_change_that_matters_is_written_at_once_and_save_writes_only_what_changed(tmp_path: Path) -> None:
    states = NodeStateFile(tmp_path / STATE_FILE, structlog.get_logger(), clock=StepClock(100.0))
    states.put("fs1", NodeRecord(CORE, 1.0))
    states.put("fs1", NodeRecord(CORE, 2.0, lost_at=2.5), now=True)
    assert states.writes == 2
    states.save()  # nothing new
    assert states.writes == 2


def test_an_unreadable_file_is_logged_and_treated_as_absent(tmp_path: Path, logs: list) -> None:
    (tmp_path / STATE_FILE).write_bytes(b"")  # e.g. after a power loss
    states = NodeStateFile.load(tmp_path, structlog.get_logger())
    assert states.loaded == {}
    assert logs[0]["event"] == "esl.state_unreadable"
    assert logs[0]["log_level"] == "warning"


def test_records_that_are_not_records_are_skipped(tmp_path: Path) -> None:
    nodes = {"good": {"core_uuid": CORE, "last_event_at": 5, "lost_at": None},
             "no-time": {"core_uuid": CORE}, "bad-time": {"core_uuid": CORE, "last_event_at": "x"},
             "bool": {"core_uuid": None, "last_event_at": True}, "list": [1]}
    (tmp_path / STATE_FILE).write_text(json.dumps({"version": 1, "nodes": nodes}))
    assert NodeStateFile.load(tmp_path, structlog.get_logger()).loaded == {"good": NodeRecord(CORE, 5.0)}


def test_a_write_that_fails_is_logged_once_and_ingestion_goes_on(tmp_path: Path, logs: list) -> None:
    (tmp_path / "blocked").write_text("a file where the folder should be")
    clock = StepClock(100.0)
    states = NodeStateFile(tmp_path / "blocked" / STATE_FILE, structlog.get_logger(), clock=clock)
    for _ in range(3):
        states.put("fs1", NodeRecord(CORE, 1.0), now=True)
    assert [e["event"] for e in logs] == ["esl.state_write_failed"]
    assert states.writes == 0


def test_the_gap_note_says_how_to_recover_when_nothing_recovers() -> None:
    assert "may be lost: set [[freeswitch]] cdr_dir" in gap_note(recovers=False)
    assert "docs/operations.md" in gap_note(recovers=False)
    assert "recovered from cdr_dir" in gap_note(recovers=True)
