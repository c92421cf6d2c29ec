"""Finding CDR files: inotify (a file closed after writing, one moved in, a new rotation folder) and the
scan bounded by modification time."""

from __future__ import annotations

import os
import struct
import time
from pathlib import Path

import gevent
import pytest

from listener.esl.cdr import cdr_files
from listener.esl.inotify import IN_CLOSE_WRITE, IN_CREATE, IN_ISDIR, IN_MOVED_TO, Watcher, parse


@pytest.fixture
def watcher(tmp_path: Path) -> Watcher:
    w = Watcher()
    w.watch(tmp_path)
    yield w
    w.close()


def changes_until(watcher: Watcher, want: int, timeout: float = 5.0) -> list:  # type: ignore[type-arg]
    found: list = []  # type: ignore[type-arg]
    with gevent.Timeout(timeout, AssertionError(f"only {found}")):
        while len(found) < want:
            found += watcher.changes(timeout=1.0)
    return found


def test_a_file_closed_after_writing_is_seen_once_whole(tmp_path: Path, watcher: Watcher) -> None:
    path = tmp_path / "a_0d9f.cdr.json"
    with path.open("w") as f:
        f.write("{")
        f.flush()
        created = watcher.changes(timeout=1.0)  # being written: created, not yet closed
        assert [c.mask & IN_CLOSE_WRITE for c in created] == [0]
        f.write("}")
    (change,) = changes_until(watcher, 1)
    assert change.path == path
    assert change.mask & IN_CLOSE_WRITE


def test_a_file_moved_in_and_a_new_rotation_folder_are_seen(tmp_path: Path, watcher: Watcher) -> None:
    outside = tmp_path.parent / f"{tmp_path.name}-elsewhere.cdr.json"
    outside.write_text("{}")
    os.rename(outside, tmp_path / "moved.cdr.json")
    (tmp_path / "2026-12-05-10-00-00").mkdir()
    moved, folder = changes_until(watcher, 2)
    assert moved.mask & IN_MOVED_TO
    assert moved.name == "moved.cdr.json"
    assert folder.mask & IN_CREATE
    assert folder.mask & IN_ISDIR
    assert folder.is_dir


def test_a_quiet_folder_waits_without_spinning(watcher: Watcher) -> None:
    started, cpu = time.monotonic(), time.process_time()
    assert watcher.changes(timeout=0.3) == []
    assert time.monotonic() - started >= 0.25
    assert time.process_time() - cpu < 0.1


def test_parse_reads_the_kernels_records() -> None:
    name = b"x.cdr.json"
    padded = name + b"\0" * (16 - len(name))
    data = (struct.pack("iIII", 1, IN_CLOSE_WRITE, 0, len(padded)) + padded
            + struct.pack("iIII", 2, IN_MOVED_TO, 7, 0))
    assert list(parse(data)) == [(1, IN_CLOSE_WRITE, "x.cdr.json"), (2, IN_MOVED_TO, "")]


def test_the_scan_takes_files_since_a_time_and_skips_old_rotation_folders_unlisted(tmp_path: Path) -> None:
    now = time.time()
    old_folder = tmp_path / "2026-11-01-00-00-00"
    old_folder.mkdir()
    (old_folder / "old.cdr.json").write_text("{}")
    (tmp_path / "old.cdr.json").write_text("{}")
    (tmp_path / "new.cdr.json").write_text("{}")
    (tmp_path / "notes.txt").write_text("not a cdr")
    new_folder = tmp_path / "2026-12-05-00-00-00"
    new_folder.mkdir()
    (new_folder / "b.cdr.json").write_text("{}")
    for path in (tmp_path / "old.cdr.json", old_folder / "old.cdr.json", old_folder):
        os.utime(path, (now - 86400, now - 86400))
    found = sorted(p.relative_to(tmp_path).as_posix() for p in cdr_files(tmp_path, now - 3600))
    assert found == ["2026-12-05-00-00-00/b.cdr.json", "new.cdr.json"]
