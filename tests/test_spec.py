"""The spec as data: both tables transcribed completely, and every row reachable from an event."""

from __future__ import annotations

from pathlib import Path

import pytest
from fixture_loader import synthetic

from listener.core.classifier import default_classifier
from listener.core.event import HangupEvent
from listener.core.spec import load_spec

SPEC = load_spec()
CLASSIFY = default_classifier().classify


def test_spec_has_the_eight_statuses_with_their_labels() -> None:
    labels = {s.id: s.label for s in SPEC.statuses.values()}
    assert labels == {
        "ended": "Call Ended",
        "declined": "Declined",
        "busy": "Busy",
        "not_answered": "Not Answered",
        "cancelled": "Cancelled",
        "abandoned": "Abandoned",
        "unreachable": "Unreachable",
        "failed": "Call Failed",
    }


def test_spec_has_every_bye_reason_row_once() -> None:
    # 67 rows in the spec; Abandoned_Voicemail appears twice and is kept once.
    assert len(SPEC.bye_reasons) == 66
    assert SPEC.bye_reason("Abandoned_Voicemail").code == 904


@pytest.mark.parametrize(
    ("name", "code"),
    [("UNSPECIFIED", None), ("OUTGOING_CALL_BARRED", 403), ("NO_USER_RESPONSE", 408),
     ("ORIGINATOR_CANCEL", 487), ("CHAN_NOT_IMPLEMENTED", 488), ("RECOVERY_ON_TIMER_EXPIRE", 504),
     ("CALL_REJECTED", 603), ("Terminated_From_Server", 901), ("Transferred_From_Call_System", 909),
     ("MANAGER_REQUEST", None), ("ACCESS_INFO_DISCARDED", None)],
)
def test_bye_reason_codes_follow_the_table(name: str, code: int | None) -> None:
    assert SPEC.bye_reason(name).code == code


def _by_cause(name: str) -> HangupEvent:
    return synthetic(name, disposition="send_refuse")


#: Events for the rows a plain hangup cause does not produce.
SPECIAL: dict[str, HangupEvent] = {
    "UNSPECIFIED": synthetic("NORMAL_UNSPECIFIED", disposition="send_refuse"),
    "NORMAL_CLEARING": synthetic(answered=True, disposition="recv_bye"),
    "CALL_AWARDED_DELIVERED": synthetic("LOSE_RACE", leg="b", disposition="send_cancel"),
    "Terminated_From_Server": synthetic(disposition="send_bye"),
    "Abandoned_IVR_Menu": synthetic(answered=True, disposition="recv_bye", app="ivr"),
    "End_In_IVR": synthetic(answered=True, disposition="send_bye", app="play_and_get_digits"),
    "Transferred_From_IVR": synthetic(
        answered=True, disposition="recv_bye", app="bridge", ivr_menu_status="success",
        transfer_history="1795729012:880e:bl_xfer:7000/public/XML",
    ),
    "Abandoned_On_Hold": synthetic(
        answered=True, disposition="recv_bye", app="playback", current_application_data="local_stream://moh"
    ),
    "Abandoned_Voicemail": synthetic(answered=True, disposition="recv_bye", app="voicemail"),
    "Caller_Left_Voicemail": synthetic(
        answered=True, disposition="recv_bye", app="voicemail", voicemail_message_len="00:00:03"
    ),
    "Ended_In_Call_System": synthetic(
        answered=True, disposition="recv_bye", app="callcenter", cc_cause="cancel"
    ),
    "Transferred_From_Call_System": synthetic(
        answered=True, disposition="recv_bye", app="callcenter", cc_side="member", cc_cause="answered"
    ),
    "BLIND_TRANSFER": synthetic(answered=True, disposition="send_bye", endpoint_disposition="BLIND_TRANSFER"),
    "ATTENDED_TRANSFER": synthetic(
        answered=True, disposition="send_bye", endpoint_disposition="ATTENDED_TRANSFER"
    ),
    "CALL_FORWARD": synthetic(answered=True, disposition="recv_bye", sip_redirected_to="sip:+15551234@gw"),
    "MANAGER_REQUEST": synthetic("MANAGER_REQUEST", answered=True, disposition="send_bye"),
}


def _event_for(name: str) -> HangupEvent:
    return SPECIAL.get(name) or _by_cause(name)


@pytest.mark.parametrize("name", list(SPEC.bye_reasons))
def test_every_bye_reason_row_is_produced_by_an_event(name: str) -> None:
    outcome = CLASSIFY(_event_for(name))
    assert outcome.bye_reason == name, outcome.rule
    assert outcome.last_response_code == SPEC.bye_reason(name).code
    assert outcome.bye_reason_definition == SPEC.bye_reason(name).definition


def test_every_status_is_produced_by_an_event() -> None:
    produced = {CLASSIFY(_event_for(name)).status for name in SPEC.bye_reasons}
    assert produced == set(SPEC.statuses)


@pytest.mark.parametrize(
    ("cause", "status"),
    [("USER_BUSY", "busy"), ("CALL_REJECTED", "declined"), ("NO_ANSWER", "not_answered"),
     ("ORIGINATOR_CANCEL", "cancelled"), ("USER_NOT_REGISTERED", "unreachable"),
     ("NORMAL_CIRCUIT_CONGESTION", "unreachable"), ("NETWORK_OUT_OF_ORDER", "failed"),
     ("MEDIA_TIMEOUT", "failed"), ("PICKED_OFF", "cancelled"), ("MANAGER_REQUEST", "cancelled")],
)
def test_unanswered_leg_status_follows_the_cause(cause: str, status: str) -> None:
    assert CLASSIFY(_by_cause(cause)).status == status


@pytest.mark.parametrize(
    "cause", ["NORMAL_CLEARING", "MEDIA_TIMEOUT", "USER_BUSY", "PROTOCOL_ERROR", "BOGUS"]
)
def test_answered_then_ended_is_call_ended_whatever_the_cause(cause: str) -> None:
    assert CLASSIFY(synthetic(cause, answered=True, disposition="send_bye")).status == "ended"


SPEC_PAGE = Path("/work/shared/spec/call-status-and-bye-reason.md")


@pytest.mark.skipif(not SPEC_PAGE.exists(), reason="the shared spec page is not on this machine")
def test_spec_data_matches_every_row_of_the_spec_page() -> None:
    rows = [
        [cell.strip() for cell in line.strip().strip("|").split("|")]
        for line in SPEC_PAGE.read_text(encoding="utf-8").splitlines()
        if line.startswith("| ") and not line.startswith("| Last") and not line.startswith("| Call Status")
    ]
    reasons = [row for row in rows if len(row) == 3]
    assert len(reasons) == 67
    for code, name, definition in reasons:
        reason = SPEC.bye_reason(name)
        assert reason.definition == definition
        if name != "Abandoned_Voicemail":  # listed twice, with and without 904: kept once, as 904
            assert reason.code == (int(code) if code.isdigit() else None)
    statuses = {row[0]: row[1].replace("<br>", "\n") for row in rows if len(row) == 2}
    by_label = {s.label.replace("Call Failed", "Called Failed"): s for s in SPEC.statuses.values()}
    assert {label: s.definition for label, s in by_label.items()} == statuses
