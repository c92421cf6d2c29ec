"""The ESL edge: greenswitch's ``InboundESL``, hardened, kept connected to one FreeSWITCH node forever.

greenswitch 0.0.19 stays the client (its handler registry, command bookkeeping and greenlet pair),
but every method with a verified defect is replaced here:

* ``receive_events`` reads with a socket timeout (the liveness window: a half-open peer is noticed),
  frames bytes with ``listener.frame.FrameDecoder`` (size caps, never allocates what it has not
  received, no busy loop on a short body then EOF) and parses bodies with ``listener.event``
  (``event json`` by default, parsed by orjson; ``plain`` with per-value URL-decoding, so ``%0A``
  cannot inject headers; in both, bytes that are not UTF-8 are replaced, never fatal).
* ``process_events`` drains the queue up to an end-of-stream marker, so events received just before
  the socket closed are all processed (greenswitch drops them). It takes whatever is queued (up to
  ``MAX_BATCH``) at once: a ``BatchHandler`` prepares each event of a run on its own (one failure
  skips one event) and then commits the run together (one outbox transaction for many calls).
* with ``deferred`` event names (``[esl] classify_process``), a JSON body is queued unparsed
  (``RawEvent``) and a ``Presolving`` handler gets each batch before the previous one is committed,
  to have it parsed and classified in another process; whatever comes back without a result is
  parsed here, and rejected here if it cannot be, as it would have been on arrival.
* ``send`` has a timeout and fails fast on a dead connection (greenswitch can block forever).
* one ``HardenedInboundESL`` per connection attempt: ``ESLSource`` makes a fresh one each time.
"""

from __future__ import annotations

import contextlib
import itertools
import random
import re
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol, runtime_checkable

import gevent
import gevent.event
import gevent.queue
import gevent.socket
from greenswitch.esl import InboundESL

from listener.backoff import reconnect_delay
from listener.errors import AuthError, CommandTimeoutError, ESLError, EventError, FrameError
from listener.event import HangupEvent, RawEvent
from listener.frame import DEFAULT_MAX_FRAME_BYTES, Frame, FrameDecoder

DEFAULT_EVENTS = ("CHANNEL_HANGUP_COMPLETE", "HEARTBEAT")
EVENT_FORMATS = ("json", "plain")
MAX_BATCH = 500
"""Most events handed to a ``BatchHandler`` at once (what is queued when the handler is free)."""
_END = object()  # queued after the last event of a connection
SLICE_S = 0.01
"""Longest run of the reader or the handlers without yielding: a backlog never stalls the loop."""
_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")


@dataclass(frozen=True, slots=True)
class ESLSettings:
    """How every FreeSWITCH connection behaves."""

    connect_timeout: float = 5.0
    command_timeout: float = 5.0
    liveness_timeout: float = 60.0
    max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES
    backoff_initial: float = 0.5
    backoff_max: float = 30.0
    queue_size: int = 500
    events: tuple[str, ...] = DEFAULT_EVENTS
    event_format: str = "json"
    """``event json`` (default): orjson parses a whole hangup in C, values arrive decoded, so there is
    no URL-decoding layer at all; the pipeline runs ~2x faster than on ``plain``. Both are read."""
    classify_process: bool = True
    """Parse and classify the hangups of ``event json`` in a second process (``listener.offload``);
    the daemon's loop keeps the framing, the outbox commits and the log lines (a second core)."""


@dataclass(frozen=True, slots=True)
class Node:
    """One FreeSWITCH node to listen to."""

    name: str
    host: str = "127.0.0.1"
    port: int = 8021
    password: str = field(default="ClueCon", repr=False)


@runtime_checkable
class BatchHandler(Protocol):
    """Handles a run of events: ``prepare`` each (pure work, fails alone), then ``commit`` them together."""

    def prepare(self, event: HangupEvent) -> Any: ...

    def commit(self, prepared: list[Any]) -> None: ...


@runtime_checkable
class Presolving(Protocol):
    """A ``BatchHandler`` that may have some of a run prepared elsewhere (``listener.offload``)."""

    def presolve(self, events: list[HangupEvent | RawEvent]) -> Callable[[], list[Any]]:
        """Start on the run now; the call returns, per event, what ``prepare`` would, or None where
        ``prepare`` must do it. Called before the previous run is committed."""
        ...


EventHandler = Callable[[HangupEvent], None] | BatchHandler


