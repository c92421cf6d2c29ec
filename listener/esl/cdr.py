"""The second source of hangups: mod_json_cdr's files, for the legs the Event Socket missed.

FreeSWITCH does not replay events to a listener that was away, and drops them for one that fell
100,000 behind; mod_json_cdr writes a file per leg regardless. ``CDRSource`` takes those files through
the node's pipeline (parse, classify, document, outbox) like ESL events: the same leg gets the same
document id from either source, and the outbox remembers every leg taken, so a leg seen on both is
logged and delivered once.

When it reads:

- new files, as mod_json_cdr closes them (inotify: ``IN_CLOSE_WRITE``, ``IN_MOVED_TO``), after
  ``SETTLE_S`` (the Event Socket usually delivers the same leg first, and the file is then skipped);
- at start, in the background after READY, the files modified since the last leg this node's
  outbox took, less ``MARGIN_S`` (none recorded: the last ``MARGIN_S`` only); after a reconnect of
  the node's Event Socket, or an inotify overflow, the files since the connection was lost (or the
  overflow), less the margin. mod_json_cdr's ``rotate`` subfolders (one per rotation, named by date)
  are read too; a subfolder not modified since that time is not listed at all.

A file whose Unique-ID (its name, ``[a_]<uuid>.cdr.json``) is taken is skipped unread. A file that
is not complete JSON yet is retried with backoff, never rejected; one that is complete but not a
CDR is rejected like a bad ESL frame. FreeSWITCH's files are never changed or deleted.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import gevent
import gevent.event

from listener.core.cdr import event_from_cdr, unique_id_from_name
from listener.core.errors import CDRIncompleteError, EventError, OutboxError
from listener.core.event import HangupEvent
from listener.esl.connection import TimeSlice
from listener.esl.inotify import IN_CLOSE_WRITE, IN_CREATE, IN_MOVED_TO, InotifyError, Watcher

SETTLE_S = 2.0
MARGIN_S = 600.0
"""How far before the last leg taken (or the loss of a connection) a scan reaches back."""
RETRY_INITIAL_S = 0.5
RETRY_MAX_S = 60.0
BATCH = 200
SUFFIX = ".cdr.json"


class Recovering(Protocol):
    """The node's pipeline, as the CDR source needs it (``listener.pipeline.Pipeline``)."""

    def recover(self, events: Sequence[HangupEvent]) -> int: ...
    def reject_file(self, path: Path, body: bytes, reason: str) -> None: ...


class Taken(Protocol):
    """The outbox's record of legs taken (``listener.outbox.writer.OutboxWriter``)."""

    def taken_unique_ids(self, unique_ids: Sequence[str]) -> frozenset[str]: ...
    def last_taken_at(self, node: str) -> float | None: ...


class RecoveryMetrics(Protocol):
    """Where recovered legs are counted (``listener.service.metrics.Metrics``)."""

    def cdr_recovered(self, node: str, count: int) -> None: ...


@dataclass(slots=True)
class _Waiting:
    """A file not complete yet: when to try again, and how many times it was tried."""

    path: Path
    due: float
    tries: int = 0
    since: float = field(default_factory=time.monotonic)
    warned: bool = False


def cdr_files(folder: Path, since: float) -> Iterator[Path]:
    """Every ``*.cdr.json`` in ``folder`` and its rotation subfolders modified at ``since`` or later.

    A subfolder whose own mtime is older is skipped without being listed (its files are older too).
    """
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return
    for entry in entries:
        try:
            if entry.is_dir(follow_symlinks=False):
                if entry.stat(follow_symlinks=False).st_mtime >= since:
                    yield from cdr_files(Path(entry.path), since)
            elif entry.name.endswith(SUFFIX) and entry.stat(follow_symlinks=False).st_mtime >= since:
                yield Path(entry.path)
        except OSError:
            continue  # gone meanwhile


