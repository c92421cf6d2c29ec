"""The default outbox location is stable (never the current folder), and an outbox left in the current
folder by an older version is pointed out at start."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
import structlog

from listener.app import warn_old_outbox
from listener.config import loader
from listener.config.settings import Config, OutboxConfig, default_outbox_path
from listener.outbox.opening import old_outbox
from listener.outbox.store import Entry, Outbox
from tests.daemon import Daemon


@pytest.mark.parametrize(("environ", "uid", "expected"), [
    ({"STATE_DIRECTORY": "/var/lib/hangup-listener:/var/lib/other"}, 1000, "/var/lib/hangup-listener"),
    ({"STATE_DIRECTORY": "/srv/state", "XDG_STATE_HOME": "/x", "HOME": "/home/op"}, 0, "/srv/state"),
    ({"HOME": "/home/op"}, 0, "/var/lib/hangup-listener"),
    ({"XDG_STATE_HOME": "/xdg", "HOME": "/home/op"}, 1000, "/xdg/hangup-listener"),
    ({"XDG_STATE_HOME": "relative", "HOME": "/home/op"}, 1000, "/home/op/.local/state/hangup-listener"),
    ({"HOME": "/home/op"}, 1000, "/home/op/.local/state/hangup-listener"),
])
def test_the_default_outbox_is_the_services_state_folder_roots_or_the_users_xdg_state_folder(
        environ: dict[str, str], uid: int, expected: str) -> None:
    assert default_outbox_path(environ, uid) == Path(expected) / "outbox.sqlite3"


def test_the_default_outbox_is_never_in_the_current_folder() -> None:
    for uid in (0, 1000):
        assert default_outbox_path({}, uid).is_absolute()
    assert loader.load(None, {}).outbox.path.is_absolute()


def seed(path: Path, pending: int) -> Path:
    box = Outbox.open(path)
    box.put([Entry(f"e{i}", "{}", ("crm",)) for i in range(max(pending, 1))], now=1000.0)
    if not pending:
        box.purge(state="pending", endpoint="crm")
    box.close()
    return path


def test_an_old_outbox_with_pending_rows_in_the_current_folder_is_found_without_leaving_a_file(
        tmp_path: Path) -> None:
    old = seed(tmp_path / "outbox.sqlite3", 3)
    before = {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()}
    assert old_outbox(tmp_path / "state" / "outbox.sqlite3", tmp_path, 2000.0) == (old, 3)
    assert {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()} == before  # no -wal, no -shm


def test_no_old_outbox_when_absent_empty_the_configured_one_or_not_an_outbox(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    elsewhere = tmp_path / "state" / "outbox.sqlite3"
    assert old_outbox(elsewhere, tmp_path, 2000.0) is None
    seed(tmp_path / "outbox.sqlite3", 0)
    assert old_outbox(elsewhere, tmp_path, 2000.0) is None  # everything was delivered
    seed(tmp_path / "outbox.sqlite3", 2)
    assert old_outbox(tmp_path / "outbox.sqlite3", tmp_path, 2000.0) is None  # it is the configured one
    monkeypatch.chdir(tmp_path)
    assert old_outbox(Path("outbox.sqlite3"), tmp_path, 2000.0) is None  # ... named relatively
    (tmp_path / "outbox.sqlite3").write_bytes(b"not a database" * 100)
    assert old_outbox(elsewhere, tmp_path, 2000.0) is None


def test_the_warning_names_the_old_file_the_new_path_and_how_to_move_it(tmp_path: Path) -> None:
    seed(tmp_path / "outbox.sqlite3", 2)
    new = tmp_path / "state" / "outbox.sqlite3"
    with structlog.testing.capture_logs() as logged:
        warn_old_outbox(structlog.get_logger(), Config(outbox=OutboxConfig(new)), tmp_path)
    (line,) = logged
    assert (line["event"], line["log_level"], line["pending"]) == ("outbox.old_location", "warning", 2)
    assert (line["path"], line["outbox"]) == (str(tmp_path / "outbox.sqlite3"), str(new))
    assert f"move {tmp_path / 'outbox.sqlite3'} (with its -wal and -shm, if any) to {new}" in line["action"]


@pytest.mark.slow
def test_the_daemon_warns_at_start_of_an_old_outbox_in_its_current_folder(tmp_path: Path) -> None:
    seed(tmp_path / "outbox.sqlite3", 1)
    state = tmp_path / "state"
    state.mkdir()
    config = state / "listener.toml"
    config.write_text('[[freeswitch]]\nport = 1\n[health]\nport = 0\n')
    daemon = Daemon(config, cwd=tmp_path)
    try:
        line = daemon.expect("outbox.old_location")
        daemon.expect("listener.started")
        daemon.send(signal.SIGTERM)
        assert daemon.finish() == 0
    finally:
        daemon.kill()
    assert (line["path"], line["outbox"]) == (str(tmp_path / "outbox.sqlite3"), str(state / "outbox.sqlite3"))
    assert sum('"outbox.old_location"' in out for out in daemon.output) == 1
    assert not (state / "outbox.sqlite3").exists()  # nothing moved, nothing made: the operator decides
