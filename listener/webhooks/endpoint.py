"""One endpoint's delivery loop: claim due rows, POST them, settle the outcomes in batches.

The loop talks to the outbox once per turn, on the writer's thread: it records every outcome that
came back since the last turn (acks, reschedules, burials: one transaction) and claims as many due
rows as it has free request slots. A row stays claimed (excluded from the next claims) until its
outcome is recorded. Metrics and log lines see an outcome after it is recorded. While the
endpoint cannot be reached at all its ``Circuit`` is open: one probe at a time, the rest stays
pending (``listener.core.circuit``).
"""

from __future__ import annotations

import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

import gevent
import gevent.event
import gevent.pool
import structlog

from listener.config.settings import WebhookConfig
from listener.core.circuit import UNREACHABLE, Circuit
from listener.core.errors import OutboxError
from listener.core.retry import Random, next_delay
from listener.core.signing import (
    Delivered,
    DeliveryOutcome,
    GiveUp,
    Retry,
    build_request,
)
from listener.outbox.store import Delivery, Outbox
from listener.webhooks.transport import Transport

Clock = Callable[[], float]
Pause = Callable[[gevent.event.Event, float], bool]
"""How the loop waits for its wake-up event, at most so many seconds; True if it was set (woken)."""
log = structlog.get_logger("listener.webhooks")
PREFETCH = 256
"""Rows an endpoint holds ready beyond its request slots, claimed in one turn: a turn that waits behind
the daemon's commits never leaves the request slots without work."""


@dataclass(frozen=True, slots=True)
class Attempted:
    """One finished delivery attempt, as the metrics (and tests) see it."""

    endpoint: str
    event_id: str
    attempt: int
    outcome: DeliveryOutcome
    latency_s: float

    @property
    def kind(self) -> str:
        """``delivered``, ``failed`` (to be retried) or ``gave_up``: the outcome as metrics count it."""
        if isinstance(self.outcome, Delivered):
            return "delivered"
        return "gave_up" if isinstance(self.outcome, GiveUp) else "failed"


class DeliveryMetrics(Protocol):
    """Where each finished attempt is counted (``listener.service.metrics.Metrics``, a test's recorder)."""

    def delivery_attempted(self, attempt: Attempted) -> None: ...


class Writer(Protocol):
    """What the loop needs of ``listener.outbox.writer.OutboxWriter``."""

    outbox: Outbox

    def call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any: ...


@dataclass(frozen=True, slots=True)
class _Result:
    row: Delivery
    outcome: DeliveryOutcome
    latency_s: float
    probe: bool


@dataclass(slots=True)
class _Settlement:
    """The outbox changes of one turn, and what to log once they are recorded."""

    acks: list[int]
    reschedules: list[tuple[int, int, float, str]]
    buries: list[tuple[int, int, str]]
    delays: dict[int, float]


def _exchange(outbox: Outbox, settlement: _Settlement, endpoint: str, now: float, *, limit: int,
              claimed: tuple[int, ...]) -> tuple[Delivery, ...]:
    """On the writer's thread: record the outcomes, then claim up to ``limit`` due rows."""
    outbox.settle(settlement.acks, settlement.reschedules, settlement.buries, now)
    return outbox.due(endpoint, now, limit, claimed) if limit > 0 else ()


