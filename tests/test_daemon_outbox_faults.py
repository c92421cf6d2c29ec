"""The daemon (a real subprocess) against the outbox faults of an operator's bad day.

A fault that can clear (another SQLite client holding the write lock past the busy timeout) is
waited out: ingestion pauses without dropping FreeSWITCH, /readyz says why, and everything is
delivered once it clears, with no restart. A fault that cannot (a damaged or read-only file, a
``-wal`` of another copy, a second daemon on the same outbox, a taken health port) ends in a refusal
to start with its exit code (74, 75) and one line saying what to do.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import gevent
import pytest
import structlog
from webhook_receiver import Receiver

from listener.app import outbox_action
from listener.config.settings import OutboxConfig
from listener.core.errors import OutboxError
from listener.core.exits import EX_IOERR, EX_TEMPFAIL
from listener.outbox.lock import OutboxLock
from listener.outbox.opening import open_outbox
from listener.outbox.store import Entry, Outbox
from tests.daemon import Daemon, fetch
from tests.fakeesl import FakeFreeSWITCH
from tests.test_daemon_webhooks import bodies, expected_ids, send, verified_ids, write_config


def critical(daemon: Daemon) -> dict[str, Any]:
    """The daemon's one critical log line: why it stopped, and what to do."""
    (line,) = [entry for entry in (json.loads(line) for line in daemon.output if line.startswith("{"))
               if entry.get("level", entry.get("log_level")) == "critical"]
    return line


def test_another_client_holding_the_write_lock_pauses_ingestion_and_nothing_is_lost(
        tmp_path: Path, receiver: Receiver) -> None:
    events = bodies(20)
    with FakeFreeSWITCH() as fake:
        config = write_config(tmp_path, fake, receiver.url())
        daemon = Daemon(config)
        try:
            port = int(daemon.expect("health.listening")["port"])
            session = fake.next_session(timeout=15)
            send(session, events[:5])
            while len(set(verified_ids(receiver))) < 5:
                receiver.get(timeout=15)
            operator = sqlite3.connect(tmp_path / "outbox.sqlite3", isolation_level=None)
            operator.execute("BEGIN IMMEDIATE")  # held past the daemon's 5 s busy timeout
            send(session, events[5:])
            unavailable = daemon.expect("outbox.unavailable", timeout=20)
            assert unavailable["code"].startswith("SQLITE_BUSY")
            status, body = fetch(port, "/readyz")
            assert status == 503
            assert json.loads(body)["outbox"]["details"]["state"] == "unavailable"
            status, live = fetch(port, "/livez")
            assert status == 200, live  # a pause is not a stuck daemon: the watchdog keeps being fed
            operator.execute("COMMIT")
            operator.close()
            daemon.expect("outbox.recovered", timeout=30)
            with gevent.Timeout(30, AssertionError("not everything was delivered after the lock went")):
                while set(verified_ids(receiver)) != expected_ids(events):
                    receiver.get(timeout=30)
            assert fetch(port, "/readyz")[0] == 200
            assert fake.accepted == 1  # FreeSWITCH was never dropped: it only waited for us to read
            assert not session.closed.is_set()
            daemon.send(signal.SIGTERM)
            assert daemon.finish() == 0
        finally:
            daemon.kill()


def test_a_second_daemon_on_the_same_outbox_refuses_to_start_naming_the_first(
        tmp_path: Path, receiver: Receiver) -> None:
    with FakeFreeSWITCH() as fake:
        config = write_config(tmp_path, fake, receiver.url())
        first = Daemon(config)
        try:
            first.expect("listener.started")
            second = Daemon(config)
            try:
                assert second.finish(timeout=20) == EX_TEMPFAIL
            finally:
                second.kill()
            line = critical(second)
            assert line["event"] == "listener.outbox_locked"
            assert line["holder_pid"] == first.proc.pid
            assert line["path"] == str(tmp_path / "outbox.sqlite3.lock")
            assert "one daemon per outbox" in line["action"]
            for command in ("outbox", "stats"), ("check-config",):
                done = subprocess.run([sys.executable, "-m", "listener", command[0], "--config", str(config),
                                       *command[1:]], capture_output=True, timeout=30, check=False)
                assert done.returncode == 0, done.stderr  # never take the lock: safe beside the daemon
            assert first.proc.poll() is None  # the first one runs on, untouched
        finally:
            first.kill()


def seeded_outbox(path: Path, rows: int) -> None:
    outbox = Outbox.open(path)
    outbox.put([Entry(f"id-{n}", "x" * 300, ("hook0",)) for n in range(rows)], time.time())
    outbox.close()


