"""Legs into calls: which legs belong together, when a call is over, and its ``call.completed`` document.

Pure and synchronous: no clock, no I/O. The grouping reads only what every ``CHANNEL_HANGUP_COMPLETE``
event and every JSON CDR file carries, the **partner facts** (``partners``): the uuids of the other
channels a leg was bridged to, originated by, originated, was signal-bonded to or was transferred to.
``Channel-Call-UUID`` is not one of them: after a transfer or an intercept it differs between legs of
one call (``docs/payload.md``, "How legs are grouped into calls").

Legs that name each other, directly or through other legs, are one call. A call is **closed** when
every leg that any of its legs names has hung up: then it is completed at once. Until then its legs
wait; a call still open ``wait_s`` after its first leg arrived is completed anyway, ``complete: false``
with the ids of the legs it still waits for. A leg that arrives for a call already completed is late:
it is delivered as ``leg.classified`` only.

``Grouper`` changes nothing until told: ``add`` and ``expire`` return a ``Plan`` (the calls completed,
the legs now waiting, the waits ended), which the caller makes durable (the outbox, in the same
transaction as the legs themselves) and only then ``apply``s; a plan that was not committed is dropped
and the grouper is as before.
"""

from __future__ import annotations

import dataclasses
import hashlib
import heapq
import itertools
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson

from listener.core.document import SCHEMA_VERSION, iso_utc
from listener.core.event import HangupEvent

CALL_NAMESPACE = uuid.UUID("0b6d6d3c-8a5e-5c1f-a7f4-3f1e2d9c4b70")
"""uuid5 namespace of call ids, its own: a call id is never a leg's document id (``ID_NAMESPACE``)."""
WAIT_S = 4 * 3600.0
"""Default bound on how long a call waits for legs it names (longer than almost every call lasts: a
losing leg of a forked dial waits for the caller's leg to hang up)."""

MAX_LEGS = 256
"""A call with this many legs is completed at once (``complete: false``, with the uuids it still
names): its document stays a sane size, and a uuid that hundreds of legs name (a conference's, or a
value an application copied into every channel) cannot gather an endless call; later legs are late."""
REMEMBER_MAX = 4096
"""At most this many uuids of completed calls are remembered (the newest): a late leg of an older call
is told by the outbox's record of legs taken instead (``add``'s ``taken``). Remembering every one for
``remember_s`` grew with the rate: ~400 bytes a uuid, 385 MB after 1,000,000 legs in the memory bench."""
Document = Mapping[str, Any]

_SINGLE = ("Other-Leg-Unique-ID", "variable_originator", "variable_originating_leg_uuid",
           "variable_signal_bond", "variable_originate_signal_bond", "variable_bridge_uuid",
           "variable_last_bridge_to")
"""Partner facts holding one channel uuid each."""
_ARRAYS = ("variable_originated_legs", "variable_originate_causes")
"""``ARRAY::<uuid>;<name>;<number>|:<uuid>;...`` and ``ARRAY::<uuid>;<CAUSE>|:...``: every channel the
leg originated (a bridge's targets, each leg of a forked dial, a redirect's new leg)."""
_TRANSFERS = ("variable_transfer_history", "variable_transfer_source")
"""``<epoch>:<uuid>:uuid_br:<uuid>`` (an attended transfer or intercept bridged this leg to another
channel): only the uuid after ``uuid_br:`` is a partner; a blind transfer (``bl_xfer:<extension>``) names
no channel."""


def partners(event: HangupEvent) -> frozenset[str]:
    """The uuids of the other channels ``event``'s leg names (never its own)."""
    found: set[str] = set()
    for name in _SINGLE:
        value = event.header(name)
        if value:
            found.add(value.strip())
    for name in _ARRAYS:
        value = event.header(name)
        if value:
            found.update(_array_uuids(value))
    for name in _TRANSFERS:
        value = event.header(name)
        if value:
            found.update(_bridged_to(value))
    found.discard(event.unique_id)
    found.discard("")
    return frozenset(found)


def _items(value: str) -> list[str]:
    """The items of a FreeSWITCH array variable: ``ARRAY::a|:b`` (plain events, CDR files), or the JSON
    array a ``text/event-json`` event holds it as (kept as its JSON text by the parser); else the value."""
    if value.startswith("["):
        try:
            items = orjson.loads(value)
        except orjson.JSONDecodeError:
            return [value]
        return [item for item in items if isinstance(item, str)] if isinstance(items, list) else [value]
    return value.removeprefix("ARRAY::").split("|:")


