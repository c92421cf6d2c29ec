"""User rules from the config: they take precedence, extend the vocabulary, and bad ones are named."""

from __future__ import annotations

import tomllib
from typing import Any

import pytest
from fixture_loader import synthetic

from listener.config.classification import parse_classification
from listener.config.reader import Problems, TableReader
from listener.core.classifier import Classifier, default_classifier
from listener.core.errors import ConfigError
from listener.core.patterns import PatternError, compile_pattern


def parse(text: str) -> tuple[Classifier, list[str]]:
    table: dict[str, Any] = tomllib.loads(text).get("classification", {})
    problems = Problems()
    classifier = parse_classification(TableReader(table, "classification", problems))
    return classifier, problems.items


BUSY = synthetic("USER_BUSY", disposition="send_refuse")


def test_empty_config_gives_the_default_behaviour() -> None:
    classifier, problems = parse("")
    assert problems == []
    assert classifier.classify(BUSY).rule == default_classifier().classify(BUSY).rule


def test_new_user_rule_goes_before_every_built_in_rule() -> None:
    classifier, problems = parse(
        """
        [[classification.rules]]
        id = "busy-is-declined-here"
        when = { cause = "USER_BUSY" }
        status = "declined"
        bye_reason = "CALL_REJECTED"
        """
    )
    assert problems == []
    outcome = classifier.classify(BUSY)
    assert (outcome.status, outcome.bye_reason) == ("declined", "CALL_REJECTED")
    assert outcome.rule == "busy-is-declined-here"
    assert outcome.last_response_code == 603


def test_user_rule_with_a_built_in_id_replaces_it_in_place() -> None:
    classifier, problems = parse(
        """
        [[classification.rules]]
        id = "ivr-abandoned"
        when = { app = "@ivr_apps", hangup_by = "caller" }
        status = "abandoned"
        bye_reason = "End_In_IVR"
        """
    )
    assert problems == []
    ids = [rule.id for rule in classifier.rules]
    assert ids == [rule.id for rule in default_classifier().rules]
    event = synthetic(answered=True, disposition="recv_bye", app="ivr")
    assert classifier.classify(event).bye_reason == "End_In_IVR"


def test_user_rule_can_be_placed_before_a_named_rule() -> None:
    classifier, problems = parse(
        """
        [[classification.rules]]
        id = "mine"
        before = "catch-all"
        status = "failed"
        bye_reason = "PROTOCOL_ERROR"
        """
    )
    assert problems == []
    ids = [rule.id for rule in classifier.rules]
    assert ids.index("mine") == ids.index("catch-all") - 1
    assert classifier.classify(synthetic("NO_SUCH_CAUSE")).bye_reason == "PROTOCOL_ERROR"


def test_user_bye_reason_and_list_override() -> None:
    classifier, problems = parse(
        """
        [classification]
        lists = { ivr_apps = ["lua"] }

        [[classification.bye_reasons]]
        name = "Abandoned_Survey"
        code = 951
        definition = "The caller hung up during the post-call survey."

        [[classification.rules]]
        id = "survey"
        when = { var = { survey = true }, hangup_by = "caller" }
        status = "abandoned"
        bye_reason = "Abandoned_Survey"
        """
    )
    assert problems == []
    survey = classifier.classify(synthetic(answered=True, disposition="recv_bye", survey="1"))
    assert (survey.bye_reason, survey.last_response_code, survey.rule) == ("Abandoned_Survey", 951, "survey")
    in_lua = classifier.classify(synthetic(answered=True, disposition="recv_bye", app="lua"))
    assert in_lua.bye_reason == "Abandoned_IVR_Menu"
    in_ivr = classifier.classify(synthetic(answered=True, disposition="recv_bye", app="ivr"))
    assert in_ivr.bye_reason == "NORMAL_CLEARING"


def test_disable_and_cause_override() -> None:
    classifier, problems = parse(
        """
        [classification]
        disable = ["hold-music-abandoned"]
        causes = { failed = { PROGRESS_TIMEOUT = "PROGRESS_TIMEOUT" } }
        """
    )
    assert problems == []
    moh = synthetic(
        answered=True, disposition="recv_bye", app="playback", current_application_data="local_stream://x"
    )
    assert classifier.classify(moh).bye_reason == "NORMAL_CLEARING"
    assert classifier.classify(synthetic("PROGRESS_TIMEOUT", disposition="send_refuse")).status == "failed"


@pytest.mark.parametrize(
    ("rule", "problem"),
    [
        ('status = "bzy"\nbye_reason = "USER_BUSY"',
         "classification.rules[0] (id 'my-rule').status: unknown status 'bzy'"),
        ('status = "busy"\nbye_reason = "USER_BUSSY"',
         "classification.rules[0] (id 'my-rule').bye_reason: unknown bye reason 'USER_BUSSY'"),
        ('status = "busy"\nbye_reason = "USER_BUSY"\nwhen = { colour = "red" }',
         "classification.rules[0] (id 'my-rule').when.colour: unknown fact 'colour'"),
        ('status = "busy"\nbye_reason = "USER_BUSY"\nwhen = { app = "re:(unclosed" }',
         "classification.rules[0] (id 'my-rule').when.app: bad regular expression '(unclosed'"),
        ('status = "busy"\nbye_reason = "USER_BUSY"\nwhen = { app = "@no_such_list" }',
         "classification.rules[0] (id 'my-rule').when.app: unknown list '@no_such_list'"),
        ('status = "busy"\nbye_reason = "USER_BUSY"\nwhen = { answered = "yes" }',
         "classification.rules[0] (id 'my-rule').when.answered: must be true or false"),
        ('status = "busy"\nbye_reason = "USER_BUSY"\ncolour = 1',
         "classification.rules[0] (id 'my-rule').colour: unknown key"),
        ('status = "busy"\nbye_reason = "USER_BUSY"\nbefore = "nope"',
         "classification.rules[0] (id 'my-rule').before: no rule has id 'nope'"),
    ],
)
def test_bad_rule_is_a_config_error_naming_the_rule(rule: str, problem: str) -> None:
    classifier, problems = parse(f'[[classification.rules]]\nid = "my-rule"\n{rule}\n')
    assert len(problems) == 1
    assert problems[0].startswith(problem)
    assert classifier is default_classifier()
    assert str(ConfigError(problems)).startswith("classification.rules[0] (id 'my-rule')")


