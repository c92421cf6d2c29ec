"""How a log event becomes its line: JSON for machines (journald, a log pipeline), structlog's console
renderer for a person at a terminal.

``[log] format``: ``json``, ``console``, or ``auto`` (the default): console when the output is a
terminal, JSON otherwise, so ``systemd`` and pipes get JSON and an operator trying the daemon by hand
reads aligned, coloured lines. The one ``Renderer`` is the last step of every logger's processor
chain, and ``configure`` switches it in place: a reload reaches the loggers bound before it.
"""

from __future__ import annotations

import json
from typing import Any

import orjson
import structlog


def dumps(event: dict[str, Any], **kw: Any) -> str:
    """One log line's JSON: orjson (several times faster for a call's document), the stdlib as fallback.

    The fallback takes what orjson refuses (integers over 64 bits, non-string keys).
    """
    default = kw.get("default")
    try:
        return orjson.dumps(event, default=default).decode()
    except TypeError:
        return json.dumps(event, default=default)


def console(fmt: str, terminal: bool) -> bool:
    """Whether ``fmt`` renders for a person on an output that is (or is not) a ``terminal``."""
    return fmt == "console" or (fmt == "auto" and terminal)


class Renderer:
    """The last processor: JSON (a traceback as the ``exception`` string), or the console's columns
    (coloured only on a terminal)."""

    def __init__(self) -> None:
        self._json = structlog.processors.JSONRenderer(serializer=dumps)
        self._console: structlog.dev.ConsoleRenderer | None = None

    def configure(self, fmt: str, terminal: bool) -> None:
        """Render as ``fmt`` says from now on, for an output that is a ``terminal`` or not."""
        self._console = structlog.dev.ConsoleRenderer(colors=terminal) if console(fmt, terminal) else None

    @property
    def format(self) -> str:
        return "json" if self._console is None else "console"

    def __call__(self, logger: Any, name: str, event: structlog.typing.EventDict) -> str:
        if self._console is not None:
            return self._console(logger, name, event)
        rendered = self._json(logger, name, structlog.processors.format_exc_info(logger, name, event))
        return rendered if isinstance(rendered, str) else rendered.decode()