class CDRSource:
    """Reads one node's CDR directory: at start, on each new file, after each reconnect; ``stop`` once."""

    def __init__(self, node: str, folder: Path, pipeline: Recovering, taken: Taken, log: Any, *,
                 reconnects: Callable[[], tuple[int, float | None]] | None = None,
                 metrics: RecoveryMetrics | None = None, settle_s: float = SETTLE_S,
                 margin_s: float = MARGIN_S, clock: Callable[[], float] = time.time) -> None:
        self.node = node
        self.folder = folder
        self.pipeline = pipeline
        self.taken = taken
        self.log = log.bind(node=node, cdr_dir=str(folder))
        self.reconnects = reconnects
        """(connections made, seconds the last gap lasted): a new connection after a gap asks for a scan."""
        self.metrics = metrics
        self.settle_s = settle_s
        self.margin_s = margin_s
        self.clock = clock
        self.recovered = 0
        self.skipped = 0
        self._arrived: dict[Path, float] = {}
        self._waiting: dict[Path, _Waiting] = {}
        self._stopping = gevent.event.Event()
        self._watcher: Watcher | None = None
        self._connections = 0

    # -- life ---------------------------------------------------------------------------------
    def run(self) -> None:
        """Watch, scan once since the last leg taken, then take new files until ``stop``."""
        self._watch()
        last = self.taken.last_taken_at(self.node)
        since = (last if last is not None else self.clock()) - self.margin_s
        self.scan(since, "start")
        if self.reconnects is not None:
            self._connections = self.reconnects()[0]
        try:
            while not self._stopping.is_set():
                self._turn()
        finally:
            if self._watcher is not None:  # here, never from another greenlet: libev watches its descriptor
                self._watcher.close()

    def stop(self) -> None:
        """Stop within a second (the longest a turn waits); the watch is closed by ``run`` itself."""
        self._stopping.set()

    def _watch(self) -> None:
        """inotify on the folder and its subfolders; without it (a limit), scans every minute instead."""
        try:
            self._watcher = Watcher()
            self._watcher.watch(self.folder)
            for entry in os.scandir(self.folder):
                if entry.is_dir(follow_symlinks=False):
                    self._watcher.watch(Path(entry.path))
        except (InotifyError, OSError) as exc:
            self.log.error("cdr.watch_failed", reason=str(exc),
                           note="new files are found by a scan every 60 s instead")
            if self._watcher is not None:
                self._watcher.close()
            self._watcher = None

    def _turn(self) -> None:
        now = time.monotonic()
        wait = min([self._next_due(now), 1.0])
        if self._watcher is None:
            if self._stopping.wait(60.0):
                return
            self.scan(self.clock() - 60.0 - self.margin_s, "poll")
            return
        for change in self._watcher.changes(timeout=wait):
            if change.is_dir and change.mask & IN_CREATE:
                with contextlib.suppress(InotifyError):
                    self._watcher.watch(change.path)  # a rotation: mod_json_cdr's new subfolder
            elif change.mask & (IN_CLOSE_WRITE | IN_MOVED_TO) and change.name.endswith(SUFFIX):
                self._arrived.setdefault(change.path, time.monotonic() + self.settle_s)
        if self._watcher.overflowed:
            self._watcher.overflowed = False
            self.scan(self.clock() - self.margin_s - 60.0, "inotify_overflow")
        self._check_reconnects()
        self._take_due()

    def _next_due(self, now: float) -> float:
        dues = [*self._arrived.values(), *(w.due for w in self._waiting.values())]
        return max(min(dues, default=now + 1.0) - now, 0.0)

    def _check_reconnects(self) -> None:
        if self.reconnects is None:
            return
        connections, gap_s = self.reconnects()
        if connections > self._connections:
            self._connections = connections
            if gap_s is not None and connections > 1:
                self.scan(self.clock() - gap_s - self.margin_s, "reconnect")

    def _take_due(self) -> None:
        now = time.monotonic()
        due = [path for path, at in self._arrived.items() if at <= now]
        for path in due:
            del self._arrived[path]
        due += [w.path for w in self._waiting.values() if w.due <= now]
        if due:
            self._take(due, "new")

    # -- taking files -------------------------------------------------------------------------
    def scan(self, since: float, reason: str) -> int:
        """Take every file modified since ``since`` (epoch) that holds a leg not taken yet."""
        started = time.monotonic()
        running = TimeSlice()
        found: list[Path] = []
        taken = 0
        for path in cdr_files(self.folder, since):
            if self._stopping.is_set():
                break
            found.append(path)
            if len(found) >= BATCH:
                taken += self._take(found, reason)
                found = []
            running.check()
        taken += self._take(found, reason)
        self.log.info("cdr.scanned", reason=reason, since=round(since, 3), recovered=taken,
                      took_s=round(time.monotonic() - started, 3))
        return taken

    def _take(self, paths: Iterable[Path], reason: str) -> int:
        """Read, parse and hand on the files whose leg is not taken; how many legs were new."""
        named = {path: unique_id_from_name(path.name) for path in paths}
        try:
            known = self.taken.taken_unique_ids([u for u in named.values() if u])
        except OutboxError as exc:
            self.log.warning("cdr.outbox_unavailable", error=str(exc), code=exc.code)
            self._retry_later(named)
            return 0
        events: list[HangupEvent] = []
        for path, unique_id in named.items():
            if unique_id and unique_id in known:
                self.skipped += 1
                self._waiting.pop(path, None)
                continue
            event = self._read(path)
            if event is not None:
                events.append(event)
        if not events:
            return 0
        fresh = self.pipeline.recover(events)
        if fresh:
            self._recovered(fresh, events, reason)
        return fresh

    def _retry_later(self, paths: Iterable[Path]) -> None:
        """The outbox could not say which legs are taken: look at these files again later."""
        for path in paths:
            self._waiting.setdefault(path, _Waiting(path, time.monotonic() + RETRY_MAX_S / 4))

    def _read(self, path: Path) -> HangupEvent | None:
        try:
            body = path.read_bytes()
        except FileNotFoundError:
            self._waiting.pop(path, None)
            return None
        except OSError as exc:
            self.log.warning("cdr.unreadable", file=str(path), reason=exc.strerror or str(exc))
            self._wait(path)
            return None
        try:
            event = event_from_cdr(body)
        except CDRIncompleteError:
            self._wait(path)
            return None
        except EventError as exc:
            self._waiting.pop(path, None)
            self.pipeline.reject_file(path, body, str(exc))
            return None
        self._waiting.pop(path, None)
        return event

    def _wait(self, path: Path) -> None:
        """Not complete (or not readable) yet: try again later, with backoff, for as long as it takes."""
        waiting = self._waiting.setdefault(path, _Waiting(path, 0.0))
        delay = min(RETRY_INITIAL_S * 2 ** waiting.tries, RETRY_MAX_S)
        waiting.tries += 1
        waiting.due = time.monotonic() + delay
        if not waiting.warned and time.monotonic() - waiting.since > RETRY_MAX_S:
            waiting.warned = True
            self.log.warning("cdr.incomplete", file=str(path), tries=waiting.tries,
                             note="not complete JSON yet: tried again until it is")

    def _recovered(self, fresh: int, events: Sequence[HangupEvent], reason: str) -> None:
        self.recovered += fresh
        if self.metrics is not None:
            self.metrics.cdr_recovered(self.node, fresh)
        ends = [e.hangup_us / 1e6 for e in events if e.hangup_us]
        self.log.warning("cdr.recovered", count=fresh, reason=reason,
                         first_hangup=_iso(min(ends)) if ends else None,
                         last_hangup=_iso(max(ends)) if ends else None,
                         gap_s=round(max(ends) - min(ends), 3) if ends else None)


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="seconds")