def _array_uuids(value: str) -> Iterable[str]:
    return (item.split(";", 1)[0].strip() for item in _items(value))


def _bridged_to(value: str) -> Iterable[str]:
    for item in _items(value):
        _, marker, target = item.partition(":uuid_br:")
        if marker and target.strip():
            yield target.strip()


@dataclass(frozen=True, slots=True)
class Leg:
    """One leg as the grouping sees it: its document, its node, the partners it names, and when (the
    caller's clock) it began to wait."""

    document: Document
    node: str
    partners: frozenset[str]
    arrived_at: float
    variables: Mapping[str, str] = field(default_factory=dict)

    def arriving(self, at: float) -> Leg:
        """This leg, arrived (begun to wait) at ``at``: ``dataclasses.replace`` without its checks."""
        return Leg(self.document, self.node, self.partners, at, self.variables)

    @property
    def unique_id(self) -> str:
        return str(self.document.get("channel_uuid") or self.document["id"])

    @property
    def id(self) -> str:
        return str(self.document["id"])


class Group:
    """The legs of one open call so far (by channel uuid) and the uuids they name that have not hung up
    yet. Owned and changed only by its ``Grouper``."""

    __slots__ = ("legs", "missing", "node", "open", "since")

    def __init__(self, node: str, since: float) -> None:
        self.node = node
        self.legs: dict[str, Leg] = {}
        self.missing: set[str] = set()
        self.since = since
        self.open = True


@dataclass(frozen=True, slots=True)
class Call:
    """A completed call: its document, and the legs it was made of."""

    document: Document
    legs: tuple[Leg, ...]
    missing: tuple[str, ...]

    @property
    def id(self) -> str:
        return str(self.document["id"])


Key = tuple[str, str]
"""(node, channel uuid): a uuid is unique only within one FreeSWITCH."""
_Undo = Callable[[], object]
TakenBefore = Callable[[Sequence[Key]], Iterable[Key]]
"""Which of these legs were taken before (the outbox's record): for ``Grouper.add``."""


@dataclass(frozen=True, slots=True)
class Plan:
    """What ``add`` or ``expire`` changed, to be made durable, then ``Grouper.apply``'d (or, if it could
    not be made durable, ``Grouper.undo``'ne)."""

    completed: tuple[Call, ...] = ()
    waiting: tuple[Leg, ...] = ()
    """Legs that now wait for their call (to be kept durably)."""
    released: tuple[Key, ...] = ()
    """Legs that waited (durably) and whose call is now completed: their wait ends."""
    late: tuple[Leg, ...] = ()
    """Legs of a call completed before they arrived: ``leg.classified`` only."""
    done: Mapping[Key, str] = field(default_factory=dict)
    """(node, uuid) -> call id, for the legs and missing legs of the calls completed, and the late legs."""
    journal: tuple[_Undo, ...] = ()


