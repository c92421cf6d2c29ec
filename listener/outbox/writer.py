"""The daemon's one door to the outbox file: group-committed puts and serialized calls.

``OutboxWriter`` runs every SQLite call on one real thread (a gevent ``ThreadPool`` of size 1:
one connection, never used by two threads, no lock that monkey-patching could turn into a
greenlet lock), and groups the documents of concurrent ``put`` callers (one per node) into one
commit. ``put`` returns the endpoints that got new rows, so its caller (the pipeline) can wake
their delivery loops; the clock is injected.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ParamSpec, TypeVar

import gevent
import gevent.event
import gevent.threadpool
import structlog

from listener.config.settings import OutboxConfig, WebhookConfig
from listener.core.errors import OutboxClosedError, OutboxError
from listener.core.rejection import Rejection
from listener.core.signing import render
from listener.outbox.store import Entry, Outbox

P = ParamSpec("P")
T = TypeVar("T")
Clock = Callable[[], float]
log = structlog.get_logger(__name__)


def entry_for(document: Mapping[str, Any], webhooks: Sequence[WebhookConfig]) -> Entry:
    """The outbox entry of one document: its id, its body, the endpoints whose filters accept it."""
    event_id = document.get("id")
    if not isinstance(event_id, str) or not event_id:
        raise ValueError("a document needs a non-empty string id")
    return Entry(event_id, render(document), tuple(w.name for w in webhooks if w.matches(document)))


class OutboxWriter:
    """The daemon's only door to the outbox file: group-committed puts and serialized calls."""

    def __init__(
        self, outbox: Outbox, webhooks: Sequence[WebhookConfig], *, clock: Clock = time.time
    ) -> None:
        self.outbox = outbox
        self._webhooks = tuple(webhooks)
        self._clock = clock
        self._pool = gevent.threadpool.ThreadPool(1)
        self._queue: list[tuple[list[Entry], gevent.event.AsyncResult]] = []
        self._wake = gevent.event.Event()
        self._closing = False
        self.failure: OutboxError | None = None
        self._committer = gevent.spawn(self._commit_loop)

    @classmethod
    def open(cls, config: OutboxConfig, webhooks: Sequence[WebhookConfig], *, clock: Clock = time.time,
             ) -> OutboxWriter:
        """Open the outbox file of ``config`` (on the writer's thread) and wrap it."""
        pool = gevent.threadpool.ThreadPool(1)
        try:
            outbox = pool.apply(Outbox.open, (config.path,), {"synchronous": config.synchronous})
        finally:
            pool.kill()
        return cls(outbox, webhooks, clock=clock)

    @property
    def ready(self) -> bool:
        """Accepting documents: not closed and no outbox failure seen."""
        return not self._closing and self.failure is None

    def set_webhooks(self, webhooks: Sequence[WebhookConfig]) -> None:
        """Route documents put from now on by these endpoints' filters (a reload)."""
        self._webhooks = tuple(webhooks)

    def put(self, documents: Sequence[Mapping[str, Any]]) -> frozenset[str]:
        """Store ``documents``; returns only once they are durably committed: the endpoints that got
        new rows (in this commit, which may hold other callers' documents too).

        Raises ``OutboxError`` if the outbox failed (ingestion must stop) and ``OutboxClosedError``
        after ``close``. Many greenlets may call this at once: their documents share one commit.
        """
        if self.failure is not None:
            raise self.failure
        if self._closing:
            raise OutboxClosedError("the outbox writer is closed")
        entries = [e for e in (entry_for(d, self._webhooks) for d in documents) if e.endpoints]
        if not entries:
            return frozenset()
        waiter = gevent.event.AsyncResult()
        self._queue.append((entries, waiter))
        self._wake.set()
        created: frozenset[str] = waiter.get()
        return created

    def reject(self, rejection: Rejection) -> int:
        """Keep a frame that held no usable event (the store's bounded ``rejected`` table), on the
        outbox thread; returns how many older ones that dropped. Raises as ``put`` does."""
        if self.failure is not None:
            raise self.failure
        if self._closing:
            raise OutboxClosedError("the outbox writer is closed")
        return self.call(self.outbox.reject, (rejection,), self._clock())

    def call(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run ``fn`` (an ``Outbox`` method) on the outbox thread; an ``OutboxError`` fails the writer."""
        try:
            result: T = self._pool.apply(fn, args, kwargs)
        except OutboxError as exc:
            self._fail(exc)
            raise
        return result

    def _fail(self, exc: OutboxError) -> None:
        if self.failure is None:
            self.failure = exc
            log.critical("outbox.failed", error=str(exc), code=exc.code, path=str(self.outbox.path))

    def _commit_loop(self) -> None:
        while True:
            self._wake.wait()
            self._wake.clear()
            batch, self._queue = self._queue, []
            if batch:
                self._commit(batch)
            elif self._closing:
                return

    def _commit(self, batch: list[tuple[list[Entry], gevent.event.AsyncResult]]) -> None:
        entries = [entry for entries, _ in batch for entry in entries]
        try:
            if self.failure is not None:
                raise self.failure
            created = self.call(self.outbox.put, entries, self._clock())
        except OutboxError as exc:
            for _, waiter in batch:
                waiter.set_exception(exc)
            return
        endpoints = frozenset(created)
        for _, waiter in batch:
            waiter.set(endpoints)

    def close(self) -> None:
        """Refuse new documents, commit those already offered, close the file."""
        self._closing = True
        self._wake.set()
        self._committer.join()
        try:
            self._pool.apply(self.outbox.close)
        except OutboxError as exc:
            self._fail(exc)
        finally:
            self._pool.kill()
