"""The outbox's files on disk: private whatever the umask, owned by whoever owns the folder.

The outbox holds every call's numbers: its files are 0600 and the folders created for it 0700,
regardless of the umask (outside systemd's ``UMask=0077`` too). A file created by root (an
``outbox`` command run with sudo) is given to the owner of its folder, so the service's own user
can still open it; SQLite gives its ``-wal`` and ``-shm`` the database file's owner and mode.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from pathlib import Path

FILE_MODE = 0o600
FOLDER_MODE = 0o700
SUFFIXES = ("", "-wal", "-shm", "-journal")
TRANSIENT_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EMFILE, errno.ENFILE,
                              errno.EAGAIN, errno.EINTR, errno.ENOMEM, errno.EBUSY})
"""OS errors that can clear: a full disk or quota, an I/O error, no file descriptor left."""


def private_folder(folder: Path) -> None:
    """Create ``folder`` (and its parents) 0700 if missing; an existing one is left as it is."""
    if folder.is_dir():
        return
    private_folder(folder.parent)
    with contextlib.suppress(FileExistsError):
        folder.mkdir(mode=FOLDER_MODE)
        os.chmod(folder, FOLDER_MODE)  # mkdir's mode passes through the umask
        _give_to_folder_owner(folder)


def open_private(path: Path, flags: int) -> int:
    """``os.open`` that creates ``path`` 0600 (given to the folder's owner when root creates it)."""
    try:
        return os.open(path, flags & ~os.O_CREAT)
    except FileNotFoundError:
        if not flags & os.O_CREAT:
            raise
    fd = os.open(path, flags | os.O_CREAT, FILE_MODE)
    os.fchmod(fd, FILE_MODE)
    _give_to_folder_owner(path, fd)
    return fd


def create_private(path: Path) -> None:
    """Create the database file empty and private before SQLite does (SQLite would use 0644)."""
    os.close(open_private(path, os.O_RDWR | os.O_CREAT))


def tighten(database: Path) -> None:
    """Take group and other permissions off the database and its ``-wal``/``-shm``/``-journal``.

    Files written by an older version (0644) become 0600; files of another owner are left alone.
    """
    for suffix in SUFFIXES:
        path = database.with_name(database.name + suffix)
        with contextlib.suppress(OSError):
            st = os.stat(path)
            if st.st_mode & 0o077 and (st.st_uid == os.geteuid() or os.geteuid() == 0):
                os.chmod(path, stat.S_IMODE(st.st_mode) & 0o700)


def _give_to_folder_owner(path: Path, fd: int | None = None) -> None:
    if os.geteuid() != 0:
        return
    with contextlib.suppress(OSError):
        owner = os.stat(path.parent)
        if owner.st_uid != 0 or owner.st_gid != 0:
            if fd is not None:
                os.fchown(fd, owner.st_uid, owner.st_gid)
            else:
                os.chown(path, owner.st_uid, owner.st_gid)
