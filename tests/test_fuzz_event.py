"""Fuzzing the event parser and the per-event work (classify, build the document).

Properties: a plain body never fails to parse and no accessor ever raises; a JSON body fails only
with ``EventError``; values are URL-decoded one line at a time (an escape never crosses a line);
and any CHANNEL_HANGUP_COMPLETE, however odd its values, becomes a document that matches the
schema and renders — an event the daemon read is never lost to an exception in its handler.
"""

from __future__ import annotations

import json
from functools import cache
from urllib.parse import unquote

import jsonschema
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from listener.config.settings import Node
from listener.core.classifier import default_classifier
from listener.core.errors import EventError
from listener.core.event import HangupEvent, parse_plain
from listener.core.signing import render
from listener.pipeline import Pipeline
from tests import schemas
from tests.fakeesl import capture_bodies, with_header

ACCESSORS = [name for name, value in vars(HangupEvent).items() if isinstance(value, property)]
TEMPLATES = [body for scenario in ("uas_486", "answered_caller_bye") for body in capture_bodies(scenario)]
TEMPLATE_NAMES = sorted({
    line.split(b": ", 1)[0].decode() for body in TEMPLATES for line in body.split(b"\n") if b": " in line
})

line_text = st.text(st.characters(blacklist_characters="\n", codec="utf-8"), max_size=80)
escapes = st.sampled_from(["%", "%2", "%zz", "%0A", "%0a", "%3A%20", "%FF", "%C3%28", "%E2%82", "%00", "%%"])
odd_values = st.one_of(
    line_text,
    st.lists(st.one_of(line_text, escapes), max_size=6).map("".join),
    st.integers().map(str),
    st.sampled_from(["", " ", "0", "-1", "9" * 30, "99999999999999999999", "-99999999999999999",
                     "sip:", "sip:99", "q850:17", "NaN", "1e400", "\u0663"]),
)


def validator() -> jsonschema.Draft202012Validator:
    return schemas.leg_document()


@cache
def pipeline() -> Pipeline:
    return Pipeline(Node(name="fuzz"), default_classifier(), log=None)


def read_every_accessor(event: HangupEvent) -> None:
    for name in ACCESSORS:
        getattr(event, name)
    dict(event.headers)


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=3000))
def test_any_bytes_parse_as_a_plain_event_and_every_accessor_answers(body: bytes) -> None:
    read_every_accessor(HangupEvent.from_plain(body))


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.binary(max_size=2000), st.text(max_size=2000).map(str.encode)))
def test_any_bytes_as_a_json_event_parse_or_raise_event_error_only(body: bytes) -> None:
    try:
        event = HangupEvent.from_json(body)
    except EventError:
        return
    read_every_accessor(event)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False) | line_text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(line_text, inner, max_size=3),
    max_leaves=10,
)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(line_text, json_values, max_size=8))
def test_any_json_object_is_an_event_whose_accessors_answer(obj: dict[str, object]) -> None:
    read_every_accessor(HangupEvent.from_json(json.dumps(obj)))


@pytest.mark.parametrize("body", [
    b"[" * 100_000,
    b'{"a": ' + b"[" * 100_000,
    b'{"Event-Name": ' + b"1" * 5000 + b"}",
    b'{"Event-Name": NaN, "x": Infinity}',
], ids=["nested-array", "nested-in-object", "huge-integer", "not-json-numbers"])
def test_json_the_decoder_refuses_by_recursion_or_int_limits_is_an_event_error(body: bytes) -> None:
    """Found by fuzzing: RecursionError and int()'s 4300-digit ValueError escaped as uncaught errors."""
    with pytest.raises(EventError, match=r"not (usable )?JSON"):
        HangupEvent.from_json(body)


@st.composite
def header_blocks(draw: st.DrawFn) -> tuple[bytes, dict[str, str]]:
    """A plain header block with odd lines, duplicates and escapes; and what each name must read."""
    lines: list[str] = []
    expected: dict[str, str] = {}
    for _ in range(draw(st.integers(min_value=0, max_value=12))):
        kind = draw(st.sampled_from(["header", "duplicate", "no-separator", "long"]))
        if kind == "no-separator":
            lines.append(draw(line_text).replace(": ", "") or "-")  # an empty line would end the block
            continue
        name = draw(st.sampled_from(sorted(expected))) if kind == "duplicate" and expected else (
            draw(st.from_regex(r"[A-Za-z][A-Za-z0-9_-]{0,20}", fullmatch=True)))
        value = "v" * draw(st.integers(10_000, 100_000)) if kind == "long" else draw(odd_values)
        lines.append(f"{name}: {value}")
        expected.setdefault(name, value)
    return "\n".join(lines).encode(), expected


@settings(max_examples=300, deadline=None)
@given(header_blocks())
def test_each_value_is_url_decoded_on_its_own_line_the_first_duplicate_wins(
    block: tuple[bytes, dict[str, str]],
) -> None:
    body, expected = block
    headers, _ = parse_plain(body)
    for name, raw in expected.items():
        assert headers[name] == unquote(raw.rstrip("\r"), errors="replace")


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(TEMPLATES), st.dictionaries(st.sampled_from(TEMPLATE_NAMES), odd_values, max_size=12))
def test_any_hangup_with_odd_values_becomes_a_valid_document(
    template: bytes, changes: dict[str, str],
) -> None:
    body = template
    for name, value in changes.items():
        if name != "Event-Name":
            body = with_header(body, name, value.replace("\r", ""))
    event = HangupEvent.from_plain(body)
    assert event.is_hangup_complete
    document = pipeline().document(event)
    validator().validate(document)
    render(document)


@pytest.mark.parametrize("name", [
    "Caller-Channel-Created-Time", "Caller-Channel-Answered-Time", "Caller-Channel-Hangup-Time",
    "Caller-Channel-Progress-Time",
])
@pytest.mark.parametrize("value", ["99999999999999999999", "-99999999999999999", "1" * 25])
def test_a_timestamp_out_of_range_is_null_not_a_lost_call(name: str, value: str) -> None:
    """Found by fuzzing: datetime refused it, the handler raised, the call was neither stored nor sent."""
    event = HangupEvent.from_plain(with_header(capture_bodies("answered_caller_bye")[0], name, value))
    document = pipeline().document(event)
    validator().validate(document)


@pytest.mark.parametrize(("name", "value"), [("Call-Direction", "0"), ("Caller-Direction", "sideways"),
                                             ("variable_billsec", "-1")])
def test_a_value_outside_the_schema_is_null_in_the_document(name: str, value: str) -> None:
    """Found by fuzzing: copied as sent, they broke the schema (a validating receiver refuses it)."""
    body = capture_bodies("answered_caller_bye")[0]
    for header in ("Call-Direction", "Caller-Direction") if name.endswith("Direction") else (name,):
        body = with_header(body, header, value)
    document = pipeline().document(HangupEvent.from_plain(body))
    validator().validate(document)
    assert document["direction" if "Direction" in name else "billsec"] is None
