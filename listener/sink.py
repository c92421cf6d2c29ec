"""The gevent edge of webhook delivery: the outbox writer and the per-endpoint delivery loops.

``OutboxWriter`` runs every SQLite call on one real thread (a gevent ``ThreadPool`` of size 1:
one connection, never used by two threads, no lock that monkey-patching could turn into a
greenlet lock), and groups the documents of concurrent ``put`` callers into one commit.
``WebhookSink`` runs one loop per endpoint, each with its own keep-alive connection pool and
at most ``max_concurrency`` requests in flight, so a slow or dead endpoint delays no other.
A row leaves the outbox only after its endpoint answered 2xx. The clock and the randomness
are injected so tests never sleep for retry timing.
"""

from __future__ import annotations

import random
import ssl
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, ParamSpec, TypeVar

import gevent
import gevent.event
import gevent.pool
import gevent.threadpool
import structlog
from geventhttpclient import HTTPClient

from listener.errors import OutboxClosedError, OutboxError
from listener.outbox import Delivery, Entry, Outbox
from listener.retry import Random, next_delay
from listener.webhook import (
    Delivered,
    GiveUp,
    Outcome,
    Request,
    Retry,
    build_request,
    outcome_of_error,
    outcome_of_response,
    render,
)
from listener.webhook_config import OutboxConfig, WebhookConfig, safe_url


@dataclass(frozen=True, slots=True)
class Attempted:
    """One finished delivery attempt, as observers (metrics, tests) see it."""

    endpoint: str
    event_id: str
    attempt: int
    outcome: Outcome
    latency_s: float


Observer = Callable[[Attempted], None]
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
        """Call ``listener`` with the endpoint names that got new rows after each commit."""
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
            self.call(self.outbox.put, entries, self._clock())
        except OutboxError as exc:
            for _, waiter in batch:
                waiter.set_exception(exc)
            return
        for stored, waiter in batch:
            waiter.set(len(stored))
        endpoints = frozenset(name for entry in entries for name in entry.endpoints)
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


class _DeadlineExceededError(TimeoutError):
    """The whole request took longer than connect_timeout + timeout."""


class Transport:
    """One endpoint's keep-alive HTTP client; never raises for a failed request, returns an Outcome."""

    def __init__(self, config: WebhookConfig) -> None:
        self.config = config
        self._client = self._new_client()

    def _new_client(self) -> HTTPClient:
        cfg = self.config
        factory = None
        if cfg.url.startswith("https:"):
            cafile = str(cfg.ca_bundle) if cfg.ca_bundle else None
            factory = lambda **_: ssl.create_default_context(cafile=cafile)  # noqa: E731 - system store unless a bundle
        client = HTTPClient.from_url(
            cfg.url, concurrency=cfg.max_concurrency, connection_timeout=cfg.connect_timeout,
            network_timeout=cfg.timeout, ssl_context_factory=factory, headers={"connection": "keep-alive"})
        pool = client._connection_pool
        get_socket = pool.get_socket

        def get_socket_marked() -> Any:
            try:
                return get_socket()
            except Exception as exc:
                exc.connect_phase = True  # type: ignore[attr-defined]
                raise

        pool.get_socket = get_socket_marked  # type: ignore[method-assign]
        return client

    def send(self, request: Request, clock: Clock) -> Outcome:
        """POST ``request``; on any transport failure the pool is replaced (no half-read socket reused)."""
        client = self._client
        try:
            with gevent.Timeout(self.config.timeout + self.config.connect_timeout, _DeadlineExceededError):
                response = client.request(
                    "POST", request.target, body=request.body, headers=dict(request.headers))
                try:
                    response.read()
                finally:
                    response.release()
        except Exception as exc:  # noqa: BLE001 - every transport failure is an outcome, mapped below
            self._reset(client)
            return outcome_of_error(exc, connected=not getattr(exc, "connect_phase", False))
        retry_after = response.get("retry-after")
        if isinstance(retry_after, list):
            retry_after = retry_after[0] if retry_after else None
        return outcome_of_response(response.status_code, retry_after, clock())

    def _reset(self, client: HTTPClient) -> None:
        if client is self._client:
            self._client = self._new_client()
        client.close()

    def close(self) -> None:
        self._client.close()


