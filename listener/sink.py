"""The gevent edge of webhook delivery: the outbox writer and the per-endpoint delivery loops.

``OutboxWriter`` runs every SQLite call on one real thread (a gevent ``ThreadPool`` of size 1:
one connection, never used by two threads, no lock that monkey-patching could turn into a
greenlet lock), and groups the documents of concurrent ``put`` callers into one commit.
``WebhookSink`` runs one loop per endpoint (``listener.delivery``), each with its own keep-alive
connection pool and at most ``max_concurrency`` requests in flight, so a slow or dead endpoint
delays no other.
A row leaves the outbox only after its endpoint answered 2xx. The clock and the randomness
are injected so tests never sleep for retry timing.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ParamSpec, TypeVar

import gevent
import gevent.event
import gevent.pool
import gevent.threadpool
import structlog

from listener.delivery import Attempted, EndpointDelivery, Observer, Transport
from listener.errors import OutboxClosedError, OutboxError
from listener.outbox import Entry, Outbox
from listener.retry import Random
from listener.webhook import render
from listener.webhook_config import OutboxConfig, WebhookConfig, safe_url

__all__ = ["Attempted", "EndpointDelivery", "OutboxWriter", "Transport", "WebhookSink", "entry_for"]
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
        self._listeners: list[Callable[[frozenset[str]], None]] = []
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

    def on_commit(self, listener: Callable[[frozenset[str]], None]) -> None:
        """Call ``listener`` after each commit with the endpoint names it created rows for (maybe none)."""
        self._listeners.append(listener)

    def put(self, documents: Sequence[Mapping[str, Any]]) -> int:
        """Store ``documents``; returns (how many were stored) only once they are durably committed.

        Raises ``OutboxError`` if the outbox failed (ingestion must stop) and ``OutboxClosedError``
        after ``close``. Many greenlets may call this at once: their documents share one commit.
        """
        if self.failure is not None:
            raise self.failure
        if self._closing:
            raise OutboxClosedError("the outbox writer is closed")
        entries = [e for e in (entry_for(d, self._webhooks) for d in documents) if e.endpoints]
        if not entries:
            return 0
        waiter = gevent.event.AsyncResult()
        self._queue.append((entries, waiter))
        self._wake.set()
        result: int = waiter.get()
        return result

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
        for stored, waiter in batch:
            waiter.set(len(stored))
        endpoints = frozenset(created)
        for listener in self._listeners:
            listener(endpoints)

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


class WebhookSink:
    """Owns one ``EndpointDelivery`` loop per endpoint; ``start`` once, ``stop`` once."""

    def __init__(self, writer: OutboxWriter, webhooks: Sequence[WebhookConfig], *, clock: Clock = time.time,
                 rng: Random | None = None, poll_interval_s: float = 1.0) -> None:
        self._writer = writer
        self.counts: Counter[tuple[str, str, str]] = Counter()
        """(endpoint, result, reason) -> attempts: delivered/ok, failed/<reason>, gave_up/<reason>."""
        self.observers: list[Observer] = []
        self._rng = rng or random.Random().random  # noqa: S311 - jitter, not cryptography
        self._clock = clock
        self._poll = poll_interval_s
        self.endpoints = {w.name: self._endpoint(w) for w in webhooks}
        self._loops = gevent.pool.Group()
        self._loop_of: dict[str, gevent.Greenlet] = {}
        self._started = False
        self._stopping = False
        writer.on_commit(self.wake)

    def _endpoint(self, config: WebhookConfig) -> EndpointDelivery:
        return EndpointDelivery(config, self._writer, clock=self._clock, rng=self._rng,
                                poll_interval_s=self._poll, counts=self.counts, observers=self.observers)

    def _spawn(self, endpoint: EndpointDelivery) -> None:
        self._loop_of[endpoint.config.name] = self._loops.spawn(endpoint.run)
        log.info("webhook.started", endpoint=endpoint.config.name, url=safe_url(endpoint.config.url))

    def start(self) -> None:
        """Start every endpoint's loop; pending rows (from a previous run too) are picked up at once."""
        self._started = True
        for endpoint in self.endpoints.values():
            self._spawn(endpoint)

    def reconfigure(self, webhooks: Sequence[WebhookConfig], deadline_s: float = 10.0) -> None:
        """Apply reloaded endpoints: new ones start; removed or changed ones finish what is in flight.

        New documents are routed by the new filters at once. A removed endpoint's rows stay in the
        outbox (``outbox stats`` shows them, ``outbox purge --endpoint`` removes them).
        """
        wanted = {w.name: w for w in webhooks}
        self._writer.set_webhooks(webhooks)
        retired = [name for name, e in self.endpoints.items() if wanted.get(name) != e.config]
        for name in retired:
            self._retire(name, deadline_s)
        added = [name for name in wanted if name not in self.endpoints]
        for name in added:
            self.endpoints[name] = endpoint = self._endpoint(wanted[name])
            if self._started and not self._stopping:
                self._spawn(endpoint)
        log.info("webhook.reconfigured", started=added, stopped=[n for n in retired if n not in wanted])

    def _retire(self, name: str, deadline_s: float) -> None:
        endpoint = self.endpoints.pop(name)
        endpoint.stopping = True
        endpoint.wake()
        loop = self._loop_of.pop(name, None)
        if loop is not None:
            loop.join(timeout=deadline_s)
            loop.kill(block=True, timeout=1.0)
        endpoint.finish(deadline_s)

    def wake(self, endpoints: frozenset[str] | None = None) -> None:
        """Make the named loops (all by default) look for due rows now, e.g. after a commit."""
        for name, endpoint in self.endpoints.items():
            if endpoints is None or name in endpoints:
                endpoint.wake()

    @property
    def crashed(self) -> tuple[str, ...]:
        """The endpoints whose loop crashed."""
        return tuple(name for name, e in self.endpoints.items() if e.crashed is not None)

    @property
    def healthy(self) -> bool:
        """No loop crashed and the outbox has not failed."""
        return self._writer.failure is None and all(e.crashed is None for e in self.endpoints.values())

    @property
    def ready(self) -> bool:
        """Started, not stopping, healthy, and the writer accepts documents."""
        return self._started and not self._stopping and self.healthy and self._writer.ready

    def stop(self, deadline_s: float) -> bool:
        """Claim nothing new, let requests in flight finish within ``deadline_s``; True if all did."""
        self._stopping = True
        for endpoint in self.endpoints.values():
            endpoint.stopping = True
            endpoint.wake()
        self._loops.join(timeout=deadline_s)
        self._loops.kill(block=True, timeout=1.0)
        deadline = time.monotonic() + deadline_s
        results = [e.finish(max(deadline - time.monotonic(), 0.0)) for e in self.endpoints.values()]
        log.info("webhook.stopped", finished_in_flight=all(results))
        return all(results)
