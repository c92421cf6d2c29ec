"""The FreeSWITCH connection: greenswitch's ``InboundESL``, hardened; one instance per connection attempt.

greenswitch 0.0.19 stays the client (its command bookkeeping and greenlet pair), but every method
with a verified defect is replaced here:

* ``receive_events`` reads with a socket timeout (the liveness window: a half-open peer is noticed)
  and frames bytes with ``listener.core.frame.FrameDecoder`` (size caps, never allocates what it has
  not received, no busy loop on a short body then EOF). Event frames are queued as they are, bodies
  unparsed: parsing is the pipeline's (``listener.pipeline``), which splits plain header lines
  before URL-decoding each value (``%0A`` cannot inject headers) and replaces bytes that are not
  UTF-8. Only broken framing ends the connection.
* ``process_events`` drains the queue up to an end-of-stream marker, so events received just before
  the socket closed are all handed on (greenswitch drops them). It hands over whatever is queued
  (up to ``MAX_BATCH``) at once, to the one consumer it was made with (the source's).
* ``send`` has a timeout and fails fast on a dead connection (greenswitch can block forever).
* an instance is never reconnected: ``listener.esl.source.ESLSource`` makes a fresh one each time.
"""

from __future__ import annotations

import contextlib
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import gevent
import gevent.event
import gevent.queue
import gevent.socket
from greenswitch.esl import InboundESL

from listener.config.settings import ESLSettings, Node
from listener.core.errors import AuthError, CommandTimeoutError, ESLError, FrameError
from listener.core.frame import Frame, FrameDecoder

MAX_BATCH = 500
"""Most event frames handed to the consumer at once (what is queued when it is free)."""
LINGER_S = 0.025
"""How long a batch waits for more events once its first is queued: at moderate rates the hangups of a
few tens of milliseconds share one batch, so one outbox commit (one fsync, one hand-off to the SQLite
thread), one write of the log lines and one handing of rows to each endpoint serve them all. It bounds
the latency it adds; at rates where events queue during a commit the batches fill without it."""
LINGER_BATCH = 12
"""A batch stops lingering once it holds this many events: at 1,000 hangups/s it waits ~12 ms, not
``LINGER_S`` (the per-batch costs are shared by enough hangups by then; the latency is not)."""
LINGER_WHEN_APART_S = 0.04
"""A batch lingers only when its first event came this soon after the previous batch's: at a few
hangups a second nothing would join it, and the wait's timer would be pure cost."""
_END = object()  # queued after the last event of a connection
SLICE_S = 0.01
"""Longest run of the reader or the pipeline without yielding: a backlog never stalls the loop."""
EVENT_TYPES = ("text/event-plain", "text/event-json")
Consumer = Callable[[Sequence[Frame]], None]
"""Takes a batch of event frames, in the order they arrived; never raises for one bad event."""


class TimeSlice:
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
    heartbeats: int = 0
    hostname: str | None = None


class HardenedInboundESL(InboundESL):  # type: ignore[misc]
    """One ESL connection; see the module docstring for what differs from greenswitch."""

    def __init__(self, node: Node, settings: ESLSettings, consume: Consumer, log: Any,
                 stats: ESLStats | None = None) -> None:
        super().__init__(node.host, node.port, node.password, timeout=settings.connect_timeout)
        self.settings = settings
        self.consume = consume
        self.log = log
        self.stats = ESLStats() if stats is None else stats
        self.close_reason = "closed by FreeSWITCH"
        self.rejected = False
        self.disconnect_notice = False
        self.sock: gevent.socket.socket | None = None
        self.sock_file = None
        self._decoder = FrameDecoder(settings.max_frame_bytes)
        self._esl_event_queue = gevent.queue.Queue(maxsize=settings.queue_size)
        self._in_hand = 0
        self._last_batch_at = float("-inf")
        """When (monotonic) the last batch began: a batch lingers only at a rate where others follow."""

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
        """Read and frame until the connection ends (event frames queued as they are); then the end marker."""
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
        running = TimeSlice()
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
        elif kind in EVENT_TYPES:
            self._esl_event_queue.put(frame)

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
        """Hand every queued event frame to the consumer, including those queued just before the close."""
        running = TimeSlice()
        ended = False
        while not ended:
            batch, ended = self._next_batch()
            self._in_hand = len(batch)
            try:
                if batch:
                    self.consume(batch)
            except Exception:  # a bug past the pipeline's per-event guard: this batch alone is lost, loudly
                self.log.exception("call.batch_failed", events=len(batch))
            finally:
                self._in_hand = 0
            running.check()

    def _next_batch(self) -> tuple[list[Frame], bool]:
        """What is queued (waiting for the first), up to ``MAX_BATCH``; True once the end marker came."""
        queue = self._esl_event_queue
        batch: list[Frame] = []
        item = queue.get()
        now = time.monotonic()
        busy, self._last_batch_at = now - self._last_batch_at < LINGER_WHEN_APART_S, now
        until = now + LINGER_S if busy else now
        while item is not _END:
            batch.append(item)
            if len(batch) >= MAX_BATCH:
                return batch, False
            if queue.empty():
                left = until - time.monotonic() if len(batch) < LINGER_BATCH else 0.0
                if left <= 0:
                    return batch, False
                try:
                    item = queue.get(timeout=left)
                except gevent.queue.Empty:
                    return batch, False
                continue
            item = queue.get_nowait()
        return batch, True

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
