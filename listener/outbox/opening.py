"""How ``run`` opens the outbox: locked, known sound, proven writable, before READY.

In order: the lock (a second daemon on the same outbox is refused: ``OutboxLockedError``, exit 75);
the ``-wal`` beside the file (one that is not this outbox's own is refused: SQLite would replay it
over the rows, exit 74); the open itself with its write probe (a fault that can clear, such as
another client holding the write lock, is waited out up to ``wait_s``, then exit 75; one that
cannot, exit 74); ``PRAGMA quick_check`` within ``check_s`` (a damaged file is refused, exit 74; a
file too large to check in time is checked after start-up, beside the commits); one
``outbox.opened`` line with the pending and dead rows per endpoint. Start-up stays well inside
systemd's ``TimeoutStartSec`` (90 s by default).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gevent
import gevent.event
import gevent.threadpool

from listener.config.settings import OUTBOX_FILE, OutboxConfig, WebhookConfig
from listener.core.errors import OutboxError
from listener.core.retry import reconnect_delay
from listener.outbox.lock import OutboxLock, foreign_wal
from listener.outbox.store import Outbox, with_endpoints
from listener.outbox.writer import on_thread

WAIT_S = 30.0
CHECK_S = 10.0


@dataclass(frozen=True, slots=True)
class Opened:
    """The open, locked outbox; ``checked`` False when its integrity check is still to be done."""

    outbox: Outbox
    lock: OutboxLock
    checked: bool


def open_outbox(config: OutboxConfig, webhooks: Sequence[WebhookConfig], log: Any, *,
                wait_s: float = WAIT_S, check_s: float = CHECK_S,
                rand: Callable[[], float] = random.random) -> Opened:
    """Lock, verify and open the outbox of ``config`` for the daemon (see the module docstring)."""
    path = config.path
    lock = OutboxLock.acquire(path)
    try:
        _refuse_foreign_wal(path, lock)
        pool = gevent.threadpool.ThreadPool(1)
        try:
            outbox = _open(pool, config, log, wait_s, rand)
            try:
                lock.holding(path)
                checked = _check(pool, outbox, log, check_s)
                stats = with_endpoints(on_thread(pool, outbox.stats, time.time()), [w.name for w in webhooks])
            except BaseException:
                on_thread(pool, outbox.close)
                raise
        finally:
            pool.kill()
    except BaseException:
        lock.release()
        raise
    integrity = "ok" if checked else "deferred"
    log.info("outbox.opened", path=str(path), size_bytes=_size(path), integrity=integrity,
             endpoints={s.endpoint: {"pending": s.pending, "dead": s.dead} for s in stats})
    return Opened(outbox, lock, checked)


def _refuse_foreign_wal(path: Path, lock: OutboxLock) -> None:
    reason = foreign_wal(path, lock.previous)
    if reason is not None:
        raise OutboxError(
            f"{path}-wal does not belong to {path}: {reason}. SQLite would replay it over the outbox's "
            f"rows. Move {path}-wal and {path}-shm aside (keep them) and start again", "FOREIGN_WAL",
            transient=False)


def _open(pool: gevent.threadpool.ThreadPool, config: OutboxConfig, log: Any, wait_s: float,
          rand: Callable[[], float]) -> Outbox:
    deadline, failures = time.monotonic() + wait_s, 0
    while True:
        try:
            outbox: Outbox = on_thread(pool, _opened, config)
            break
        except OutboxError as exc:
            if not exc.transient:
                raise
            delay = reconnect_delay(failures, initial=0.25, cap=5.0, rand=rand)
            if failures == 0:
                log.error("outbox.unavailable", error=str(exc), code=exc.code, path=str(config.path),
                          retry_in_s=round(delay, 2), note=f"start-up waits for it up to {wait_s:g}s")
            if time.monotonic() + delay > deadline:
                raise
            failures += 1
            gevent.sleep(delay)
    if failures:
        log.info("outbox.recovered", retries=failures)
    return outbox


def _opened(config: OutboxConfig) -> Outbox:
    return Outbox.open(config.path, synchronous=config.synchronous)


def _check(pool: gevent.threadpool.ThreadPool, outbox: Outbox, log: Any, check_s: float) -> bool:
    findings = on_thread(pool, outbox.quick_check, check_s)
    if findings is None:
        log.warning("outbox.check_deferred", path=str(outbox.path),
                    reason=f"quick_check did not finish within {check_s:g}s: it runs after start-up")
        return False
    if findings:
        raise OutboxError(f"{outbox.path} is damaged: {'; '.join(findings)[:500]}", "SQLITE_CORRUPT",
                          transient=False)
    return True


def _size(path: Any) -> int | None:
    try:
        return int(path.stat().st_size)
    except OSError:
        return None


def old_outbox(configured: Path, cwd: Path, now: float) -> tuple[Path, int] | None:
    """An ``outbox.sqlite3`` in ``cwd`` (the default folder before 0.2.0) that is not the ``configured``
    outbox and holds pending deliveries: its path and how many. Read only, without leaving a file."""
    old = cwd / OUTBOX_FILE
    try:
        if not old.is_file() or (configured.exists() and old.samefile(configured)):
            return None
        wal = old.with_name(old.name + "-wal").exists()  # none: nothing writes it, read it as it is
        outbox = Outbox.open_readonly(old, immutable=not wal)
        try:
            pending = sum(s.pending for s in outbox.stats(now))
        finally:
            outbox.close()
    except (OSError, OutboxError):  # not ours, unreadable: nothing to say about it
        return None
    return (old, pending) if pending else None
