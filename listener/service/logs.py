"""structlog set-up: one JSON object per line; stdlib logging routed in; a daemon log that never blocks.

greenswitch (and any other library) logs through the standard ``logging`` module; a handler on the
root logger forwards those records into the same structlog pipeline, so operators read one stream.

A stream given to ``configure`` (a test's ``StringIO``) is written synchronously. The daemon's
output (``buffer_output``, called by ``run`` before ``configure``) is a ``BoundedOutput`` on fd 1.
Its invariants:

* A log call never blocks the hub. Lines go to a bounded in-memory buffer; one greenlet, the
  writer, hands the buffered bytes to fd 1 on a thread of its own (a one-thread pool, so no file
  status flag of a shared pipe or terminal is changed): a reader that stops reading blocks that
  thread only, while ESL reading, delivery and ``/livez`` go on.
* The lines of one ``held`` run (one commit's) enter the buffer together and leave it in one write.
* Mode ``drop`` (webhooks configured: the outbox is the durable record): lines that find the buffer
  full are dropped and counted, and so is every line after them until the writer has brought the
  buffer down to half: the gap is in one place, and a ``log.lines_dropped`` line (count, since,
  reason) is the first line after it. ``dropped_total`` feeds ``hangup_listener_log_lines_dropped_total``.
* Mode ``wait`` (no webhooks: the log is the only output): a ``held`` run (the pipeline's commit,
  its ``leg.classified`` lines) that finds the buffer full waits cooperatively until there is
  room, so the pipeline pauses, its ESL queue fills and the reader stops reading FreeSWITCH, as
  with a stuck outbox. None of those lines is dropped: a run that cannot wait (the hub's, the
  writer's) or whose wait is cut short (a kill at shutdown) is appended over the cap.
  ``paused_until`` says until when, so a paused handler is not taken for a stuck one. A line
  logged outside a held run never waits (a signal's, the shutdown's: they must go on): it is kept
  over the cap, up to ``OVER_CAP`` times it, and dropped and counted beyond.
* A failed write (``EPIPE``: the reader is gone) loses its lines, counted and reported as in mode
  ``drop``, in either mode: waiting cannot bring a reader back.
* ``close`` writes what is left within a deadline, then gives up: a write still blocked stays
  blocked on its thread, and the process exits all the same.
* Log calls are the hub thread's (``listener.service.monitor`` hands its reports over); a line
  logged on another thread is handed to the hub the same way.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from datetime import UTC, datetime
from typing import Any, Literal, Protocol, TextIO

import gevent
import gevent.event
import gevent.threadpool
import structlog
from gevent import monkey

from listener.service.render import Renderer

LEVELS = ("debug", "info", "warning", "error", "critical")
CAPACITY = 4 << 20
"""Bytes the daemon's log buffer holds (about 3,800 ``leg.classified`` lines) before it drops or waits."""
OVER_CAP = 2
"""In mode ``wait``, lines logged outside a held run are kept up to this many times ``capacity``."""
CLOSE_S = 5.0
"""How long the stopped daemon tries to write the lines it still holds (``close``)."""
WRITE_MAX = 1 << 20
"""Most bytes handed to one write: room comes back to waiting callers at least this often."""

Mode = Literal["drop", "wait"]
Clock = Callable[[], float]
_thread_id: Callable[[], int] = monkey.get_original("_thread", "get_ident")
_select: Callable[..., Any] = monkey.get_original("select", "select")


class Output(Protocol):
    """Where rendered lines go: ``HeldStream`` (a stream, synchronously) or ``BoundedOutput``."""

    def line(self, text: str) -> None: ...
    def held(self) -> AbstractContextManager[None]: ...
    def isatty(self) -> bool: ...


class HeldStream:
    """A stream written synchronously: every line is flushed as it is written, except within ``held``.

    Within ``held`` (the lines of one commit, written one after the other without waiting on
    anything), the flushes wait until it ends: one write for the run instead of one per line.
    """

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self._holding = 0

    def line(self, text: str) -> None:
        self.stream.write(text + "\n")
        if not self._holding:
            self.stream.flush()

    def isatty(self) -> bool:
        try:
            return bool(self.stream.isatty())
        except (AttributeError, ValueError):  # no such method; closed
            return False

    @contextmanager
    def held(self) -> Iterator[None]:
        self._holding += 1
        try:
            yield
        finally:
            self._holding -= 1
            if not self._holding:
                self.stream.flush()


