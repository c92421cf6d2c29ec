"""Reading the ``[classification]`` table: a user's rules, bye reasons, causes, lists and variables.

What is read becomes an ``Overlay`` over the built-in rule book (``listener.core.rulebook``); the
rule book reports every problem with the dotted path of the rule or key that has it.
"""

from __future__ import annotations

from typing import Any

from listener.config.reader import TableReader
from listener.core.classifier import Classifier, classifier_for, default_classifier
from listener.core.rulebook import Overlay
from listener.core.rules import rule_path
from listener.core.spec import ByeReason, load_spec


def _bye_reasons(reader: TableReader) -> list[ByeReason]:
    reasons = []
    spec = load_spec()
    for item in reader.tables("bye_reasons"):
        name = item.string("name")
        code = item.number("code", int, 0, minimum=100, maximum=999) if item.has("code") else None
        definition = item.string("definition")
        item.reject_unknown()
        if not name or not definition:
            item.problem("name" if not name else "definition", "is required")
        elif name in spec.bye_reasons:
            item.problem("name", f"{name!r} is already a bye reason of the spec")
        else:
            reasons.append(ByeReason(name, code or None, definition, builtin=False))
    return reasons


def _user_rules(reader: TableReader) -> list[tuple[str, dict[str, Any]]]:
    return [(rule_path(rule.path, rule.table), dict(rule.table)) for rule in reader.tables("rules")]


def parse_classification(reader: TableReader) -> Classifier:
    """The ``[classification]`` config table: user rules, bye reasons, causes, lists, explicit vars.

    Problems are added to ``reader.problems`` with dotted paths naming the rule; when there are
    any, the default classifier is returned.
    """
    before = len(reader.problems.items)
    explicit = reader.table_at("explicit")
    overlay = Overlay(
        lists=reader.value("lists", dict, {}),
        bye_reasons=_bye_reasons(reader),
        causes=reader.value("causes", dict, {}),
        rules=_user_rules(reader),
        disable=reader.strings("disable"),
        explicit={
            key: explicit.string(key)
            for key in ("bye_reason_variable", "status_variable")
            if explicit.has(key) and explicit.string(key)
        },
        path=reader.path,
    )
    explicit.reject_unknown()
    reader.reject_unknown()
    classifier = classifier_for(overlay, reader.problems.add)
    if len(reader.problems.items) > before:
        return default_classifier()
    return classifier