class Grouper:
    """The calls still open, per node, and the uuids of calls recently completed (to tell a late leg).

    Each leg costs O(1) amortised: groups merge smaller into larger, and the oldest open call is found
    on a heap. ``add`` and ``expire`` change the state at once and journal each change, so that a plan
    the caller could not make durable is undone exactly (``undo``).
    """

    def __init__(self, wait_s: float = WAIT_S, remember_s: float | None = None,
                 max_legs: int = MAX_LEGS, remember_max: int = REMEMBER_MAX) -> None:
        self.wait_s = wait_s
        self.remember_s = wait_s if remember_s is None else remember_s
        """How long the uuids of a completed call are remembered to tell a late leg."""
        self.remember_max = remember_max
        """How many are remembered at most (the newest)."""
        self.max_legs = max_legs
        self._open: dict[Key, Group] = {}
        self._waiting: set[Key] = set()
        self._done: OrderedDict[Key, tuple[str, float]] = OrderedDict()
        self._heap: list[tuple[float, int, Group]] = []
        self._seq = itertools.count()

    @property
    def open_calls(self) -> int:
        return len({id(g) for g in self._open.values()})

    @property
    def waiting_legs(self) -> int:
        return len(self._waiting)

    def next_expiry(self) -> float | None:
        """When (the caller's clock) the oldest open call began to wait (None: none is open)."""
        heap = self._heap
        while heap and not (heap[0][2].open and heap[0][2].since == heap[0][0]):
            heapq.heappop(heap)
        return heap[0][0] if heap else None

    def expires_in(self, now: float) -> float | None:
        """Seconds from ``now`` until the oldest open call reaches its bound (0: it has; None: none is
        open): how long whoever runs ``expire`` may sleep."""
        first = self.next_expiry()
        return None if first is None else max(first + self.wait_s - now, 0.0)

    def late_call(self, node: str, unique_id: str) -> str | None:
        """The id of the completed call ``unique_id`` was part of (or missing from), if remembered."""
        found = self._done.get((node, unique_id))
        return found[0] or None if found else None

    # -- changes, journaled ---------------------------------------------------------------------

    def _point(self, journal: list[_Undo], key: Key, group: Group | None) -> None:
        old = self._open.get(key)
        if group is None:
            self._open.pop(key, None)
        else:
            self._open[key] = group
        journal.append(lambda: self._restore_key(key, old))

    def _restore_key(self, key: Key, old: Group | None) -> None:
        if old is None:
            self._open.pop(key, None)
        else:
            self._open[key] = old

    def _put_leg(self, journal: list[_Undo], group: Group, leg: Leg) -> None:
        uid = leg.unique_id
        group.legs[uid] = leg
        journal.append(lambda: group.legs.pop(uid, None))
        if uid in group.missing:
            group.missing.discard(uid)
            journal.append(lambda: group.missing.add(uid))
        self._point(journal, (group.node, uid), group)

    def _name(self, journal: list[_Undo], group: Group, uid: str) -> None:
        if uid in group.legs or uid in group.missing:
            return
        group.missing.add(uid)
        journal.append(lambda: group.missing.discard(uid))
        self._point(journal, (group.node, uid), group)

    def _merge(self, journal: list[_Undo], big: Group, small: Group) -> Group:
        """``small`` moved into ``big`` (the larger of the two survives: each leg moves O(log n) times)."""
        if len(small.legs) + len(small.missing) > len(big.legs) + len(big.missing):
            big, small = small, big
        for leg in small.legs.values():
            self._put_leg(journal, big, leg)
        for uid in small.missing:
            self._name(journal, big, uid)
        if small.since < big.since:
            old = big.since
            big.since = small.since
            journal.append(lambda: setattr(big, "since", old))
            heapq.heappush(self._heap, (big.since, next(self._seq), big))
        self._close(journal, small)
        return big

    def _close(self, journal: list[_Undo], group: Group) -> None:
        group.open = False
        journal.append(lambda: setattr(group, "open", True))

    def _complete(self, journal: list[_Undo], group: Group, done: dict[Key, str], *, cut: bool) -> Call:
        """The call of ``group``, no longer open (``cut``: completed before every leg came)."""
        missing = tuple(sorted(group.missing)) if cut else ()
        call = complete(group, missing)
        for uid in (*group.legs, *group.missing):
            self._point(journal, (group.node, uid), None)
            done[(group.node, uid)] = call.id
        self._close(journal, group)
        return call

    # -- the public steps ---------------------------------------------------------------------

    def add(self, legs: Sequence[Leg], taken: TakenBefore | None = None) -> Plan:
        """Add these legs (in order): the calls they complete, the legs left waiting.

        ``taken`` (the outbox's record of legs taken, from before these) tells a late leg whose call
        this process no longer remembers (completed before a restart, or longer than ``remember_s``
        ago): a partner that was taken but waits in no open call belongs to a call already completed.
        """
        journal: list[_Undo] = []
        done: dict[Key, str] = self._taken_before(legs, taken) if taken is not None else {}
        completed: list[Call] = []
        late: list[Leg] = []
        added: list[Leg] = []
        for leg in legs:
            own = (leg.node, leg.unique_id)
            if own in self._open and leg.unique_id in self._open[own].legs:
                continue  # the same leg again (a retried plan): already in its call
            keys = [own, *((leg.node, u) for u in sorted(leg.partners))]
            finished = next((done[k] if k in done else self._done[k][0]
                             for k in keys if k in done or k in self._done), None)
            if finished is not None and own not in self._open:
                late.append(leg)
                done[own] = finished
                continue
            group = self._open.get(own)
            if group is None:
                group = Group(leg.node, leg.arrived_at)
                heapq.heappush(self._heap, (group.since, next(self._seq), group))
            self._put_leg(journal, group, leg)
            for uid in sorted(leg.partners):
                found = self._open.get((leg.node, uid))
                if found is not None and found is not group:
                    group = self._merge(journal, group, found)
                else:
                    self._name(journal, group, uid)
            added.append(leg)
            if not group.missing or len(group.legs) >= self.max_legs:
                completed.append(self._complete(journal, group, done, cut=bool(group.missing)))
        waiting = tuple(leg for leg in added if (leg.node, leg.unique_id) in self._open)
        released = tuple(sorted(key for call in completed for leg in call.legs
                                if (key := (leg.node, leg.unique_id)) in self._waiting))
        return Plan(tuple(completed), waiting, released, tuple(late), done, tuple(journal))

    def _taken_before(self, legs: Sequence[Leg], taken: TakenBefore) -> dict[Key, str]:
        """The partners these legs name that were taken before and wait in no open call: done (the id
        of their call is not known here: ``""``)."""
        own = {(leg.node, leg.unique_id) for leg in legs}
        unknown = sorted({key for leg in legs for u in leg.partners if (key := (leg.node, u)) not in own
                          and key not in self._open and key not in self._done})
        return dict.fromkeys(taken(unknown), "") if unknown else {}

    def expire(self, now: float) -> Plan:
        """Complete every open call whose first leg began to wait ``wait_s`` ago or more."""
        journal: list[_Undo] = []
        done: dict[Key, str] = {}
        completed: list[Call] = []
        while (first := self.next_expiry()) is not None and now - first >= self.wait_s:
            group = heapq.heappop(self._heap)[2]
            completed.append(self._complete(journal, group, done, cut=True))
        released = tuple(sorted(key for call in completed for leg in call.legs
                                if (key := (leg.node, leg.unique_id)) in self._waiting))
        return Plan(tuple(completed), (), released, (), done, tuple(journal))

    def apply(self, plan: Plan, now: float) -> None:
        """Keep ``plan`` (the caller made it durable)."""
        self._waiting.update((leg.node, leg.unique_id) for leg in plan.waiting)
        self._waiting.difference_update(plan.released)
        for key, call_id in plan.done.items():
            self._done[key] = (call_id, now)
            self._done.move_to_end(key)
        self._forget(now)

    def undo(self, plan: Plan) -> None:
        """Forget ``plan``: the state is exactly what it was before it."""
        for step in reversed(plan.journal):
            step()
        for group in {id(g): g for g in self._open.values()}.values():
            heapq.heappush(self._heap, (group.since, next(self._seq), group))

    def _forget(self, now: float) -> None:
        """The oldest remembered uuids go past ``remember_s`` or beyond ``remember_max`` (oldest first:
        the order they were completed in)."""
        done = self._done
        while len(done) > self.remember_max:
            done.popitem(last=False)
        while done and now - next(iter(done.values()))[1] >= self.remember_s:
            done.popitem(last=False)

    def restore(self, legs: Iterable[Leg]) -> Plan:
        """Legs that were waiting when the process stopped (from the outbox), grouped again; each keeps
        the time it began to wait, so the bound is not reset by a restart. Returns the plan: calls it
        completes (none unless the outbox was changed by hand) are the caller's to store."""
        restored = sorted(legs, key=lambda leg: leg.arrived_at)
        plan = self.add(restored)
        self._waiting.update((leg.node, leg.unique_id) for leg in restored)
        return dataclasses.replace(plan, waiting=(), released=tuple(
            (leg.node, leg.unique_id) for call in plan.completed for leg in call.legs))


