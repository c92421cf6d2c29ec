"""Channel variables on request: selected by name or glob, read from real captures in both formats,
narrowed within a size cap, and masked where they carry numbers."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest
from cdr_fixture_loader import FIXTURES_CDR, calls, esl_events
from fixture_loader import split_frames
from hypothesis import given, settings
from hypothesis import strategies as st

from listener.core.event import HangupEvent
from listener.core.privacy import Redactor, keyed_hash
from listener.core.variables import (
    NUMBER_VARIABLES,
    Selection,
    from_event,
    mask_variables,
    narrow,
    pattern_problem,
    utf8_size,
)

CALLCENTER = FIXTURES_CDR / "callcenter_agent_answers_caller_bye"
KEY = "0123456789abcdef-key"


def plain_events(call: Path) -> dict[str, HangupEvent]:
    """The call's CHANNEL_HANGUP_COMPLETE events as ``event plain`` delivered them, by Unique-ID."""
    frames = split_frames((call / "hangup_complete.plain.txt").read_bytes())
    events = (HangupEvent.from_plain(body) for body in frames)
    return {event.unique_id: event for event in events}


def both_formats() -> Iterator[tuple[str, HangupEvent, HangupEvent]]:
    """Every leg of the captures: (name, its JSON event, its plain event)."""
    for call in calls():
        plain = plain_events(call)
        for uid, event in esl_events(call).items():
            yield f"{call.relative_to(FIXTURES_CDR)}:{uid[:8]}", event, plain[uid]


# -- Selection ------------------------------------------------------------------------------------

def test_exact_names_and_globs_are_told_apart_and_both_match() -> None:
    selection = Selection(("sip_call_id", "accountcode", "cc_*", "sip_?o_user", "rtp_audio_in_[mj]*"))
    assert selection.names == {"sip_call_id", "accountcode"}
    assert selection.glob is not None
    for name in ("sip_call_id", "accountcode", "cc_queue", "cc_", "sip_to_user", "rtp_audio_in_mos",
                 "rtp_audio_in_jitter_loss_rate"):
        assert selection.matches(name), name
    for name in ("sip_call_idx", "xcc_queue", "sip_from_user", "rtp_audio_in_raw_bytes", "variable_cc_x"):
        assert not selection.matches(name), name


def test_matching_is_case_sensitive_and_negated_sets_work() -> None:
    selection = Selection(("DIALSTATUS", "cc_[!q]*"))
    assert selection.matches("DIALSTATUS")
    assert not selection.matches("dialstatus")
    assert not Selection(("CC_*",)).matches("cc_queue")
    assert selection.matches("cc_agent")
    assert not selection.matches("cc_queue")


def test_a_glob_matches_whole_names_only() -> None:
    assert not Selection(("cc_*",)).matches("x_cc_queue")
    assert not Selection(("sip_?",)).matches("sip_ab")
    assert Selection(("*",)).matches("anything-at.all")


def test_an_empty_selection_is_false_and_selects_nothing() -> None:
    empty = Selection()
    assert not empty
    assert not empty.matches("sip_call_id")
    assert empty.glob is None
    assert Selection(("a",))


def test_union_selects_what_either_selects_and_order_or_repeats_do_not_matter() -> None:
    first, second = Selection(("sip_call_id", "cc_*")), Selection(("accountcode", "sip_call_id"))
    union = first.union(second, Selection())
    assert union == Selection(("accountcode", "cc_*", "sip_call_id"))
    assert all(union.matches(n) for n in ("sip_call_id", "cc_queue", "accountcode"))
    assert Selection(("b", "a", "a")) == Selection(("a", "b"))
    assert Selection().union() == Selection()


@pytest.mark.parametrize("pattern", ["sip_call_id", "cc_*", "sip_h_X-Account.Id", "rtp_[0-9]?",
                                     "RFC2822_DATE", "cc_[!q]*", "*"])
def test_names_and_globs_freeswitch_can_have_are_accepted(pattern: str) -> None:
    assert pattern_problem(pattern) is None


@pytest.mark.parametrize(("pattern", "problem"), [
    ("", "must not be empty"),
    ("sip call", "'sip call' is not a variable name"),
    ("cc_[queue", "'cc_[queue' is not a variable name"),
    ("a:b", "'a:b' is not a variable name"),
    ("cc_[]", "'cc_[]' is not a variable name"),
    ("variable_sip_call_id", "without the variable_ prefix of ESL headers: 'sip_call_id'"),
])
def test_a_bad_pattern_says_what_is_wrong(pattern: str, problem: str) -> None:
    found = pattern_problem(pattern)
    assert found is not None
    assert problem in found


# -- from_event -----------------------------------------------------------------------------------

