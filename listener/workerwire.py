"""What the daemon and its delivery process say to each other (pure; no I/O).

Parent to child, on the child's stdin: frames of one type byte, a 4-byte big-endian length and
the payload.

- ``C`` settings: the pickled ``Settings`` (sent first, and again on every reload);
- ``W`` wake: a commit just created rows; the endpoints' loops claim them from the outbox now
  (rather than at their next poll). The rows themselves are not sent: a row arriving by the pipe
  after the child had already claimed, sent and acknowledged it would be sent twice.
- ``S`` stop: finish what is in flight within the deadline (ASCII seconds), then exit.

End of file on stdin (the parent is gone) means stop. Child to parent, on the report pipe: one
JSON object per line, at least every ``REPORT_S``: the attempts made since the last report
(endpoint, outcome, latency) and whether delivery is healthy.
"""

from __future__ import annotations

import pickle
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import orjson

from listener.webhook_config import OutboxConfig, WebhookConfig

SETTINGS, WAKE, STOP = b"C", b"W", b"S"
REPORT_S = 0.25
HEAD = struct.Struct(">cI")
"""Every frame's head, on both pipes to child processes (this one and ``listener.classifyproc``'s)."""


@dataclass(frozen=True, slots=True)
class Settings:
    """What the delivery process needs of the configuration."""

    webhooks: tuple[WebhookConfig, ...]
    outbox: OutboxConfig
    log_level: str
    generation: int = 0
    """Counts the settings sent to one child; its reports say which it has applied."""


@dataclass(frozen=True, slots=True)
class Report:
    """One report line: attempts as (endpoint, outcome, latency_s), and the child's health."""

    attempts: tuple[tuple[str, str, float], ...]
    healthy: bool
    crashed: tuple[str, ...] = ()
    applied: int = 0
    """The generation of the settings in force."""


def frame(kind: bytes, *parts: bytes) -> bytes:
    """One frame whose payload is ``parts`` joined (copied once, however large)."""
    return b"".join((HEAD.pack(kind, sum(map(len, parts))), *parts))


def settings_frame(settings: Settings) -> bytes:
    return frame(SETTINGS, pickle.dumps(settings))


def wake_frame() -> bytes:
    return frame(WAKE)


def stop_frame(deadline_s: float) -> bytes:
    return frame(STOP, repr(float(deadline_s)).encode())


class FrameReader:
    """Splits the bytes read from the pipe into (kind, payload) frames."""

    def __init__(self) -> None:
        self._buffer = b""

    def feed(self, data: bytes) -> Iterator[tuple[bytes, bytes]]:
        self._buffer += data
        while len(self._buffer) >= HEAD.size:
            kind, size = HEAD.unpack_from(self._buffer)
            end = HEAD.size + size
            if len(self._buffer) < end:
                return
            payload, self._buffer = self._buffer[HEAD.size:end], self._buffer[end:]
            yield kind, payload


def read_settings(payload: bytes) -> Settings:
    settings = pickle.loads(payload)  # noqa: S301 - written by our own parent process, on a private pipe
    if not isinstance(settings, Settings):
        raise TypeError(f"expected Settings, got {type(settings).__name__}")
    return settings


def report_line(report: Report) -> bytes:
    return orjson.dumps({"attempts": report.attempts, "healthy": report.healthy,
                         "crashed": report.crashed, "applied": report.applied}) + b"\n"


def read_report(line: bytes) -> Report:
    data: dict[str, Any] = orjson.loads(line)
    attempts = tuple((str(e), str(o), float(s)) for e, o, s in data["attempts"])
    return Report(attempts, bool(data["healthy"]), tuple(map(str, data.get("crashed", ()))),
                  int(data.get("applied", 0)))