def test_every_problem_is_reported_at_once() -> None:
    _, problems = parse(
        """
        [classification]
        disable = ["nope"]
        colour = 1
        [[classification.bye_reasons]]
        name = "USER_BUSY"
        definition = "again"
        [[classification.rules]]
        status = "busy"
        bye_reason = "USER_BUSY"
        """
    )
    assert sorted(p.split(":")[0] for p in problems) == [
        "classification.bye_reasons[0].name",
        "classification.colour",
        "classification.disable",
        "classification.rules[0].id",
    ]


@pytest.mark.parametrize(
    ("raw", "value", "hit"),
    [("ivr", "ivr", True), ("ivr", "ivr2", False), ("local_stream://*", "local_stream://moh", True),
     ("re:4\\d\\d", "486", True), ("re:4\\d\\d", "4861", False), (486, "486", True),
     (True, "x", True), (True, None, False), (False, None, True), (False, "", True),
     (["a", "b*"], "bee", True), ({"not": "a"}, "a", False), ({"not": "a"}, None, True),
     ("@apps", "read", True), ("@apps", "ivr", False)],
)
def test_patterns(raw: object, value: str | None, hit: bool) -> None:
    assert compile_pattern(raw, {"apps": ["read", "play_*"]}).matches(value) is hit


@pytest.mark.parametrize("raw", [[], [["a"]], {"not": {"not": "a"}}, {"x": 1}, 1.5, "re:[", "@missing"])
def test_malformed_patterns_are_rejected(raw: object) -> None:
    with pytest.raises(PatternError):
        compile_pattern(raw, {})


def test_narrowed_catch_all_still_gives_an_outcome() -> None:
    classifier, problems = parse(
        """
        [[classification.rules]]
        id = "catch-all"
        when = { leg = "b" }
        status = "failed"
        bye_reason = "UNSPECIFIED"
        """
    )
    assert problems == []
    outcome = classifier.classify(synthetic("NO_SUCH_CAUSE", disposition="send_refuse"))
    assert (outcome.status, outcome.bye_reason, outcome.rule) == ("failed", "UNSPECIFIED", "no-rule")


def test_explicit_variable_names_are_configurable() -> None:
    classifier, problems = parse(
        """
        [classification.explicit]
        bye_reason_variable = "my_bye"
        """
    )
    assert problems == []
    outcome = classifier.classify(synthetic("USER_BUSY", disposition="send_refuse", my_bye="CALL_FORWARD"))
    assert outcome.bye_reason == "CALL_FORWARD"


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ('lists = { ivr_apps = "ivr" }', "classification.lists.ivr_apps: must be a list of strings"),
        ('lists = { ivr_apps = ["@x"] }', "classification.lists.ivr_apps: a named list cannot refer"),
        ('causes = { bzy = { X = "USER_BUSY" } }', "classification.causes.bzy: unknown status 'bzy'"),
        ('causes = { busy = { X = "NOPE" } }', "classification.causes.busy.X: unknown bye reason 'NOPE'"),
        ('explicit = { colour = "x" }', "classification.explicit.colour: unknown key"),
    ],
)
def test_bad_lists_causes_and_explicit_are_reported(text: str, problem: str) -> None:
    _, problems = parse(f"[classification]\n{text}\n")
    assert len(problems) == 1
    assert problems[0].startswith(problem)


def test_outcome_summary_is_plain_data() -> None:
    summary = default_classifier().classify(BUSY).summary()
    assert summary["bye_reason"] == "USER_BUSY"
    assert summary["last_response_code"] == 486
    assert isinstance(summary["facts"], dict)


def test_a_users_system_causes_list_decides_hangup_by_too() -> None:
    """The list was read through a hidden global of the built-in rules, so a configuration that added
    a cause changed the rules that use ``@system_causes`` but not the ``hangup_by`` fact."""
    leg = synthetic("NORMAL_TEMPORARY_FAILURE", disposition="recv_bye", answered=True)
    assert default_classifier().classify(leg).facts.hangup_by == "caller"
    builtin = default_classifier().book.lists["system_causes"]
    causes = ", ".join(f'"{cause}"' for cause in (*builtin, "NORMAL_TEMPORARY_FAILURE"))
    classifier, problems = parse(f"[classification.lists]\nsystem_causes = [{causes}]\n")
    assert problems == []
    assert classifier.classify(leg).facts.hangup_by == "system"
    narrowed, problems = parse('[classification.lists]\nsystem_causes = ["CRASH"]\n')
    assert problems == []
    manager = synthetic("MANAGER_REQUEST", disposition="recv_bye", answered=True)
    assert default_classifier().classify(manager).facts.hangup_by == "system"
    assert narrowed.classify(manager).facts.hangup_by == "caller"
