"""The rule book: the built-in rules, cause table and lists of ``data/rules.toml``, plus a user's overlay.

Building it validates everything once; problems are reported through a callback with dotted paths.
A user rule whose id is a built-in one replaces it in place; a new one goes before the rule named by
its ``before`` key, or ahead of every built-in rule. ``disable`` removes built-in rules by id.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from listener.core.attribution import HangupByRule, compile_hangup_by_rules
from listener.core.patterns import validate_list
from listener.core.rules import Report, Rule, RuleContext, compile_rule, rule_path
from listener.core.spec import ByeReason, Spec
from listener.core.subject import CauseModel

RULES_FILE = "rules.toml"


@dataclass(frozen=True, slots=True)
class CauseEntry:
    """What a hangup cause means on an unanswered leg: its status and bye reason."""

    status: str
    bye_reason: str


@dataclass(frozen=True, slots=True)
class Overlay:
    """A user's additions and overrides, as read from the config (raw, not yet validated)."""

    lists: Mapping[str, object] = field(default_factory=dict)
    bye_reasons: Sequence[ByeReason] = ()
    causes: Mapping[str, object] = field(default_factory=dict)
    rules: Sequence[tuple[str, Mapping[str, Any]]] = ()
    disable: Sequence[str] = ()
    explicit: Mapping[str, str] = field(default_factory=dict)
    path: str = "classification"


@dataclass(frozen=True, slots=True)
class RuleBook:
    """Everything the classifier needs, validated."""

    spec: Spec
    rules: tuple[Rule, ...]
    causes: Mapping[str, CauseEntry]
    cause_model: CauseModel
    bye_reason_variable: str
    status_variable: str
    lists: Mapping[str, tuple[str, ...]]
    cause_notes: Mapping[str, str]
    hangup_by_rules: tuple[HangupByRule, ...]
    """The ``[[hangup_by]]`` table: who ended a leg (its ``@name`` lists: the overlay's if it gives one)."""


def _lists(base: Mapping[str, Any], overlay: Overlay, report: Report) -> dict[str, tuple[str, ...]]:
    merged = {name: tuple(items) for name, items in base.items()}
    for name, items in overlay.lists.items():
        problem = validate_list(items)
        if problem:
            report(f"{overlay.path}.lists.{name}", problem)
        else:
            assert isinstance(items, list)
            merged[name] = tuple(items)
    return merged


def _causes(raw: Mapping[str, object], spec: Spec, path: str, report: Report) -> dict[str, CauseEntry]:
    """Parse ``[causes.<status>] CAUSE = "BYE_REASON"`` tables."""
    causes: dict[str, CauseEntry] = {}
    for status, table in raw.items():
        if status not in spec.statuses:
            report(f"{path}.{status}", f"unknown status {status!r}")
            continue
        if not isinstance(table, dict):
            report(f"{path}.{status}", "must be a table of CAUSE = \"BYE_REASON\"")
            continue
        for cause, reason in table.items():
            if not isinstance(reason, str) or reason not in spec.bye_reasons:
                report(f"{path}.{status}.{cause}", f"unknown bye reason {reason!r}")
                continue
            causes[cause] = CauseEntry(status, reason)
    return causes


def _sip_causes(raw: Mapping[str, str]) -> dict[int, str]:
    return {int(code): cause for code, cause in raw.items()}


def _ordered_rules(base: Sequence[tuple[str, Mapping[str, Any]]], overlay: Overlay,
                   report: Report) -> list[tuple[str, Mapping[str, Any]]]:
    """Built-in rules with the user's replaced, inserted and disabled ones applied."""
    rules = [item for item in base if item[1].get("id") not in set(overlay.disable)]
    known = {raw.get("id") for _, raw in base}
    for name in overlay.disable:
        if name not in known:
            report(f"{overlay.path}.disable", f"no built-in rule has id {name!r}")
    top = 0
    for path, raw in overlay.rules:
        ids = [r.get("id") for _, r in rules]
        if raw.get("id") in ids and raw.get("id") in known:
            rules[ids.index(raw.get("id"))] = (path, raw)
            continue
        before = raw.get("before")
        if before is None:
            rules.insert(top, (path, raw))
            top += 1
        elif before in ids:
            rules.insert(ids.index(before), (path, raw))
        else:
            report(f"{path}.before", f"no rule has id {before!r}")
    return rules


def _compile_all(ordered: Sequence[tuple[str, Mapping[str, Any]]], ctx: RuleContext,
                 report: Report) -> tuple[Rule, ...]:
    rules: list[Rule] = []
    seen: set[str] = set()
    for path, raw in ordered:
        rule = compile_rule(raw, path, ctx, report)
        if rule is None:
            continue
        if rule.id in seen:
            report(f"{path}.id", f"duplicate rule id {rule.id!r}")
            continue
        seen.add(rule.id)
        rules.append(rule)
    return tuple(rules)


def build_rulebook(base: Mapping[str, Any], spec: Spec, overlay: Overlay, report: Report) -> RuleBook:
    """Validate and assemble the built-in data plus ``overlay``."""
    spec = spec.extended(overlay.bye_reasons)
    lists = _lists(base["lists"], overlay, report)
    causes = _causes(base["causes"], spec, "rules.toml causes", report)
    causes.update(_causes(overlay.causes, spec, f"{overlay.path}.causes", report))
    base_rules = [(rule_path(f"rules.toml rule[{i}]", raw), raw) for i, raw in enumerate(base["rule"])]
    ordered = _ordered_rules(base_rules, overlay, report)
    ctx = RuleContext(spec, lists)
    rules = _compile_all(ordered, ctx, report)
    explicit = {**base["explicit"], **overlay.explicit}
    model = CauseModel(
        clearing=frozenset(lists.get("unexplained_causes", ())),
        known=frozenset(causes),
        sip_causes=MappingProxyType(_sip_causes(base["sip_causes"])),
    )
    return RuleBook(
        spec=spec,
        rules=rules,
        causes=MappingProxyType(causes),
        cause_model=model,
        bye_reason_variable=explicit["bye_reason_variable"],
        status_variable=explicit["status_variable"],
        lists=MappingProxyType(lists),
        cause_notes=MappingProxyType(dict(base.get("cause_notes", {}))),
        hangup_by_rules=compile_hangup_by_rules(base.get("hangup_by", ()), ctx, report),
    )
