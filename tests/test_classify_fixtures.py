"""Every real FreeSWITCH capture gives the outcome its expected.json (or our decided.json) calls for."""

from __future__ import annotations

import pytest
from fixture_loader import FIXTURES, Leg, all_legs, satisfies, scenarios, split_frames

from listener.core.classifier import default_classifier
from listener.core.event import HangupEvent

LEGS = all_legs()
FACETS = ("status", "bye_reason", "last_response_code", "rule")


def test_every_scenario_was_copied_with_its_captures() -> None:
    assert len(scenarios()) == 42
    assert len(LEGS) == 75


def test_every_leg_has_an_expectation_or_a_decision() -> None:
    missing = [leg.name for leg in LEGS if leg.expected is None]
    assert missing == []


@pytest.mark.parametrize("leg", LEGS, ids=lambda leg: leg.name)
def test_capture_gives_the_expected_outcome(leg: Leg) -> None:
    outcome = default_classifier().classify(leg.event)
    expected = leg.expected or {}
    wrong = {
        facet: (getattr(outcome, facet), expected[facet])
        for facet in FACETS
        if facet in expected and not satisfies(getattr(outcome, facet), expected[facet])
    }
    assert wrong == {}, f"rule {outcome.rule}: (got, wanted) {wrong}"


@pytest.mark.parametrize("scenario", scenarios())
def test_json_capture_classifies_like_the_plain_one(scenario: str) -> None:
    folder = FIXTURES / scenario
    plain = [
        HangupEvent.from_plain(b) for b in split_frames((folder / "hangup_complete.plain.txt").read_bytes())
    ]
    json_events = [
        HangupEvent.from_json(b) for b in split_frames((folder / "hangup_complete.json.txt").read_bytes())
    ]
    classify = default_classifier().classify
    by_id = {e.unique_id: classify(e) for e in plain}
    for event in json_events:
        got, want = classify(event), by_id[event.unique_id]
        assert (got.status, got.bye_reason, got.rule) == (want.status, want.bye_reason, want.rule)
