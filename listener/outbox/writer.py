"""The daemon's one door to the outbox file: group-committed puts and serialized calls.

``OutboxWriter`` runs every SQLite call on one real thread (a gevent ``ThreadPool`` of size 1:
one connection, never used by two threads, no lock that monkey-patching could turn into a
greenlet lock), and groups the documents of concurrent ``put`` callers (one per node) into one
commit. ``put`` returns the endpoints that got new rows, so its caller (the pipeline) can wake
their delivery loops; the clock is injected.

A fault that can clear (``OutboxError.transient``: another client holds the write lock, the disk
is full, an I/O error, no file descriptor left) pauses the writer: the batch is retried with
capped, jittered backoff until it commits, and every ``put`` meanwhile waits. Nothing is dropped:
the pipelines wait in ``put``, their ESL queues fill and their readers stop reading FreeSWITCH,
which queues the events for us. ``paused_since`` and ``unavailable`` say so (readiness, status);
``outbox.unavailable`` and ``outbox.recovered`` are logged once each. Only a fault that cannot
clear (corrupt, read-only, not ours) fails the writer for good (``failure``, ``outbox.failed``).
Each change of state sets ``changed``, so the app can react without a callback.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ParamSpec, TypeVar

import gevent
import gevent.event
import gevent.threadpool
import orjson
import structlog

from listener.config.settings import OutboxConfig, WebhookConfig
from listener.core.calls import WAIT_S, Call, Grouper, Plan
from listener.core.calls import Leg as CallLeg
from listener.core.clock import SteadyClock
from listener.core.document import CALL_COMPLETED, LEG_CLASSIFIED, envelope
from listener.core.errors import OutboxClosedError, OutboxError
from listener.core.rejection import Rejection
from listener.core.retry import reconnect_delay
from listener.core.signing import render
from listener.outbox.store import BATCH, CallWrites, Delivery, Entry, Leg, Outbox, TakenLookup, Waiting

P = ParamSpec("P")
T = TypeVar("T")
Clock = Callable[[], float]
log = structlog.get_logger(__name__)
TAKEN_RETENTION_S = 7 * 86400.0
KEEP_DELIVERED_S = 86400.0
FORGET_EVERY_S = 3600.0
"""How often legs taken longer ago than the retention are forgotten, and delivered messages older than
``keep_delivered_s`` deleted (in batches, beside the commits)."""
RETRY_INITIAL_S = 0.25
RETRY_MAX_S = 10.0
Waiter = Any  # gevent.event.AsyncResult (gevent ships no type information)


def on_thread(pool: gevent.threadpool.ThreadPool, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """``fn(*args, **kwargs)`` on ``pool``'s thread, its exception raised here (and not also printed
    to stderr by gevent, a traceback for each retry of a fault being waited out)."""
    failed, value = pool.apply(_outcome, (fn, args, kwargs))
    if failed:
        raise value
    result: T = value
    return result


def _outcome(fn: Callable[..., Any], args: Any, kwargs: Any) -> tuple[bool, Any]:
    """On the outbox thread: (False, the result) or (True, the exception), raised by the caller.

    gevent's thread pool would also print every exception raised there to stderr, a traceback for
    each retry of a fault being waited out.
    """
    try:
        return False, fn(*args, **kwargs)
    except Exception as exc:  # noqa: BLE001 - handed to the calling greenlet, which raises it
        return True, exc


class Stored(frozenset[str]):
    """What ``put`` returns: the endpoints that got new rows (a frozenset of their names); in
    ``duplicates`` the ids of the documents that were taken before, from either source: those were
    not stored again and are not to be logged again; in ``calls`` the calls these legs completed; in
    ``rows`` the delivery rows the commit created, pending, for the caller to hand to their endpoints
    (each row is given to one caller of the commit only)."""

    duplicates: frozenset[str] = frozenset()
    calls: tuple[Call, ...] = ()
    rows: tuple[Delivery, ...] = ()

    @classmethod
    def of(cls, endpoints: frozenset[str], duplicates: frozenset[str],
           calls: tuple[Call, ...] = (), rows: tuple[Delivery, ...] = ()) -> Stored:
        stored = cls(endpoints)
        stored.duplicates = duplicates
        stored.calls = calls
        stored.rows = rows
        return stored


def node_of(document: Mapping[str, Any]) -> str:
    node = document.get("node")
    name = node.get("name") if isinstance(node, Mapping) else None
    return name if isinstance(name, str) else ""


def leg_of(document: Mapping[str, Any]) -> Leg:
    """The leg a document is of: its id, its channel's Unique-ID, its node's name."""
    unique_id = document.get("channel_uuid")
    return Leg(str(document["id"]), unique_id if isinstance(unique_id, str) else "", node_of(document))


def as_call_leg(item: CallLeg | Mapping[str, Any]) -> CallLeg:
    """A bare document (an operator's test, a bench) is a leg that names no partner."""
    if isinstance(item, CallLeg):
        return item
    return CallLeg(item, node_of(item), frozenset(), 0.0)


def entry_for(document: Mapping[str, Any], webhooks: Sequence[WebhookConfig], kind: str = LEG_CLASSIFIED,
              *, variables: str | None = None, now: float | None = None) -> Entry:
    """The outbox entry of one document of type ``kind``: its id, its enveloped body, the endpoints
    whose filters accept it."""
    event_id = document.get("id")
    if not isinstance(event_id, str) or not event_id:
        raise ValueError("a document needs a non-empty string id")
    endpoints = tuple(w.name for w in webhooks if w.matches(document, kind))
    if not endpoints:  # not stored (only remembered as taken): its body is never rendered
        return Entry(event_id, "", endpoints, variables)
    data = document if isinstance(document, dict) else dict(document)  # no copy of the usual dict
    return Entry(event_id, render(envelope(kind, data, now)), endpoints, variables)


class OutboxWriter:
    """The daemon's only door to the outbox file: group-committed puts and serialized calls."""

    def __init__(
        self, outbox: Outbox, webhooks: Sequence[WebhookConfig], *, clock: Clock | None = None,
        rand: Callable[[], float] = random.random, retry_initial_s: float = RETRY_INITIAL_S,
        retry_max_s: float = RETRY_MAX_S, taken_retention_s: float = TAKEN_RETENTION_S,
        keep_delivered_s: float = KEEP_DELIVERED_S, forget_every_s: float = FORGET_EVERY_S,
        wait_s: float = WAIT_S,
    ) -> None:
        self.outbox = outbox
        self._webhooks = tuple(webhooks)
        self.clock: Clock = clock or SteadyClock.anchored(time.time, time.monotonic)
        """Stamps new rows (``next_at``, ``created_at``); the delivery loops read the same clock."""
        self._rand = rand
        self._retry = (retry_initial_s, retry_max_s)
        self._pool = gevent.threadpool.ThreadPool(1)
        self._queue: list[tuple[list[Entry], list[Leg], list[CallLeg], Waiter]] = []
        self.grouper = Grouper(wait_s)
        """The calls still open (their legs also wait in the outbox's ``call_wait``); used only by the
        commit loop, which makes each plan durable before applying it."""
        self.on_calls: Callable[[Sequence[Call]], None] | None = None
        """Told of the calls completed at their bound (the app logs them and wakes delivery)."""
        self._restored = False
        self._wake = gevent.event.Event()
        self._retry_now = gevent.event.Event()
        self._closing = False
        self._give_up_at: float | None = None
        self.failure: OutboxError | None = None
        """The fault that cannot clear, once seen: every later put raises it."""
        self.unavailable: OutboxError | None = None
        """The transient fault being waited out (None while commits succeed)."""
        self.paused_since: float | None = None
        self.resumed_at: float | None = None
        self.changed = gevent.event.Event()
        """Set at each change of state (unavailable, recovered, failed); the watcher clears it."""
        self.taken_retention_s = taken_retention_s
        self.keep_delivered_s = keep_delivered_s
        outbox.keep_delivered = keep_delivered_s > 0  # 0: an ack deletes the row at once, as before
        self._committer = gevent.spawn(self._commit_loop)
        self._forgetter = gevent.spawn(self._forget_loop, forget_every_s)

    @classmethod
    def open(cls, config: OutboxConfig, webhooks: Sequence[WebhookConfig], *, clock: Clock | None = None,
             ) -> OutboxWriter:
        """Open the outbox file of ``config`` (on the writer's thread) and wrap it."""
        pool = gevent.threadpool.ThreadPool(1)
        try:
            outbox = pool.apply(Outbox.open, (config.path,), {"synchronous": config.synchronous})
        finally:
            pool.kill()
        return cls(outbox, webhooks, clock=clock, taken_retention_s=config.taken_retention_s,
                   keep_delivered_s=config.keep_delivered_s)

    @property
    def ready(self) -> bool:
        """Accepting documents now: not closed, not failed, not waiting out a fault."""
        return not self._closing and self.failure is None and self.unavailable is None

    def paused_until(self) -> float | None:
        """The last moment (monotonic) ``put`` callers were kept waiting: now while paused, else when it
        ended (None: never). Liveness checks do not count that time as a stuck reader or handler."""
        return time.monotonic() if self.paused_since is not None else self.resumed_at

    def set_webhooks(self, webhooks: Sequence[WebhookConfig]) -> None:
        """Route documents put from now on by these endpoints' filters (a reload)."""
        self._webhooks = tuple(webhooks)

    def put(self, documents: Sequence[CallLeg | Mapping[str, Any]]) -> frozenset[str]:
        """Store ``documents``; returns only once they are durably committed: the endpoints that got
        new rows (in this commit, which may hold other callers' documents too).

        Waits while a transient fault lasts. Raises ``OutboxError`` if the outbox failed for good (or
        stayed unavailable past the shutdown deadline) and ``OutboxClosedError`` after ``close``.
        Many greenlets may call this at once: their documents share one commit.
        """
        if self.failure is not None:
            raise self.failure
        if self._closing:
            raise OutboxClosedError("the outbox writer is closed")
        if self._give_up_at is not None and self.unavailable is not None:
            raise self.unavailable  # shutting down: no more waiting
        if not documents:
            return Stored()
        legs = [as_call_leg(d) for d in documents]
        now = self.clock()
        entries = [entry_for(leg.document, self._webhooks, now=now,
                             variables=_json(leg.variables) if leg.variables else None)
                   for leg in legs]  # every leg is remembered as taken
        waiter = gevent.event.AsyncResult()
        self._queue.append((entries, [leg_of(leg.document) for leg in legs], legs, waiter))
        self._wake.set()
        created: Stored = waiter.get()
        return created

    def reject(self, rejection: Rejection) -> int:
        """Keep a frame that held no usable event (the store's bounded ``rejected`` table), on the
        outbox thread; returns how many older ones that dropped. Raises as ``put`` does."""
        if self.failure is not None:
            raise self.failure
        if self._closing:
            raise OutboxClosedError("the outbox writer is closed")
        return self.call(self.outbox.reject, (rejection,), self.clock())

    def call(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run ``fn`` (an ``Outbox`` method) on the outbox thread. An ``OutboxError`` is raised to the
        caller; one that cannot clear fails the writer too (a transient one is the caller's to retry)."""
        try:
            return on_thread(self._pool, fn, *args, **kwargs)
        except OutboxError as exc:
            if not exc.transient:
                self._fail(exc)
            raise

    def fail(self, exc: OutboxError) -> None:
        """A fault that cannot clear was found beside the writer (a deferred integrity check)."""
        self._fail(exc)

    def _fail(self, exc: OutboxError) -> None:
        if self.failure is None:
            self.failure = exc
            log.critical("outbox.failed", error=str(exc), code=exc.code, path=str(self.outbox.path))
            self.changed.set()

    def taken_unique_ids(self, unique_ids: Sequence[str]) -> frozenset[str]:
        """Which of these channel Unique-IDs are of legs already taken (``Outbox.taken_unique_ids``)."""
        if not unique_ids:
            return frozenset()
        return self.call(self.outbox.taken_unique_ids, unique_ids)

    def last_taken_at(self, node: str) -> float | None:
        """When the newest leg of ``node`` was taken, by this writer's clock (None: none remembered)."""
        return self.call(self.outbox.last_taken_at, node)

    def forget_old(self) -> int:
        """Forget the legs taken longer ago than the retention; how many. A fault is left for next time."""
        return self._in_batches(self.outbox.forget_taken, self.clock() - self.taken_retention_s)

    def prune_delivered(self) -> int:
        """Delete the delivered messages kept longer than ``keep_delivered_s``; how many rows. A fault
        is left for next time."""
        return self._in_batches(self.outbox.prune_delivered, self.clock() - self.keep_delivered_s)

    def _in_batches(self, step: Callable[[float], int], before: float) -> int:
        """``step(before)`` (one short transaction of at most ``BATCH`` rows) until it does less."""
        done = 0
        while True:
            try:
                count = self.call(step, before)
            except OutboxError as exc:
                log.info("outbox.forget_deferred", error=str(exc), code=exc.code, step=step.__name__)
                return done
            done += count
            if count < BATCH:
                return done

    def _forget_loop(self, every_s: float) -> None:
        while True:
            self.forget_old()
            pruned = self.prune_delivered()
            if pruned:
                log.info("outbox.delivered_pruned", rows=pruned, kept_s=self.keep_delivered_s)
            gevent.sleep(every_s)

    def _commit_loop(self) -> None:
        self._restore()
        while True:
            self._wake.wait(self._until_expiry())
            self._wake.clear()
            batch, self._queue = self._queue, []
            if batch:
                self._commit(batch)
            elif self._closing:
                return
            self._expire()

    def _restore(self) -> None:
        """Group again the legs that were waiting for their call when the last run stopped."""
        failures = 0
        while not self._restored and not self._closing and self.failure is None:
            try:
                rows = self.call(self.outbox.waiting)
                plan = self.grouper.restore(_waiting_leg(row) for row in rows)
                if plan.completed:  # only if call_wait was changed by hand: completed as it stands
                    try:
                        self.call(self.outbox.complete_calls, self._writes(plan, self.clock()), self.clock())
                    except OutboxError:
                        self.grouper.undo(plan)
                        self.grouper = Grouper(self.grouper.wait_s)
                        raise
                    self.grouper.apply(plan, self.clock())
            except OutboxError as exc:
                if not exc.transient:
                    return
                self._wait_out(exc, failures, 0)
                failures += 1
                continue
            self._restored = True
            if rows:
                log.info("calls.restored", legs=len(rows), calls=self.grouper.open_calls)

    def _until_expiry(self) -> float | None:
        left = self.grouper.expires_in(self.clock())
        if left is None or self._closing:
            return None
        return min(left + 0.01, FORGET_EVERY_S)

    def _expire(self) -> None:
        """Complete the calls open past their bound (``complete: false``); a fault: next time."""
        now = self.clock()
        if self.failure is not None or self.grouper.expires_in(now) != 0.0:
            return
        plan = self.grouper.expire(now)
        if not plan.completed:
            return
        try:
            self.call(self.outbox.complete_calls, self._writes(plan, now), now)
        except OutboxError as exc:
            self.grouper.undo(plan)
            log.info("calls.expiry_deferred", error=str(exc), code=exc.code, calls=len(plan.completed))
            return
        self.grouper.apply(plan, now)
        if self.on_calls is not None:
            self.on_calls(plan.completed)

    def _writes(self, plan: Plan, now: float) -> CallWrites:
        """What a plan writes: the completed calls' messages, the new waits, the ended ones."""
        return CallWrites(
            entries=[entry_for(call.document, self._webhooks, CALL_COMPLETED, now=now,
                               variables=_shares(call)) for call in plan.completed],
            waiting=[Waiting(leg.node, leg.unique_id, render(leg.document), _json(sorted(leg.partners)),
                             _json(leg.variables) if leg.variables else None, leg.arrived_at)
                     for leg in plan.waiting],
            released=list(plan.released))

    def _commit(self, batch: list[tuple[list[Entry], list[Leg], list[CallLeg], Waiter]]) -> None:
        """Commit the batch (with the calls its new legs complete), waiting out transient faults; then
        answer every waiter."""
        entries = [entry for entries, _, _, _ in batch for entry in entries]
        legs = [leg for _, legs, _, _ in batch for leg in legs]
        planned: list[Plan] = []

        def calls(fresh: frozenset[str], taken: TakenLookup) -> CallWrites:
            """On the outbox thread, inside the transaction: the grouping of the legs that are new."""
            now = self.clock()
            new = {leg.id: leg.arriving(now)
                   for _, _, call_legs, _ in batch for leg in call_legs if leg.id in fresh}
            try:
                plan = self.grouper.add(list(new.values()), taken)
            except Exception:  # a bug must not stop the commits: the legs are stored, their call is not
                log.exception("calls.grouping_failed", legs=len(new))
                return CallWrites()
            planned.append(plan)
            return self._writes(plan, now)

        failures = 0
        while True:
            try:
                if self.failure is not None:
                    raise self.failure
                created, duplicates = self.call(self.outbox.take, legs, entries, self.clock(), calls)
            except OutboxError as exc:
                while planned:  # not committed: the grouping is as it was
                    self.grouper.undo(planned.pop())
                if exc.transient and not self._giving_up():
                    self._wait_out(exc, failures, len(entries))
                    failures += 1
                    continue
                for *_, waiter in batch:
                    waiter.set_exception(exc)
                return
            break
        if self.unavailable is not None:
            self._recovered(failures)
        completed: list[Call] = []
        if planned:
            self.grouper.apply(planned[-1], self.clock())
            completed = list(planned[-1].completed)
        endpoints, seen, rows = frozenset(row.endpoint for row in created), set[str](), tuple(created)
        theirs = _calls_by_caller([legs for _, legs, _, _ in batch], completed)
        for (_, legs, _, waiter), mine in zip(batch, theirs, strict=True):  # a leg twice in one commit
            ids = {leg.id for leg in legs}  # (both sources at once) is new for one
            waiter.set(Stored.of(endpoints, frozenset((ids & duplicates) | (ids & seen)), mine, rows))
            seen |= ids
            rows = ()  # the first caller hands them all

    def _giving_up(self) -> bool:
        return self._give_up_at is not None and time.monotonic() >= self._give_up_at

    def _wait_out(self, exc: OutboxError, failures: int, documents: int) -> None:
        initial, cap = self._retry
        delay = reconnect_delay(failures, initial=initial, cap=cap, rand=self._rand)
        if self.unavailable is None:
            self.paused_since = time.monotonic()
            log.error("outbox.unavailable", error=str(exc), code=exc.code, path=str(self.outbox.path),
                      documents_waiting=documents, retry_in_s=round(delay, 2),
                      note="ingestion paused (FreeSWITCH queues the events); resumes by itself")
            self.changed.set()
        self.unavailable = exc
        if self._give_up_at is not None:
            delay = min(delay, max(self._give_up_at - time.monotonic(), 0.0))
        self._retry_now.wait(delay)
        self._retry_now.clear()

    def _recovered(self, failures: int) -> None:
        since = self.paused_since or time.monotonic()
        self.resumed_at = time.monotonic()
        log.info("outbox.recovered", unavailable_for_s=round(self.resumed_at - since, 2), retries=failures,
                 code=self.unavailable.code if self.unavailable else "")
        self.unavailable = None
        self.paused_since = None
        self.changed.set()

    def give_up_after(self, deadline_s: float) -> None:
        """Shutting down: stop waiting out a fault ``deadline_s`` from now; later puts then fail at once.

        What could not be committed is raised to the callers (the pipeline logs each document).
        """
        self._give_up_at = time.monotonic() + deadline_s
        self._retry_now.set()  # recompute the wait against the deadline
        self._wake.set()

    def close(self, deadline_s: float = 10.0) -> None:
        """Refuse new documents, commit those already offered (waiting out a fault at most
        ``deadline_s``), close the file."""
        if self._give_up_at is None:
            self.give_up_after(deadline_s)
        self._closing = True
        self._forgetter.kill(block=True, timeout=1.0)
        self._wake.set()
        self._committer.join()
        try:
            self.call(self.outbox.close)
        except OutboxError as exc:
            self._fail(exc)
        finally:
            self._pool.kill()


def _calls_by_caller(callers: Sequence[Sequence[Leg]], completed: Sequence[Call]) -> list[tuple[Call, ...]]:
    """Each completed call goes to the first caller of the commit that put one of its legs."""
    first: dict[str, int] = {}
    for n, legs in enumerate(callers):
        for leg in legs:
            first.setdefault(leg.id, n)
    theirs: list[list[Call]] = [[] for _ in callers]
    for call in completed:
        found = [first[leg.id] for leg in call.legs if leg.id in first]
        if found:
            theirs[min(found)].append(call)
    return [tuple(calls) for calls in theirs]


def _shares(call: Call) -> str | None:
    """The variables of a call's legs, by leg id (None: no leg kept any)."""
    shares = {leg.id: leg.variables for leg in call.legs if leg.variables}
    return _json(shares) if shares else None


def _json(value: Any) -> str:
    return orjson.dumps(value).decode()


def _waiting_leg(row: Waiting) -> CallLeg:
    """A ``call_wait`` row as the grouping's leg again."""
    partners = orjson.loads(row.partners)
    variables = orjson.loads(row.variables) if row.variables else {}
    return CallLeg(orjson.loads(row.body), row.node, frozenset(partners), row.arrived_at, variables)