@dataclass(slots=True)
class ESLStats:
    """What one node's connections did, read by the metrics and the watchdog (monotonic times)."""

    events_received: Counter[str] = field(default_factory=Counter)
    frames_rejected: int = 0
    events_rejected: int = 0
    handler_failures: int = 0
    connect_failures: int = 0
    last_received: float = field(default_factory=time.monotonic)
    handling_since: float | None = None
    gaps: int = 0
    gap_seconds: float = 0.0
    last_gap_seconds: float | None = None
    freeswitch_restarts: int = 0
    core_uuid: str | None = None


class HardenedInboundESL(InboundESL):  # type: ignore[misc]
    """One ESL connection; see the module docstring for what differs from greenswitch."""

    def __init__(self, node: Node, settings: ESLSettings, log: Any, stats: ESLStats | None = None) -> None:
        super().__init__(node.host, node.port, node.password, timeout=settings.connect_timeout)
        self.settings = settings
        self.log = log
        self.stats = ESLStats() if stats is None else stats
        self.close_reason = "closed by FreeSWITCH"
        self.rejected = False
        self.disconnect_notice = False
        self.sock: gevent.socket.socket | None = None
        self.sock_file = None
        self._decoder = FrameDecoder(settings.max_frame_bytes)
        self._esl_event_queue = gevent.queue.Queue(maxsize=settings.queue_size)
        self.on_core_uuid: Callable[[str], None] | None = None
        self.deferred: frozenset[str] = frozenset()
        """Events whose ``event json`` bodies are queued unparsed (``RawEvent``), for a ``Presolving``
        handler to have them parsed elsewhere; any it leaves are parsed here as they are handled."""
        self._in_hand = 0

    # -- connecting ---------------------------------------------------------------------------
    def connect(self) -> None:
        """Open the socket, wait for auth/request, authenticate. Raises ESLError / AuthError."""
        try:
            sock = gevent.socket.create_connection(
                (self.host, self.port), timeout=self.settings.connect_timeout
            )
        except OSError as exc:
            raise ESLError(f"cannot connect: {exc.strerror or exc}") from None
        sock.settimeout(self.settings.liveness_timeout)
        self.sock = sock
        self.connected = True
        self.start_event_handlers()
        if not self._auth_request_event.wait(timeout=self.settings.command_timeout):
            raise ESLError("no auth/request from FreeSWITCH in time")
        if self.rejected:
            raise AuthError("FreeSWITCH rejected this address (apply-inbound-acl)")
        if not self.connected:
            raise ESLError(f"connection lost before authentication: {self.close_reason}")
        self.authenticate()

    def authenticate(self) -> None:
        reply = self.command(f"auth {self.password}")
        if not reply.startswith("+OK"):
            raise AuthError(f"FreeSWITCH refused the password ({reply or 'no reply text'})")

    def subscribe(self) -> None:
        reply = self.command(f"event {self.settings.event_format} " + " ".join(self.settings.events))
        if not reply.startswith("+OK"):
            raise ESLError(f"event subscription refused: {reply}")

    def command(self, text: str, *, close_on_timeout: bool = True) -> str:
        """Send a command and return its Reply-Text (api: its body)."""
        frame: Frame = self.send(text, close_on_timeout=close_on_timeout)
        if frame.content_type == "api/response":
            return frame.body.decode("utf-8", "replace")
        return frame.headers.get("Reply-Text", "")

    def send(self, data: str, *, close_on_timeout: bool = True) -> Frame:
        """Send one command and wait for its reply, at most ``command_timeout``.

        Without ``close_on_timeout`` a late reply is still matched to this command (it stays queued),
        and the connection is kept: for a query whose reply may sit behind a backlog of events.
        """
        if not self.connected or self.sock is None:
            raise ESLError("not connected")
        result: gevent.event.AsyncResult = gevent.event.AsyncResult()
        self._commands_sent.append(result)
        timeout = self.settings.command_timeout
        try:
            with gevent.Timeout(timeout, CommandTimeoutError(f"no reply within {timeout:g}s")):
                self.sock.sendall((data + "\n\n").encode("utf-8"))
                frame: Frame = result.get()
                return frame
        except CommandTimeoutError:
            if close_on_timeout:
                self.close("command timed out")
            raise
        except OSError as exc:
            self.close(f"send failed: {exc}")
            raise ESLError(f"send failed: {exc.strerror or exc}") from None

    # -- reading ------------------------------------------------------------------------------
    def receive_events(self) -> None:
        """Read, frame and parse until the connection ends; then queue the end marker."""
        try:
            self._read_loop()
        except FrameError as exc:
            for frame in exc.frames:  # complete before the broken one, in the same read
                self.handle_frame(frame)
            self.close_reason = "malformed frame"
            self.stats.frames_rejected += 1
            self.log.error("esl.frame_rejected", reason=str(exc))
        finally:
            self._finish()

    def _read_loop(self) -> None:
        assert self.sock is not None
        running = _Slice()
        while self._run:
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                self.close_reason = f"nothing received for {self.settings.liveness_timeout:g}s (liveness)"
                return
            except OSError as exc:
                if self._run:
                    self.close_reason = f"socket error: {exc.strerror or exc}"
                return
            if not data:
                self._decoder.eof()
                return
            self.stats.last_received = time.monotonic()
            for frame in self._decoder.feed(data):
                self.handle_frame(frame)
            running.check()

    def handle_frame(self, frame: Frame) -> None:
        """Route one frame: replies to their command, events to the queue."""
        kind = frame.content_type
        if kind == "auth/request":
            self._auth_request_event.set()
        elif kind in ("command/reply", "api/response"):
            if self._commands_sent:
                self._commands_sent.pop(0).set(frame)
        elif kind == "text/disconnect-notice":
            self.disconnect_notice = True
            self.close_reason = "disconnect-notice from FreeSWITCH"
        elif kind == "text/rude-rejection":
            self.rejected = True
            self._auth_request_event.set()
        elif kind in ("text/event-plain", "text/event-json"):
            self._queue_event(frame)

    def _queue_event(self, frame: Frame) -> None:
        if self.deferred and frame.content_type == "text/event-json":
            raw = RawEvent.of(frame.body, self.deferred)
            if raw is not None:
                self.stats.events_received[raw.event_name] += 1
                self._esl_event_queue.put(raw)
                return
        try:
            if frame.content_type == "text/event-plain":
                event = HangupEvent.from_plain(frame.body)
            else:
                event = HangupEvent.from_json(frame.body)
        except EventError as exc:  # framing intact: skip this event, keep the connection
            self._rejected(exc, frame.content_type)
            return
        self.stats.events_received[event.event_name] += 1
        self._esl_event_queue.put(event)

    def _rejected(self, exc: EventError, content_type: str) -> None:
        self.stats.events_rejected += 1
        self.log.error("esl.event_rejected", reason=str(exc), content_type=content_type)

    def _finish(self) -> None:
        self.connected = False
        self._run = False
        self._close_socket()
        for pending in self._commands_sent:
            pending.set_exception(ESLError(f"connection lost: {self.close_reason}"))
        self._commands_sent.clear()
        self._auth_request_event.set()
        self._esl_event_queue.put(_END)

    # -- processing ---------------------------------------------------------------------------
    def process_events(self) -> None:
        """Run handlers for every queued event, including those queued just before the close.

        While one batch is handled the next (what is queued by then) is already presolved: a
        classify process works on it while this batch is committed.
        """
        running = _Slice()
        batch, ended = self._next_batch()
        work = self._presolve(batch)
        while True:
            self._in_hand = len(batch)
            following = None
            if not ended and not self._esl_event_queue.empty():
                after, ended = self._next_batch()
                following = (after, self._presolve(after))
                self._in_hand += len(after)
            for name, events, collects in work:
                self._dispatch(name, events, running, collects)
            self._in_hand -= len(batch)
            running.check()
            if following is not None:
                batch, work = following
            elif ended:
                return
            else:
                batch, ended = self._next_batch()
                work = self._presolve(batch)

    def _presolve(self, batch: list[HangupEvent | RawEvent]) -> list[_Run]:
        """The batch's runs of one event name, each sent to the handlers that presolve."""
        for event in batch:
            if self.on_core_uuid is not None and event.core_uuid:
                self.on_core_uuid(event.core_uuid)
        work = []
        for name, run in itertools.groupby(batch, key=lambda e: e.event_name):
            events = list(run)
            collects: dict[int, Callable[[], list[Any]]] = {}
            for handler in self.event_handlers.get(name, ()):
                if isinstance(handler, BatchHandler) and isinstance(handler, Presolving):
                    try:
                        collects[id(handler)] = handler.presolve(events)
                    except Exception:  # then prepare does each event; logged with traceback
                        self.log.exception("call.presolve_failed", events=len(events))
            work.append(_Run(name, events, collects))
        return work

    def _next_batch(self) -> tuple[list[HangupEvent | RawEvent], bool]:
        """What is queued (waiting for the first), up to ``MAX_BATCH``; True once the end marker came."""
        queue = self._esl_event_queue
        batch: list[HangupEvent | RawEvent] = []
        item = queue.get()
        while item is not _END:
            batch.append(item)
            if len(batch) >= MAX_BATCH or queue.empty():
                return batch, False
            item = queue.get_nowait()
        return batch, True

    def _dispatch(self, name: str, events: list[HangupEvent | RawEvent], running: _Slice,
                  collects: dict[int, Callable[[], list[Any]]]) -> None:
        self.stats.handling_since = time.monotonic()
        try:
            for handler in self.event_handlers.get(name, ()):
                if isinstance(handler, BatchHandler):
                    self._exec_batch(handler, events, running, collects.get(id(handler)))
                else:
                    for event in events:
                        if (parsed := self._parsed(event)) is not None:
                            self._safe_exec_handler(handler, parsed)
                        running.check()
        finally:
            self.stats.handling_since = None

    def _parsed(self, event: HangupEvent | RawEvent) -> HangupEvent | None:
        """The event itself, or a ``RawEvent`` parsed now (None, rejected and logged, if it cannot be)."""
        if not isinstance(event, RawEvent):
            return event
        try:
            return event.parse()
        except EventError as exc:  # as _queue_event would have, had it parsed the body
            self.stats.events_received[event.event_name] -= 1
            self._rejected(exc, "text/event-json")
            return None

    def _exec_batch(self, handler: BatchHandler, events: list[HangupEvent | RawEvent], running: _Slice,
                    collect: Callable[[], list[Any]] | None = None) -> None:
        prepared: list[Any] = []
        handled: list[HangupEvent | RawEvent] = []
        ready: list[Any] = [None] * len(events)
        if collect is not None:
            try:
                ready = _collected(collect, len(events))
            except Exception:  # then prepare does each event; logged with traceback
                self.log.exception("call.presolve_failed", events=len(events))
        for raw, done in zip(events, ready, strict=True):
            if done is not None:
                prepared.append(done)
                handled.append(raw)
                continue
            event = self._parsed(raw)
            if event is None:
                continue
            try:
                prepared.append(handler.prepare(event))
            except Exception:  # noqa: BLE001 - one bad event must never stop the stream; logged with traceback
                self._handler_failed(event)
            else:
                handled.append(event)
            running.check()
        try:
            if prepared:
                handler.commit(prepared)
        except Exception:  # noqa: BLE001 - logged with its traceback, once per event of the run
            for done_event in handled:
                self._handler_failed(done_event)

    def _safe_exec_handler(self, handler: Callable[[HangupEvent], None], event: HangupEvent) -> None:
        try:
            handler(event)
        except Exception:  # noqa: BLE001 - one bad event must never stop the stream; logged with traceback
            self._handler_failed(event)

    def _handler_failed(self, event: HangupEvent | RawEvent) -> None:
        self.stats.handler_failures += 1
        self.log.exception("call.handler_failed", channel_uuid=event.unique_id, event_name=event.event_name)

    # -- closing ------------------------------------------------------------------------------
    def close(self, reason: str) -> None:
        """Drop the connection; queued events are still processed."""
        if self._run:
            self.close_reason = reason
        self._run = False
        self.connected = False
        self._close_socket()

    def _close_socket(self) -> None:
        if self.sock is not None:
            with contextlib.suppress(OSError):
                self.sock.close()

    @property
    def queued(self) -> int:
        """Events received on this connection and not handled yet (queued, or in the batch at hand)."""
        return self._in_hand + sum(1 for item in self._esl_event_queue.queue if item is not _END)

    def wait_processed(self, timeout: float | None = None) -> bool:
        """Wait until every event of this connection was handled."""
        greenlet = self._process_events_greenlet
        if greenlet is None:
            return True
        greenlet.join(timeout=timeout)
        return bool(greenlet.dead)


