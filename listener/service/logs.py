"""structlog set-up: one JSON object per line on stdout, flushed as written; stdlib logging routed in.

greenswitch (and any other library) logs through the standard ``logging`` module; a handler on the
root logger forwards those records into the same structlog pipeline, so operators read one stream.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, TextIO

import orjson
import structlog

LEVELS = ("debug", "info", "warning", "error", "critical")


def dumps(event: dict[str, Any], **kw: Any) -> str:
    """One log line's JSON: orjson (several times faster for a call's document), the stdlib as fallback.

    The fallback takes what orjson refuses (integers over 64 bits, non-string keys).
    """
    default = kw.get("default")
    try:
        return orjson.dumps(event, default=default).decode()
    except TypeError:
        return json.dumps(event, default=default)


class HeldStream:
    """The log stream: every line is flushed as it is written, except within ``held``.

    Within ``held`` (the lines of one commit, written one after the other without waiting on
    anything), the flushes wait until it ends: one write for the run instead of one per line.
    """

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self._holding = 0

    def write(self, text: str) -> int:
        return self.stream.write(text)

    def flush(self) -> None:
        if not self._holding:
            self.stream.flush()

    @contextmanager
    def held(self) -> Iterator[None]:
        self._holding += 1
        try:
            yield
        finally:
            self._holding -= 1
            if not self._holding:
                self.stream.flush()


_stream: HeldStream | None = None


@contextmanager
def held() -> Iterator[None]:
    """Lines logged within are flushed together when it ends (see ``HeldStream``)."""
    if _stream is None:
        yield
        return
    with _stream.held():
        yield


def _processors() -> list[Any]:
    return [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
        structlog.processors.JSONRenderer(serializer=dumps),
    ]


class StdlibBridge(logging.Handler):
    """Forwards stdlib log records (greenswitch's) into structlog as ``<logger name>`` events."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a library's broken format string must not kill the caller
            message = str(record.msg)
        log = structlog.get_logger().bind(logger=record.name)
        log.log(record.levelno, message)


def configure(level: str = "info", stream: TextIO | None = None) -> None:
    """Configure structlog and the stdlib bridge; safe to call again (e.g. on reload)."""
    global _stream  # noqa: PLW0603 - the one log stream of the process, as structlog's configuration is
    numeric = logging.getLevelNamesMapping()[level.upper()]
    _stream = HeldStream(stream or sys.stdout)
    structlog.configure(
        processors=_processors(),
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.WriteLoggerFactory(file=_stream),  # type: ignore[arg-type]
        cache_logger_on_first_use=False,
    )
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, StdlibBridge):
            root.removeHandler(handler)
    root.addHandler(StdlibBridge())
    root.setLevel(max(numeric, logging.INFO))
