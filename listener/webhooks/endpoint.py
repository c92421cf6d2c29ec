"""One endpoint's delivery loop: claim due rows, POST them, settle the outcomes in batches.

The loop talks to the outbox once per turn, on the writer's thread: it records every outcome that
came back since the last turn (acks, reschedules, burials: one transaction) and claims as many due
rows as it has free request slots. The rows a commit creates are handed to the loop by that commit
(``offer``) and sent at once, with no turn to claim them, while the endpoint is reachable and has room.
A row stays claimed (excluded from the next claims) until its outcome is recorded. Metrics and log
lines see an outcome after it is recorded. While the endpoint cannot be reached at all its ``Circuit``
is open: one probe at a time, the rest stays pending (``listener.core.circuit``).

Invariants:

1. No busy loop. Between turns the loop sleeps until the next row may be sent (its due time, and
   while the circuit is open not before the probe time), at most ``max_sleep_s``; a commit whose rows
   it could not take (``wake``) or an answer wakes it sooner. Every time is read from one clock
   (``SteadyClock`` by default: a wall-clock step moves no due time nor probe); the wall clock only
   signs.
2. An outcome is learned once (the circuit, the retry delay) and kept until the outbox recorded
   it; its row stays claimed meanwhile, so it is not sent again. Recording twice is harmless
   (an ack deletes, a reschedule or burial sets the same values).
3. A transient outbox fault (busy, locked, full, I/O) pauses the loop: it retries with a capped,
   jittered backoff, and resumes where it was. Only a permanent fault ends it (``crashed``).
"""

from __future__ import annotations

import math
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

import gevent
import gevent.event
import gevent.pool
import structlog

from listener.config.settings import WebhookConfig
from listener.core.circuit import UNREACHABLE, Circuit
from listener.core.errors import OutboxError
from listener.core.retry import Random, next_delay, reconnect_delay
from listener.core.signing import (
    Delivered,
    DeliveryOutcome,
    GiveUp,
    Retry,
    build_request,
)
from listener.outbox.store import Delivery, Outbox
from listener.webhooks.body import request_body
from listener.webhooks.transport import Transport

Clock = Callable[[], float]
Pause = Callable[[gevent.event.Event, float], bool]
"""How the loop waits for its wake-up event, at most so many seconds; True if it was set (woken)."""
log = structlog.get_logger("listener.webhooks")
MAX_SLEEP_S = 10.0
"""The longest the loop sleeps unwoken: due rows and probes are timed and commits wake it, so this only
catches rows another process changed (``outbox retry`` from the operator's shell: sent within 10 s);
one indexed query per endpoint every 10 s costs nothing measurable."""
OUTBOX_RETRY_INITIAL_S = 0.5
OUTBOX_RETRY_MAX_S = 30.0
"""The backoff (equal jitter, doubling) of a loop whose outbox turn failed with a transient fault."""
SETTLE_AFTER_S = 0.1
"""The longest a delivered outcome waits to be recorded when nothing else needs a turn: recorded with
the next turn a commit or a due row brings (one outbox hand-off for both), or by then."""
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
    """Outcomes learned and not yet recorded: the outbox changes, and what to log once recorded."""

    results: list[_Result] = field(default_factory=list)
    acks: list[int] = field(default_factory=list)
    reschedules: list[tuple[int, int, float, str]] = field(default_factory=list)
    buries: list[tuple[int, int, str]] = field(default_factory=list)
    retries: dict[int, tuple[float, float]] = field(default_factory=dict)
    """Row id -> (delay, next attempt's time) of each rescheduled row."""


@dataclass(frozen=True, slots=True)
class _Exchanged:
    rows: tuple[Delivery, ...]
    next_due_at: float | None
    """When the earliest pending row the loop does not hold is due; None: none, or not looked up."""


