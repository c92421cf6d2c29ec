"""``hangup_by``: every captured leg with a truth gets it; each ``[[hangup_by]]`` rule does its one job."""

from __future__ import annotations

import json
from typing import Any

import pytest
from cdr_fixture_loader import FIXTURES_CDR, cdr_legs
from fixture_loader import FIXTURES, all_legs, synthetic

from listener.core.attribution import compile_hangup_by_rule
from listener.core.cdr import event_from_cdr
from listener.core.classifier import default_classifier
from listener.core.event import HangupEvent
from listener.core.rules import RuleContext


def _meta_legs(folder: Any) -> dict[str, dict[str, Any]]:
    legs = json.loads((folder / "meta.json").read_text())["legs"]
    return {leg["Unique-ID"]: leg for leg in legs}


def _truth_legs() -> list[tuple[str, HangupEvent, HangupEvent, str]]:
    """(name, ESL event, CDR event, truth) of every leg of the CDR captures with an unambiguous truth."""
    found = []
    for leg in cdr_legs():
        if "/" in leg.call or leg.esl is None:
            continue
        meta = _meta_legs(FIXTURES_CDR / leg.call).get(leg.esl.unique_id)
        if meta and meta["who_hung_up_unambiguous"]:
            cdr = event_from_cdr(leg.path.read_bytes())
            found.append((leg.name, leg.esl, cdr, meta["who_hung_up_truth"]))
    return found


TRUTH_LEGS = _truth_legs()


def _role(meta: dict[str, Any]) -> str:
    return str(meta["role"]).split()[0]


def _older_legs() -> list[tuple[str, HangupEvent, str]]:
    """The older captures (same scenario designs, other runs) with the truth of the same role."""
    truth = {
        (folder.name, _role(m)): m for folder in FIXTURES_CDR.iterdir() if (folder / "meta.json").exists()
        for m in _meta_legs(folder).values()
    }
    found = []
    for leg in all_legs():
        meta = _meta_legs(FIXTURES / leg.scenario).get(leg.unique_id)
        same = truth.get((leg.scenario, _role(meta))) if meta else None
        if same and same["who_hung_up_unambiguous"]:
            found.append((leg.name, leg.event, same["who_hung_up_truth"]))
    return found


OLDER_LEGS = _older_legs()


def who(event: HangupEvent) -> tuple[str, str]:
    facts = default_classifier().classify(event).facts
    return facts.hangup_by, facts.hangup_by_rule


def test_every_leg_with_a_truth_is_counted() -> None:
    assert len(TRUTH_LEGS) == 76
    assert len(OLDER_LEGS) == 71


@pytest.mark.parametrize(("name", "esl", "cdr", "truth"), TRUTH_LEGS, ids=[t[0] for t in TRUTH_LEGS])
def test_every_leg_with_a_truth_gets_it_from_its_event_and_its_cdr(
        name: str, esl: HangupEvent, cdr: HangupEvent, truth: str) -> None:
    assert who(esl)[0] == truth
    assert who(cdr) == who(esl)


@pytest.mark.parametrize(("name", "event", "truth"), OLDER_LEGS, ids=[t[0] for t in OLDER_LEGS])
def test_every_older_capture_gets_the_truth_of_its_role(name: str, event: HangupEvent, truth: str) -> None:
    assert who(event)[0] == truth


# -- one synthetic event per rule: the rule that decides, and what it gives ---------------------------

