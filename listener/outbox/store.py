"""The durable SQLite outbox between ingestion and webhook delivery (plain synchronous code).

Invariants:

1. A document counts as handled only once ``put`` has returned: its transaction is committed
   in WAL mode. With ``synchronous=full`` (the default) the commit is on the disk before
   ``put`` returns, so it survives power loss; ``normal`` survives a crash of the daemon but
   may lose the last commits on power loss, for more throughput.
2. One ``message`` row per event id holds the JSON body once; one ``delivery`` row per
   (message, endpoint) that wants it. A document no endpoint wants is not stored.
3. ``ack`` (the endpoint answered 2xx) marks a delivery row ``delivered`` (``delivered_at``) and
   keeps it, so an operator can ``resend`` it, until ``prune_delivered`` deletes it once older than
   the retention (``keep_delivered`` False: ``ack`` deletes it at once). Otherwise a delivery row
   is deleted only by an operator's ``purge``. A message row is deleted (by trigger) when its last
   delivery row is. Delivered rows are invisible to everything that reads pending or dead ones
   (``due``, ``next_due_at``, ``stats``, ``retry_dead``, ``purge``) and to ``list`` unless asked for.
4. ``bury`` keeps the row as ``dead`` (schedule exhausted or 410 Gone); only ``retry_dead``
   (or ``resend``, for delivered ones) makes it pending again. Nothing undelivered is deleted for
   being old or failing.
5. Every sqlite3 error is raised as ``OutboxError`` carrying SQLite's error name and whether it
   can clear (``transient``): the caller waits and retries a transient one and stops loudly on any
   other; nothing is swallowed here.
6. ``settle`` (the delivery loop's acks, reschedules and burials) commits without waiting for the
   disk: losing it on power loss only means a message is sent again (delivery is at least once).
   The next ``put`` commit (``synchronous=full``) or checkpoint syncs it along with its own.
7. One ``Outbox`` (one connection) is used by one thread at a time; other processes (the
   operator's commands) may open the same file concurrently: writes wait ``busy_timeout``.
8. The ``rejected`` table keeps frames that held no usable event, whole, for an operator to
   recover; unlike deliveries it is bounded: ``reject`` deletes the oldest rows beyond
   ``REJECTED_ROWS`` rows or ``REJECTED_BYTES`` of bodies (never the newest row) and says how many.
   Like ``settle`` it commits without waiting for the disk; the next ``put`` syncs it.
"""

from __future__ import annotations

import sqlite3
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from listener.core.errors import OutboxError
from listener.core.rejection import Rejection
from listener.outbox import files

SCHEMA_VERSION = 5
APPLICATION_ID = 0x484C5354
"""``PRAGMA application_id`` of every outbox file ("HLST"): a database of anything else is refused."""
PENDING = "pending"
DEAD = "dead"
DELIVERED = "delivered"
BATCH = 1000
CHUNK = 200
"""Rows per multi-row INSERT in ``put`` (far below SQLite's limit of bound parameters)."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS message (
    id INTEGER PRIMARY KEY,
    event_id TEXT NOT NULL UNIQUE,
    body TEXT NOT NULL,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS delivery (
    id INTEGER PRIMARY KEY,
    message INTEGER NOT NULL REFERENCES message(id),
    endpoint TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'dead')),
    attempts INTEGER NOT NULL DEFAULT 0,
    next_at REAL NOT NULL,
    last_error TEXT NOT NULL DEFAULT '',
    updated_at REAL NOT NULL,
    UNIQUE (message, endpoint)
);
CREATE INDEX IF NOT EXISTS delivery_due ON delivery (endpoint, state, next_at);
CREATE TRIGGER IF NOT EXISTS message_done AFTER DELETE ON delivery
WHEN NOT EXISTS (SELECT 1 FROM delivery WHERE message = OLD.message)
BEGIN DELETE FROM message WHERE id = OLD.message; END;
"""

_REJECTED_SCHEMA = """
CREATE TABLE IF NOT EXISTS rejected (
    seq INTEGER PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    received_at REAL NOT NULL,
    node TEXT NOT NULL,
    reason TEXT NOT NULL,
    content_type TEXT NOT NULL,
    digest TEXT NOT NULL,
    size INTEGER NOT NULL,
    body BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS rejected_size ON rejected (seq, size);
"""