class EndpointDelivery:
    """The delivery loop of one endpoint: claim due rows, POST them, record the outcomes in batches."""

    def __init__(self, config: WebhookConfig, writer: Writer, *, clock: Clock, rng: Random,
                 poll_interval_s: float, counts: Counter[tuple[str, str, str]],
                 metrics: DeliveryMetrics | None = None, pause: Pause | None = None) -> None:
        self.config = config
        self._pause = pause or _wait
        self._writer = writer
        self._clock = clock
        self._rng = rng
        self._poll = poll_interval_s
        self._counts = counts
        self._metrics = metrics
        self._transport = Transport(config)
        self._claimed: set[int] = set()
        self._ready: deque[Delivery] = deque()
        self._results: list[_Result] = []
        self._running = 0
        self._room = max(PREFETCH, 2 * config.max_concurrency)
        self._batch = max(config.max_concurrency, 16)
        self._probing = False
        self.circuit = Circuit(rng)
        self._requests = gevent.pool.Group()
        self._wake = gevent.event.Event()
        self.stopping = False
        self.crashed: BaseException | None = None
        self._log = log.bind(endpoint=config.name)

    def wake(self) -> None:
        self._wake.set()

    @property
    def in_flight(self) -> int:
        """Requests sent and not answered yet."""
        return self._running

    def run(self) -> None:
        """Loop until ``stopping``; an outbox failure ends it (the writer is failed, ingestion stops)."""
        try:
            while not self.stopping:
                self._turn(claim=True)
                self._pause(self._wake, self._wait_s())
                self._wake.clear()
        except OutboxError as exc:
            self.crashed = exc
        except Exception as exc:  # noqa: BLE001 - a bug: recorded, logged, seen by `healthy`
            self.crashed = exc
            self._log.exception("webhook.loop_crashed")

    def _wait_s(self) -> float:
        if self.circuit.open and not self._probing:
            return max(min(self.circuit.probe_at - self._clock(), self._poll), 0.0)
        return self._poll

    def _turn(self, *, claim: bool) -> None:
        """Record what came back, then claim what the free slots (and the circuit) allow."""
        results, self._results = self._results, []
        now = self._clock()
        settlement = self._settle(results, now)
        limit = self._capacity(now) if claim else 0
        rows = self._writer.call(_exchange, self._writer.outbox, settlement, self.config.name, now,
                                 limit=limit, claimed=tuple(self._claimed))
        for result in results:
            self._claimed.discard(result.row.id)
            self._report(result, settlement, now)
        if self.circuit.open:
            self._release_ready()
        self._claim(rows)

    def _claim(self, rows: Sequence[Delivery]) -> None:
        """Hold ``rows`` ready (excluded from claims until settled) and fill the free request slots."""
        self._claimed.update(row.id for row in rows)
        self._ready.extend(rows)
        while self._ready and self._running < self.config.max_concurrency:
            self._running += 1
            self._probing = self.circuit.open
            self._requests.spawn(self._work, self._ready.popleft(), self._probing)

    def _capacity(self, now: float) -> int:
        """Rows to claim: enough for every free slot and one more round (prefetched), or one probe."""
        if not self.circuit.open:
            return self._room - self._running - len(self._ready)
        free = self._running < self.config.max_concurrency
        return 1 if free and not self._probing and self.circuit.may_probe(now) else 0

    def _release_ready(self) -> None:
        """Prefetched rows not sent (circuit open, stopping): unclaimed, they stay pending."""
        self._claimed.difference_update(row.id for row in self._ready)
        self._ready.clear()

    def _work(self, row: Delivery | None, probe: bool) -> None:
        """Send ``row``, then prefetched rows while there are any: no outbox turn between requests."""
        try:
            while row is not None:
                result = self._attempt(row, probe)
                self._results.append(result)
                if (len(self._results) >= self._batch or isinstance(result.outcome, Retry)
                        or len(self._ready) < self.config.max_concurrency):
                    self._wake.set()  # under load outcomes are recorded a batch at a time; refill early
                unreachable = isinstance(result.outcome, Retry) and result.outcome.reason in UNREACHABLE
                go_on = self._ready and not (probe or unreachable or self.stopping or self.circuit.open)
                row = self._ready.popleft() if go_on else None
        finally:
            self._running -= 1
            if self._running == 0 or not self._ready:
                self._wake.set()

    def _attempt(self, row: Delivery, probe: bool) -> _Result:
        cfg = self.config
        request = build_request(cfg.url, cfg.key, row.event_id, row.body, int(self._clock()))
        started = time.monotonic()
        outcome = self._transport.send(request, self._clock)
        return _Result(row, outcome, time.monotonic() - started, probe)

    def _settle(self, results: list[_Result], now: float) -> _Settlement:
        """The outbox changes for these outcomes; the circuit learns from each."""
        settlement = _Settlement([], [], [], {})
        for r in results:
            self._learn(r, now)
            attempt, outcome = r.row.attempts + 1, r.outcome
            if isinstance(outcome, Delivered):
                settlement.acks.append(r.row.id)
            elif isinstance(outcome, GiveUp):
                settlement.buries.append((r.row.id, attempt, _error(outcome.reason, outcome.status)))
            else:
                delay = next_delay(self.config.retry, attempt, retry_after=outcome.retry_after, rng=self._rng)
                if delay is None:
                    reason = f"schedule_exhausted after {outcome.reason}"
                    settlement.buries.append((r.row.id, attempt, _error(reason, outcome.status)))
                else:
                    settlement.delays[r.row.id] = delay
                    error = _error(outcome.reason, outcome.status)
                    settlement.reschedules.append((r.row.id, attempt, now + delay, error))
        return settlement

    def _learn(self, result: _Result, now: float) -> None:
        if result.probe:
            self._probing = False
        outcome = result.outcome
        if isinstance(outcome, Retry) and outcome.reason in UNREACHABLE:
            if self.circuit.unreachable(now, probe=result.probe):
                self._log.warning("webhook.circuit_opened", reason=outcome.reason,
                                  probe_in_s=round(self.circuit.probe_at - now, 1))
        elif self.circuit.open:
            opened = self.circuit.reached()
            self._log.info("webhook.circuit_closed", unreachable_for_s=round(now - (opened or now), 1))

    def _report(self, r: _Result, settlement: _Settlement, now: float) -> None:
        """Counters, the log line and the metrics, once the outcome is recorded."""
        attempt, outcome, name = r.row.attempts + 1, r.outcome, self.config.name
        latency_ms = round(r.latency_s * 1000, 1)
        if isinstance(outcome, Delivered):  # the one line per call is `call.classified`: this one is debug
            self._counts[(name, "delivered", "ok")] += 1
            self._log.debug("webhook.delivered", webhook_id=r.row.event_id, attempt=attempt,
                            status=outcome.status, latency_ms=latency_ms)
        else:
            self._report_failure(r, attempt, settlement.delays.get(r.row.id), now)
        if self._metrics is not None:
            self._metrics.delivery_attempted(Attempted(name, r.row.event_id, attempt, outcome, r.latency_s))

    def _report_failure(self, r: _Result, attempt: int, delay: float | None, now: float) -> None:
        outcome, name = r.outcome, self.config.name
        log_ = self._log.bind(webhook_id=r.row.event_id, attempt=attempt)
        if isinstance(outcome, GiveUp):
            self._counts[(name, "gave_up", outcome.reason)] += 1
            log_.error("webhook.gave_up", reason=outcome.reason, status=outcome.status)
            return
        assert isinstance(outcome, Retry)
        self._counts[(name, "failed", outcome.reason)] += 1
        if delay is None:
            self._counts[(name, "gave_up", "schedule_exhausted")] += 1
            log_.error("webhook.gave_up", reason=f"schedule_exhausted after {outcome.reason}",
                       status=outcome.status)
        else:
            log_.warning("webhook.delivery_failed", reason=outcome.reason, status=outcome.status,
                         latency_ms=round(r.latency_s * 1000, 1), retry_after=outcome.retry_after,
                         next_attempt_in_s=round(delay, 1), next_attempt_at=_iso(now + delay))

    def finish(self, deadline_s: float) -> bool:
        """Wait up to ``deadline_s`` for requests in flight (the rest stay pending); record the outcomes."""
        self._release_ready()
        done = self._requests.join(timeout=deadline_s)
        if not done:
            self._log.warning("webhook.shutdown_abandoned", in_flight=self._running)
            self._requests.kill(block=True, timeout=1.0)
        try:
            self._turn(claim=False)
        except OutboxError as exc:
            self.crashed = exc
        self._transport.close()
        return bool(done)


def _wait(event: gevent.event.Event, seconds: float) -> bool:
    return bool(event.wait(seconds))


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="seconds")


def _error(reason: str, status: int | None) -> str:
    return f"{reason} ({status})" if status else reason
