"""All webhook endpoints together: one delivery loop per endpoint, started, reconfigured and stopped.

Each loop (``listener.webhooks.endpoint``) has its own keep-alive connection pool and at most
``max_concurrency`` requests in flight, so a slow or dead endpoint delays no other. The pipeline
hands each loop the rows a commit just created for its endpoint (sent at once when it has room, else
it is woken to claim them); otherwise each sleeps until its next row is due.
A row leaves the outbox only after its endpoint answered 2xx. The clock and the randomness are
injected so tests never sleep for retry timing; by default the clock is a ``SteadyClock`` (epoch
seconds that no wall-clock step moves), which the outbox writer stamping new rows must share.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from collections.abc import Callable, Sequence

import gevent
import gevent.pool
import structlog

from listener.config.settings import WebhookConfig
from listener.core.clock import SteadyClock
from listener.core.retry import Random
from listener.core.signing import safe_url
from listener.outbox.store import Delivery
from listener.outbox.writer import OutboxWriter
from listener.webhooks.endpoint import MAX_SLEEP_S, DeliveryMetrics, EndpointDelivery

Clock = Callable[[], float]
log = structlog.get_logger("listener.webhooks")


class WebhookSink:
    """Owns one ``EndpointDelivery`` loop per endpoint; ``start`` once, ``stop`` once."""

    def __init__(self, writer: OutboxWriter, webhooks: Sequence[WebhookConfig], *, clock: Clock | None = None,
                 wall: Clock | None = None, rng: Random | None = None, max_sleep_s: float = MAX_SLEEP_S,
                 metrics: DeliveryMetrics | None = None) -> None:
        """``clock`` times retries and probes (the writer's, shared); ``wall`` only signs requests."""
        self._writer = writer
        self.counts: Counter[tuple[str, str, str]] = Counter()
        """(endpoint, result, reason) -> attempts: delivered/ok, failed/<reason>, gave_up/<reason>."""
        self._metrics = metrics
        self._rng = rng or random.Random().random  # noqa: S311 - jitter, not cryptography
        self.clock = clock or SteadyClock.anchored(time.time, time.monotonic)
        self._wall = wall or time.time
        self._max_sleep = max_sleep_s
        self.endpoints = {w.name: self._endpoint(w) for w in webhooks}
        self._loops = gevent.pool.Group()
        self._loop_of: dict[str, gevent.Greenlet] = {}
        self._started = False
        self._stopping = False

    def _endpoint(self, config: WebhookConfig) -> EndpointDelivery:
        return EndpointDelivery(config, self._writer, clock=self.clock, wall=self._wall, rng=self._rng,
                                max_sleep_s=self._max_sleep, counts=self.counts, metrics=self._metrics)

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

    def hand(self, rows: Sequence[Delivery]) -> None:
        """Rows a commit just created: each endpoint sends its own without an outbox turn to claim them
        when it has room; else it is woken, and claims them itself."""
        by_endpoint: dict[str, list[Delivery]] = {}
        for row in rows:
            by_endpoint.setdefault(row.endpoint, []).append(row)
        for name, mine in by_endpoint.items():
            endpoint = self.endpoints.get(name)
            if endpoint is not None and not endpoint.offer(mine):
                endpoint.wake()

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
    def outbox_unavailable_since(self) -> float | None:
        """Since when (``clock``) a transient outbox fault keeps a loop waiting; None: none waits."""
        return min((s for e in self.endpoints.values() if (s := e.outbox_unavailable_since) is not None),
                   default=None)

    @property
    def healthy(self) -> bool:
        """No loop crashed and the outbox has not failed."""
        return self._writer.failure is None and all(e.crashed is None for e in self.endpoints.values())

    @property
    def ready(self) -> bool:
        """Started, not stopping, healthy, the writer accepts documents and no loop waits for the outbox."""
        return (self._started and not self._stopping and self.healthy and self._writer.ready
                and self.outbox_unavailable_since is None)

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
