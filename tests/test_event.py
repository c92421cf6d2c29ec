"""Event parsing: per-value URL-decoding, inner bodies, JSON events, typed accessors."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from listener.core.errors import EventError
from listener.core.event import HangupEvent, parse_plain
from tests.fakeesl import capture_bodies


def test_values_are_decoded_after_the_lines_are_split() -> None:
    body = b"Event-Name: X\nCaller-Caller-ID-Name: a%0AHangup-Cause%3A%20BAD\nHangup-Cause: OK\n"
    headers, _ = parse_plain(body)
    assert headers["Hangup-Cause"] == "OK"
    assert headers["Caller-Caller-ID-Name"] == "a\nHangup-Cause: BAD"


def test_the_first_of_duplicate_headers_wins_and_lines_without_separator_are_ignored() -> None:
    headers, _ = parse_plain(b"A: 1\nnonsense\nA: 2\n: empty-name\n")
    assert headers == {"A": "1"}


def test_invalid_percent_escapes_and_non_utf8_survive() -> None:
    headers, _ = parse_plain(b"A: 100%zz%\nB: %FF%FE\nC: \xc3\x28\n")
    assert headers["A"] == "100%zz%"
    assert headers["B"] == "\ufffd\ufffd"
    assert headers["C"] == "\ufffd("


def test_an_inner_body_is_kept() -> None:
    event = HangupEvent.from_plain(b"Event-Name: CUSTOM\nContent-Length: 5\n\nhello world")
    assert event.body == "hello"


def test_plain_and_json_captures_of_the_same_event_agree() -> None:
    plain = [HangupEvent.from_plain(b) for b in capture_bodies("uas_486")]
    json_ = [HangupEvent.from_json(b) for b in capture_bodies("uas_486", "hangup_complete.json.txt")]
    by_id = {e.unique_id: e for e in json_}
    for event in plain:
        other = by_id[event.unique_id]
        assert event.hangup_cause == other.hangup_cause == "USER_BUSY"
        assert event.caller_name == other.caller_name == "sipp UAC"
        assert event.sip_invite_failure_status == other.sip_invite_failure_status == 486


def test_typed_accessors_read_a_real_b_leg() -> None:
    b_leg = HangupEvent.from_plain(capture_bodies("uas_486")[0])
    assert b_leg.sip_term_status == 486
    assert b_leg.proto_specific_hangup_cause == 486
    assert b_leg.hangup_cause_q850 == 17
    assert b_leg.direction == "outbound"
    assert b_leg.other_type == "originator"
    assert b_leg.answered is False
    assert b_leg.call_uuid == b_leg.other_leg_unique_id
    assert b_leg.created_us is not None
    assert b_leg.hangup_us is not None


def test_a_json_body_that_is_not_an_object_is_an_event_error() -> None:
    with pytest.raises(EventError):
        HangupEvent.from_json(b"[1, 2]")
    with pytest.raises(EventError, match="not JSON"):
        HangupEvent.from_json(b"{")


def test_sip_codes_outside_the_sip_range_are_ignored() -> None:
    headers = {"variable_sip_term_status": "99", "variable_proto_specific_hangup_cause": "q850:17"}
    event = HangupEvent.from_headers(headers)
    assert event.sip_term_status is None
    assert event.proto_specific_hangup_cause is None


def test_an_integer_beyond_64_bits_is_no_number() -> None:
    """Found by fuzzing after orjson came in: billsec=2e19 made the document unencodable."""
    event = HangupEvent.from_headers({"variable_billsec": "20000000000000000000", "variable_duration": "-5"})
    assert event.billsec is None
    assert event.duration_s == -5


json_leaves = (st.none() | st.booleans() | st.integers(min_value=-(2**63), max_value=2**63 - 1)
               | st.floats(allow_nan=False, allow_infinity=False) | st.text())
json_values = st.recursive(json_leaves, lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(st.text(), inner, max_size=3), max_leaves=8)


@given(st.dictionaries(st.text().filter(lambda k: k != "_body"), json_values, max_size=12))
def test_a_json_value_that_is_not_a_string_reads_as_its_json_text(obj: dict[str, object]) -> None:
    event = HangupEvent.from_json(orjson.dumps(obj))
    expected = {k: v if isinstance(v, str) else orjson.dumps(v).decode() for k, v in obj.items()}
    assert dict(event.headers) == expected