def _write_all(fd: int, data: bytes) -> None:
    """All of ``data`` to ``fd``; runs on the writer's thread, the only one a full pipe blocks."""
    view = memoryview(data)
    while view:
        try:
            view = view[os.write(fd, view):]
        except BlockingIOError:  # another holder made the shared description non-blocking: wait for room
            _select([], [fd], [], 1.0)


def _iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).isoformat().replace("+00:00", "Z")


class BoundedOutput:
    """The daemon's log output: a bounded buffer, written to ``fd`` by one greenlet through one thread."""

    def __init__(self, fd: int, mode: Mode, capacity: int = CAPACITY, *,
                 clock: Clock = time.monotonic, wall: Clock = time.time) -> None:
        self.fd, self.mode, self.capacity = fd, mode, capacity
        self.clock, self.wall = clock, wall
        self.size = 0
        """Bytes buffered or being written."""
        self.full_since: float | None = None
        """Since when (``clock``) the buffer has been full: set by a line that did not fit, cleared
        once the writer has brought it down to half."""
        self.full_until: float | None = None
        """When (``clock``) the last time it was full ended."""
        self.dropped_total = 0
        self._lost, self._lost_since, self._lost_reason = 0, 0.0, ""
        self._chunks: deque[bytes] = deque()
        self._pending: list[str] = []
        self._holding = 0
        self._closed = False
        self._ready, self._room, self._idle = gevent.event.Event(), gevent.event.Event(), gevent.event.Event()
        self._idle.set()
        self._thread = _thread_id()
        self._loop = gevent.get_hub().loop
        self._pool = gevent.threadpool.ThreadPool(1)
        self._writer = gevent.spawn(self._drain)

    # -- the callers' side --------------------------------------------------------------------
    def isatty(self) -> bool:
        return os.isatty(self.fd)

    def line(self, text: str) -> None:
        if self._holding:
            self._pending.append(text)
        else:
            self._put([text], False)

    @contextmanager
    def held(self) -> Iterator[None]:
        """The lines logged within enter the buffer together when it ends (one write); in mode
        ``wait``, it ends when they fit."""
        self._holding += 1
        try:
            yield
        finally:
            self._holding -= 1
            if not self._holding and self._pending:
                lines, self._pending = self._pending, []
                self._put(lines, True)

    def _put(self, lines: list[str], paced: bool) -> None:
        if _thread_id() != self._thread:
            self._loop.run_callback_threadsafe(self._put, lines, paced)
            return
        data = "".join(f"{text}\n" for text in lines).encode()
        if self._closed:
            self._lose(len(lines), "logged after the output was closed")
        elif self._fits(len(data)) and (self.mode == "wait" or self.full_since is None):
            self._append(data)
        else:
            self.full_since = self.clock() if self.full_since is None else self.full_since
            if self.mode == "wait" and paced:
                self._append_when_room(data)
            elif self.mode == "wait" and self.size + len(data) <= OVER_CAP * self.capacity:
                self._append(data)  # a line outside a held run never waits (a signal's, the shutdown's)
            else:
                self._lose(len(lines), "output full: stdout not read fast enough")

    def _fits(self, size: int) -> bool:
        return not self.size or self.size + size <= self.capacity

    def _append_when_room(self, data: bytes) -> None:
        """Wait (cooperatively) until ``data`` fits; appended in any case, even if the wait is cut short."""
        try:
            while not self._fits(len(data)) and self._may_wait():
                self._room.clear()
                self._room.wait()
        finally:
            self._append(data)

    def _may_wait(self) -> bool:
        current = gevent.getcurrent()
        return not self._closed and current is not self._writer and current is not gevent.get_hub()

    def _append(self, data: bytes) -> None:
        self._chunks.append(data)
        self.size += len(data)
        self._idle.clear()
        self._ready.set()

    def _lose(self, lines: int, reason: str) -> None:
        if not self._lost:
            self._lost_since = self.wall()
        self._lost += lines
        self._lost_reason = reason
        self.dropped_total += lines

    # -- the writer's side --------------------------------------------------------------------
    def _drain(self) -> None:
        """The writer: the buffered bytes to ``fd``, one write at a time, each on the pool's thread."""
        while True:
            self._ready.wait()
            if not self._chunks:
                self._ready.clear()
                continue
            data = self._take()
            failure = self._write(data)
            self.size -= len(data)
            self._room.set()
            if failure:
                self._lose(data.count(b"\n"), failure)
            else:
                self._caught_up()
            if not self.size:
                self._idle.set()

    def _take(self) -> bytes:
        taken, size = [], 0
        while self._chunks and size < WRITE_MAX:
            chunk = self._chunks.popleft()
            taken.append(chunk)
            size += len(chunk)
        return b"".join(taken)

    def _write(self, data: bytes) -> str | None:
        """Write ``data``; what went wrong, if it could not be."""
        try:
            self._pool.apply(_write_all, (self.fd, data))
        except OSError as exc:
            return f"write failed: {exc.strerror or exc}"
        return None

    def _caught_up(self) -> None:
        """After a write: the stall ends once the buffer is down to half; then the loss is reported."""
        if self.full_since is not None and self.size <= self.capacity // 2:
            self.full_since, self.full_until = None, self.clock()
        if self._lost and self.full_since is None:
            count, since, reason = self._lost, self._lost_since, self._lost_reason
            self._lost = 0
            structlog.get_logger("listener.service.logs").warning(
                "log.lines_dropped", count=count, since=_iso(since), reason=reason)

    def close(self, timeout: float) -> bool:
        """Write what is buffered within ``timeout`` seconds; False if some was left (the reader stuck)."""
        flushed = bool(self._idle.wait(timeout))
        self._closed = True
        self._writer.kill(block=False)
        self._room.set()  # callers still waiting append over the cap and return
        if flushed:  # else its thread is blocked in a write: killing the pool would wait for it
            self._pool.kill()
        return flushed


