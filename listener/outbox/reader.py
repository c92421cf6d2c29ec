"""Reads of the outbox that must never wait behind, or hold up, the commits of hangups.

``OutboxReader`` has its own thread and its own read-only connection (WAL: readers never block the
writer, nor it them). It serves the figures of ``/metrics`` (pending, dead and oldest pending age
per endpoint, a GROUP BY over the whole outbox) from a cache refreshed at most once every
``max_age_s``, and only when someone asks: a scrape never scans the outbox on the commit thread,
and however often it is scraped the scan runs at most once in ``max_age_s``. It also runs the
integrity check of a large outbox after start-up.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import gevent
import gevent.threadpool
import structlog

from listener.core.errors import OutboxError
from listener.outbox.store import EndpointStats, Outbox
from listener.outbox.writer import on_thread

log = structlog.get_logger(__name__)
STATS_MAX_AGE_S = 2.0
WAIT_S = 2.0


class OutboxReader:
    """One read-only connection on its own thread; ``close`` once."""

    def __init__(self, path: Path, *, max_age_s: float = STATS_MAX_AGE_S,
                 clock: Callable[[], float] = time.time) -> None:
        self.path = path
        self.max_age_s = max_age_s
        self._clock = clock
        self._pool = gevent.threadpool.ThreadPool(1)
        self._outbox: Outbox | None = None
        self._stats: tuple[EndpointStats, ...] | None = None
        self._stats_at = 0.0
        self._refreshing: gevent.Greenlet | None = None
        self.refreshes = 0

    def _run(self, fn: Callable[[Outbox], object]) -> object:
        def work() -> object:
            if self._outbox is None:
                self._outbox = Outbox.open_readonly(self.path)
            return fn(self._outbox)
        return on_thread(self._pool, work)

    def stats(self) -> tuple[EndpointStats, ...]:
        """The figures, refreshed first (on the reader's thread, waiting at most ``WAIT_S``) when they
        are ``max_age_s`` old or older; else, or if the refresh takes longer, the last ones."""
        now = time.monotonic()
        if now - self._stats_at >= self.max_age_s and (self._refreshing is None or self._refreshing.dead):
            self._refreshing = gevent.spawn(self._refresh)
        if self._refreshing is not None:
            self._refreshing.join(timeout=WAIT_S)
        if self._stats is None:
            raise OutboxError("outbox statistics not available yet", transient=True)
        aged = time.monotonic() - self._stats_at  # the oldest pending message kept ageing since
        return tuple(s if s.oldest_pending_age is None
                     else replace(s, oldest_pending_age=s.oldest_pending_age + aged) for s in self._stats)

    def _refresh(self) -> None:
        wall = self._clock()
        try:
            result = self._run(lambda outbox: outbox.stats(wall))
        except OutboxError as exc:
            log.warning("outbox.stats_unavailable", error=str(exc), code=exc.code)
            return
        assert isinstance(result, tuple)
        self._stats, self._stats_at = result, time.monotonic()
        self.refreshes += 1

    def quick_check(self) -> list[str]:
        """``PRAGMA quick_check`` without a deadline, beside the daemon's commits: [] when sound."""
        result = self._run(lambda outbox: outbox.quick_check(None))
        assert isinstance(result, list)
        return result

    def close(self) -> None:
        if self._refreshing is not None:
            self._refreshing.kill(block=True, timeout=1.0)
        try:
            if self._outbox is not None:
                on_thread(self._pool, self._outbox.close)
        except OutboxError:
            pass
        finally:
            self._pool.kill()
