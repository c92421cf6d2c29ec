"""inotify through ctypes: the CDR directory's new files as they are closed, without polling.

No dependency: three libc calls (``inotify_init1``, ``inotify_add_watch``, ``read``). The descriptor
is non-blocking and waited on with gevent, so a quiet directory costs nothing. Events are decoded
from the kernel's ``struct inotify_event`` records (``wd``, ``mask``, ``cookie``, ``len``, ``name``).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import gevent.socket

IN_CLOSE_WRITE = 0x00000008
IN_MOVED_TO = 0x00000080
IN_CREATE = 0x00000100
IN_DELETE_SELF = 0x00000400
IN_MOVE_SELF = 0x00000800
IN_Q_OVERFLOW = 0x00004000
IN_IGNORED = 0x00008000
IN_ONLYDIR = 0x01000000
IN_ISDIR = 0x40000000
IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = os.O_CLOEXEC
WATCHED = IN_CLOSE_WRITE | IN_MOVED_TO | IN_CREATE | IN_DELETE_SELF | IN_MOVE_SELF | IN_ONLYDIR
_HEADER = struct.Struct("iIII")
READ_SIZE = 256 * 1024


class InotifyError(OSError):
    """inotify could not be set up (no such directory, no permission, the watch limit reached)."""


@dataclass(frozen=True, slots=True)
class Change:
    """One event: the directory it happened in, the entry's name, what happened (the mask)."""

    folder: Path
    name: str
    mask: int

    @property
    def path(self) -> Path:
        return self.folder / self.name

    @property
    def is_dir(self) -> bool:
        return bool(self.mask & IN_ISDIR)


_libc: ctypes.CDLL | None = None


def _lib() -> ctypes.CDLL:
    global _libc  # noqa: PLW0603 - one handle on libc for the process
    if _libc is None:
        _libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
    return _libc


def parse(data: bytes) -> Iterator[tuple[int, int, str]]:
    """The (watch descriptor, mask, name) of each ``struct inotify_event`` in ``data``."""
    offset = 0
    while offset + _HEADER.size <= len(data):
        wd, mask, _cookie, length = _HEADER.unpack_from(data, offset)
        start = offset + _HEADER.size
        name = data[start:start + length].split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
        yield wd, mask, name
        offset = start + length


class Watcher:
    """Watches folders for entries closed after writing or moved in; ``close`` once."""

    def __init__(self) -> None:
        fd = _lib().inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if fd < 0:
            code = ctypes.get_errno()
            raise InotifyError(code, f"inotify_init1: {os.strerror(code)}")
        self.fd = fd
        self._folders: dict[int, Path] = {}
        self.overflowed = False
        """The kernel's queue overflowed since this was last cleared: some events were lost, scan."""

    def watch(self, folder: Path) -> None:
        """Also watch ``folder`` (its own events, not its subfolders')."""
        wd = _lib().inotify_add_watch(self.fd, os.fsencode(folder), WATCHED)
        if wd < 0:
            code = ctypes.get_errno()
            raise InotifyError(code, f"inotify_add_watch {folder}: {os.strerror(code)}")
        self._folders[wd] = folder

    @property
    def folders(self) -> tuple[Path, ...]:
        return tuple(self._folders.values())

    def changes(self, timeout: float | None) -> list[Change]:
        """What happened since the last call, waiting up to ``timeout`` for the first event ([]: none)."""
        try:
            data = os.read(self.fd, READ_SIZE)
        except BlockingIOError:
            try:
                gevent.socket.wait_read(self.fd, timeout=timeout)
            except TimeoutError:
                return []
            except OSError as exc:
                if exc.errno == errno.EBADF:
                    return []
                raise
            try:
                data = os.read(self.fd, READ_SIZE)
            except BlockingIOError:
                return []
        found = []
        for wd, mask, name in parse(data):
            if mask & IN_Q_OVERFLOW:
                self.overflowed = True
                continue
            if mask & IN_IGNORED:
                self._folders.pop(wd, None)
                continue
            folder = self._folders.get(wd)
            if folder is not None:
                found.append(Change(folder, name, mask))
        return found

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