_output: Output | None = None
_buffered: BoundedOutput | None = None


@contextmanager
def held() -> Iterator[None]:
    """Lines logged within are written together when it ends; in the daemon's mode ``wait``, it
    ends when they fit: the pipeline's commit is where a stuck stdout pushes back."""
    if _output is None:
        yield
        return
    with _output.held():
        yield


def buffer_output(mode: Mode, *, fd: int = 1, capacity: int = CAPACITY) -> BoundedOutput:
    """From now on ``configure`` without a stream logs to ``fd`` through a bounded buffer (the daemon's)."""
    global _buffered  # noqa: PLW0603 - the one log output of the process, as structlog's configuration is
    if _buffered is not None:
        _buffered.close(0)
    _buffered = BoundedOutput(fd, mode, capacity)
    return _buffered


def close(timeout: float) -> bool:
    """Write what the daemon's output holds within ``timeout`` seconds; False if some was left."""
    global _buffered
    if _buffered is None:
        return True
    output, _buffered = _buffered, None
    return output.close(timeout)


def stalled_since() -> float | None:
    """Since when (monotonic) the daemon's log output has been full; None while it has room."""
    return _buffered.full_since if _buffered is not None else None


def paused_until() -> float | None:
    """Until when (monotonic; now while it lasts) log calls waited for room, None if they never did.

    Only in mode ``wait``: the pipeline and the ESL reader behind it were paused by the log, not stuck.
    """
    output = _buffered
    if output is None or output.mode != "wait":
        return None
    return output.clock() if output.full_since is not None else output.full_until


def stall_note() -> str | None:
    """What to tell the operator (readiness, ``STATUS=``) while the daemon's log output is stalled."""
    output, since = _buffered, stalled_since()
    if output is None or since is None:
        return None
    effect = "log calls wait: ingestion paused" if output.mode == "wait" else "log lines dropped"
    return f"log output stalled for {output.clock() - since:.0f}s (stdout not read): {effect}"


def dropped_total() -> int:
    """Log lines the daemon's output dropped (mode ``drop``) or could not write, since it started."""
    return _buffered.dropped_total if _buffered is not None else 0


_renderer = Renderer()
"""The last step of every logger's chain, switched in place by ``configure`` (``[log] format``)."""


def _processors() -> list[Any]:
    return [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _renderer,
    ]