def _exchange(outbox: Outbox, settlement: _Settlement, endpoint: str, now: float, *, limit: int,
              held: tuple[int, ...], look_ahead: bool) -> _Exchanged:
    """On the writer's thread: record the outcomes, claim up to ``limit`` due rows, then (unless the
    claim took all it could, and a finished request wakes the loop) look up the next due time."""
    outbox.settle(settlement.acks, settlement.reschedules, settlement.buries, now)
    rows = outbox.due(endpoint, now, limit, held) if limit > 0 else ()
    if not look_ahead or 0 < limit == len(rows):
        return _Exchanged(rows, None)
    after = outbox.due(endpoint, math.inf, 1, (*held, *(row.id for row in rows)))
    return _Exchanged(rows, after[0].next_at if after else None)


class EndpointDelivery:
    """The delivery loop of one endpoint: claim due rows, POST them, record the outcomes in batches."""

    def __init__(self, config: WebhookConfig, writer: Writer, *, clock: Clock, rng: Random,
                 max_sleep_s: float, counts: Counter[tuple[str, str, str]],
                 metrics: DeliveryMetrics | None = None, wall: Clock = time.time,
                 pause: Pause | None = None) -> None:
        self.config = config
        self._writer = writer
        self._clock = clock
        self._wall = wall
        self._rng = rng
        self._max_sleep = max_sleep_s
        self._counts = counts
        self._metrics = metrics
        self._pause = pause or _wait
        self._transport = Transport(config)
        self._claimed: set[int] = set()
        self._ready: deque[Delivery] = deque()
        self._results: list[_Result] = []
        self._settlement = _Settlement()
        self._next_due: float | None = None
        self._more = False
        self._settle_timer: gevent.Greenlet | None = None
        """The last claim took all it asked for: more rows may be due, so a freed slot wants a turn."""
        self._running = 0
        self._room = max(PREFETCH, 2 * config.max_concurrency)
        self._batch = max(config.max_concurrency, 16)
        self._probing = False
        self._unavailable_since: float | None = None
        self._outbox_failures = 0
        self.circuit = Circuit(rng)
        self._requests = gevent.pool.Group()
        self._wake = gevent.event.Event()
        self.stopping = False
        self.crashed: BaseException | None = None
        self._log = log.bind(endpoint=config.name)

    def wake(self) -> None:
        self._wake.set()

    def offer(self, rows: Sequence[Delivery]) -> bool:
        """Rows just committed for this endpoint (pending, due now), handed over by the commit that created
        them: held and sent as if claimed, without an outbox turn. False (nothing taken) when the loop
        should claim them itself: the circuit is open or probing, the outbox unavailable, no room.

        A row a turn claimed meanwhile (the commit ran before that turn's claim) is not taken twice:
        both read and fill ``_claimed`` on the loop's thread."""
        if (self.stopping or self.crashed is not None or self.circuit.open or self._probing
                or self._unavailable_since is not None):
            return False
        if self._running + len(self._ready) + len(rows) > self._room:
            return False
        self._claim(rows)
        return True

    @property
    def in_flight(self) -> int:
        """Requests sent and not answered yet."""
        return self._running

    @property
    def outbox_unavailable_since(self) -> float | None:
        """Since when (the loop's clock) a transient outbox fault keeps this loop waiting; None: it is not."""
        return self._unavailable_since

    def run(self) -> None:
        """Loop until ``stopping``; a transient outbox fault is waited out, a permanent one ends it."""
        try:
            while not self.stopping:
                retry_in = self._outbox_turn()
                if retry_in is None:
                    self._sleep(self._wait_s(), wakeable=True)
                else:
                    self._sleep(retry_in, wakeable=False)
        except OutboxError as exc:  # permanent: the writer is failed, ingestion stops
            self.crashed = exc
        except Exception as exc:  # noqa: BLE001 - a bug: recorded, logged, seen by `healthy`
            self.crashed = exc
            self._log.exception("webhook.loop_crashed")

    def _outbox_turn(self) -> float | None:
        """One turn; after a transient outbox fault, the seconds to wait before the next try."""
        try:
            self._turn(claim=True)
        except OutboxError as exc:
            if not exc.transient:
                raise
            return self._unavailable(exc)
        if self._unavailable_since is not None:
            self._log.info("webhook.outbox_recovered", failed_turns=self._outbox_failures,
                           unavailable_for_s=round(self._clock() - self._unavailable_since, 1))
            self._unavailable_since, self._outbox_failures = None, 0
        return None

    def _unavailable(self, exc: OutboxError) -> float:
        """Logged once per outage; the backoff grows with each failed turn, capped and jittered."""
        delay = reconnect_delay(self._outbox_failures, initial=OUTBOX_RETRY_INITIAL_S,
                                cap=OUTBOX_RETRY_MAX_S, rand=self._rng)
        self._outbox_failures += 1
        if self._unavailable_since is None:
            self._unavailable_since = self._clock()
            self._log.warning("webhook.outbox_unavailable", code=exc.code, error=str(exc),
                              retry_in_s=round(delay, 2), unrecorded=len(self._settlement.results))
        return delay

    def _sleep(self, seconds: float, *, wakeable: bool) -> None:
        """Wait ``seconds``, or less when stopping; a wake-up ends it too if ``wakeable``."""
        until = self._clock() + seconds
        while not self.stopping:
            woken = self._pause(self._wake, max(until - self._clock(), 0.0))
            self._wake.clear()
            if not woken or wakeable or self._clock() >= until:
                return

    def _wait_s(self) -> float:
        """Until the next row may be sent (invariant 1); a busy loop waits for its answers instead."""
        longest = SETTLE_AFTER_S if self._results else self._max_sleep
        if self._next_due is None or self._probing or self._running >= self.config.max_concurrency:
            return longest
        at = self.circuit.next_send_at(self._next_due)
        return min(max(at - self._clock(), 0.0), longest)

    def _turn(self, *, claim: bool) -> None:
        """Record what came back (and what an earlier turn could not), then claim what the free slots
        (and the circuit) allow. If the outbox fails, the outcomes stay for the next turn."""
        now = self._clock()
        fresh, self._results = self._results, []
        for result in fresh:
            self._settle(result, now)
        if self.circuit.open:
            self._release_ready()
        limit = self._capacity(now) if claim else 0
        settled = self._settlement
        held = self._claimed.difference(r.row.id for r in settled.results)
        look_ahead = claim and not self._probing and (limit > 0 or self.circuit.open)
        turn = self._writer.call(_exchange, self._writer.outbox, settled, self.config.name, now,
                                 limit=limit, held=tuple(held), look_ahead=look_ahead)
        self._settlement = _Settlement()
        for result in settled.results:
            self._claimed.discard(result.row.id)
            self._report(result, settled)
        self._next_due = turn.next_due_at
        self._more = 0 < limit == len(turn.rows)
        self._claim(turn.rows)

    def _claim(self, rows: Sequence[Delivery]) -> None:
        """Hold ``rows`` ready (excluded from claims until settled) and fill the free request slots; a
        row held already (handed by its commit meanwhile) is not held twice."""
        fresh = [row for row in rows if row.id not in self._claimed]
        self._claimed.update(row.id for row in fresh)
        self._ready.extend(fresh)
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
                if (len(self._results) >= self._batch or probe or isinstance(result.outcome, Retry)
                        or (self._more and len(self._ready) < self.config.max_concurrency)):
                    self._wake.set()  # under load outcomes are recorded a batch at a time; refill early
                elif len(self._results) == 1:
                    self._settle_later()
                unreachable = isinstance(result.outcome, Retry) and result.outcome.reason in UNREACHABLE
                go_on = self._ready and not (probe or unreachable or self.stopping or self.circuit.open)
                row = self._ready.popleft() if go_on else None
        finally:
            self._running -= 1
            if self._more and (self._running == 0 or not self._ready):
                self._wake.set()  # else the outcomes wait for the next turn (``SETTLE_AFTER_S`` at most)
            elif self._results:
                self._settle_later()

    def _settle_later(self) -> None:
        """Wake the loop ``SETTLE_AFTER_S`` from now (once): the outcomes waiting then are recorded."""
        if self._settle_timer is None or self._settle_timer.dead:
            self._settle_timer = gevent.spawn_later(SETTLE_AFTER_S, self._wake.set)

    def _attempt(self, row: Delivery, probe: bool) -> _Result:
        """One request, signed with the wall clock's time (the receiver checks it against its own)."""
        cfg = self.config
        body = request_body(row.body, row.variables, cfg.variables, cfg.variables_max_bytes)
        request = build_request(cfg.url, cfg.keys, row.event_id, body, int(self._wall()))
        started = time.monotonic()
        outcome = self._transport.send(request, self._wall)
        return _Result(row, outcome, time.monotonic() - started, probe)

    def _settle(self, r: _Result, now: float) -> None:
        """Learn from an outcome (the circuit), and add its outbox change to the settlement."""
        self._learn(r, now)
        settlement, attempt, outcome = self._settlement, r.row.attempts + 1, r.outcome
        settlement.results.append(r)
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
                settlement.retries[r.row.id] = (delay, now + delay)
                error = _error(outcome.reason, outcome.status)
                settlement.reschedules.append((r.row.id, attempt, now + delay, error))

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

    def _report(self, r: _Result, settlement: _Settlement) -> None:
        """Counters, the log line and the metrics, once the outcome is recorded."""
        attempt, outcome, name = r.row.attempts + 1, r.outcome, self.config.name
        latency_ms = round(r.latency_s * 1000, 1)
        if isinstance(outcome, Delivered):  # the one line per leg is `leg.classified`: this one is debug
            self._counts[(name, "delivered", "ok")] += 1
            self._log.debug("webhook.delivered", webhook_id=r.row.event_id, attempt=attempt,
                            status=outcome.status, latency_ms=latency_ms)
        else:
            self._report_failure(r, attempt, settlement.retries.get(r.row.id))
        if self._metrics is not None:
            self._metrics.delivery_attempted(Attempted(name, r.row.event_id, attempt, outcome, r.latency_s))

    def _report_failure(self, r: _Result, attempt: int, retry: tuple[float, float] | None) -> None:
        outcome, name = r.outcome, self.config.name
        log_ = self._log.bind(webhook_id=r.row.event_id, attempt=attempt)
        if isinstance(outcome, GiveUp):
            self._counts[(name, "gave_up", outcome.reason)] += 1
            log_.error("webhook.gave_up", reason=outcome.reason, status=outcome.status)
            return
        assert isinstance(outcome, Retry)
        self._counts[(name, "failed", outcome.reason)] += 1
        if retry is None:
            self._counts[(name, "gave_up", "schedule_exhausted")] += 1
            log_.error("webhook.gave_up", reason=f"schedule_exhausted after {outcome.reason}",
                       status=outcome.status)
        else:
            log_.warning("webhook.delivery_failed", reason=outcome.reason, status=outcome.status,
                         latency_ms=round(r.latency_s * 1000, 1), retry_after=outcome.retry_after,
                         next_attempt_in_s=round(retry[0], 1), next_attempt_at=_iso(retry[1]))

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
            if not exc.transient:
                self.crashed = exc
            self._log.error("webhook.outcomes_unrecorded", outcomes=len(self._settlement.results),
                            code=exc.code, error=str(exc))
        if self._settle_timer is not None:
            self._settle_timer.kill(block=False)
        self._transport.close()
        return bool(done)


def _wait(event: gevent.event.Event, seconds: float) -> bool:
    return bool(event.wait(seconds))


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="seconds")


def _error(reason: str, status: int | None) -> str:
    return f"{reason} ({status})" if status else reason
