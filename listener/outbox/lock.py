"""The outbox's lock file: one daemon per outbox, and what the last one left behind.

``<outbox>.lock`` is held with ``flock`` by ``run`` only, for the daemon's whole life: a second
daemon pointed at the same outbox is refused at start (``OutboxLockedError``: the path and the
holder's pid), while the ``outbox`` commands and ``check-config`` never take it (SQLite's own
locking keeps them safe beside the daemon). The kernel drops the lock when the process dies,
however it dies, so a stale lock file never blocks a start.

The file also holds a small JSON record, rewritten by its holder: the pid, whether the outbox was
closed cleanly, and the identity (device, inode) of the database file it had open. The next start
reads it before SQLite opens anything: a ``-wal`` beside a database that was closed cleanly, or
beside a database file that is not the one the last daemon had, did not come from this outbox
(``foreign_wal``). SQLite would replay it over the database regardless, silently.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
from dataclasses import dataclass
from pathlib import Path

from listener.core.errors import ListenerError, OutboxError
from listener.outbox import files

WAL_HEADER = 32
WAL_MAGIC = (0x377F0682, 0x377F0683)


class OutboxLockedError(ListenerError):
    """Another process holds the outbox's lock: another daemon runs on the same outbox."""

    def __init__(self, path: Path, pid: int | None) -> None:
        self.path, self.pid = path, pid
        holder = f"process {pid}" if pid else "another process"
        super().__init__(f"{holder} holds {path}: another hangup-listener runs on this outbox")


@dataclass(frozen=True, slots=True)
class Record:
    """What the lock's last holder wrote: its pid, a clean close or not, its database's identity."""

    pid: int | None = None
    clean: bool = False
    device: int | None = None
    inode: int | None = None

    @classmethod
    def parse(cls, text: str) -> Record:
        try:
            data = json.loads(text)
        except ValueError:
            return cls()
        if not isinstance(data, dict):
            return cls()
        ints = {k: v if isinstance(v, int) and not isinstance(v, bool) else None
                for k, v in data.items() if k in ("pid", "device", "inode")}
        return cls(clean=data.get("clean") is True, **ints)

    def render(self) -> str:
        return json.dumps({"pid": self.pid, "clean": self.clean, "device": self.device, "inode": self.inode})


def lock_path(outbox: Path) -> Path:
    return outbox.with_name(outbox.name + ".lock")


class OutboxLock:
    """The held lock of one outbox; ``acquire`` to take it, ``release`` when the outbox is closed."""

    def __init__(self, path: Path, fd: int, previous: Record) -> None:
        self.path = path
        self._fd = fd
        self.previous = previous
        """What the last holder left (before this daemon wrote its own record)."""

    @classmethod
    def acquire(cls, outbox: Path) -> OutboxLock:
        """Take the lock of ``outbox`` (its folder is created, private, if missing)."""
        path = lock_path(outbox)
        try:
            files.private_folder(path.parent)
            fd = files.open_private(path, os.O_RDWR | os.O_CREAT)
        except OSError as exc:
            raise OutboxError(f"cannot open the outbox lock {path}: {exc.strerror or exc}",
                              transient=exc.errno in files.TRANSIENT_ERRNOS) from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = _read(fd).pid
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise OutboxLockedError(path, holder) from None
            raise OutboxError(f"cannot lock {path}: {exc.strerror or exc}") from exc
        return cls(path, fd, _read(fd))

    def write(self, record: Record) -> None:
        """Replace the record (the holder's pid, clean or not, the open database's identity)."""
        data = record.render().encode()
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, data, 0)
        os.fsync(self._fd)

    def holding(self, database: Path) -> None:
        """Say that this process has ``database`` open (not closed cleanly until ``closed``)."""
        st = os.stat(database)
        self.write(Record(os.getpid(), False, st.st_dev, st.st_ino))

    def closed(self, database: Path) -> None:
        """Say that ``database`` was closed cleanly (its ``-wal`` checkpointed and removed)."""
        with contextlib.suppress(OSError):
            st = os.stat(database)
            self.write(Record(os.getpid(), True, st.st_dev, st.st_ino))

    def release(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self._fd)


def _read(fd: int) -> Record:
    try:
        return Record.parse(os.pread(fd, 4096, 0).decode("utf-8", "replace"))
    except OSError:
        return Record()


def foreign_wal(database: Path, previous: Record) -> str | None:
    """Why the ``-wal`` beside ``database`` did not come from it (None: absent, empty, or its own).

    Its own: left by a daemon that had this very file open and did not close cleanly (a crash, a
    SIGKILL, a power cut). Foreign: the last daemon closed cleanly (its ``-wal`` was checkpointed
    and removed), or the database file is not the one it had open (replaced or restored beside a
    ``-wal`` of another copy).
    """
    wal = database.with_name(database.name + "-wal")
    try:
        with wal.open("rb") as stream:
            header = stream.read(WAL_HEADER)
        st = os.stat(database)
    except FileNotFoundError:
        return None
    if len(header) < WAL_HEADER or int.from_bytes(header[:4], "big") not in WAL_MAGIC:
        return None  # empty or never written: SQLite ignores it too
    if previous.inode is None:
        return None  # no record (first start with a lock file): nothing to compare with
    if (st.st_dev, st.st_ino) != (previous.device, previous.inode):
        return f"{database} is not the file the last daemon had open (it was replaced or restored)"
    if previous.clean:
        return f"the last daemon closed {database} cleanly, leaving no -wal"
    return None
