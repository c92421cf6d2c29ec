"""The project's own small error tree; third-party exceptions are mapped to these at the edges."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


class ListenerError(Exception):
    """Base of every error hangup-listener raises on purpose."""


class ConfigError(ListenerError):
    """A configuration is invalid; carries every problem found, each named by its dotted key path."""

    def __init__(self, problems: Iterable[str]) -> None:
        self.problems: tuple[str, ...] = tuple(problems)
        super().__init__("; ".join(self.problems) or "invalid configuration")


class FrameError(ListenerError):
    """The ESL byte stream broke its framing: the connection must be re-established."""

    frames: tuple[Any, ...] = ()
    """The complete frames decoded before the broken one in the same read: still to be handled."""


class EventError(ListenerError):
    """An ESL frame was framed correctly but does not hold a usable event."""


class ESLError(ListenerError):
    """Talking to FreeSWITCH failed (connect, authenticate, subscribe, command)."""


class AuthError(ESLError):
    """FreeSWITCH refused our password or rejected us by ACL."""


class CommandTimeoutError(ESLError):
    """A command sent to FreeSWITCH got no reply in time."""


class OutboxError(ListenerError):
    """The SQLite outbox failed (disk full, I/O error, corrupt or locked file): ingestion must stop.

    ``code`` is SQLite's error name (``SQLITE_FULL``, ``SQLITE_IOERR_WRITE``, ...) when known.
    """

    def __init__(self, message: str, code: str = "") -> None:
        self.code = code
        super().__init__(f"{message} ({code})" if code else message)


class OutboxClosedError(OutboxError):
    """A document was offered after the outbox writer was closed (shutdown) or failed."""
