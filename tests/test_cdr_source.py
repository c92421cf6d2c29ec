"""The CDR source in process: a half-written file is taken once, when whole; a taken leg's file is
skipped unread; a file that is complete but not a CDR is rejected once."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import gevent
import pytest
import structlog

from listener.core.event import HangupEvent
from listener.esl.cdr import CDRSource

FIXTURES = Path(__file__).parent / "data" / "fixtures-cdr"
CDRS = sorted((FIXTURES / "answered_caller_bye" / "json_cdr").glob("*.cdr.json"))


class Pipeline:
    """Records what the source hands on; every leg is new."""

    def __init__(self) -> None:
        self.events: list[HangupEvent] = []
        self.rejected: list[tuple[Path, str]] = []
        self.handed = gevent.event.Event()

    def recover(self, events: Sequence[HangupEvent]) -> int:
        self.events += events
        self.handed.set()
        return len(events)

    def reject_file(self, path: Path, body: bytes, reason: str) -> None:
        self.rejected.append((path, reason))
        self.handed.set()


class Taken:
    def __init__(self, unique_ids: frozenset[str] = frozenset()) -> None:
        self.unique_ids = unique_ids
        self.asked: list[str] = []

    def taken_unique_ids(self, unique_ids: Sequence[str]) -> frozenset[str]:
        self.asked += unique_ids
        return self.unique_ids & frozenset(unique_ids)

    def last_taken_at(self, node: str) -> float | None:
        return None


@pytest.fixture
def running(tmp_path: Path) -> Iterator[Any]:
    started: list[tuple[CDRSource, gevent.Greenlet]] = []

    def start(pipeline: Pipeline, taken: Taken) -> CDRSource:
        source = CDRSource("lab", tmp_path, pipeline, taken, structlog.get_logger(), settle_s=0.05)
        started.append((source, gevent.spawn(source.run)))
        return source

    yield start
    for source, loop in started:
        source.stop()
        loop.join(timeout=5)


def watching(source: CDRSource) -> None:
    """Until the source's inotify watch is set up (files written before it are the scan's)."""
    with gevent.Timeout(5, AssertionError("never watching")):
        while source._watcher is None:
            gevent.sleep(0.01)


def wait_for(pipeline: Pipeline, events: int = 0, rejected: int = 0, timeout: float = 10.0) -> None:
    with gevent.Timeout(timeout, AssertionError(f"{len(pipeline.events)} events, {pipeline.rejected}")):
        while len(pipeline.events) < events or len(pipeline.rejected) < rejected:
            pipeline.handed.clear()
            pipeline.handed.wait()


def test_a_half_written_file_is_taken_once_when_whole(tmp_path: Path, running: Any) -> None:
    whole = CDRS[0].read_bytes()
    target = tmp_path / CDRS[0].name
    partial = tmp_path / ".partial"
    partial.write_bytes(whole[: len(whole) // 2])
    os.rename(partial, target)  # moved in half written (a copy tool, an NFS client): IN_MOVED_TO
    pipeline = Pipeline()
    source = running(pipeline, Taken())
    with gevent.Timeout(5):
        while target not in source._waiting:
            gevent.sleep(0.01)
    assert pipeline.events == []
    assert pipeline.rejected == []  # never rejected for being incomplete
    with target.open("ab") as f:
        f.write(whole[len(whole) // 2:])  # the rest arrives
    wait_for(pipeline, events=1)
    assert target not in source._waiting
    assert len(pipeline.events) == 1
    assert pipeline.events[0].unique_id in CDRS[0].name


def test_a_file_of_a_leg_taken_already_is_skipped_unread(tmp_path: Path, running: Any) -> None:
    pipeline = Pipeline()
    taken_name, other = CDRS
    taken_id = taken_name.name.removeprefix("a_").removesuffix(".cdr.json")
    taken = Taken(frozenset({taken_id}))
    watching(running(pipeline, taken))
    for path in CDRS:
        shutil.copy(path, tmp_path / path.name)
    wait_for(pipeline, events=1)
    with gevent.Timeout(5):
        while taken_id not in taken.asked:  # both files were looked at: one skipped by its name
            gevent.sleep(0.01)
    assert [e.unique_id for e in pipeline.events] == [other.name.removeprefix("a_").removesuffix(".cdr.json")]


def test_a_complete_file_that_is_no_cdr_is_rejected_once(tmp_path: Path, running: Any) -> None:
    pipeline = Pipeline()
    watching(running(pipeline, Taken()))
    (tmp_path / "odd.cdr.json").write_text('{"not": "a cdr"}')
    wait_for(pipeline, rejected=1)
    assert len(pipeline.rejected) == 1
    assert pipeline.events == []
