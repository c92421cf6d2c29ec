"""Typed, path-aware reading of a parsed TOML table: every problem is collected, none raised early.

Each section's parser takes a ``TableReader``, asks for its keys with the type and range it
wants, and gets a default back where a key is wrong, so one pass reports every problem at once,
each named by its dotted key path (``webhooks[0].timeout: must be > 0``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

from listener.core.errors import unknown_key

T = TypeVar("T")

REMOVED = "removed in 0.2.0 (the daemon runs as one process) and ignored; delete it from the configuration"
"""The warning for a key of the two child processes that were removed, accepted for one release."""

NO_CREDENTIALS = (" (a bare name is read from the credentials folder: --credentials, else"
                  " $CREDENTIALS_DIRECTORY, else /etc/hangup-listener/credentials; there is none)")
"""Said of a bare ``*_file`` name that was not found while no credentials folder is known."""

_TYPE_NAMES = {str: "a string", int: "an integer", float: "a number", bool: "true or false", list: "a list"}


def _limit(bound: float) -> str:
    """A range's bound as written: 1048576, not 1.04858e+06; 0.9 stays 0.9."""
    return str(int(bound)) if float(bound).is_integer() else f"{bound:g}"


class Problems:
    """The list of problems found while reading one configuration."""

    def __init__(self) -> None:
        self.items: list[str] = []
        self.warnings: list[str] = []
        """Keys accepted but not acted on (a removed setting): said to the operator, never fatal."""

    def add(self, path: str, message: str) -> None:
        self.items.append(f"{path}: {message}" if path else message)

    def warn(self, path: str, message: str) -> None:
        self.warnings.append(f"{path}: {message}")

    def __bool__(self) -> bool:
        return bool(self.items)


