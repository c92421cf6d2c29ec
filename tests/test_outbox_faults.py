"""The outbox's faults, one class at a time: those that can clear are waited out and nothing is lost;
those that cannot are refused at open (or fail the writer) with a fault that says so.

Real SQLite files and real SQLite clients; no sleeps: waits are on the writer's ``changed`` event.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gevent
import pytest
from structlog.testing import capture_logs

from listener.config.settings import OutboxConfig, WebhookConfig
from listener.core.document import LEG_CLASSIFIED
from listener.core.errors import OutboxError
from listener.outbox.lock import OutboxLock, OutboxLockedError, Record, foreign_wal
from listener.outbox.opening import open_outbox
from listener.outbox.reader import OutboxReader
from listener.outbox.store import Entry, Outbox
from listener.outbox.writer import OutboxWriter

HOOK = WebhookConfig(name="crm", url="http://127.0.0.1:9/hook", keys=(b"k" * 32,),
                     types=frozenset({LEG_CLASSIFIED}))  # each bare document is a one-leg call: legs only


def doc(n: int) -> dict[str, Any]:
    return {"id": f"call-{n}", "status": "answered", "leg": "a", "direction": "inbound"}


@pytest.fixture
def made(tmp_path: Path) -> Iterator[list[OutboxWriter]]:
    writers: list[OutboxWriter] = []
    yield writers
    for writer in writers:
        writer.close(deadline_s=0.5)


def writer_at(path: Path, made: list[OutboxWriter], *, busy_timeout_s: float = 5.0) -> OutboxWriter:
    outbox = Outbox.open(path, busy_timeout_s=busy_timeout_s)
    writer = OutboxWriter(outbox, [HOOK], rand=lambda: 0.5, retry_initial_s=0.05, retry_max_s=0.2)
    made.append(writer)
    return writer


def wait_changed(writer: OutboxWriter, timeout: float = 5.0) -> None:
    assert writer.changed.wait(timeout), "the writer's state never changed"
    writer.changed.clear()


def pending(path: Path) -> int:
    with sqlite3.connect(path) as db:
        (count,) = db.execute("SELECT count(*) FROM delivery WHERE state = 'pending'").fetchone()
    return int(count)


# -- faults that can clear -------------------------------------------------------------------------

def test_a_full_disk_pauses_puts_and_they_commit_once_space_is_freed(tmp_path: Path, made: Any) -> None:
    writer = writer_at(tmp_path / "outbox.sqlite3", made)
    writer.put([doc(0)])
    db = writer.outbox._db
    (pages,) = writer.call(lambda: db.execute("PRAGMA page_count").fetchone())
    writer.call(db.execute, f"PRAGMA max_page_count={pages}")  # the disk is full from here on
    with capture_logs() as logs:
        putting = [gevent.spawn(writer.put, [doc(n) | {"padding": "x" * 20_000}]) for n in range(1, 4)]
        wait_changed(writer)
        assert writer.unavailable is not None
        assert writer.unavailable.code == "SQLITE_FULL"
        assert not writer.ready
        assert writer.paused_since is not None
        gevent.sleep(0.3)  # several retries while the disk stays full: the puts keep waiting
        assert not any(g.ready() for g in putting)
        writer.call(db.execute, "PRAGMA max_page_count=1073741823")  # space freed
        wait_changed(writer)
        gevent.joinall(putting, timeout=5, raise_error=True)
    assert [g.value for g in putting] == [frozenset({"crm"})] * 3
    assert writer.ready
    assert writer.unavailable is None
    assert writer.failure is None
    assert pending(tmp_path / "outbox.sqlite3") == 4
    events = [e["event"] for e in logs]
    assert events.count("outbox.unavailable") == 1
    assert events.count("outbox.recovered") == 1
    recovered = next(e for e in logs if e["event"] == "outbox.recovered")
    assert recovered["retries"] >= 2


def test_another_client_holding_the_write_lock_pauses_puts_until_it_lets_go(
        tmp_path: Path, made: Any) -> None:
    path = tmp_path / "outbox.sqlite3"
    writer = writer_at(path, made, busy_timeout_s=0.1)
    operator = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    operator.execute("BEGIN IMMEDIATE")  # an operator's shell, a backup, a VACUUM: holds the write lock
    putting = gevent.spawn(writer.put, [doc(1)])
    wait_changed(writer)
    assert writer.unavailable is not None
    assert writer.unavailable.code.startswith("SQLITE_BUSY")
    assert writer.unavailable.transient
    assert not putting.ready()
    operator.execute("COMMIT")
    operator.close()
    assert putting.get(timeout=5) == frozenset({"crm"})
    assert writer.failure is None
    assert writer.ready
    assert pending(path) == 1


def test_shutdown_gives_up_on_a_fault_after_its_deadline_and_says_so_to_every_caller(
        tmp_path: Path, made: Any) -> None:
    path = tmp_path / "outbox.sqlite3"
    writer = writer_at(path, made, busy_timeout_s=0.05)
    operator = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    operator.execute("BEGIN IMMEDIATE")
    try:
        waiting = gevent.spawn(_raised, writer.put, [doc(1)])
        wait_changed(writer)
        writer.give_up_after(0.2)
        raised = waiting.get(timeout=5)
        assert isinstance(raised, OutboxError)
        assert raised.transient  # the pipeline logs each document whole; the app does not stop on it
        started = time.monotonic()
        with pytest.raises(OutboxError):
            writer.put([doc(2)])  # no more waiting once shutting down
        assert time.monotonic() - started < 0.5
    finally:
        operator.execute("ROLLBACK")
        operator.close()


def test_a_fault_that_cannot_clear_fails_the_writer_for_good(tmp_path: Path, made: Any) -> None:
    writer = writer_at(tmp_path / "outbox.sqlite3", made)

    def damaged(*_: Any) -> Any:
        raise OutboxError("outbox put failed: database disk image is malformed", "SQLITE_CORRUPT")

    writer.outbox.take = damaged  # type: ignore[method-assign]
    with pytest.raises(OutboxError):
        writer.put([doc(1)])
    assert writer.failure is not None
    assert not writer.failure.transient
    assert writer.changed.is_set()
    with pytest.raises(OutboxError):
        writer.put([doc(2)])


def test_transient_means_the_fault_can_clear() -> None:
    for code in ("SQLITE_BUSY", "SQLITE_BUSY_SNAPSHOT", "SQLITE_LOCKED", "SQLITE_FULL", "SQLITE_IOERR_WRITE",
                 "SQLITE_CANTOPEN"):
        assert OutboxError("x", code).transient, code
    for code in ("SQLITE_CORRUPT", "SQLITE_NOTADB", "SQLITE_READONLY", "SQLITE_READONLY_DBMOVED", "",
                 "FOREIGN_WAL"):
        assert not OutboxError("x", code).transient, code


# -- knowing the outbox at open --------------------------------------------------------------------

def _raised(fn: Any, *args: Any) -> BaseException | None:
    try:
        fn(*args)
    except OutboxError as exc:
        return exc
    return None


def make_outbox(path: Path, rows: int) -> None:
    outbox = Outbox.open(path)
    outbox.put([Entry(f"id-{n}", "x" * 300, ("crm",)) for n in range(rows)], time.time())
    outbox.close()


def test_a_damaged_file_is_refused_at_open_as_a_fault_that_cannot_clear(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite3"
    make_outbox(path, 5000)
    size = path.stat().st_size
    with path.open("r+b") as f:  # garbage mid-file
        f.seek(size // 2)
        f.write(os.urandom(16384))
    with pytest.raises(OutboxError) as caught:
        open_outbox(OutboxConfig(path), [HOOK], _NullLog())
    assert caught.value.code == "SQLITE_CORRUPT"
    assert not caught.value.transient
    OutboxLock.acquire(path).release()  # the refusal left the lock free


def test_a_large_file_is_checked_after_start_up_beside_the_commits(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite3"
    make_outbox(path, 5000)
    log = _NullLog()
    opened = open_outbox(OutboxConfig(path), [HOOK], log, check_s=0.0)  # no time: deferred
    assert not opened.checked
    assert "outbox.check_deferred" in log.events
    reader = OutboxReader(path)
    try:
        assert reader.quick_check() == []
    finally:
        reader.close()
        opened.outbox.close()
        opened.lock.release()


def test_opening_says_what_is_pending_and_dead_per_endpoint(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite3"
    make_outbox(path, 3)
    log = _NullLog()
    billing = WebhookConfig("billing", "http://127.0.0.1:9/", (b"k",))
    opened = open_outbox(OutboxConfig(path), [HOOK, billing], log)
    opened.outbox.close()
    opened.lock.release()
    (line,) = [kw for event, kw in log.lines if event == "outbox.opened"]
    assert line["endpoints"] == {"billing": {"pending": 0, "dead": 0}, "crm": {"pending": 3, "dead": 0}}
    assert line["integrity"] == "ok"


def test_a_file_of_another_application_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "other.sqlite3"
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA application_id=42")
        db.execute("CREATE TABLE t (x)")
    db.close()
    with pytest.raises(OutboxError) as caught:
        Outbox.open(path)
    assert "not a hangup-listener outbox" in str(caught.value)
    assert not caught.value.transient


def test_files_are_private_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        path = tmp_path / "state" / "deeper" / "outbox.sqlite3"
        outbox = Outbox.open(path)
        outbox.put([Entry("id-1", "{}", ("crm",))], time.time())
        modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in path.parent.iterdir()}
        outbox.close()
    finally:
        os.umask(old)
    assert modes["outbox.sqlite3"] == 0o600
    assert modes["outbox.sqlite3-wal"] == 0o600
    assert modes["outbox.sqlite3-shm"] == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(path.parent.parent.stat().st_mode) == 0o700


def test_files_an_older_version_left_world_readable_are_made_private(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite3"
    make_outbox(path, 1)
    path.chmod(0o644)
    Outbox.open(path).close()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


# -- one daemon per outbox, and a -wal that is not its own -------------------------------------------

def test_the_lock_refuses_a_second_holder_naming_the_first(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite3"
    first = OutboxLock.acquire(path)
    first.holding(Path(shutil.copy(__file__, tmp_path / "db")))  # any existing file stands for the database
    with pytest.raises(OutboxLockedError) as caught:
        OutboxLock.acquire(path)
    assert caught.value.pid == os.getpid()
    assert str(path) + ".lock" in str(caught.value)
    first.release()
    OutboxLock.acquire(path).release()  # free again once the holder is gone


def _with_wal(path: Path, rows: int) -> sqlite3.Connection:
    """An outbox whose last ``rows`` commits are still in its ``-wal`` (the connection is kept open)."""
    make_outbox(path, 1)
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA wal_autocheckpoint=0")
    for n in range(rows):
        db.execute("INSERT INTO message (event_id, body, created_at) VALUES (?, '{}', 0)", (f"wal-{n}",))
    return db


def test_a_wal_beside_an_outbox_that_was_closed_cleanly_is_foreign(tmp_path: Path) -> None:
    ours, theirs = tmp_path / "ours" / "outbox.sqlite3", tmp_path / "theirs" / "outbox.sqlite3"
    ours.parent.mkdir()
    theirs.parent.mkdir()
    opened = open_outbox(OutboxConfig(ours), [HOOK], _NullLog())
    opened.outbox.close()
    opened.lock.closed(ours)
    opened.lock.release()
    other = _with_wal(theirs, 50)
    shutil.copy(theirs.with_name("outbox.sqlite3-wal"), ours.with_name("outbox.sqlite3-wal"))
    other.close()
    with pytest.raises(OutboxError) as caught:
        open_outbox(OutboxConfig(ours), [HOOK], _NullLog())
    assert caught.value.code == "FOREIGN_WAL"
    assert not caught.value.transient
    assert "aside" in str(caught.value)
    assert ours.with_name("outbox.sqlite3-wal").stat().st_size > 0  # untouched: nothing replayed


def test_a_wal_beside_a_replaced_database_file_is_foreign(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite3"
    record = Record(pid=1, clean=False, device=path.parent.stat().st_dev, inode=1)  # a file since replaced
    db = _with_wal(path, 10)
    try:
        reason = foreign_wal(path, record)
    finally:
        db.close()
    assert reason is not None
    assert "replaced" in reason


def test_the_wal_a_crashed_daemon_left_is_its_own_and_nothing_is_lost(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite3"
    make_outbox(path, 1)
    lock = OutboxLock.acquire(path)
    lock.holding(path)  # the daemon had it open and never closed it: SIGKILL
    lock.release()
    wal = path.with_name("outbox.sqlite3-wal")
    db = _with_wal_kept(path, 25)
    saved = wal.read_bytes()
    db.close()
    wal.write_bytes(saved)  # as a crash leaves it: the commits still in the -wal
    opened = open_outbox(OutboxConfig(path), [HOOK], _NullLog())
    query = "SELECT count(*) FROM message WHERE event_id LIKE 'wal-%'"
    (count,) = opened.outbox._db.execute(query).fetchone()
    opened.outbox.close()
    opened.lock.release()
    assert count == 25


def _with_wal_kept(path: Path, rows: int) -> sqlite3.Connection:
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA wal_autocheckpoint=0")
    for n in range(rows):
        db.execute("INSERT INTO message (event_id, body, created_at) VALUES (?, '{}', 0)", (f"wal-{n}",))
    return db


class _NullLog:
    """A logger that keeps the events it was given."""

    def __init__(self) -> None:
        self.lines: list[tuple[str, dict[str, Any]]] = []

    @property
    def events(self) -> list[str]:
        return [event for event, _ in self.lines]

    def _log(self, event: str, **kw: Any) -> None:
        self.lines.append((event, kw))

    info = warning = error = critical = _log


def test_the_writer_stamping_rows_and_the_delivery_loops_read_one_steady_clock(
        tmp_path: Path, made: Any) -> None:
    from listener.app import App  # noqa: PLC0415
    from listener.config.settings import Config, HealthConfig  # noqa: PLC0415
    from listener.core.clock import SteadyClock  # noqa: PLC0415

    writer = writer_at(tmp_path / "outbox.sqlite3", made)
    app = App(Config(webhooks=(HOOK,), health=HealthConfig(enabled=False)), writer)
    assert app.sink is not None
    assert app.sink.clock is writer.clock  # a wall-clock step since start moves neither apart
    assert isinstance(writer.clock, SteadyClock)
    if app.reader is not None:
        app.reader.close()


# -- start-up waits a fault out only so long; the pause is no hang; metrics never scan on the commit thread --

def test_an_outbox_locked_through_the_start_up_wait_fails_as_a_fault_that_can_clear(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite3"
    make_outbox(path, 1)
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("PRAGMA locking_mode=EXCLUSIVE")
    other.execute("BEGIN EXCLUSIVE")  # not even readable: the open itself cannot proceed
    log = _NullLog()
    try:
        with pytest.raises(OutboxError) as caught:
            open_outbox(OutboxConfig(path), [HOOK], log, wait_s=0.5)
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert caught.value.transient  # run exits 75 (EX_TEMPFAIL): free it and start again
    assert "outbox.unavailable" in log.events
    OutboxLock.acquire(path).release()


def test_status_and_liveness_say_paused_not_stuck_while_a_fault_is_waited_out(
        tmp_path: Path, made: Any) -> None:
    from listener.app import App  # noqa: PLC0415
    from listener.config.settings import Config, HealthConfig, Node  # noqa: PLC0415
    from listener.service.runtime import source_problem  # noqa: PLC0415

    path = tmp_path / "outbox.sqlite3"
    writer = writer_at(path, made, busy_timeout_s=0.05)
    app = App(Config(nodes=(Node("pbx1"),), webhooks=(HOOK,), health=HealthConfig(enabled=False)), writer)
    operator = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    operator.execute("BEGIN IMMEDIATE")
    try:
        waiting = gevent.spawn(_raised, writer.put, [doc(1)])
        wait_changed(writer)
        assert "outbox unavailable (SQLITE_BUSY), ingestion paused" in app.service.status()
        assert not app.service.readiness.ready()
        source = app.sources[0]
        source._state = "connected"
        source.stats.last_received = time.monotonic() - 3600  # nothing read for an hour: the pause
        source.stats.handling_since = time.monotonic() - 3600
        assert app.service.esl_problem() is None
        assert source_problem(source, time.monotonic()) is not None  # without the pause: stuck
    finally:
        operator.execute("ROLLBACK")
        operator.close()
    assert waiting.get(timeout=5) is None
    assert app.service.esl_problem() is None  # just resumed: counted from the end of the pause
    if app.reader is not None:
        app.reader.close()


def test_metrics_never_scan_the_outbox_on_the_commit_thread_and_at_a_bounded_rate(
        tmp_path: Path, made: Any) -> None:
    from listener.app import App  # noqa: PLC0415
    from listener.config.settings import Config, HealthConfig  # noqa: PLC0415

    writer = writer_at(tmp_path / "outbox.sqlite3", made)
    writer.put([doc(n) for n in range(3)])

    def on_the_commit_thread(*_: Any) -> Any:
        raise AssertionError("a scrape scanned the outbox on the thread that commits hangups")

    writer.outbox.stats = on_the_commit_thread  # type: ignore[method-assign]
    app = App(Config(webhooks=(HOOK,), health=HealthConfig(enabled=False)), writer)
    assert app.reader is not None
    try:
        scrapes = [app.metrics.render().decode() for _ in range(50)]
        assert 'hangup_listener_outbox_pending_messages{endpoint="crm"} 3.0' in scrapes[-1]
        assert app.reader.refreshes == 1  # 50 scrapes within 2 s: one scan, on the reader's own thread
    finally:
        app.reader.close()


@pytest.mark.skipif(os.geteuid() != 0, reason="only root creates files for another user")
def test_a_file_root_creates_for_an_outbox_belongs_to_the_folders_owner(tmp_path: Path) -> None:
    import pwd  # noqa: PLC0415

    nobody = pwd.getpwnam("nobody")
    folder = tmp_path / "state"
    folder.mkdir()
    os.chown(folder, nobody.pw_uid, nobody.pw_gid)
    Outbox.open(folder / "outbox.sqlite3").close()  # an `outbox` command run with sudo on a new file
    OutboxLock.acquire(folder / "outbox.sqlite3").release()
    for name in ("outbox.sqlite3", "outbox.sqlite3.lock"):
        st = (folder / name).stat()
        assert (st.st_uid, st.st_gid) == (nobody.pw_uid, nobody.pw_gid), name
        assert stat.S_IMODE(st.st_mode) == 0o600, name


# -- legs taken from either source ---------------------------------------------------------------

def leg_doc(n: int, node: str = "pbx1") -> dict[str, Any]:
    return doc(n) | {"channel_uuid": f"uuid-{n}", "node": {"name": node}}


def test_a_leg_taken_before_is_neither_stored_nor_reported_new_again(tmp_path: Path, made: Any) -> None:
    writer = writer_at(tmp_path / "outbox.sqlite3", made)
    first = writer.put([leg_doc(1), leg_doc(2)])
    assert first == frozenset({"crm"})
    assert first.duplicates == frozenset()
    again = writer.put([leg_doc(2), leg_doc(3)])  # leg 2 again: from the other source
    assert again.duplicates == frozenset({"call-2"})
    assert pending(tmp_path / "outbox.sqlite3") == 3
    assert writer.taken_unique_ids(["uuid-1", "uuid-3", "uuid-9"]) == frozenset({"uuid-1", "uuid-3"})
    assert writer.last_taken_at("pbx1") is not None
    assert writer.last_taken_at("other") is None


def test_the_same_leg_from_both_sources_in_one_commit_is_new_for_one_of_them(
        tmp_path: Path, made: Any) -> None:
    writer = writer_at(tmp_path / "outbox.sqlite3", made)
    both = [gevent.spawn(writer.put, [leg_doc(7)]) for _ in range(2)]  # queued together: one commit
    gevent.joinall(both, timeout=5, raise_error=True)
    assert sorted(len(g.value.duplicates) for g in both) == [0, 1]
    assert pending(tmp_path / "outbox.sqlite3") == 1


def test_a_leg_no_endpoint_wants_is_still_remembered(tmp_path: Path, made: Any) -> None:
    outbox = Outbox.open(tmp_path / "outbox.sqlite3")
    writer = OutboxWriter(outbox, [], rand=lambda: 0.5)  # cdr_dir without webhooks
    made.append(writer)
    assert writer.put([leg_doc(1)]) == frozenset()
    assert writer.put([leg_doc(1)]).duplicates == frozenset({"call-1"})


def test_legs_taken_longer_ago_than_the_retention_are_forgotten(tmp_path: Path, made: Any) -> None:
    outbox = Outbox.open(tmp_path / "outbox.sqlite3")
    clock = [1000.0]
    writer = OutboxWriter(outbox, [HOOK], clock=lambda: clock[0], taken_retention_s=3600.0)
    made.append(writer)
    writer.put([leg_doc(1)])
    clock[0] += 1800.0
    writer.put([leg_doc(2)])
    clock[0] += 2400.0  # leg 1 is 4,200 s old, leg 2 2,400 s
    assert writer.forget_old() == 1
    assert writer.taken_unique_ids(["uuid-1", "uuid-2"]) == frozenset({"uuid-2"})
