"""Configuration keys from the environment, applied to the parsed TOML before it is validated.

Naming: ``HANGUP_LISTENER_`` then the key's dotted path, upper case, with ``__`` between the
parts and array indexes as numbers:

* ``HANGUP_LISTENER_ESL__LIVENESS_TIMEOUT=30`` sets ``esl.liveness_timeout``;
* ``HANGUP_LISTENER_LOG__LEVEL=debug`` sets ``log.level``;
* ``HANGUP_LISTENER_FREESWITCH__0__PASSWORD_ENV=PBX1_PW`` sets ``freeswitch[0].password_env``
  (index = the number of entries appends one).

A value is read as a TOML value (``30``, ``2.5``, ``true``, ``"text"``, ``["a", "b"]``); one that
is not valid TOML is taken as a plain string, so ``debug`` needs no quotes (but ``"0123"`` does,
to stay a string). The environment wins over the file. A problem with such a key names the
variable; values are never echoed (they may be secrets).
"""

from __future__ import annotations

import copy
import tomllib
from collections.abc import Mapping
from typing import Any

PREFIX = "HANGUP_LISTENER_"
Path = tuple[str | int, ...]


def parse_value(raw: str) -> Any:
    """A TOML value, or the text itself when it is not one."""
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw


def key_path(variable: str) -> Path | None:
    """``HANGUP_LISTENER_FREESWITCH__0__HOST`` -> ``("freeswitch", 0, "host")``; None if malformed."""
    parts = variable[len(PREFIX):].lower().split("__")
    if not all(parts) or parts[0].isdigit():
        return None
    return tuple(int(p) if p.isdigit() else p for p in parts)


def dotted(path: Path) -> str:
    """``("freeswitch", 0, "host")`` -> ``freeswitch[0].host``."""
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else part)
    return text


class Overrides:
    """The environment's keys applied to a copy of a TOML document, with where each came from."""

    def __init__(self, data: Mapping[str, Any], environ: Mapping[str, str]) -> None:
        self.data: dict[str, Any] = copy.deepcopy(dict(data))
        self.origins: dict[str, str] = {}
        self.problems: list[str] = []
        for variable in sorted(v for v in environ if v.startswith(PREFIX)):
            self._apply(variable, environ[variable])

    def _apply(self, variable: str, raw: str) -> None:
        path = key_path(variable)
        if path is None:
            self.problems.append(f"${variable}: not a key path (parts are separated by __)")
            return
        problem = _set(self.data, path, parse_value(raw))
        if problem:
            self.problems.append(f"${variable}: {problem}")
        else:
            self.origins[dotted(path)] = variable

    def annotate(self, problems: tuple[str, ...]) -> list[str]:
        """Name the variable in each problem about a key that came from the environment."""
        return [self._annotate(problem) for problem in problems]

    def _annotate(self, problem: str) -> str:
        path, sep, message = problem.partition(": ")
        inside = (f"{path}.", f"{path}[")
        variables = [v for key, v in self.origins.items() if key == path or key.startswith(inside)]
        if not sep or not variables:
            return problem
        return f"{path} (from {', '.join('$' + v for v in variables)}){sep}{message}"


def _set(root: dict[str, Any], path: Path, value: Any) -> str | None:
    """Set ``value`` at ``path``, creating tables on the way; a problem text, or None."""
    node: Any = root
    for depth, part in enumerate(path):
        last, where = depth == len(path) - 1, dotted(path[:depth]) or "the top level"
        if isinstance(part, int):
            if not isinstance(node, list) or part > len(node):
                return f"{where} has no entry {part} (entries: {len(node) if isinstance(node, list) else 0})"
            if part == len(node):
                node.append({})
        elif not isinstance(node, dict):
            return f"{where} is not a table"
        if last:
            node[part] = value
            return None
        if isinstance(node, dict) and part not in node:
            node[part] = [] if isinstance(path[depth + 1], int) else {}
        node = node[part]
    return None
