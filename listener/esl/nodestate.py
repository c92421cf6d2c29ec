"""What the listener last knew of each FreeSWITCH node, kept on disk so a gap across a restart is seen.

FreeSWITCH does not replay the events a listener missed. Within one run ``ESLSource`` measures
each gap itself; across a restart of the daemon it needs this file: ``esl-state.json`` in the
outbox's folder (``Config.outbox.path.parent``, which every configuration has), one record per
node: its Core-UUID, the wall-clock time of the last event seen and, if the connection had ended,
when. Invariants:

* Written whole or not at all: a temporary file, then a rename over the old one. Folder 0700 and
  file 0600, as the outbox's (``listener.outbox.files``).
* Written at most every ``WRITE_INTERVAL_S`` while events arrive (never per event), at once when a
  connection ends or the Core-UUID changes, and at stop. A ``kill -9`` (or a crash) loses at most
  the last ``WRITE_INTERVAL_S`` of it: the next start then measures the gap from the last write,
  at most that much too long (the gap line says ``measured_from = "last_write"``). No fsync: a
  power loss may leave the file empty, and an unreadable file is logged and treated as absent.
* Never stops ingestion: a write that fails is logged once (``esl.state_write_failed``) and tried
  again at the next.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TypeGuard

from listener.outbox.files import open_private, private_folder

STATE_FILE = "esl-state.json"
WRITE_INTERVAL_S = 5.0
"""Least time between two writes while events arrive: what a ``kill -9`` can lose of the record."""
VERSION = 1


@dataclass(frozen=True, slots=True)
class NodeRecord:
    """One node as last seen: the persisted record (times are wall-clock epoch seconds)."""

    core_uuid: str | None
    """The node's Core-UUID (a new one means FreeSWITCH restarted); None if never learned."""
    last_event_at: float
    """When the last event (or the connection's Core-UUID reply) was read: every event FreeSWITCH
    sent before it was seen. A CDR scan for missed hangups starts here."""
    lost_at: float | None = None
    """When the connection ended (lost, or the daemon stopped); None while it was up: a record still
    None at the next start means the daemon ended without stopping (killed, crashed)."""

    @classmethod
    def parse(cls, value: Any) -> NodeRecord | None:
        """The record of one JSON object, or None if it is not one."""
        if not isinstance(value, dict):
            return None
        core, last, lost = value.get("core_uuid"), value.get("last_event_at"), value.get("lost_at")
        if not (isinstance(core, str | None) and _time(last) and (lost is None or _time(lost))):
            return None
        return cls(core, float(last), None if lost is None else float(lost))


def _time(value: Any) -> TypeGuard[float]:
    """A finite number of seconds (JSON has no other kind of time)."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


class NodeStateFile:
    """The records of every node, as loaded at start and as they are now; one file for the daemon.

    ``loaded`` is what the previous run left (read once, never changed): ``loaded[name].last_event_at``
    is where a CDR scan for the hangups missed across the restart starts. The sources ``put`` their
    current record; ``save`` writes them all.
    """

    def __init__(self, path: Path, log: Any, loaded: Mapping[str, NodeRecord] | None = None, *,
                 clock: Callable[[], float] = time.monotonic, interval: float = WRITE_INTERVAL_S) -> None:
        self.path = path
        self.log = log
        self.loaded: Mapping[str, NodeRecord] = dict(loaded or {})
        """Each node's record as the previous run left it (absent: none, or the file was unreadable)."""
        self.records: dict[str, NodeRecord] = dict(self.loaded)
        """Each node's current record (nodes no longer configured keep theirs)."""
        self.clock = clock
        self.interval = interval
        self.writes = 0
        self._written_at: float | None = None
        self._dirty = False
        self._failing = False

    @classmethod
    def load(cls, folder: Path, log: Any, **kwargs: Any) -> NodeStateFile:
        """The records of ``folder``'s state file; a missing file is none, an unreadable one is logged."""
        path = folder / STATE_FILE
        try:
            document = json.loads(path.read_bytes())
        except FileNotFoundError:
            return cls(path, log, **kwargs)
        except (OSError, ValueError) as exc:
            log.warning("esl.state_unreadable", path=str(path), reason=str(exc)[:200],
                        consequence="a gap across this restart cannot be measured")
            return cls(path, log, **kwargs)
        nodes = document.get("nodes") if isinstance(document, dict) else None
        records = {name: record for name, value in (nodes.items() if isinstance(nodes, dict) else ())
                   if (record := NodeRecord.parse(value)) is not None}
        return cls(path, log, records, **kwargs)

    def put(self, name: str, record: NodeRecord, *, now: bool = False) -> None:
        """Keep ``name``'s current record; write the file if ``now``, or if the last write is old enough."""
        self.records[name] = record
        self._dirty = True
        if now or self._written_at is None or self.clock() - self._written_at >= self.interval:
            self.save()

    def save(self) -> None:
        """Write every record (temporary file, then rename) if one changed since the last write."""
        if not self._dirty:
            return
        self._written_at = self.clock()
        nodes = {name: asdict(record) for name, record in sorted(self.records.items())}
        body = json.dumps({"version": VERSION, "written_at": time.time(), "nodes": nodes}, indent=1)
        temporary = self.path.with_name(self.path.name + ".tmp")
        try:
            private_folder(self.path.parent)
            fd = open_private(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
            with open(fd, "w", encoding="utf-8") as out:
                out.write(body)
            os.replace(temporary, self.path)
        except OSError as exc:
            with contextlib.suppress(OSError):
                temporary.unlink()
            if not self._failing:
                self.log.warning("esl.state_write_failed", path=str(self.path), reason=str(exc)[:200],
                                 consequence="a gap across a restart may be measured from an older record")
            self._failing = True
            return
        self._dirty = self._failing = False
        self.writes += 1


def gap_note(recovers: bool) -> str:
    """What the ``esl.gap`` line says of the hangups in the gap: recovered from ``cdr_dir``, or how to."""
    if recovers:
        return "hangups during the gap were not seen on the event socket: they are recovered from cdr_dir"
    return ("hangups during the gap were not seen and may be lost: set [[freeswitch]] cdr_dir to recover "
            "them from mod_json_cdr's files (docs/operations.md)")
