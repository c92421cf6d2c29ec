"""The project's own small error tree; third-party exceptions are mapped to these at the edges."""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from typing import Any


class ListenerError(Exception):
    """Base of every error hangup-listener raises on purpose."""


class ConfigError(ListenerError):
    """A configuration is invalid; carries every problem found, each named by its dotted key path."""

    def __init__(self, problems: Iterable[str]) -> None:
        self.problems: tuple[str, ...] = tuple(problems)
        super().__init__("; ".join(self.problems) or "invalid configuration")


def unknown_key(key: str, known: Iterable[str]) -> str:
    """The problem of a key no one asked for, with the known key it most likely misspells:
    ``unknown key (did you mean 'secret'?)``."""
    close = difflib.get_close_matches(key, sorted(known), n=1)
    return f"unknown key (did you mean {close[0]!r}?)" if close else "unknown key"


class FrameError(ListenerError):
    """The ESL byte stream broke its framing: the connection must be re-established."""

    frames: tuple[Any, ...] = ()
    """The complete frames decoded before the broken one in the same read: still to be handled."""


class EventError(ListenerError):
    """An ESL frame was framed correctly but does not hold a usable event."""


class CDRIncompleteError(EventError):
    """A JSON CDR file's bytes are not (yet) complete JSON: mod_json_cdr may still be writing it.

    mod_json_cdr writes each file from a background thread, shortly after the hangup, so a
    caller that sees this retries the file later (a file that never completes is its call).
    """


class ESLError(ListenerError):
    """Talking to FreeSWITCH failed (connect, authenticate, subscribe, command)."""


class AuthError(ESLError):
    """FreeSWITCH refused our password or rejected us by ACL."""


class CommandTimeoutError(ESLError):
    """A command sent to FreeSWITCH got no reply in time."""


TRANSIENT_CODES = ("SQLITE_BUSY", "SQLITE_LOCKED", "SQLITE_FULL", "SQLITE_IOERR", "SQLITE_CANTOPEN",
                   "SQLITE_NOMEM", "SQLITE_PROTOCOL", "SQLITE_INTERRUPT")
"""SQLite error names (extended ones included: ``SQLITE_IOERR_WRITE``) of faults that can clear by
themselves or by an operator's hand without touching the file: a lock held by another client,
a full disk, an I/O error, no file descriptor left. Any other (corrupt, not a database, read-only,
a schema newer than ours, a bug) cannot clear while the daemon runs."""


class OutboxError(ListenerError):
    """The SQLite outbox failed (disk full, I/O error, corrupt or locked file).

    ``code`` is SQLite's error name (``SQLITE_FULL``, ``SQLITE_IOERR_WRITE``, ...) when known;
    ``transient`` says whether the fault can clear (wait and retry) or cannot (stop, exit 74).
    """

    def __init__(self, message: str, code: str = "", *, transient: bool | None = None) -> None:
        self.code = code
        self._transient = transient
        super().__init__(f"{message} ({code})" if code else message)

    @property
    def transient(self) -> bool:
        """A fault that can clear: busy, locked, full, I/O error, out of file descriptors."""
        if self._transient is not None:
            return self._transient
        return any(self.code == c or self.code.startswith(c + "_") for c in TRANSIENT_CODES)


class OutboxClosedError(OutboxError):
    """A document was offered after the outbox writer was closed (shutdown) or failed."""