def call_id(core_uuid: str, root: str) -> str:
    """``uuid5(CALL_NAMESPACE, "<Core-UUID>/<the caller's channel uuid>")``."""
    name = f"{core_uuid}/{root}".encode()
    digest = hashlib.sha1(CALL_NAMESPACE.bytes + name, usedforsecurity=False).digest()
    return str(uuid.UUID(bytes=digest[:16], version=5))


def caller_leg(legs: Sequence[Leg]) -> Leg | None:
    """The caller's leg: the earliest created leg that no other channel originated (``leg`` ``a``)."""
    callers = [leg for leg in legs if leg.document.get("leg") == "a"]
    return min(callers, key=_created, default=None)


def _created(leg: Leg) -> tuple[str, str]:
    return (str(leg.document.get("created_at") or leg.document.get("ended_at") or ""), leg.unique_id)


def _answered(leg: Leg) -> str:
    return str(leg.document.get("answered_at") or "")


def complete(group: Group, missing: tuple[str, ...]) -> Call:
    """The completed call of ``group`` (``missing``: the uuids it waited for in vain, or was cut off
    from at ``MAX_LEGS``)."""
    legs = tuple(sorted(group.legs.values(), key=_created))
    return Call(build(legs, missing), legs, missing)


def build(legs: Sequence[Leg], missing: Sequence[str] = ()) -> dict[str, Any]:
    """The ``call.completed`` document of these legs, from the caller's point of view.

    Status, bye reason, last response code and ``hangup_by`` are the caller's leg's: a caller who hears
    busy has a Busy call whatever another leg's cause. Without the caller's leg (a call completed at
    its bound before it arrived), they are the earliest leg's and ``caller_leg_id`` is null.
    """
    caller = caller_leg(legs)
    view = caller or min(legs, key=_created)
    doc = view.document
    others = [leg for leg in legs if leg is not caller and leg.document.get("answered")]
    answering = min(others, key=lambda leg: (_answered(leg), leg is not _partner(view, legs)),
                    default=None)
    found = doc.get("node")
    node: Mapping[str, Any] = found if isinstance(found, Mapping) else {}
    root = caller.unique_id if caller is not None else min([leg.unique_id for leg in legs] + list(missing))
    created = [str(v) for leg in legs if (v := leg.document.get("created_at"))]
    ended_values = [str(v) for leg in legs if (v := leg.document.get("ended_at"))]
    started = _us(min(created, default=None))
    ended = _us(max(ended_values, default=None))
    answered = _us(answering.document.get("answered_at")) if answering is not None else None
    caller_end = _us(doc.get("ended_at"))
    return {
        "schema_version": SCHEMA_VERSION,
        "id": call_id(str(node.get("core_uuid") or ""), root),
        "complete": not missing,
        "missing_legs": list(missing),
        "status": doc.get("status"),
        "status_label": doc.get("status_label"),
        "status_definition": doc.get("status_definition"),
        "bye_reason": doc.get("bye_reason"),
        "bye_reason_definition": doc.get("bye_reason_definition"),
        "last_response_code": doc.get("last_response_code"),
        "hangup_by": doc.get("hangup_by"),
        "caller_leg_id": caller.id if caller is not None else None,
        "answered_leg_id": answering.id if answering is not None else None,
        "caller_number": doc.get("caller_number"),
        "caller_name": doc.get("caller_name"),
        "callee_number": doc.get("destination_number"),
        "direction": doc.get("direction"),
        "answered": answering is not None,
        "started_at": iso_utc(started),
        "answered_at": iso_utc(answered),
        "ended_at": iso_utc(ended),
        "ring_s": _seconds(started, answered) if answered is not None else doc.get("ring_s"),
        "talk_s": _seconds(answered, caller_end) if answered is not None else 0.0,
        "duration_s": _seconds(started, ended),
        "node": dict(node),
        "legs": [dict(leg.document) for leg in legs],
    }


def _partner(view: Leg, legs: Sequence[Leg]) -> Leg | None:
    other = view.document.get("other_leg_uuid")
    return next((leg for leg in legs if leg.unique_id == other), None)


def _us(iso: object) -> int | None:
    """Microseconds since the epoch of one of the documents' own ``...Z`` timestamps (millisecond
    precision, as written)."""
    if not isinstance(iso, str) or len(iso) < 24:
        return None
    try:
        moment = datetime.fromisoformat(iso.replace("Z", "+00:00"))
    except ValueError:
        return None
    return int(moment.timestamp()) * 1_000_000 + moment.microsecond


def _seconds(start_us: int | None, end_us: int | None) -> float | None:
    if start_us is None or end_us is None:
        return None
    return round(max(end_us - start_us, 0) / 1_000_000, 3)