def test_exact_names_and_globs_read_a_callcenter_capture_in_sorted_order() -> None:
    selection = Selection(("sip_call_id", "cc_*", "accountcode"))
    member = next(e for e in esl_events(CALLCENTER).values() if e.variable("cc_side") == "member")
    found = from_event(member, selection)
    assert found["sip_call_id"] == "1-32729@127.0.0.1"
    assert found["cc_queue"] == "labq_agent@default"
    assert found["cc_cause"] == "answered"
    assert "accountcode" not in found  # not set on this call: absent, not empty
    assert list(found) == sorted(found)
    assert all(name == "sip_call_id" or name.startswith("cc_") for name in found)


@pytest.mark.parametrize(("name", "json_event", "plain_event"), list(both_formats()))
def test_json_and_plain_events_of_a_leg_give_the_same_variables(
    name: str, json_event: HangupEvent, plain_event: HangupEvent,
) -> None:
    everything = Selection(("*",))
    from_json, from_plain = from_event(json_event, everything), from_event(plain_event, everything)
    assert set(from_json) == set(from_plain), name
    # Array variables differ by format: JSON text ('["a","b"]') on event json, ARRAY::a|:b on plain.
    differ = {k for k in from_json if from_json[k] != from_plain[k]}
    assert all(from_json[k].startswith("[") and from_plain[k].startswith("ARRAY::") for k in differ)
    exact = Selection(("sip_call_id", "sip_full_from", "uuid"))
    assert from_event(json_event, exact) == from_event(plain_event, exact)


def test_plain_values_come_url_decoded() -> None:
    (plain,) = (e for e in plain_events(CALLCENTER).values() if e.variable("cc_side") == "member")
    found = from_event(plain, Selection(("sip_full_from", "sip_h_*", "sip_full_*")))
    assert found["sip_full_from"].startswith('"sipp UAC" <sip:5551000@127.0.0.1:5070>')


class NoIteration(Mapping[str, str]):
    """Headers that refuse to be listed: only direct lookups work."""

    def __init__(self, headers: dict[str, str]) -> None:
        self.headers = headers

    def __getitem__(self, name: str) -> str:
        return self.headers[name]

    def __iter__(self) -> Iterator[str]:
        raise AssertionError("every header was listed for exact names")

    def __len__(self) -> int:
        raise AssertionError("every header was counted for exact names")


def test_exact_names_are_looked_up_without_listing_every_header() -> None:
    event = HangupEvent(NoIteration({"variable_b": "2", "variable_a": "1", "a": "x"}))
    assert list(from_event(event, Selection(("b", "a", "c")))) == ["a", "b"]
    assert from_event(event, Selection()) == {}


def test_only_variable_headers_are_read_and_without_their_prefix() -> None:
    event = HangupEvent.from_headers({"variable_cc_queue": "q", "cc_agent": "x", "Caller-cc_x": "y",
                                      "variable_": "empty name", "variable_cc_empty": ""})
    assert from_event(event, Selection(("cc_*",))) == {"cc_empty": "", "cc_queue": "q"}


# -- narrow ---------------------------------------------------------------------------------------

VARIABLES = {"sip_call_id": "1-642@127.0.0.1", "cc_queue": "labq@default", "cc_agent": "agent@default",
             "accountcode": "1234"}


def test_narrow_keeps_the_selected_variables_in_sorted_order() -> None:
    kept, truncated = narrow(VARIABLES, Selection(("cc_*", "sip_call_id")), 8192)
    assert list(kept) == ["cc_agent", "cc_queue", "sip_call_id"]
    assert kept["cc_queue"] == "labq@default"
    assert not truncated


def test_narrow_stops_at_the_first_variable_that_does_not_fit_whole() -> None:
    selection = Selection(("*",))
    sizes = {n: len(n) + len(v) for n, v in VARIABLES.items()}  # all ASCII
    two = sizes["accountcode"] + sizes["cc_agent"]
    assert narrow(VARIABLES, selection, two) == ({"accountcode": "1234", "cc_agent": "agent@default"}, True)
    assert narrow(VARIABLES, selection, two + sizes["cc_queue"] - 1)[0].keys() == {"accountcode", "cc_agent"}
    assert narrow(VARIABLES, selection, sum(sizes.values())) == (dict(sorted(VARIABLES.items())), False)
    assert narrow(VARIABLES, selection, 3) == ({}, True)


def test_narrow_counts_utf8_bytes() -> None:
    kept, truncated = narrow({"name": "Zoë"}, Selection(("name",)), 4 + 3)
    assert (kept, truncated) == ({}, True)
    assert narrow({"name": "Zoë"}, Selection(("name",)), 4 + 4) == ({"name": "Zoë"}, False)
    assert utf8_size("\ud800") == 3


def test_narrow_with_nothing_selected_keeps_nothing_and_truncates_nothing() -> None:
    assert narrow(VARIABLES, Selection(), 8192) == ({}, False)
    assert narrow(VARIABLES, Selection(("nothing_*",)), 8192) == ({}, False)


