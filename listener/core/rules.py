"""The rule language: a rule is a frozen value, compiled once, tested against a ``Subject``.

``[[rule]] id = ..., when = {...}, status = ..., bye_reason = ..., why = ...``: all conditions of
``when`` must hold; ``status`` and ``bye_reason`` name spec entries, or ``"@cause"`` to take them
from the cause table for the leg's effective cause. Problems are reported, never raised, each
named by the rule (``classification.rules[2] (id 'x').status: unknown status 'bzy'``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from listener.core.errors import unknown_key
from listener.core.patterns import Pattern, PatternError, compile_pattern
from listener.core.spec import Spec
from listener.core.subject import (
    FLAG_FACTS,
    TABLE_FACTS,
    FlagGetter,
    Subject,
    TextGetter,
    fact_kind,
    fact_names,
    header_getter,
    text_getter,
    variable_getter,
)

FROM_CAUSE = "@cause"
RULE_KEYS = frozenset({"id", "when", "status", "bye_reason", "why", "before"})

Report = Callable[[str, str], None]


@dataclass(frozen=True, slots=True)
class TextCondition:
    """A text or code fact matched by a pattern."""

    fact: str
    getter: TextGetter
    pattern: Pattern
    source: object

    def holds(self, subject: Subject) -> bool:
        return self.pattern.matches(self.getter(subject))


@dataclass(frozen=True, slots=True)
class FlagCondition:
    """A true/false fact."""

    fact: str
    getter: FlagGetter
    expected: bool
    source: object

    def holds(self, subject: Subject) -> bool:
        return self.getter(subject) is self.expected


Condition = TextCondition | FlagCondition


@dataclass(frozen=True, slots=True)
class Rule:
    """One row of the rule table. ``status``/``bye_reason`` None means: from the cause table."""

    id: str
    when: tuple[Condition, ...]
    status: str | None
    bye_reason: str | None
    why: str = ""

    def admits(self, cause: str, answered: bool) -> bool:
        """Whether the rule's cause and answered conditions allow this pair (for pre-selection)."""
        for condition in self.when:
            if isinstance(condition, FlagCondition):
                if condition.fact == "answered" and condition.expected is not answered:
                    return False
            elif condition.fact == "cause" and not condition.pattern.matches(cause or None):
                return False
        return True

    def residual(self) -> tuple[Condition, ...]:
        """The conditions ``admits`` does not decide: what is left to test once it said yes."""
        return tuple(condition for condition in self.when if not _decided_by_admits(condition))

    def matches(self, subject: Subject) -> bool:
        return holds_all(self.when, subject)


def holds_all(conditions: tuple[Condition, ...], subject: Subject) -> bool:
    """Whether every condition holds for ``subject`` (a rule's, or what is left of them once admitted)."""
    for condition in conditions:  # noqa: SIM110 - a plain loop: no generator per event
        if not condition.holds(subject):
            return False
    return True


def _decided_by_admits(condition: Condition) -> bool:
    """The cause and answered conditions: ``Rule.admits`` tests them exactly as ``holds`` would."""
    if isinstance(condition, FlagCondition):
        return condition.fact == "answered"
    return condition.fact == "cause"


@dataclass(frozen=True, slots=True)
class RuleContext:
    """What compiling a rule checks names against."""

    spec: Spec
    lists: Mapping[str, Sequence[str]]


def _condition(fact: str, raw: object, ctx: RuleContext) -> Condition:
    """Compile one ``fact = pattern`` pair (raises PatternError / KeyError with a message)."""
    head, _, name = fact.partition(".")
    if head in TABLE_FACTS and name:
        getter = variable_getter(name) if head == "var" else header_getter(name)
        return TextCondition(fact, getter, compile_pattern(raw, ctx.lists), raw)
    kind = fact_kind(fact)
    if kind is None:
        raise KeyError(f"unknown fact {fact!r} (known: {', '.join(fact_names())})")
    if kind == "flag":
        if not isinstance(raw, bool):
            raise PatternError("must be true or false")
        return FlagCondition(fact, FLAG_FACTS[fact], raw, raw)
    return TextCondition(fact, text_getter(fact), compile_pattern(raw, ctx.lists), raw)


def _flatten_when(when: Mapping[str, Any]) -> list[tuple[str, object]]:
    """``var = { a = 1 }`` becomes ``("var.a", 1)``; other facts stay as they are."""
    pairs: list[tuple[str, object]] = []
    for fact, raw in when.items():
        if fact in TABLE_FACTS and isinstance(raw, dict):
            pairs.extend((f"{fact}.{name}", value) for name, value in raw.items())
        else:
            pairs.append((fact, raw))
    return pairs


def compile_when(when: object, path: str, ctx: RuleContext, report: Report) -> tuple[Condition, ...]:
    """Compile a rule's ``when`` table; every bad condition is reported."""
    if not isinstance(when, dict):
        report(f"{path}.when", "must be a table of fact = pattern")
        return ()
    conditions: list[Condition] = []
    for fact, raw in _flatten_when(when):
        try:
            conditions.append(_condition(fact, raw, ctx))
        except (PatternError, KeyError) as exc:
            message = exc.args[0] if exc.args else str(exc)
            report(f"{path}.when.{fact}", str(message))
    return tuple(sorted(conditions, key=_cost))


def _cost(condition: Condition) -> int:
    """Cheap, selective conditions first: the cause and flags, then facts, then raw variables."""
    if condition.fact == "cause" or isinstance(condition, FlagCondition):
        return 0
    return 2 if "." in condition.fact else 1


def _target(raw: Mapping[str, Any], key: str, names: Mapping[str, object], path: str,
            report: Report) -> tuple[str | None, bool]:
    """A rule's status or bye reason: (name or None for @cause, ok)."""
    value = raw.get(key)
    if value == FROM_CAUSE:
        return None, True
    if not isinstance(value, str) or value not in names:
        label = "status" if key == "status" else "bye reason"
        report(f"{path}.{key}", f"unknown {label} {value!r}" if value is not None else "is required")
        return None, False
    return value, True


def rule_path(base: str, raw: Mapping[str, Any]) -> str:
    """The path that names a rule in problems: ``base (id 'x')``."""
    rule_id = raw.get("id")
    return f"{base} (id {rule_id!r})" if isinstance(rule_id, str) else base


def compile_rule(raw: Mapping[str, Any], path: str, ctx: RuleContext, report: Report) -> Rule | None:
    """Compile one raw rule table; None (with problems reported) when it is invalid."""
    ok = True
    for key in sorted(set(raw) - RULE_KEYS):
        report(f"{path}.{key}", unknown_key(key, RULE_KEYS))
        ok = False
    rule_id = raw.get("id")
    if not isinstance(rule_id, str) or not rule_id.strip():
        report(f"{path}.id", "must be a non-empty string")
        ok = False
    status, status_ok = _target(raw, "status", ctx.spec.statuses, path, report)
    reason, reason_ok = _target(raw, "bye_reason", ctx.spec.bye_reasons, path, report)
    seen: list[str] = []

    def note(where: str, message: str) -> None:
        seen.append(message)
        report(where, message)

    when = compile_when(raw.get("when", {}), path, ctx, note)
    why = raw.get("why", "")
    if not isinstance(why, str):
        report(f"{path}.why", "must be a string")
        ok = False
    if not (ok and status_ok and reason_ok and not seen):
        return None
    assert isinstance(rule_id, str)
    assert isinstance(why, str)
    return Rule(rule_id, when, status, reason, why)