class LineLogger:
    """structlog's logger: each rendered event becomes one line of ``output``.

    Unlike ``structlog.WriteLogger`` it takes no lock: log calls are the hub thread's, and a
    ``threading.Lock`` held by a greenlet waiting for room would block every other one.
    """

    def __init__(self, output: Output) -> None:
        self.output = output

    def msg(self, message: str) -> None:
        self.output.line(message)

    log = debug = info = warn = warning = msg
    fatal = failure = err = error = critical = exception = msg


_level = logging.INFO
"""The level every logger filters by, read at each call: a reload (``configure``) reaches loggers bound
before it."""
_NAMES = {logging.DEBUG: "debug", logging.INFO: "info", logging.WARNING: "warning", logging.ERROR: "error",
          logging.CRITICAL: "critical"}


def _name(level: int) -> str:
    """The method name of a custom stdlib level (a library's): the next standard level's."""
    return next((name for number, name in sorted(_NAMES.items()) if number >= level), "critical")


class LevelLogger(structlog.BoundLoggerBase):
    """structlog's bound logger, filtering by the process's current level (``_level``) at each call.

    ``make_filtering_bound_logger`` bakes the level into the class it makes: a logger bound before a
    reload (each node's source and pipeline, each webhook endpoint: ``log.bind(node=...)``) kept the
    level of the start, and a SIGHUP to debug never showed their debug lines.
    """

    def _emit(self, level: int, event: str, args: tuple[Any, ...], kw: dict[str, Any]) -> Any:
        if level < _level:
            return None
        return self._proxy_to_logger(_NAMES.get(level) or _name(level), event % args if args else event, **kw)

    def debug(self, event: str, *args: Any, **kw: Any) -> Any:
        return self._emit(logging.DEBUG, event, args, kw)

    def info(self, event: str, *args: Any, **kw: Any) -> Any:
        return self._emit(logging.INFO, event, args, kw)

    def warning(self, event: str, *args: Any, **kw: Any) -> Any:
        return self._emit(logging.WARNING, event, args, kw)

    warn = warning

    def error(self, event: str, *args: Any, **kw: Any) -> Any:
        return self._emit(logging.ERROR, event, args, kw)

    def exception(self, event: str, *args: Any, **kw: Any) -> Any:
        kw.setdefault("exc_info", True)
        return self._emit(logging.ERROR, event, args, kw)

    def critical(self, event: str, *args: Any, **kw: Any) -> Any:
        return self._emit(logging.CRITICAL, event, args, kw)

    fatal = critical

    def log(self, level: int, event: str, *args: Any, **kw: Any) -> Any:
        """At a stdlib level number (a library's record's): a custom one takes the next standard name."""
        return self._emit(level, event, args, kw)


class StdlibBridge(logging.Handler):
    """Forwards stdlib log records (greenswitch's) into structlog as ``<logger name>`` events."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a library's broken format string must not kill the caller
            message = str(record.msg)
        log = structlog.get_logger().bind(logger=record.name)
        log.log(record.levelno, message)


def configure(level: str = "info", stream: TextIO | None = None, *, fmt: str = "auto",
              isatty: Callable[[], bool] | None = None) -> None:
    """Configure structlog and the stdlib bridge; safe to call again (e.g. on reload).

    Without ``stream``, the output is the daemon's (``buffer_output``) if there is one, else stdout.
    ``fmt`` (``[log] format``): ``auto`` renders for a person when the output is a terminal (``isatty``,
    the output's own unless given), as JSON otherwise.
    """
    global _output, _level  # the process's one output and level, as structlog's configuration is
    numeric = logging.getLevelNamesMapping()[level.upper()]
    output: Output = HeldStream(stream) if stream is not None else _buffered or HeldStream(sys.stdout)
    _output, _level = output, numeric
    _renderer.configure(fmt, (isatty or output.isatty)())
    logger = LineLogger(output)
    structlog.configure(
        processors=_processors(),
        wrapper_class=LevelLogger,
        logger_factory=lambda *_args: logger,
        cache_logger_on_first_use=False,
    )
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, StdlibBridge):
            root.removeHandler(handler)
    root.addHandler(StdlibBridge())
    root.setLevel(max(numeric, logging.INFO))  # other libraries' debug lines stay out
    logging.getLogger("listener").setLevel(numeric)  # the daemon's own stdlib loggers follow the level