def _collected(collect: Callable[[], list[Any]], count: int) -> list[Any]:
    """What a presolving handler made of a run: one entry per event, or ``ValueError``."""
    ready = collect()
    if len(ready) != count:
        raise ValueError(f"presolved {len(ready)} results for {count} events")
    return ready


class _Run(NamedTuple):
    """Consecutive events of one name in a batch, and their presolving handlers' collect calls."""

    name: str
    events: list[HangupEvent | RawEvent]
    collects: dict[int, Callable[[], list[Any]]]


class _Slice:
    """Yields to the loop once the calling greenlet has run ``SLICE_S`` since its last yield.

    A socket with data ready and a queue with events ready never switch by themselves, so a burst
    would otherwise be read, or handled, in one go: seconds without health, heartbeats or delivery.
    """

    def __init__(self) -> None:
        self.started = time.monotonic()

    def check(self) -> None:
        if time.monotonic() - self.started > SLICE_S:
            gevent.sleep(0)
            self.started = time.monotonic()


class ESLSource:
    """Keeps one node connected and subscribed forever, with capped, jittered backoff."""

    def __init__(
        self,
        node: Node,
        settings: ESLSettings,
        handlers: dict[str, EventHandler],
        log: Any,
        *,
        rand: Callable[[], float] = random.random,
        deferred: frozenset[str] = frozenset(),
    ) -> None:
        self.node = node
        self.deferred = deferred
        """Events queued unparsed on every connection (``HardenedInboundESL.deferred``)."""
        self.settings = settings
        self.handlers = handlers
        self.log = log.bind(node=node.name, host=node.host, port=node.port)
        self.rand = rand
        self.on_state: Callable[[ESLSource], None] | None = None
        self.stats = ESLStats()
        self._state = "starting"
        self.connections = 0
        self._attempt = 0
        self._stopping = gevent.event.Event()
        self._conn: HardenedInboundESL | None = None
        self._lost_at: float | None = None

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
        while not self._stopping.is_set():
            delay = self._session()
            if delay is not None:
                self.state = "backoff"
                self._stopping.wait(timeout=delay)
        self.state = "stopped"

    def _session(self) -> float | None:
        """One connection's life; the delay before the next attempt (None: stopping)."""
        conn = HardenedInboundESL(self.node, self.settings, self.log, self.stats)
        conn.on_core_uuid = self.saw_core_uuid
        conn.deferred = self.deferred
        for name, handler in self.handlers.items():
            conn.register_handle(name, handler)
        self._conn = conn
        self.state = "connecting"
        try:
            conn.connect()
            conn.subscribe()
        except AuthError as exc:
            return self._failed(conn, exc, self.settings.backoff_max, "esl.auth_failed")
        except ESLError as exc:
            return self._failed(conn, exc, self._next_delay(), "esl.connect_failed")
        return self._listen(conn)

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
        self._attempt = 0
        self.log.info("esl.connected", events=list(self.settings.events))
        self._report_gap()
        self._ask_core_uuid(conn)
        conn.wait_processed()
        self._lost_at = time.monotonic()
        if self._stopping.is_set():
            return None
        delay = self._next_delay()
        self.log.warning("esl.connection_lost", reason=conn.close_reason, reconnect_in=round(delay, 3))
        return delay

    def _report_gap(self) -> None:
        """FreeSWITCH does not replay what a disconnected listener missed: say how long we were blind."""
        if self._lost_at is None:
            return
        gap = time.monotonic() - self._lost_at
        self.stats.gaps += 1
        self.stats.gap_seconds += gap
        self.stats.last_gap_seconds = gap
        self.log.warning("esl.gap", gap_s=round(gap, 3), note="hangups during the gap were not seen")

    def _ask_core_uuid(self, conn: HardenedInboundESL) -> None:
        """Learn the node's Core-UUID now (events carry it too): a new one means FreeSWITCH restarted."""
        try:
            reply = conn.command("api global_getvar core_uuid", close_on_timeout=False).strip()
        except ESLError as exc:
            self.log.info("esl.core_uuid_unknown", reason=str(exc))
            return
        if _UUID.fullmatch(reply):
            self.saw_core_uuid(reply)

    def saw_core_uuid(self, core_uuid: str) -> None:
        """Record the node's Core-UUID; a change means FreeSWITCH restarted since we last saw it."""
        previous = self.stats.core_uuid
        if core_uuid == previous:
            return
        self.stats.core_uuid = core_uuid
        if previous is not None:
            self.stats.freeswitch_restarts += 1
            self.log.warning("esl.freeswitch_restarted", previous_core_uuid=previous, core_uuid=core_uuid)

    def _next_delay(self) -> float:
        settings = self.settings
        delay = reconnect_delay(
            self._attempt, initial=settings.backoff_initial, cap=settings.backoff_max, rand=self.rand
        )
        self._attempt += 1
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