def test_a_damaged_outbox_refuses_to_start_with_74_and_says_what_to_do(
        tmp_path: Path, receiver: Receiver) -> None:
    path = tmp_path / "outbox.sqlite3"
    seeded_outbox(path, 5000)
    with path.open("r+b") as f:
        f.seek(path.stat().st_size // 2)
        f.write(os.urandom(16384))
    with FakeFreeSWITCH() as fake:
        daemon = Daemon(write_config(tmp_path, fake, receiver.url()))
        try:
            assert daemon.finish(timeout=30) == EX_IOERR
        finally:
            daemon.kill()
        assert fake.accepted == 0  # never READY, never connected
    line = critical(daemon)
    assert line["event"] == "listener.outbox_unusable"
    assert line["code"] == "SQLITE_CORRUPT"
    assert ".recover" in line["action"]


def test_a_foreign_wal_refuses_to_start_with_74_and_nothing_is_replayed(
        tmp_path: Path, receiver: Receiver) -> None:
    with FakeFreeSWITCH() as fake:
        config = write_config(tmp_path, fake, receiver.url())
        daemon = Daemon(config)  # runs once on the outbox and stops cleanly: its -wal is gone
        daemon.expect("listener.started")
        daemon.send(signal.SIGTERM)
        assert daemon.finish() == 0
        other = tmp_path / "copy" / "outbox.sqlite3"
        other.parent.mkdir()
        seeded_outbox(other, 1)
        keep = sqlite3.connect(other, isolation_level=None)
        keep.execute("PRAGMA wal_autocheckpoint=0")
        keep.execute("DELETE FROM delivery")  # the other copy's -wal would delete rows here
        shutil.copy(other.with_name("outbox.sqlite3-wal"), tmp_path / "outbox.sqlite3-wal")
        keep.close()
        again = Daemon(config)
        try:
            assert again.finish(timeout=20) == EX_IOERR
        finally:
            again.kill()
    line = critical(again)
    assert line["code"] == "FOREIGN_WAL"
    assert "aside" in line["action"]
    assert (tmp_path / "outbox.sqlite3-wal").stat().st_size > 0  # left for the operator, not replayed


@contextmanager
def as_nobody() -> Iterator[pwd.struct_passwd]:
    """This process's effective user is nobody within (root cannot be refused a write)."""
    nobody = pwd.getpwnam("nobody")
    os.setegid(nobody.pw_gid)
    os.seteuid(nobody.pw_uid)
    try:
        yield nobody
    finally:
        os.seteuid(0)
        os.setegid(0)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to become another user")
def test_a_read_only_outbox_is_refused_at_open_with_what_to_do() -> None:
    nobody = pwd.getpwnam("nobody")
    state = Path(tempfile.mkdtemp(prefix="hangup-listener-"))  # pytest's folders are root's alone
    seeded_outbox(state / "outbox.sqlite3", 1)
    for path in (state, state / "outbox.sqlite3"):  # the service user's folder; a read-only file
        os.chown(path, nobody.pw_uid, nobody.pw_gid)
    (state / "outbox.sqlite3").chmod(0o400)
    with as_nobody(), pytest.raises(OutboxError) as caught:
        open_outbox(OutboxConfig(state / "outbox.sqlite3"), [], structlog.get_logger())
    assert caught.value.code.startswith("SQLITE_READONLY"), caught.value
    assert not caught.value.transient  # exit 74, not a wait
    assert "writable by the service's user" in outbox_action(state / "outbox.sqlite3", caught.value)
    shutil.rmtree(state)


def test_a_taken_health_port_refuses_to_start_with_75(tmp_path: Path, receiver: Receiver) -> None:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    try:
        with FakeFreeSWITCH() as fake:
            config = write_config(tmp_path, fake, receiver.url())
            config.write_text(config.read_text().replace("port = 0", f"port = {taken.getsockname()[1]}"))
            daemon = Daemon(config)
            try:
                assert daemon.finish(timeout=20) == EX_TEMPFAIL
            finally:
                daemon.kill()
    finally:
        taken.close()
    line = critical(daemon)
    assert line["event"] == "listener.port_in_use"
    OutboxLock.acquire(tmp_path / "outbox.sqlite3").release()


def test_sigterm_while_the_outbox_is_locked_stops_within_the_deadline_and_logs_each_unstored_call(
        tmp_path: Path, receiver: Receiver) -> None:
    events = bodies(10)
    with FakeFreeSWITCH() as fake:
        config = write_config(tmp_path, fake, receiver.url())
        daemon = Daemon(config)
        operator = sqlite3.connect(tmp_path / "outbox.sqlite3", isolation_level=None)
        try:
            daemon.expect("listener.started")
            session = fake.next_session(timeout=15)
            operator.execute("BEGIN IMMEDIATE")
            send(session, events)
            daemon.expect("outbox.unavailable", timeout=20)
            started = time.monotonic()
            daemon.send(signal.SIGTERM)
            assert daemon.finish(timeout=30) == 0
            took = time.monotonic() - started
        finally:
            operator.execute("ROLLBACK")
            operator.close()
            daemon.kill()
    assert took < 15  # the writer gives up waiting at half the 10 s stop deadline
    lines = [json.loads(line) for line in daemon.output if line.startswith("{")]
    unstored = [e for e in lines if e["event"] == "outbox.write_failed"]
    assert {e["leg"]["channel_uuid"] for e in unstored} == {f"call-{n:04d}" for n in range(10)}
    assert not [e for e in lines if e["event"] == "leg.classified"]