_TAKEN_SCHEMA = """
CREATE TABLE IF NOT EXISTS taken (
    id TEXT PRIMARY KEY,
    unique_id TEXT NOT NULL,
    node TEXT NOT NULL,
    taken_at REAL NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS taken_unique_id ON taken (unique_id);
CREATE INDEX IF NOT EXISTS taken_at ON taken (taken_at);
INSERT OR IGNORE INTO taken (id, unique_id, node, taken_at) SELECT event_id, '', '', created_at FROM message;
"""

_DELIVERED_SCHEMA = """
CREATE TABLE delivery_v4 (
    id INTEGER PRIMARY KEY,
    message INTEGER NOT NULL REFERENCES message(id),
    endpoint TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'dead', 'delivered')),
    attempts INTEGER NOT NULL DEFAULT 0,
    next_at REAL NOT NULL,
    last_error TEXT NOT NULL DEFAULT '',
    updated_at REAL NOT NULL,
    delivered_at REAL,
    UNIQUE (message, endpoint)
);
INSERT INTO delivery_v4 (id, message, endpoint, state, attempts, next_at, last_error, updated_at)
SELECT id, message, endpoint, state, attempts, next_at, last_error, updated_at FROM delivery;
DROP TABLE delivery;
ALTER TABLE delivery_v4 RENAME TO delivery;
CREATE INDEX delivery_due ON delivery (endpoint, state, next_at);
CREATE INDEX delivery_state ON delivery (state, endpoint);
CREATE INDEX delivery_delivered ON delivery (delivered_at) WHERE state = 'delivered';
CREATE TRIGGER message_done AFTER DELETE ON delivery
WHEN NOT EXISTS (SELECT 1 FROM delivery WHERE message = OLD.message)
BEGIN DELETE FROM message WHERE id = OLD.message; END;
"""
"""Version 4: a ``delivered`` state and ``delivered_at``. SQLite cannot alter a CHECK, so the table is
rebuilt (copied, dropped, renamed; the rows keep their ids) inside the migration's transaction: a
failure leaves the version-3 file as it was. Dropping the old table fires no trigger (no message is
lost), and ``delivery_state`` keeps the per-state reads (``stats``, ``retry``) off the delivered rows."""

_CALLS_SCHEMA = """
ALTER TABLE message ADD COLUMN variables TEXT;
CREATE TABLE call_wait (
    node TEXT NOT NULL,
    unique_id TEXT NOT NULL,
    body TEXT NOT NULL,
    partners TEXT NOT NULL,
    variables TEXT,
    arrived_at REAL NOT NULL,
    PRIMARY KEY (node, unique_id)
) WITHOUT ROWID;
"""
"""Version 5: calls. ``message.variables`` holds the channel variables the endpoints asked for, beside
the one body (each endpoint's request takes its own share); ``call_wait`` holds the legs whose call is
not over yet (the leg's document, the partner uuids it names, when it began to wait), so a restart
loses none. Rows stored before keep a NULL ``variables`` and their version-1 body."""

_MIGRATIONS = (_SCHEMA, _REJECTED_SCHEMA, _TAKEN_SCHEMA, _DELIVERED_SCHEMA, _CALLS_SCHEMA)
"""``_MIGRATIONS[v]`` takes a file from schema version ``v`` to ``v + 1``, in the transaction that records
the new version (the first three are idempotent; the rebuild of version 4 runs exactly once)."""
REJECTED_ROWS = 10_000
REJECTED_BYTES = 64 * 1024 * 1024

TakenLookup = Callable[[Sequence[tuple[str, str]]], list[tuple[str, str]]]
"""Which (node, Unique-ID) of these were taken before: for the grouping into calls, inside ``take``."""
Progress = Callable[[int], None]
"""Called with the running count of rows changed by a long operator command."""


@dataclass(frozen=True, slots=True)
class Entry:
    """One document to store: its id, its JSON body and the endpoints that want it."""

    event_id: str
    body: str
    endpoints: tuple[str, ...]
    variables: str | None = None
    """The channel variables kept for the endpoints' requests (JSON), if any asked for them."""


@dataclass(frozen=True, slots=True)
class Waiting:
    """One leg waiting for its call (a ``call_wait`` row): its document and partners as JSON."""

    node: str
    unique_id: str
    body: str
    partners: str
    variables: str | None
    arrived_at: float


@dataclass(frozen=True, slots=True)
class CallWrites:
    """What completing calls writes, in the transaction of the legs that completed them: the calls'
    messages, the legs that now wait, the (node, unique_id) of the legs whose wait ended."""

    entries: Sequence[Entry] = ()
    waiting: Sequence[Waiting] = ()
    released: Sequence[tuple[str, str]] = ()


