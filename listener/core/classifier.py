"""Classification: one CHANNEL_HANGUP_COMPLETE -> call status, bye reason, last response code, and why.

Pure and synchronous. The decision is data (``data/rules.toml``, see ``listener.core.rulebook``): a
channel variable set by the dialplan wins; otherwise the first matching rule of the ordered table
decides; the last rule matches everything, so ``classify`` is total and never raises.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from functools import cache
from typing import Any, NamedTuple

from listener.core.attribution import attribute
from listener.core.event import HangupEvent
from listener.core.facts import Facts
from listener.core.rulebook import RULES_FILE, Overlay, RuleBook, build_rulebook
from listener.core.rules import Condition, Rule, holds_all
from listener.core.spec import load_spec, read_data
from listener.core.subject import Subject

EXPLICIT_RULE = "dialplan-variable"
NO_RULE = "no-rule"


class _Step(NamedTuple):
    """One rule as ``Classifier._decide`` tries it for a known (cause, answered) pair."""

    conditions: tuple[Condition, ...]
    status: str
    bye_reason: str
    rule_id: str


@dataclass(frozen=True, slots=True)
class Classification:
    """How one leg ended, in the spec's words, and which rule decided it."""

    status: str
    status_label: str
    status_definition: str
    bye_reason: str
    bye_reason_definition: str
    last_response_code: int | None
    rule: str
    facts: Facts


    def summary(self) -> dict[str, object]:
        """The outcome as plain data (facts included), e.g. for ``hangup-listener classify``."""
        return {
            "status": self.status,
            "status_label": self.status_label,
            "bye_reason": self.bye_reason,
            "last_response_code": self.last_response_code,
            "rule": self.rule,
            "facts": asdict(self.facts),
        }


class Classifier:
    """Applies a validated ``RuleBook`` to events."""

    def __init__(self, book: RuleBook) -> None:
        self.book = book
        self._plans: dict[tuple[str, bool], tuple[_Step, ...]] = {
            (cause, answered): self._plan(cause, answered)
            for cause in (*book.causes, "")
            for answered in (False, True)
        }

    def _plan(self, cause: str, answered: bool) -> tuple[_Step, ...]:
        """The rules that can match a leg with this effective cause and answered state, in order.

        Each keeps only the conditions the pair does not already decide, with its status and bye
        reason resolved against the cause table; a rule that resolves to neither is left out (it
        could never decide).
        """
        entry = self.book.causes.get(cause)
        steps = []
        for rule in self.book.rules:
            status = rule.status or (entry.status if entry else None)
            reason = rule.bye_reason or (entry.bye_reason if entry else None)
            if status and reason and rule.admits(cause, answered):
                steps.append(_Step(rule.residual(), status, reason, rule.id))
        return tuple(steps)

    def classify(self, event: HangupEvent) -> Classification:
        """The outcome of one event (pure, deterministic, total)."""
        subject = self.subject_of(event)
        facts = subject.facts
        status, reason, rule_id = self._decide(subject)
        explicit = event.variable(self.book.bye_reason_variable)
        if explicit in self.book.spec.bye_reasons:
            assert explicit is not None
            wanted = event.variable(self.book.status_variable)
            if wanted in self.book.spec.statuses:
                assert wanted is not None
                return self._outcome(wanted, explicit, EXPLICIT_RULE, facts)
            return self._outcome(status, explicit, f"{EXPLICIT_RULE}+{rule_id}", facts)
        return self._outcome(status, reason, rule_id, facts)

    def subject_of(self, event: HangupEvent) -> Subject:
        """The event as the rules see it, ``hangup_by`` decided by the ``[[hangup_by]]`` table."""
        facts = Facts.of(event)
        cause = self.book.cause_model.effective(event, facts)
        who, rule_id = attribute(self.book.hangup_by_rules, Subject(event, facts, cause))
        return Subject(event, replace(facts, hangup_by=who, hangup_by_rule=rule_id), cause)

    def _decide(self, subject: Subject) -> tuple[str, str, str]:
        """(status, bye reason, rule id) from the first rule that matches."""
        key = (subject.cause, subject.facts.answered)
        plan = self._plans.get(key)
        if plan is None:  # a cause the cause table does not know
            plan = self._plan(*key)
        for conditions, status, reason, rule_id in plan:
            if holds_all(conditions, subject):
                return status, reason, rule_id
        return self._fallback()

    def _fallback(self) -> tuple[str, str, str]:
        """Only reached when a user disabled or narrowed the catch-all: the outcome it gives.

        spec.toml lists the spec's table in order, and its first row is UNSPECIFIED.
        """
        return "failed", next(iter(self.book.spec.bye_reasons)), NO_RULE

    def _outcome(self, status_id: str, reason_name: str, rule_id: str, facts: Facts) -> Classification:
        status = self.book.spec.status(status_id)
        reason = self.book.spec.bye_reason(reason_name)
        return Classification(
            status=status.id,
            status_label=status.label,
            status_definition=status.definition,
            bye_reason=reason.name,
            bye_reason_definition=reason.definition,
            last_response_code=reason.code,
            rule=rule_id,
            facts=facts,
        )

    @property
    def rules(self) -> tuple[Rule, ...]:
        return self.book.rules


def _raise_on_problem(path: str, message: str) -> None:
    raise ValueError(f"built-in classification data is invalid: {path}: {message}")


@cache
def built_in_data() -> dict[str, Any]:
    """The parsed ``data/rules.toml``."""
    return read_data(RULES_FILE)


def classifier_for(overlay: Overlay, report: Any = _raise_on_problem) -> Classifier:
    """A classifier of the built-in rules plus ``overlay``; problems go to ``report(path, message)``."""
    return Classifier(build_rulebook(built_in_data(), load_spec(), overlay, report))


@cache
def default_classifier() -> Classifier:
    """The built-in rules (built once)."""
    return classifier_for(Overlay())