class TableReader:
    """Reads keys of one TOML table, remembering which were read so unknown ones can be rejected."""

    def __init__(
        self,
        table: Mapping[str, Any],
        path: str,
        problems: Problems,
        environ: Mapping[str, str] | None = None,
        credentials: Path | None = None,
    ) -> None:
        self.table = table
        self.path = path
        self.problems = problems
        self.environ = os.environ if environ is None else environ
        self.credentials = credentials
        """The folder a bare ``*_file`` name is read from (``settings.credentials_folder``)."""
        self._seen: set[str] = set()
        self._removed: set[str] = set()

    def key_path(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def problem(self, key: str, message: str) -> None:
        self.problems.add(self.key_path(key), message)

    def has(self, key: str) -> bool:
        self._seen.add(key)
        return key in self.table

    def value(self, key: str, kind: type[T], default: T) -> T:
        """A scalar of ``kind`` (an int is accepted where a float is asked)."""
        self._seen.add(key)
        if key not in self.table:
            return default
        raw = self.table[key]
        if kind is float and isinstance(raw, int) and not isinstance(raw, bool):
            return float(raw)  # type: ignore[return-value]
        if not isinstance(raw, kind) or (kind is int and isinstance(raw, bool)):
            self.problem(key, f"must be {_TYPE_NAMES.get(kind, kind.__name__)}, got {type(raw).__name__}")
            return default
        return raw

    def string(self, key: str, default: str = "", *, choices: tuple[str, ...] = ()) -> str:
        value = self.value(key, str, default)
        if choices and key in self.table and value not in choices:
            self.problem(key, f"must be one of {', '.join(choices)}; got {value!r}")
            return default
        return value

    def number(self, key: str, kind: type[T], default: T, *, minimum: float | None = None,
               maximum: float | None = None, exclusive_min: bool = False) -> T:
        value = self.value(key, kind, default)
        if key not in self.table or value is default:
            return value
        num = float(value)  # type: ignore[arg-type]
        if minimum is not None and (num <= minimum if exclusive_min else num < minimum):
            self.problem(key, f"must be {'>' if exclusive_min else '>='} {_limit(minimum)}, got {value}")
            return default
        if maximum is not None and num > maximum:
            self.problem(key, f"must be <= {_limit(maximum)}, got {value}")
            return default
        return value

    def boolean(self, key: str, default: bool) -> bool:
        return self.value(key, bool, default)

    def strings(self, key: str, default: tuple[str, ...] = ()) -> tuple[str, ...]:
        """A list of strings."""
        raw = self.value(key, list, list(default))
        if not all(isinstance(item, str) for item in raw):
            self.problem(key, "must be a list of strings")
            return default
        return tuple(raw)

    def numbers(self, key: str, default: tuple[float, ...] = (), *, minimum: float = 0) -> tuple[float, ...]:
        """A list of numbers, each >= minimum."""
        raw = self.value(key, list, list(default))
        if not all(isinstance(x, int | float) and not isinstance(x, bool) for x in raw):
            self.problem(key, "must be a list of numbers")
            return default
        if any(x < minimum for x in raw):
            self.problem(key, f"every value must be >= {minimum:g}")
            return default
        return tuple(float(x) for x in raw)

    def table_at(self, key: str) -> TableReader:
        """A sub-table (an empty one where the key is absent or not a table)."""
        raw = self.value(key, dict, {})
        return TableReader(raw, self.key_path(key), self.problems, self.environ, self.credentials)

    def tables(self, key: str) -> list[TableReader]:
        """An array of tables (``[[key]]``)."""
        raw = self.value(key, list, [])
        readers = []
        for index, item in enumerate(raw):
            path = f"{self.key_path(key)}[{index}]"
            if not isinstance(item, dict):
                self.problems.add(path, "must be a table")
                continue
            readers.append(TableReader(item, path, self.problems, self.environ, self.credentials))
        return readers

    def secret(self, key: str, default: str | None = None) -> str | None:
        """A secret from ``key``, ``key_file`` (a path) or ``key_env`` (a variable name); at most one.

        A ``key_file`` that is a bare name is read from the credentials folder (``--credentials``,
        else ``$CREDENTIALS_DIRECTORY``, where systemd's ``LoadCredential=`` puts it, else
        /etc/hangup-listener/credentials). Problems never include the secret itself.
        """
        given = [name for name in (key, f"{key}_file", f"{key}_env") if self.has(name)]
        if len(given) > 1:
            self.problem(key, f"give only one of {', '.join(given)}")
            return default
        if not given:
            return default
        name = given[0]
        raw = self.value(name, str, "")
        if name == key or not raw:
            if not raw and isinstance(self.table.get(name), str):  # a wrong type was reported already
                self.problem(name, "must not be empty")
            return raw or default
        if name.endswith("_env"):
            return self._secret_from_env(name, raw, default)
        return self._secret_from_file(name, raw, default)

    def secrets(self, key: str) -> list[tuple[str, str]]:
        """Secrets, each with the key it came from: one from ``key``, ``key_file`` or ``key_env`` (as
        ``secret``), or several from ``keys``, ``key_files`` or ``key_envs``: lists of values, paths
        and variable names, one secret each (``secret_files[1]``). At most one of the six is given.
        """
        single, lists = (key, f"{key}_file", f"{key}_env"), (f"{key}s", f"{key}_files", f"{key}_envs")
        given = [name for name in (*single, *lists) if self.has(name)]
        if len(given) > 1:
            self.problem(key, f"give only one of {', '.join(given)}")
            return []
        if not given:
            return []
        if given[0] in single:
            value = self.secret(key)
            return [] if value is None else [(given[0], value)]
        return self._secret_list(given[0])

    def _secret_list(self, name: str) -> list[tuple[str, str]]:
        items = self.strings(name)
        if self.table.get(name) == []:
            self.problem(name, "must not be empty")
        found = []
        for index, item in enumerate(items):
            path = f"{name}[{index}]"
            if not item:
                self.problem(path, "must not be empty")
                continue
            if name.endswith("_envs"):
                value = self._secret_from_env(path, item, None)
            elif name.endswith("_files"):
                value = self._secret_from_file(path, item, None)
            else:
                value = item
            if value is not None:
                found.append((path, value))
        return found

    def _secret_from_env(self, name: str, variable: str, default: str | None) -> str | None:
        value = self.environ.get(variable)
        if not value:
            self.problem(name, f"environment variable {variable} is not set or empty")
            return default
        return value

    def _secret_from_file(self, name: str, raw: str, default: str | None) -> str | None:
        path, bare = Path(raw), "/" not in raw
        if bare and self.credentials is not None:
            path = self.credentials / raw
        try:
            value = path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            hint = NO_CREDENTIALS if bare and self.credentials is None else ""
            self.problem(name, f"cannot read {path}: {exc.strerror or exc}{hint}")
            return default
        if not value:
            self.problem(name, f"{path} is empty")
            return default
        return value

    def removed(self, key: str, message: str = REMOVED) -> None:
        """A key this release no longer uses: accepted whatever its value, with a warning."""
        self._removed.add(key)
        if self.has(key):
            self.problems.warn(self.key_path(key), message)

    def reject_unknown(self) -> None:
        """Report every key of this table that no one asked for, with the known key it most likely
        misspells (a removed key is never suggested)."""
        known = self._seen - self._removed
        for key in self.table:
            if key not in self._seen:
                self.problem(key, unknown_key(key, known))
