"""Who ended a leg (``hangup_by``): the ordered ``[[hangup_by]]`` table of ``data/rules.toml``.

A rule is ``id``, ``when`` (the rule language of ``listener.core.rules``, every fact but
``hangup_by`` itself), ``hangup_by`` and ``why``. ``hangup_by`` names a party (``caller``,
``callee``, ``system``, ``unknown``) or a side of this leg, resolved by the leg's direction:
``far_end`` is the party this leg's own dialog reaches (the caller on an inbound leg, the callee on
an outbound one), ``other_party`` the one at the other end of the call. The first matching rule
decides; when none does, ``unknown``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, get_args

from listener.core.errors import unknown_key
from listener.core.facts import HangupBy
from listener.core.rules import Condition, Report, RuleContext, compile_when, holds_all, rule_path
from listener.core.subject import Subject

FAR_END = "far_end"
OTHER_PARTY = "other_party"
SIDES = (FAR_END, OTHER_PARTY)
PARTIES: tuple[HangupBy, ...] = get_args(HangupBy)
KEYS = frozenset({"id", "when", "hangup_by", "why"})
NO_RULE = "no-rule"


def _outbound(subject: Subject) -> bool:
    """Whether FreeSWITCH placed this leg (its far end is a callee); without a direction, a B leg."""
    direction = subject.event.direction
    if direction in ("inbound", "outbound"):
        return direction == "outbound"
    return subject.facts.leg == "b"


@dataclass(frozen=True, slots=True)
class HangupByRule:
    """One row of the ``hangup_by`` table."""

    id: str
    when: tuple[Condition, ...]
    hangup_by: str
    why: str = ""

    def resolve(self, subject: Subject) -> HangupBy:
        """The party this rule names for ``subject`` (a side is resolved by the leg's direction)."""
        if self.hangup_by == FAR_END:
            return "callee" if _outbound(subject) else "caller"
        if self.hangup_by == OTHER_PARTY:
            return "caller" if _outbound(subject) else "callee"
        return next(party for party in PARTIES if party == self.hangup_by)


def attribute(rules: Sequence[HangupByRule], subject: Subject) -> tuple[HangupBy, str]:
    """(who ended the leg, the id of the rule that says so); ``unknown`` when no rule matches."""
    for rule in rules:
        if holds_all(rule.when, subject):
            return rule.resolve(subject), rule.id
    return "unknown", NO_RULE


def compile_hangup_by_rule(raw: Mapping[str, Any], path: str, ctx: RuleContext,
                           report: Report) -> HangupByRule | None:
    """Compile one raw ``[[hangup_by]]`` table; None (with problems reported) when it is invalid."""
    problems: list[str] = []

    def note(where: str, message: str) -> None:
        problems.append(message)
        report(where, message)

    for key in sorted(set(raw) - KEYS):
        note(f"{path}.{key}", unknown_key(key, KEYS))
    rule_id, target, why = raw.get("id"), raw.get("hangup_by"), raw.get("why", "")
    if not isinstance(rule_id, str) or not rule_id.strip():
        note(f"{path}.id", "must be a non-empty string")
    if target not in (*PARTIES, *SIDES):
        note(f"{path}.hangup_by", f"must be one of {', '.join((*PARTIES, *SIDES))}")
    if not isinstance(why, str):
        note(f"{path}.why", "must be a string")
    when = raw.get("when", {})
    if isinstance(when, dict) and "hangup_by" in when:
        note(f"{path}.when.hangup_by", "a hangup_by rule cannot test hangup_by (it decides it)")
    conditions = compile_when(when, path, ctx, note)
    if problems:
        return None
    assert isinstance(rule_id, str)
    assert isinstance(target, str)
    assert isinstance(why, str)
    return HangupByRule(rule_id, conditions, target, why)


def compile_hangup_by_rules(raw: Sequence[Mapping[str, Any]], ctx: RuleContext,
                            report: Report) -> tuple[HangupByRule, ...]:
    """The whole table, in order; duplicate ids and invalid rules are reported and left out."""
    rules: list[HangupByRule] = []
    for index, table in enumerate(raw):
        path = rule_path(f"rules.toml hangup_by[{index}]", table)
        rule = compile_hangup_by_rule(table, path, ctx, report)
        if rule is not None and rule.id in {r.id for r in rules}:
            report(f"{path}.id", f"duplicate hangup_by rule id {rule.id!r}")
        elif rule is not None:
            rules.append(rule)
    return tuple(rules)
