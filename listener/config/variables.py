"""Reading channel-variable selections: ``variables`` and ``variables_max_bytes`` of ``[[webhooks]]``
and ``[log]``, and ``[privacy] number_variables``; a bad pattern is named by its index
(``webhooks[0].variables[2]: ...``)."""

from __future__ import annotations

from listener.config.reader import TableReader
from listener.core.variables import (
    DEFAULT_MAX_BYTES,
    MAX_MAX_BYTES,
    MIN_MAX_BYTES,
    NO_VARIABLES,
    Selection,
    pattern_problem,
)


def parse_selection(reader: TableReader, key: str, default: Selection = NO_VARIABLES) -> Selection:
    """A list of variable names and globs (``default`` when the key is absent or wrong)."""
    patterns = reader.strings(key, default.patterns)
    wrong = [(index, problem) for index, p in enumerate(patterns) if (problem := pattern_problem(p))]
    for index, problem in wrong:
        reader.problem(f"{key}[{index}]", problem)
    return default if wrong else Selection(patterns)


def parse_variables(reader: TableReader) -> tuple[Selection, int]:
    """``variables`` (none by default) and ``variables_max_bytes``, the cap on their names and values."""
    selection = parse_selection(reader, "variables")
    max_bytes = reader.number("variables_max_bytes", int, DEFAULT_MAX_BYTES,
                              minimum=MIN_MAX_BYTES, maximum=MAX_MAX_BYTES)
    return selection, max_bytes