CASES = {
    "api-kill-of-this-leg": (synthetic("MANAGER_REQUEST", answered=True, disposition="recv_bye"),
                             ("system", "system-cause")),
    "sched-hangup": (synthetic("ALLOTTED_TIMEOUT", answered=True, disposition="send_bye"),
                     ("system", "system-cause")),
    "caller-bye": (synthetic(answered=True, disposition="recv_bye"), ("caller", "far-end-hung-up")),
    "callee-bye": (synthetic(answered=True, leg="b", disposition="recv_bye"), ("callee", "far-end-hung-up")),
    "api-originate-refused": (
        HangupEvent.from_headers({"Hangup-Cause": "USER_BUSY", "Call-Direction": "outbound",
                                  "variable_sip_hangup_disposition": "recv_refuse"}),
        ("callee", "far-end-hung-up")),
    "callee-302": (synthetic("REDIRECTION_TO_NEW_DESTINATION", leg="b", disposition="send_cancel"),
                   ("callee", "callee-redirected")),
    "dialplan-hangup": (synthetic("SUBSCRIBER_ABSENT", disposition="send_refuse", app="hangup"),
                        ("system", "system-cause")),
    "dialplan-hangup-normal": (synthetic(answered=True, disposition="send_bye", app="hangup",
                                         last_bridge_hangup_cause="NORMAL_CLEARING"),
                               ("system", "dialplan-ended")),
    "dialplan-respond": (synthetic("USER_BUSY", disposition="send_refuse", app="respond"),
                         ("system", "dialplan-ended")),
    "partner-killed": (synthetic(answered=True, leg="b", disposition="send_bye",
                                 last_bridge_hangup_cause="MANAGER_REQUEST"),
                       ("system", "partner-system-cause")),
    "partner-media-timeout": (synthetic(answered=True, disposition="send_bye",
                                        last_bridge_hangup_cause="MEDIA_TIMEOUT"),
                              ("system", "partner-system-cause")),
    "gateway-down-bridge": (synthetic(disposition="send_refuse", originate_disposition="GATEWAY_DOWN"),
                            ("system", "originate-system-cause")),
    "callee-hung-up-caller-leg": (synthetic(answered=True, disposition="send_bye",
                                            last_bridge_hangup_cause="NORMAL_CLEARING"),
                                  ("callee", "partner-hung-up")),
    "caller-hung-up-callee-leg": (synthetic(answered=True, leg="b", disposition="send_bye",
                                            last_bridge_hangup_cause="NORMAL_CLEARING"),
                                  ("caller", "partner-hung-up")),
    "caller-cancel": (synthetic("ORIGINATOR_CANCEL", leg="b", disposition="send_cancel",
                                last_bridge_hangup_cause="ORIGINATOR_CANCEL"),
                      ("caller", "caller-cancelled")),
    "callee-486": (synthetic("USER_BUSY", disposition="send_refuse", originate_disposition="USER_BUSY",
                             sip_invite_failure_status="486"),
                   ("callee", "callee-refused")),
    "call-timeout-b-leg": (synthetic("NO_ANSWER", leg="b", disposition="send_cancel",
                                     sip_invite_failure_status="487"),
                           ("system", "freeswitch-ended")),
    "call-timeout-a-leg": (synthetic(disposition="send_refuse", originate_disposition="NO_ANSWER"),
                           ("system", "freeswitch-ended")),
    "own-cancel-487-is-not-the-callee": (
        synthetic(disposition="send_refuse", sip_invite_failure_status="487"),
        ("system", "freeswitch-ended")),
    "kill-without-cause": (synthetic(answered=True, disposition="send_bye"), ("system", "freeswitch-ended")),
    "failed-route-after-transfer": (synthetic(disposition="send_refuse", app="export",
                                              last_bridge_hangup_cause="REDIRECTION_TO_NEW_DESTINATION",
                                              transfer_history="1:uuid:bl_xfer:nowhere/public/XML"),
                                    ("system", "freeswitch-ended")),
    "no-fact-at-all": (synthetic(answered=True), ("unknown", "no-rule")),
}


@pytest.mark.parametrize(("event", "expected"), CASES.values(), ids=CASES.keys())
def test_each_hangup_by_rule_decides_its_case(event: HangupEvent, expected: tuple[str, str]) -> None:
    assert who(event) == expected


def test_every_hangup_by_rule_has_a_case() -> None:
    ids = {rule.id for rule in default_classifier().book.hangup_by_rules}
    assert ids <= {rule for _, (_, rule) in CASES.values()}


def test_a_bad_hangup_by_rule_is_reported_with_its_path_and_left_out() -> None:
    book = default_classifier().book
    problems: list[tuple[str, str]] = []
    raw = {"id": "x", "when": {"hangup_by": "caller", "nope": 1}, "hangup_by": "nobody", "extra": 1}
    rule = compile_hangup_by_rule(raw, "r", RuleContext(book.spec, book.lists),
                                  lambda path, message: problems.append((path, message)))
    assert rule is None
    assert [path for path, _ in problems] == ["r.extra", "r.hangup_by", "r.when.hangup_by", "r.when.nope"]
