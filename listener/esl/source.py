"""The ESL source: one FreeSWITCH node kept connected and subscribed forever, its batches handed on.

``ESLSource`` makes a fresh ``HardenedInboundESL`` for every attempt (greenswitch's cannot be
reconnected), reconnects with capped, jittered backoff, tells a restarted FreeSWITCH by its
Core-UUID, and says how long it was blind after a lost connection. The batches of event frames
the connection reads go to the pipeline (``listener.pipeline``) as they are; the ``Tally`` the
pipeline returns for each batch is all the source learns of them (counts, heartbeats, Core-UUID).
"""

from __future__ import annotations

import random
import re
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import gevent.event

from listener.config.settings import ESLSettings, Node
from listener.core.errors import AuthError, ESLError
from listener.core.frame import Frame
from listener.core.retry import Reconnect, next_reconnect
from listener.esl.connection import ESLStats, HardenedInboundESL
from listener.esl.nodestate import NodeRecord, NodeStateFile, gap_note

_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")


@dataclass(slots=True)
class Tally:
    """What the pipeline made of one batch of event frames: the source's only view of its events."""

    received: Counter[str] = field(default_factory=Counter)
    """Events parsed, by ``Event-Name``."""
    rejected: int = 0
    """Frames well framed but holding no usable event (logged as ``esl.event_rejected``)."""
    failed: int = 0
    """Events whose handling raised (logged as ``call.handler_failed``)."""
    heartbeats: int = 0
    core_uuids: list[str] = field(default_factory=list)
    """The Core-UUIDs the batch's events carried, in order, each repeat left out."""
    hostname: str | None = None
    """The ``FreeSWITCH-Hostname`` of the batch's last HEARTBEAT."""


Transform = Callable[[Sequence[Frame]], Tally]
"""The transform one node's event frames go through (``listener.pipeline.Pipeline``)."""