@dataclass(frozen=True, slots=True)
class Leg:
    """One leg taken from either source (the Event Socket or a CDR file): its document id, its
    channel's Unique-ID (what a CDR file is named by) and its node."""

    id: str
    unique_id: str
    node: str


@dataclass(frozen=True, slots=True)
class Delivery:
    """One (message, endpoint) row as the delivery loop or an operator sees it."""

    id: int
    event_id: str
    endpoint: str
    state: str
    attempts: int
    next_at: float
    created_at: float
    last_error: str
    body: str = ""
    delivered_at: float | None = None
    variables: str | None = None


@dataclass(frozen=True, slots=True)
class EndpointStats:
    endpoint: str
    pending: int
    dead: int
    oldest_pending_age: float | None


def with_endpoints(stats: Sequence[EndpointStats], endpoints: Iterable[str]) -> tuple[EndpointStats, ...]:
    """``stats`` plus a zero row for every named endpoint that has nothing in the outbox.

    Monitoring wants a series per configured endpoint even when all is delivered (0, not absent).
    """
    known = {s.endpoint for s in stats}
    zeros = [EndpointStats(name, 0, 0, None) for name in endpoints if name not in known]
    return tuple(sorted((*stats, *zeros), key=lambda s: s.endpoint))


def _error(exc: sqlite3.Error, what: str) -> OutboxError:
    code = getattr(exc, "sqlite_errorname", "") or ""
    return OutboxError(f"outbox {what} failed: {exc}", code, transient=None if code else False)


