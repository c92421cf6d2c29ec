"""Value patterns of the rule language, compiled once at load and matched without allocation.

A pattern is ``"exact"``, a glob (``"local_stream://*"``), ``"re:<regex>"`` (full match), a named
list ``"@ivr_apps"``, ``true`` (present and non-empty) / ``false`` (absent or empty), a list of
these (any may match) or ``{ not = <pattern> }``. Numbers match their decimal text.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

GLOB_CHARS = frozenset("*?[")


class PatternError(ValueError):
    """A pattern that cannot be compiled; the message says why."""


@dataclass(frozen=True, slots=True)
class Pattern:
    """A compiled pattern over an optional text value."""

    exact: frozenset[str] = frozenset()
    regexes: tuple[re.Pattern[str], ...] = ()
    if_present: bool = False
    if_absent: bool = False
    negate: bool = False

    def matches(self, value: str | None) -> bool:
        """Whether ``value`` (None when absent) matches (one call: it runs for every condition tested)."""
        if not value:
            return self.if_absent != self.negate
        if self.if_present or value in self.exact:
            return not self.negate
        for regex in self.regexes:  # a plain loop: no generator per value
            if regex.fullmatch(value):
                return not self.negate
        return self.negate


def _merge(parts: Sequence[Pattern]) -> Pattern:
    """The union of patterns (none of them negated)."""
    return Pattern(
        exact=frozenset().union(*(p.exact for p in parts)),
        regexes=tuple(r for p in parts for r in p.regexes),
        if_present=any(p.if_present for p in parts),
        if_absent=any(p.if_absent for p in parts),
    )


def _compile_text(text: str, lists: Mapping[str, Sequence[str]], *, nested: bool) -> Pattern:
    if text.startswith("@"):
        if nested:
            raise PatternError(f"a named list cannot refer to another list ({text!r})")
        if text[1:] not in lists:
            raise PatternError(f"unknown list {text!r} (known: {', '.join(sorted(lists))})")
        return _merge([_compile_text(item, lists, nested=True) for item in lists[text[1:]]])
    if text.startswith("re:"):
        try:
            return Pattern(regexes=(re.compile(text[3:]),))
        except re.error as exc:
            raise PatternError(f"bad regular expression {text[3:]!r}: {exc}") from None
    if GLOB_CHARS.intersection(text):
        return Pattern(regexes=(re.compile(fnmatch.translate(text)),))
    return Pattern(exact=frozenset({text}))


def compile_pattern(raw: object, lists: Mapping[str, Sequence[str]]) -> Pattern:
    """Compile one pattern as written in TOML; raises ``PatternError`` naming what is wrong."""
    if isinstance(raw, bool):
        return Pattern(if_present=raw, if_absent=not raw)
    if isinstance(raw, int):
        return Pattern(exact=frozenset({str(raw)}))
    if isinstance(raw, str):
        return _compile_text(raw, lists, nested=False)
    if isinstance(raw, list):
        if not raw or any(isinstance(item, list | dict) for item in raw):
            raise PatternError("a list must hold one or more plain patterns")
        return _merge([compile_pattern(item, lists) for item in raw])
    if isinstance(raw, dict) and set(raw) == {"not"}:
        inner = compile_pattern(raw["not"], lists)
        if inner.negate:
            raise PatternError("'not' cannot be nested")
        return Pattern(inner.exact, inner.regexes, inner.if_present, inner.if_absent, negate=True)
    raise PatternError(f"not a pattern: {raw!r} (a string, number, true/false, list or {{ not = ... }})")


def validate_list(items: object) -> str | None:
    """Why a named list is invalid (None when it is fine): lists hold strings, no list references."""
    if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
        return "must be a list of strings"
    for item in items:
        try:
            _compile_text(item, {}, nested=True)
        except PatternError as exc:
            return str(exc)
    return None