NAMES = st.text(alphabet="abc_*", min_size=1, max_size=6)
VALUES = st.text(max_size=40)


@settings(max_examples=300, deadline=None)
@given(variables=st.dictionaries(NAMES.filter(lambda n: "*" not in n), VALUES, max_size=20),
       patterns=st.lists(NAMES, max_size=4), max_bytes=st.integers(min_value=0, max_value=300))
def test_narrow_never_exceeds_the_cap_and_keeps_a_sorted_prefix_of_the_selection(
    variables: dict[str, str], patterns: list[str], max_bytes: int,
) -> None:
    selection = Selection(tuple(patterns))
    kept, truncated = narrow(variables, selection, max_bytes)
    assert sum(utf8_size(n) + utf8_size(v) for n, v in kept.items()) <= max_bytes
    selected = sorted(n for n in variables if selection.matches(n))
    assert list(kept) == selected[: len(kept)]
    assert all(kept[n] == variables[n] for n in kept)
    assert truncated == (len(kept) < len(selected))
    shuffled = dict(reversed(list(variables.items())))
    assert narrow(shuffled, selection, max_bytes) == (kept, truncated)


# -- masking --------------------------------------------------------------------------------------

def test_mask_variables_hides_only_the_number_variables() -> None:
    hidden = mask_variables({"sip_from_user": "5551000", "sip_call_id": "1-642@127.0.0.1", "ani": ""},
                            NUMBER_VARIABLES, lambda v: "#")
    assert hidden == {"sip_from_user": "#", "sip_call_id": "1-642@127.0.0.1", "ani": ""}


def test_the_default_number_variables_hide_every_number_of_the_real_captures() -> None:
    for name, event, _ in both_formats():
        numbers = {v for h, v in event.headers.items()
                   if h.startswith(("Caller-", "Other-Leg-")) and h.endswith(("Number", "ANI"))
                   and v.isdigit() and len(v) >= 4}
        for variable, value in from_event(event, Selection(("*",))).items():
            carries = any(number in value for number in numbers)
            assert not carries or NUMBER_VARIABLES.matches(variable), (name, variable, value)


def test_the_default_number_variables_leave_ids_and_outcomes_readable() -> None:
    for variable in ("sip_call_id", "uuid", "hangup_cause", "sip_term_status", "cc_queue", "sip_from_host",
                     "sip_to_tag", "billsec", "accountcode", "domain_name"):
        assert not NUMBER_VARIABLES.matches(variable), variable


LEG = {"leg": "a", "caller_number": "5551000", "destination_number": "7000", "status": "ended",
       "variables": {"sip_from_user": "5551000", "sip_call_id": "1-642@127.0.0.1", "x_customer": "42"}}


def test_redactor_masks_the_number_variables_of_a_document() -> None:
    redacted = Redactor("mask")(LEG)
    assert redacted["variables"] == {"sip_from_user": "*****00", "sip_call_id": "1-642@127.0.0.1",
                                     "x_customer": "42"}
    assert redacted["caller_number"] == "*****00"
    assert LEG["variables"]["sip_from_user"] == "5551000"  # the sink's document is untouched


def test_redactor_uses_the_configured_number_variables() -> None:
    redacted = Redactor("hash", KEY, Selection(("x_*",)))(LEG)
    assert redacted["variables"]["x_customer"] == keyed_hash("42", KEY)
    assert redacted["variables"]["sip_from_user"] == "5551000"
    assert Redactor("mask", number_variables=Selection())(LEG)["variables"] == LEG["variables"]


def test_redactor_masks_a_call_document_and_each_of_its_legs() -> None:
    call = {"caller_number": "5551000", "callee_number": "5559876", "status": "ended",
            "variables": {"sip_req_user": "7000"}, "legs": [LEG, {**LEG, "leg": "b"}, "not a leg"]}
    redacted = Redactor("mask")(call)
    assert (redacted["caller_number"], redacted["callee_number"]) == ("*****00", "*****76")
    assert redacted["variables"] == {"sip_req_user": "**00"}
    first, second, other = redacted["legs"]
    assert first["caller_number"] == second["caller_number"] == "*****00"
    assert first["variables"]["sip_from_user"] == "*****00"
    assert (first["leg"], second["leg"], other) == ("a", "b", "not a leg")
    assert call["legs"][0] is LEG
    assert LEG["caller_number"] == "5551000"


def test_redactor_none_returns_a_document_with_variables_itself() -> None:
    assert Redactor("none")(LEG) is LEG


def test_a_masked_capture_shows_no_caller_number_in_any_variable() -> None:
    member = next(e for e in esl_events(CALLCENTER).values() if e.variable("cc_side") == "member")
    redacted = Redactor("mask")({"variables": from_event(member, Selection(("*",)))})
    assert "5551000" not in repr(redacted)