class Outbox:
    """The outbox file, open on one connection."""

    def __init__(self, connection: sqlite3.Connection, path: Path) -> None:
        self._db = connection
        self.path = path
        self.keep_delivered = True
        """``ack`` keeps the row as delivered (for ``resend``, until ``prune_delivered``); False: deletes
        it."""

    @classmethod
    def open(cls, path: Path, *, synchronous: str = "full", busy_timeout_s: float = 5.0) -> Outbox:
        """Open (creating and migrating if needed) the outbox at ``path`` in WAL mode, and prove it writable.

        The file is created 0600 (its folder 0700) whatever the umask. A write is made at once
        (``application_id``, which also marks the file as ours): a read-only file or folder fails
        here, not at the first call. Errors are ``OutboxError``, ``transient`` when they can clear.
        """
        if synchronous not in ("full", "normal"):
            raise ValueError("synchronous must be full or normal")
        try:
            files.private_folder(path.parent)
            if path.exists():
                files.tighten(path)
            else:
                files.create_private(path)
            db = sqlite3.connect(path, timeout=busy_timeout_s, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            raise _error(exc, f"open of {path}") from exc
        except OSError as exc:
            raise OutboxError(f"outbox open of {path} failed: {exc.strerror or exc}",
                              transient=exc.errno in files.TRANSIENT_ERRNOS) from exc
        outbox = cls(db, path)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(f"PRAGMA synchronous={synchronous.upper()}")
            db.execute("PRAGMA foreign_keys=ON")
            outbox._migrate()
            outbox._probe()
        except sqlite3.Error as exc:
            db.close()
            raise _error(exc, f"open of {path}") from exc
        except OutboxError:
            db.close()
            raise
        return outbox

    def _probe(self) -> None:
        """One real write (the ``application_id`` in the header); refuses a file that is not ours."""
        (application,) = self._db.execute("PRAGMA application_id").fetchone()
        if application not in (0, APPLICATION_ID):
            what = f"{self.path} is not a hangup-listener outbox (application_id {application:#x})"
            raise OutboxError(what, transient=False)
        self._db.execute("BEGIN IMMEDIATE")
        try:
            self._db.execute(f"PRAGMA application_id={APPLICATION_ID}")
            self._db.execute("COMMIT")
        finally:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")

    def quick_check(self, deadline_s: float | None = None) -> list[str] | None:
        """``PRAGMA quick_check``: [] when the file is sound, else SQLite's findings (at most 20);
        None when it could not finish within ``deadline_s`` (a large file: check it later)."""
        started = time.monotonic()

        def expired() -> bool:
            return deadline_s is not None and time.monotonic() - started > deadline_s

        self._db.set_progress_handler(expired, 10_000)
        try:
            rows = self._db.execute("PRAGMA quick_check(20)").fetchall()
        except sqlite3.OperationalError as exc:
            if getattr(exc, "sqlite_errorname", "") == "SQLITE_INTERRUPT":
                return None
            raise _error(exc, "quick_check") from exc
        except sqlite3.Error as exc:
            raise _error(exc, "quick_check") from exc
        finally:
            self._db.set_progress_handler(None, 0)
        findings = [str(row[0]) for row in rows]
        return [] if findings == ["ok"] else findings

    def checkpoint(self) -> bool:
        """Move the ``-wal`` into the database and truncate it; False if a reader kept it from finishing."""
        try:
            (busy, _, _) = self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        except sqlite3.Error as exc:
            raise _error(exc, "checkpoint") from exc
        return not busy

    @classmethod
    def open_readonly(cls, path: Path, *, immutable: bool = False) -> Outbox:
        """A second, read-only connection to an outbox the daemon has open: for work that must not
        wait behind commits (statistics, an integrity check). Never creates or migrates anything.

        ``immutable``: a file no one writes (no ``-wal`` beside it): read without locks, so not even
        its ``-shm`` and ``-wal`` are created."""
        uri = f"file:{quote(str(path))}?mode=ro" + ("&immutable=1" if immutable else "")
        try:
            db = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
            db.execute("PRAGMA query_only=ON")
        except sqlite3.Error as exc:
            raise _error(exc, f"read-only open of {path}") from exc
        return cls(db, path)

    def _migrate(self) -> None:
        (version,) = self._db.execute("PRAGMA user_version").fetchone()
        if version > SCHEMA_VERSION:
            raise OutboxError(f"outbox {self.path} has schema {version}, newer than this program's")
        if version < SCHEMA_VERSION:
            steps = " ".join(_MIGRATIONS[version:])
            script = f"BEGIN IMMEDIATE; {steps} PRAGMA user_version={SCHEMA_VERSION}; COMMIT;"
            self._db.executescript(script)

    def close(self) -> None:
        try:
            self._db.close()
        except sqlite3.Error as exc:
            raise _error(exc, "close") from exc

    @contextmanager
    def _transaction(self, what: str) -> Iterator[sqlite3.Connection]:
        try:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
                self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            raise _error(exc, what) from exc

    @contextmanager
    def _lazy_sync(self) -> Iterator[None]:
        """Commit without fsync (invariant 6), then back to the configured level."""
        (level,) = self._db.execute("PRAGMA synchronous").fetchone()
        self._db.execute("PRAGMA synchronous=NORMAL")
        try:
            yield
        finally:
            self._db.execute(f"PRAGMA synchronous={int(level)}")

    def _read(self, what: str, sql: str, params: Sequence[object] = ()) -> list[Any]:
        try:
            return self._db.execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            raise _error(exc, what) from exc

    # -- the daemon's side --------------------------------------------------------------------

    def put(self, entries: Iterable[Entry], now: float) -> Counter[str]:
        """Store many documents in one transaction; returns the delivery rows created, per endpoint.

        Two multi-row INSERTs per ``CHUNK`` documents, not three statements per document. An event
        id stored before keeps its first body; only its missing delivery rows are added.
        """
        wanted = [entry for entry in entries if entry.endpoints]
        with self._transaction("put") as db:
            return Counter(row.endpoint for row in _store(db, wanted, now))

    def take(self, legs: Sequence[Leg], entries: Sequence[Entry], now: float,
             calls: Callable[[frozenset[str], TakenLookup], CallWrites] | None = None,
             ) -> tuple[list[Delivery], frozenset[str]]:
        """In one transaction: remember every leg as taken, and store the entries of the legs that
        were not taken before (by either source); then ``calls`` (given the ids that are new) says
        which calls those legs complete and which legs now wait, written in the same transaction.
        Returns the delivery rows created (pending, as a claim would read them) and the ids that were
        taken before (duplicates: not stored, not to be logged again)."""
        fresh: set[str] = set()
        with self._transaction("put") as db:
            for start in range(0, len(legs), CHUNK):
                part = legs[start:start + CHUNK]
                params = [v for leg in part for v in (leg.id, leg.unique_id, leg.node, now)]
                fresh.update(row[0] for row in db.execute(
                    f"INSERT INTO taken (id, unique_id, node, taken_at) VALUES {_marks(len(part), 4)}"
                    " ON CONFLICT (id) DO NOTHING RETURNING id", params))
            wanted = [entry for entry in entries if entry.endpoints and entry.event_id in fresh]
            if calls is not None:
                writes = calls(frozenset(fresh), lambda keys: _taken_keys(db, keys))
                wanted += [entry for entry in writes.entries if entry.endpoints]
                _write_waits(db, writes)
            created = _store(db, wanted, now)
        return created, frozenset(leg.id for leg in legs) - fresh

    def complete_calls(self, writes: CallWrites, now: float) -> Counter[str]:
        """Store calls completed at their bound and end their legs' waits, in one transaction."""
        wanted = [entry for entry in writes.entries if entry.endpoints]
        with self._transaction("complete_calls") as db:
            _write_waits(db, writes)
            return Counter(row.endpoint for row in _store(db, wanted, now))

    def waiting(self) -> list[Waiting]:
        """Every leg waiting for its call, oldest first (read once at start to group them again)."""
        rows = self._read("waiting", "SELECT node, unique_id, body, partners, variables, arrived_at"
                          " FROM call_wait ORDER BY arrived_at")
        return [Waiting(*row) for row in rows]

    def taken_unique_ids(self, unique_ids: Sequence[str]) -> frozenset[str]:
        """Which of these channel Unique-IDs belong to a leg already taken (a CDR file to skip unread)."""
        found: set[str] = set()
        for start in range(0, len(unique_ids), CHUNK):
            part = list(unique_ids[start:start + CHUNK])
            marks = ",".join("?" * len(part))
            found.update(row[0] for row in self._read(
                "taken", f"SELECT unique_id FROM taken WHERE unique_id IN ({marks})", part))
        return frozenset(found)

    def last_taken_at(self, node: str) -> float | None:
        """When the newest leg of ``node`` was taken (None: none remembered)."""
        rows = self._read("last_taken_at", "SELECT taken_at FROM taken WHERE node = ?"
                          " ORDER BY taken_at DESC LIMIT 1", (node,))  # the taken_at index, backwards
        return float(rows[0][0]) if rows else None

    def forget_taken(self, before: float, limit: int = BATCH) -> int:
        """Forget legs taken before ``before`` (the retention), at most ``limit`` in one short transaction."""
        with self._lazy_sync(), self._transaction("forget_taken") as db:
            cursor = db.execute("DELETE FROM taken WHERE id IN"
                                " (SELECT id FROM taken WHERE taken_at < ? LIMIT ?)", (before, limit))
            return int(cursor.rowcount)

    def due(self, endpoint: str, now: float, limit: int, exclude: Iterable[int] = ()) -> tuple[Delivery, ...]:
        """Up to ``limit`` pending rows of ``endpoint`` whose time has come, oldest first."""
        skip = tuple(exclude)
        marks = ",".join("?" * len(skip))
        rows = self._read(
            "due",
            "SELECT d.id, m.event_id, d.endpoint, d.state, d.attempts, d.next_at, m.created_at, d.last_error,"
            " m.body, NULL, m.variables FROM delivery d JOIN message m ON m.id = d.message"
            " WHERE d.endpoint = ? AND d.state = 'pending' AND d.next_at <= ?"
            f" AND d.id NOT IN ({marks}) ORDER BY d.next_at, d.id LIMIT ?",
            (endpoint, now, *skip, limit))
        return tuple(Delivery(*row) for row in rows)

    def next_due_at(self, endpoint: str) -> float | None:
        """When the earliest pending row of ``endpoint`` becomes due (None: nothing pending)."""
        rows = self._read(
            "next_due_at",
            "SELECT min(next_at) FROM delivery WHERE endpoint = ? AND state = 'pending'", (endpoint,))
        value = rows[0][0]
        return float(value) if isinstance(value, int | float) else None

    def ack(self, delivery_id: int, now: float) -> None:
        """The endpoint answered 2xx: the row is delivered (kept, or deleted with its message if it was
        the last, when delivered rows are not kept)."""
        with self._transaction("ack") as db:
            self._delivered(db, [delivery_id], now)

    def _delivered(self, db: sqlite3.Connection, ids: Sequence[int], now: float) -> None:
        if self.keep_delivered:
            db.executemany("UPDATE delivery SET state = 'delivered', delivered_at = ?, updated_at = ?,"
                           " last_error = '' WHERE id = ?", [(now, now, i) for i in ids])
        else:
            db.executemany("DELETE FROM delivery WHERE id = ?", [(i,) for i in ids])

    def reschedule(self, delivery_id: int, attempts: int, next_at: float, error: str, now: float) -> None:
        """An attempt failed: remember how many were made and when to try again."""
        with self._transaction("reschedule") as db:
            db.execute(
                "UPDATE delivery SET attempts = ?, next_at = ?, last_error = ?, updated_at = ? WHERE id = ?",
                (attempts, next_at, error, now, delivery_id))

    def bury(self, delivery_id: int, attempts: int, error: str, now: float) -> None:
        """Stop trying (schedule exhausted or 410 Gone) but keep the row, as dead."""
        with self._transaction("bury") as db:
            db.execute(
                "UPDATE delivery SET state = 'dead', attempts = ?, last_error = ?, updated_at = ?"
                " WHERE id = ?",
                (attempts, error, now, delivery_id))

    def settle(self, acks: Sequence[int], reschedules: Sequence[tuple[int, int, float, str]],
               buries: Sequence[tuple[int, int, str]], now: float) -> None:
        """Record many outcomes in one transaction: ``ack`` ids, ``reschedule`` and ``bury`` arguments."""
        if not (acks or reschedules or buries):
            return
        with self._lazy_sync(), self._transaction("settle") as db:
            self._delivered(db, acks, now)
            db.executemany(
                "UPDATE delivery SET attempts = ?, next_at = ?, last_error = ?, updated_at = ? WHERE id = ?",
                [(attempts, next_at, error, now, i) for i, attempts, next_at, error in reschedules])
            db.executemany(
                "UPDATE delivery SET state = 'dead', attempts = ?, last_error = ?, updated_at = ?"
                " WHERE id = ?", [(attempts, error, now, i) for i, attempts, error in buries])

    # -- the operator's side ------------------------------------------------------------------

    def stats(self, now: float) -> tuple[EndpointStats, ...]:
        """Pending and dead counts and the oldest pending message's age, per endpoint."""
        rows = self._read(
            "stats",
            "SELECT d.endpoint, sum(d.state = 'pending'), sum(d.state = 'dead'),"
            " min(CASE WHEN d.state = 'pending' THEN m.created_at END)"
            " FROM delivery d JOIN message m ON m.id = d.message WHERE d.state IN ('pending', 'dead')"
            " GROUP BY d.endpoint ORDER BY d.endpoint")
        return tuple(
            EndpointStats(str(e), int(p), int(d), None if o is None else max(now - float(o), 0.0))
            for e, p, d, o in rows)

    def _where(
        self, state: str | None, endpoint: str | None, event_ids: Sequence[str],
        delivered: tuple[float | None, float | None] = (None, None),
    ) -> tuple[str, list[object]]:
        """The WHERE of rows in ``state`` (None: pending or dead, never delivered), of
        ``endpoint``, of ``event_ids``, delivered within ``[since, until)`` if given."""
        clauses, params = ["d.state IN ('pending', 'dead')"], list[object]()
        if state:
            clauses, params = ["d.state = ?"], [state]
        since, until = delivered
        if since is not None:
            clauses.append("d.delivered_at >= ?")
            params.append(since)
        if until is not None:
            clauses.append("d.delivered_at < ?")
            params.append(until)
        if endpoint:
            clauses.append("d.endpoint = ?")
            params.append(endpoint)
        if event_ids:
            clauses.append(f"m.event_id IN ({','.join('?' * len(event_ids))})")
            params.extend(event_ids)
        return " AND ".join(clauses), params

    def list(self, *, state: str | None = None, endpoint: str | None = None,
             event_ids: Sequence[str] = (), limit: int = 100) -> tuple[Delivery, ...]:
        """Rows matching every filter given, oldest first, without bodies (delivered ones only if
        ``state`` is ``delivered``)."""
        where, params = self._where(state, endpoint, event_ids)
        rows = self._read(
            "list",
            "SELECT d.id, m.event_id, d.endpoint, d.state, d.attempts, d.next_at, m.created_at, d.last_error,"
            f" '', d.delivered_at FROM delivery d JOIN message m ON m.id = d.message WHERE {where}"
            " ORDER BY d.id LIMIT ?", (*params, limit))
        return tuple(Delivery(*row) for row in rows)

    def _batched(
        self, what: str, sql: str, where: str, params: Sequence[object], progress: Progress | None
    ) -> int:
        """Apply ``sql`` (with ``{ids}``) to every matching row, ``BATCH`` rows per short transaction."""
        done = 0
        while True:
            with self._transaction(what) as db:
                ids = [r[0] for r in db.execute(
                    "SELECT d.id FROM delivery d JOIN message m ON m.id = d.message"
                    f" WHERE {where} LIMIT {BATCH}",
                    params).fetchall()]
                if ids:
                    db.execute(sql.format(ids=",".join("?" * len(ids))), ids)
            done += len(ids)
            if progress is not None and ids:
                progress(done)
            if len(ids) < BATCH:
                return done

    def retry_dead(self, now: float, *, endpoint: str | None = None, event_ids: Sequence[str] = (),
                   progress: Progress | None = None) -> int:
        """Make dead rows pending again, due now, with a fresh schedule; returns how many."""
        where, params = self._where(DEAD, endpoint, event_ids)
        sql = (f"UPDATE delivery SET state = 'pending', attempts = 0, next_at = {float(now)!r},"
               f" updated_at = {float(now)!r} WHERE id IN ({{ids}})")
        return self._batched("retry", sql, where, params, progress)

    def purge(self, *, state: str | None = DEAD, endpoint: str | None = None, event_ids: Sequence[str] = (),
              progress: Progress | None = None) -> int:
        """Delete rows for good (by default only dead ones); returns how many."""
        where, params = self._where(state, endpoint, event_ids)
        return self._batched("purge", "DELETE FROM delivery WHERE id IN ({ids})", where, params, progress)

    def resend(self, now: float, *, endpoint: str | None = None, event_ids: Sequence[str] = (),
               since: float | None = None, until: float | None = None,
               progress: Progress | None = None) -> int:
        """Make delivered rows (delivered within ``[since, until)`` if given) pending again, due now,
        with a fresh schedule: the same message, sent again with the same webhook-id; returns how many."""
        where, params = self._where(DELIVERED, endpoint, event_ids, (since, until))
        sql = (f"UPDATE delivery SET state = 'pending', attempts = 0, next_at = {float(now)!r},"
               f" updated_at = {float(now)!r}, delivered_at = NULL, last_error = '' WHERE id IN ({{ids}})")
        return self._batched("resend", sql, where, params, progress)

    def prune_delivered(self, before: float, limit: int = BATCH) -> int:
        """Delete delivered rows delivered before ``before`` (the retention), at most ``limit`` in one
        short transaction (a message goes with its last row)."""
        with self._lazy_sync(), self._transaction("prune_delivered") as db:
            cursor = db.execute(
                "DELETE FROM delivery WHERE id IN (SELECT id FROM delivery"
                " WHERE state = 'delivered' AND delivered_at < ? LIMIT ?)", (before, limit))
            return int(cursor.rowcount)

    # -- frames that held no usable event (invariant 8) ------------------------------------------

    def reject(self, rejections: Iterable[Rejection], now: float, *, max_rows: int = REJECTED_ROWS,
               max_bytes: int = REJECTED_BYTES) -> int:
        """Keep rejected frames (the same bytes once); returns how many older ones were dropped."""
        rows = [(r.id, now, r.node, r.reason, r.content_type, r.digest, len(r.body), r.body)
                for r in rejections]
        with self._lazy_sync(), self._transaction("reject") as db:
            db.executemany(
                "INSERT INTO rejected (id, received_at, node, reason, content_type, digest, size, body)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO NOTHING", rows)
            return _trim_rejected(db, max_rows, max_bytes)

    def rejected(self, *, ids: Sequence[str] = (), limit: int = 100,
                 bodies: bool = False) -> tuple[RejectedFrame, ...]:
        """Rejected frames, newest first: those of ``ids`` if given; bodies only if asked for."""
        where = f"id IN ({','.join('?' * len(ids))})" if ids else "1"
        body = "body" if bodies else "x''"
        rows = self._read(
            "rejected",
            "SELECT id, received_at, node, reason, content_type, size, digest, " + body +
            f" FROM rejected WHERE {where} ORDER BY seq DESC LIMIT ?", (*ids, limit))
        return tuple(RejectedFrame(*row) for row in rows)


def _marks(rows: int, columns: int) -> str:
    """``(?, ?), (?, ?)``: the placeholders of a multi-row VALUES."""
    return ",".join(["(" + ", ".join("?" * columns) + ")"] * rows)


def _taken_keys(db: sqlite3.Connection, keys: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
    """Which of these (node, Unique-ID) were taken (the ``taken_unique_id`` index)."""
    found: list[tuple[str, str]] = []
    wanted = set(keys)
    for start in range(0, len(keys), CHUNK):
        part = [uid for _, uid in keys[start:start + CHUNK]]
        marks = ",".join("?" * len(part))
        rows = db.execute(f"SELECT node, unique_id FROM taken WHERE unique_id IN ({marks})", part).fetchall()
        found += [(str(node), str(uid)) for node, uid in rows if (node, uid) in wanted]
    return found


def _store(db: sqlite3.Connection, entries: Sequence[Entry], now: float) -> list[Delivery]:
    """Insert the entries' messages and delivery rows, ``CHUNK`` at a time; each delivery row created, as
    a claim would read it (the writer hands them to their endpoints: no claim of their own)."""
    created: list[Delivery] = []
    for start in range(0, len(entries), CHUNK):
        chunk = entries[start:start + CHUNK]
        created += _insert_deliveries(db, chunk, _insert_messages(db, chunk, now), now)
    return created


def _write_waits(db: sqlite3.Connection, writes: CallWrites) -> None:
    if writes.released:
        db.executemany("DELETE FROM call_wait WHERE node = ? AND unique_id = ?", writes.released)
    if writes.waiting:
        db.executemany(
            "INSERT INTO call_wait (node, unique_id, body, partners, variables, arrived_at)"
            " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (node, unique_id) DO NOTHING",
            [(w.node, w.unique_id, w.body, w.partners, w.variables, w.arrived_at) for w in writes.waiting])


_Message = tuple[int, str, str | None, float]
"""A message row as its delivery rows need it: id, body, variables, created_at."""


def _insert_messages(db: sqlite3.Connection, chunk: Sequence[Entry], now: float) -> dict[str, _Message]:
    """Insert the chunk's messages; every event id of the chunk mapped to its message row (the row
    stored first, with its body, when an earlier put stored that event id)."""
    params = [value for entry in chunk for value in (entry.event_id, entry.body, now, entry.variables)]
    entries = {entry.event_id: entry for entry in reversed(chunk)}  # the first of an id is the one stored
    stored: dict[str, _Message] = {
        event_id: (row_id, entries[event_id].body, entries[event_id].variables, now)
        for event_id, row_id in db.execute(
            f"INSERT INTO message (event_id, body, created_at, variables) VALUES {_marks(len(chunk), 4)}"
            " ON CONFLICT (event_id) DO NOTHING RETURNING event_id, id", params)}
    missing = [event_id for event_id in entries if event_id not in stored]
    if missing:  # stored by an earlier put: keep that row and its body
        stored.update((row[0], row[1:]) for row in db.execute(
            "SELECT event_id, id, body, variables, created_at FROM message"
            f" WHERE event_id IN ({','.join('?' * len(missing))})", missing))
    return stored


def _insert_deliveries(db: sqlite3.Connection, chunk: Sequence[Entry], messages: dict[str, _Message],
                       now: float) -> list[Delivery]:
    """Insert one delivery row per (message, endpoint) not there yet; each row created."""
    pairs = list(dict.fromkeys((entry.event_id, endpoint) for entry in chunk for endpoint in entry.endpoints))
    created: list[Delivery] = []
    for start in range(0, len(pairs), CHUNK):
        part = pairs[start:start + CHUNK]
        by_message = {messages[event_id][0]: event_id for event_id, _ in part}
        params = [v for event_id, endpoint in part for v in (messages[event_id][0], endpoint, now, now)]
        for row_id, message, endpoint in db.execute(
                f"INSERT INTO delivery (message, endpoint, next_at, updated_at) VALUES {_marks(len(part), 4)}"
                " ON CONFLICT (message, endpoint) DO NOTHING RETURNING id, message, endpoint", params):
            event_id = by_message[message]
            _, body, variables, created_at = messages[event_id]
            created.append(Delivery(row_id, event_id, endpoint, "pending", 0, now, created_at, "", body,
                                    None, variables))
    return created


@dataclass(frozen=True, slots=True)
class RejectedFrame:
    """One row of the ``rejected`` table as an operator sees it (``body`` empty unless asked for)."""

    id: str
    received_at: float
    node: str
    reason: str
    content_type: str
    size: int
    digest: str
    body: bytes = b""


def _trim_rejected(db: sqlite3.Connection, max_rows: int, max_bytes: int) -> int:
    """Delete the oldest rejected rows beyond ``max_rows`` or ``max_bytes`` (never the newest).

    Totals from the (seq, size) index, then a walk from the oldest row that stops at the cut: well
    under a millisecond at 10,000 rows, where a running sum from the newest takes ~8 ms.
    """
    count, total = db.execute("SELECT count(*), coalesce(sum(size), 0) FROM rejected").fetchone()
    if count <= 1 or (count <= max_rows and total <= max_bytes):
        return 0
    (cut,) = db.execute(
        "SELECT seq FROM (SELECT seq, count(*) OVER oldest AS k, sum(size) OVER oldest AS freed"
        " FROM rejected WINDOW oldest AS (ORDER BY seq)) WHERE (k >= ? AND freed >= ?) OR k = ? LIMIT 1",
        (count - max_rows, total - max_bytes, count - 1)).fetchone()
    return db.execute("DELETE FROM rejected WHERE seq <= ?", (cut,)).rowcount
