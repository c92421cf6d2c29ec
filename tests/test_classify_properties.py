"""Properties: any combination of facts yields exactly one valid outcome, deterministically."""

from __future__ import annotations

from fixture_loader import synthetic
from hypothesis import given, settings
from hypothesis import strategies as st

from listener.core.classifier import default_classifier
from listener.core.event import HangupEvent
from listener.core.spec import load_spec

SPEC = load_spec()
BOOK = default_classifier().book
CAUSES = [*sorted(BOOK.causes), "", "NOT_A_CAUSE", "normal_clearing"]
APPS = ["ivr", "play_and_get_digits", "read", "voicemail", "callcenter", "fifo", "bridge", "playback",
        "park", "valet_park", "soft_hold", "att_xfer", "hangup", "intercept", ""]
DISPOSITIONS = ["recv_bye", "send_bye", "recv_cancel", "send_cancel", "recv_refuse", "send_refuse", ""]
SIP = st.one_of(st.just(""), st.integers(100, 699).map(str), st.sampled_from(["sip:486", "q850:17", "x"]))
VARIABLES = st.fixed_dictionaries(
    {},
    optional={
        "sip_term_status": SIP,
        "proto_specific_hangup_cause": SIP,
        "last_bridge_proto_specific_hangup_cause": SIP,
        "sip_invite_failure_status": SIP,
        "originate_disposition": st.sampled_from(CAUSES),
        "last_bridge_hangup_cause": st.sampled_from(CAUSES),
        "endpoint_disposition": st.sampled_from(["ANSWER", "BLIND_TRANSFER", "ATTENDED_TRANSFER"]),
        "transfer_history": st.sampled_from(
            ["1:x:bl_xfer:7000/public/XML", "1:x:att_xfer:y", "1:x:uuid_br:y"]
        ),
        "voicemail_message_len": st.just("00:00:03"),
        "cc_side": st.sampled_from(["member", "agent"]),
        "cc_cause": st.sampled_from(["answered", "cancel"]),
        "ivr_menu_status": st.sampled_from(["success", "failure", "timeout"]),
        "fifo_status": st.just("ABORTED"),
        "current_application_data": st.sampled_from(["local_stream://moh", "lab_ivr"]),
        "hold_events": st.just("{{1,2}}"),
    },
)


@st.composite
def any_leg(draw: st.DrawFn) -> HangupEvent:
    """A cause, answered or not, either leg, a disposition, an application, some variables."""
    disposition, app = draw(st.sampled_from(DISPOSITIONS)), draw(st.sampled_from(APPS))
    event: HangupEvent = synthetic(
        draw(st.sampled_from(CAUSES)), answered=draw(st.booleans()), leg=draw(st.sampled_from(["a", "b"])),
        disposition=disposition or None, app=app or None, **draw(VARIABLES))
    return event


@settings(max_examples=400, deadline=None)
@given(event=any_leg())
def test_any_combination_gives_one_valid_outcome_deterministically(event: HangupEvent) -> None:
    first = default_classifier().classify(event)
    assert first.status in SPEC.statuses
    assert first.bye_reason in SPEC.bye_reasons
    assert first.last_response_code == SPEC.bye_reason(first.bye_reason).code
    assert first.rule in {rule.id for rule in BOOK.rules}
    assert default_classifier().classify(event) == first
    if event.answered:
        assert first.status in {"ended", "abandoned"}


@settings(max_examples=200, deadline=None)
@given(headers=st.dictionaries(st.text(max_size=30), st.text(max_size=40), max_size=20))
def test_arbitrary_headers_never_raise(headers: dict[str, str]) -> None:
    outcome = default_classifier().classify(HangupEvent.from_headers(headers))
    assert outcome.status in SPEC.statuses


@settings(max_examples=100, deadline=None)
@given(body=st.binary(max_size=300))
def test_arbitrary_plain_bodies_never_raise(body: bytes) -> None:
    assert default_classifier().classify(HangupEvent.from_plain(body)).bye_reason in SPEC.bye_reasons


def test_dialplan_variable_states_the_outcome_over_every_rule() -> None:
    event = synthetic("USER_BUSY", disposition="send_refuse", hangup_listener_bye_reason="CALL_FORWARD",
                      hangup_listener_status="ended")
    outcome = default_classifier().classify(event)
    assert (outcome.status, outcome.bye_reason) == ("ended", "CALL_FORWARD")
    assert outcome.rule == "dialplan-variable"


def test_dialplan_bye_reason_alone_keeps_the_status_the_rules_give() -> None:
    event = synthetic(
        "USER_BUSY", disposition="send_refuse", hangup_listener_bye_reason="Terminated_From_Server"
    )
    outcome = default_classifier().classify(event)
    assert (outcome.status, outcome.bye_reason) == ("busy", "Terminated_From_Server")
    assert outcome.rule == "dialplan-variable+unanswered-cause"


def test_unknown_dialplan_bye_reason_is_ignored() -> None:
    event = synthetic("USER_BUSY", disposition="send_refuse", hangup_listener_bye_reason="BOGUS")
    assert default_classifier().classify(event).rule == "unanswered-cause"


def test_unanswered_normal_clearing_takes_the_failed_bridge_cause() -> None:
    by_disposition = synthetic(disposition="send_refuse", originate_disposition="NO_USER_RESPONSE",
                               sip_invite_failure_status="480")
    assert default_classifier().classify(by_disposition).bye_reason == "NO_USER_RESPONSE"
    by_sip_code = synthetic(leg="b", disposition="recv_refuse", sip_term_status="486")
    assert default_classifier().classify(by_sip_code).status == "busy"


def _first_matching_rule(event: HangupEvent) -> str:
    """The rule the whole ordered table picks, every condition tested (the plan's reference)."""
    subject = default_classifier().subject_of(event)
    entry = BOOK.causes.get(subject.cause)
    for rule in BOOK.rules:
        status = rule.status or (entry.status if entry else None)
        reason = rule.bye_reason or (entry.bye_reason if entry else None)
        if status and reason and rule.matches(subject):
            return rule.id
    return "no-rule"


@settings(max_examples=400, deadline=None)
@given(event=any_leg())
def test_the_precomputed_plan_picks_the_rule_the_whole_table_picks(event: HangupEvent) -> None:
    assert default_classifier().classify(event).rule == _first_matching_rule(event)