class ESLSource:
    """Keeps one node connected and subscribed forever, with capped, jittered backoff.

    Losing a connection that had been up a minute reconnects at once, then at most 2 s apart for a
    minute (a FreeSWITCH restart takes seconds); only a node unreachable for longer backs off to
    ``backoff_max`` (``listener.core.retry.next_reconnect``).
    """

    def __init__(
        self,
        node: Node,
        settings: ESLSettings,
        pipeline: Transform,
        log: Any,
        *,
        rand: Callable[[], float] = random.random,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        states: NodeStateFile | None = None,
        recovers: bool | None = None,
    ) -> None:
        self.node = node
        self.settings = settings
        self.pipeline = pipeline
        self.log = log.bind(node=node.name, host=node.host, port=node.port)
        self.rand = rand
        self.clock = clock
        """The monotonic clock of the reconnect schedule and of gaps within a run."""
        self.wall = wall
        """The wall clock of the persisted record (gaps across a restart)."""
        self.states = states
        self.previous: NodeRecord | None = states.loaded.get(node.name) if states is not None else None
        """The record the previous run left for this node (None: none). ``previous.last_event_at`` is
        where a CDR scan for the hangups missed across the restart starts; ``last_event_at`` then
        follows this run."""
        self.recovers = node.cdr_dir is not None if recovers is None else recovers
        """Hangups missed in a gap are recovered from the node's ``cdr_dir`` (the gap line says so)."""
        self.last_event_at = self.previous.last_event_at if self.previous is not None else None
        """Wall-clock time of the last event (or Core-UUID reply) read from this node, in any run."""
        self.on_state: Callable[[ESLSource], None] | None = None
        self.stats = ESLStats(core_uuid=self.previous.core_uuid if self.previous is not None else None)
        self._state = "starting"
        self.connections = 0
        self._reconnect = Reconnect()
        self._connected_at = 0.0
        self._stopping = gevent.event.Event()
        self._conn: HardenedInboundESL | None = None
        self._lost_at: float | None = None
        self._core_before: str | None = None
        self._core_confirmed = False
        self._up = False

    @property
    def state(self) -> str:
        """starting, connecting, connected, backoff or stopped."""
        return self._state

    @state.setter
    def state(self, value: str) -> None:
        changed, self._state = value != self._state, value
        if changed and self.on_state is not None:
            self.on_state(self)

    def run(self) -> None:
        """Connect, listen, reconnect: until ``stop``."""
        try:
            while not self._stopping.is_set():
                delay = self._session()
                if delay is not None:
                    self.state = "backoff"
                    self._stopping.wait(timeout=delay)
        finally:  # also when killed past the stop deadline
            if self._up:
                self._record(lost=True, now=True)
            elif self.states is not None:
                self.states.save()
            self.state = "stopped"

    def _session(self) -> float | None:
        """One connection's life; the delay before the next attempt (None: stopping)."""
        conn = HardenedInboundESL(self.node, self.settings, self._consume, self.log, self.stats)
        self._conn = conn
        self._core_before, self._core_confirmed = self.stats.core_uuid, False
        self.state = "connecting"
        try:
            conn.connect()
            conn.subscribe()
        except AuthError as exc:
            return self._failed(conn, exc, self.settings.backoff_max, "esl.auth_failed")
        except ESLError as exc:
            return self._failed(conn, exc, self._next_delay(), "esl.connect_failed")
        return self._listen(conn)

    def _consume(self, frames: Sequence[Frame]) -> None:
        """One batch through the pipeline; what it tells is added to this node's stats."""
        stats = self.stats
        stats.handling_since = time.monotonic()
        self._seen()
        try:
            tally = self.pipeline(frames)
        finally:
            stats.handling_since = None
        stats.events_received.update(tally.received)
        stats.events_rejected += tally.rejected
        stats.handler_failures += tally.failed
        if tally.heartbeats:
            stats.heartbeats += tally.heartbeats
            stats.hostname = tally.hostname
        for core_uuid in tally.core_uuids:
            self.saw_core_uuid(core_uuid)

    def _failed(self, conn: HardenedInboundESL, exc: ESLError, delay: float, event: str) -> float | None:
        conn.close(str(exc))
        conn.wait_processed()
        if self._stopping.is_set():
            return None
        self.stats.connect_failures += 1
        log = self.log.error if isinstance(exc, AuthError) else self.log.warning
        log(event, reason=str(exc), reconnect_in=round(delay, 3))
        return delay

    def _listen(self, conn: HardenedInboundESL) -> float | None:
        self.connections += 1
        self.state = "connected"
        self._reconnect = Reconnect()
        self._connected_at, self._up = self.clock(), True
        gap = self._gap()
        self.log.info("esl.connected", events=list(self.settings.events))
        self._ask_core_uuid(conn)
        if gap is not None:
            self._report_gap(*gap)
        conn.wait_processed()
        self._lost_at = now = self.clock()
        self._up = False
        self._record(lost=True, now=True)
        if self._stopping.is_set():
            return None
        self._reconnect = self._reconnect.lost(now - self._connected_at, now)
        delay = self._next_delay()
        self.log.warning("esl.connection_lost", reason=conn.close_reason, reconnect_in=round(delay, 3),
                         connected_for_s=round(now - self._connected_at, 3))
        return delay

    def _gap(self) -> tuple[float, dict[str, Any]] | None:
        """On connecting: how long we were blind, measured within this run or, the first time, from
        the previous run's record; with what the gap line adds. None: no gap to report."""
        if self._lost_at is not None:
            return self.clock() - self._lost_at, {"across_restart": False}
        previous = self.previous
        if previous is None or self.connections > 1:
            return None
        return max(self.wall() - previous.last_event_at, 0.0), {
            "across_restart": True, "since": _iso(previous.last_event_at),
            "measured_from": "last_event" if previous.lost_at is not None else "last_write"}

    def _report_gap(self, gap: float, fields: dict[str, Any]) -> None:
        """FreeSWITCH does not replay what a disconnected listener missed: say how long we were blind."""
        self.stats.gaps += 1
        self.stats.gap_seconds += gap
        self.stats.last_gap_seconds = gap
        before, now = self._core_before, self.stats.core_uuid if self._core_confirmed else None
        restarted = None if before is None or now is None else now != before
        self.log.warning("esl.gap", gap_s=round(gap, 3), **fields, previous_core_uuid=before,
                         freeswitch_restarted=restarted, note=gap_note(self.recovers))

    def _seen(self) -> None:
        """Events were read: the record's ``last_event_at`` is now (written every few seconds)."""
        self.last_event_at = self.wall()
        self._record()

    def _record(self, *, lost: bool = False, now: bool = False) -> None:
        """Put this node's record in the state file; ``lost``: the connection just ended."""
        if self.states is None or self.last_event_at is None:
            return
        record = NodeRecord(self.stats.core_uuid, self.last_event_at, self.wall() if lost else None)
        self.states.put(self.node.name, record, now=now)

    def _ask_core_uuid(self, conn: HardenedInboundESL) -> None:
        """Learn the node's Core-UUID now (events carry it too): a new one means FreeSWITCH restarted."""
        try:
            reply = conn.command("api global_getvar core_uuid", close_on_timeout=False).strip()
        except ESLError as exc:
            self.log.info("esl.core_uuid_unknown", reason=str(exc))
            return
        if _UUID.fullmatch(reply):
            self._seen()  # the reply comes after every event FreeSWITCH sent before it
            self.saw_core_uuid(reply)

    def saw_core_uuid(self, core_uuid: str) -> None:
        """Record the node's Core-UUID; a change means FreeSWITCH restarted since we last saw it."""
        previous = self.stats.core_uuid
        self._core_confirmed = True
        if core_uuid == previous:
            return
        self.stats.core_uuid = core_uuid
        self._record(now=True)
        if previous is not None:
            self.stats.freeswitch_restarts += 1
            self.log.warning("esl.freeswitch_restarted", previous_core_uuid=previous, core_uuid=core_uuid)

    def _next_delay(self) -> float:
        """The wait before the next attempt (``listener.core.retry.next_reconnect``), one attempt on."""
        settings = self.settings
        delay, self._reconnect = next_reconnect(
            self._reconnect, self.clock(), initial=settings.backoff_initial, cap=settings.backoff_max,
            rand=self.rand)
        return delay

    def abandon(self) -> int:
        """After ``stop``, when its deadline passed: stop handling; returns how many events were left."""
        conn = self._conn
        if conn is None:
            return 0
        left = conn.queued
        if conn._process_events_greenlet is not None:
            conn._process_events_greenlet.kill(block=False)
        return left

    def stop(self) -> None:
        """Stop reconnecting and drop the connection; events already received are still handled."""
        self._stopping.set()
        if self._conn is not None:
            self._conn.close("listener stopping")


def _iso(epoch: float) -> str:
    """An epoch time as an ISO 8601 UTC timestamp, to the millisecond."""
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="milliseconds")