class EndpointDelivery:
    """The delivery loop of one endpoint: claim due rows, POST them, record each outcome."""

    def __init__(self, config: WebhookConfig, writer: OutboxWriter, *, clock: Clock, rng: Random,
                 poll_interval_s: float, counts: Counter[tuple[str, str, str]],
                 observers: Sequence[Observer] = ()) -> None:
        self.config = config
        self._writer = writer
        self._clock = clock
        self._rng = rng
        self._poll = poll_interval_s
        self._counts = counts
        self._observers = observers
        self._transport = Transport(config)
        self._inflight: dict[int, gevent.Greenlet] = {}
        self._requests = gevent.pool.Group()
        self._wake = gevent.event.Event()
        self.stopping = False
        self.crashed: BaseException | None = None
        self._log = log.bind(endpoint=config.name)

    def wake(self) -> None:
        self._wake.set()

    def run(self) -> None:
        """Loop until ``stopping``; an outbox failure ends it (the writer is failed, ingestion stops)."""
        try:
            while not self.stopping:
                self._claim()
                self._wake.wait(self._poll)
                self._wake.clear()
        except OutboxError as exc:
            self.crashed = exc
        except Exception as exc:  # noqa: BLE001 - a bug: recorded, logged, seen by `healthy`
            self.crashed = exc
            self._log.exception("webhook.loop_crashed")

    def _claim(self) -> None:
        free = self.config.max_concurrency - len(self._inflight)
        if free <= 0:
            return
        rows = self._writer.call(self._writer.outbox.due, self.config.name, self._clock(), free,
                                 tuple(self._inflight))
        for row in rows:
            self._inflight[row.id] = self._requests.spawn(self._deliver, row)

    def _deliver(self, row: Delivery) -> None:
        try:
            attempt = row.attempts + 1
            cfg = self.config
            request = build_request(cfg.url, cfg.key, row.event_id, row.body, int(self._clock()))
            started = time.monotonic()
            outcome = self._transport.send(request, self._clock)
            latency = time.monotonic() - started
            self._record(row, attempt, outcome, latency)
            for observe in self._observers:
                observe(Attempted(self.config.name, row.event_id, attempt, outcome, latency))
        except OutboxError as exc:
            self.crashed = exc
            self.stopping = True
        finally:
            del self._inflight[row.id]
            self._wake.set()

    def _record(self, row: Delivery, attempt: int, outcome: Outcome, latency: float) -> None:
        now, log_ = self._clock(), self._log.bind(webhook_id=row.event_id, attempt=attempt)
        latency_ms = round(latency * 1000, 1)
        if isinstance(outcome, Delivered):
            self._writer.call(self._writer.outbox.ack, row.id)
            self._counts[(self.config.name, "delivered", "ok")] += 1
            log_.info("webhook.delivered", status=outcome.status, latency_ms=latency_ms)
            return
        if isinstance(outcome, GiveUp):
            self._bury(row, attempt, outcome.reason, outcome.status, log_)
            return
        delay = next_delay(self.config.retry, attempt, retry_after=outcome.retry_after, rng=self._rng)
        self._counts[(self.config.name, "failed", outcome.reason)] += 1
        if delay is None:
            self._bury(row, attempt, f"schedule_exhausted after {outcome.reason}", outcome.status, log_)
            return
        error = _describe(outcome)
        self._writer.call(self._writer.outbox.reschedule, row.id, attempt, now + delay, error, now)
        log_.warning("webhook.delivery_failed", reason=outcome.reason, status=outcome.status,
                     latency_ms=latency_ms, retry_after=outcome.retry_after,
                     next_attempt_in_s=round(delay, 1),
                     next_attempt_at=datetime.fromtimestamp(now + delay, UTC).isoformat(timespec="seconds"))

    def _bury(self, row: Delivery, attempt: int, reason: str, status: int | None, log_: Any) -> None:
        error = f"{reason} ({status})" if status else reason
        self._writer.call(self._writer.outbox.bury, row.id, attempt, error, self._clock())
        self._counts[(self.config.name, "gave_up", reason.split(maxsplit=1)[0])] += 1
        log_.error("webhook.gave_up", reason=reason, status=status)

    def finish(self, deadline_s: float) -> bool:
        """Wait up to ``deadline_s`` for requests in flight; kill the rest (they stay pending)."""
        done = self._requests.join(timeout=deadline_s)
        if not done:
            self._log.warning("webhook.shutdown_abandoned", in_flight=len(self._inflight))
            self._requests.kill(block=True, timeout=1.0)
        self._transport.close()
        return bool(done)


def _describe(outcome: Retry) -> str:
    return f"{outcome.reason} ({outcome.status})" if outcome.status else outcome.reason


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
