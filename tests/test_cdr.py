"""A leg's JSON CDR file gives the document its CHANNEL_HANGUP_COMPLETE gives (issue 16)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from cdr_fixture_loader import FIXTURES_CDR, CDRLeg, calls, cdr_legs, esl_events
from fixture_loader import satisfies

from listener.core import document
from listener.core.cdr import event_from_cdr, unique_id_from_name
from listener.core.classifier import default_classifier
from listener.core.errors import CDRIncompleteError, EventError

LEGS = cdr_legs()
FACETS = ("status", "bye_reason", "last_response_code", "hangup_by")
#: Document fields the CDR cannot have, each with why; every other field must equal the ESL one's.
ESL_ONLY = {
    # mod_json_cdr writes `switchname` (configurable, may differ from the host) and no host name.
    ("node", "hostname"),
}
ANSWERED = FIXTURES_CDR / "answered_caller_bye"
ENCODED_A_LEG = ANSWERED / "json_cdr" / "a_596e6d5e-a9ff-49b4-88b1-aeaf25db2f0f.cdr.json"
PLAIN_A_LEG = (
    ANSWERED / "encode_values_false" / "json_cdr"
    / "a_63c0311e-c1d7-47a8-91cc-6c5a91ada73b.cdr.json"
)


def build(event: Any) -> dict[str, Any]:
    return document.build(event, default_classifier().classify(event), "lab")


def flat(doc: dict[str, Any]) -> dict[tuple[str, ...], Any]:
    """Every leaf of a document by its key path."""
    out: dict[tuple[str, ...], Any] = {}
    for key, value in doc.items():
        if isinstance(value, dict):
            out.update({(key, *path): leaf for path, leaf in flat(value).items()})
        else:
            out[(key,)] = value
    return out


def test_every_call_and_leg_of_the_fixture_was_copied() -> None:
    assert len([c for c in calls() if c.name != "encode_values_false"]) == 44
    assert len([c for c in calls() if c.name == "encode_values_false"]) == 5
    assert len(LEGS) == 91


def test_every_cdr_file_has_the_esl_event_of_its_leg_and_every_event_its_cdr() -> None:
    assert [leg.name for leg in LEGS if leg.esl is None] == []
    paths = [p for c in calls() for p in (c / "json_cdr").iterdir()]
    files = {json.loads(p.read_bytes())["variables"]["uuid"] for p in paths}
    assert {uid for c in calls() for uid in esl_events(c)} == files


def test_every_leg_of_the_main_captures_but_one_has_an_expectation() -> None:
    # expected.json leaves out the intercepting second caller's leg (its own call, picked off):
    # that leg is still compared with its ESL document below
    missing = [leg.name for leg in LEGS if "/" not in leg.call and leg.expected is None]
    assert missing == ["intercept_picked_off:a_8bbf5514"]


EXPECTED_LEGS = [leg for leg in LEGS if leg.expected]


@pytest.mark.parametrize("leg", EXPECTED_LEGS, ids=lambda leg: leg.name)
def test_cdr_document_is_classified_as_expected(leg: CDRLeg) -> None:
    doc = build(event_from_cdr(leg.path.read_bytes()))
    expected = leg.expected or {}
    wrong = {f: (doc[f], expected[f]) for f in FACETS if f in expected and not satisfies(doc[f], expected[f])}
    assert wrong == {}, f"rule {doc['rule']}: (got, wanted) {wrong}"


@pytest.mark.parametrize("leg", LEGS, ids=lambda leg: leg.name)
def test_cdr_document_equals_the_esl_document_of_the_same_leg(leg: CDRLeg) -> None:
    assert leg.esl is not None
    from_cdr, from_esl = flat(build(event_from_cdr(leg.path.read_bytes()))), flat(build(leg.esl))
    assert from_cdr[("id",)] == from_esl[("id",)]
    differ = {p: (from_cdr.get(p), value) for p, value in from_esl.items() if from_cdr.get(p) != value}
    assert set(differ) <= ESL_ONLY, differ
    assert set(from_cdr) == set(from_esl)


@pytest.mark.parametrize("leg", LEGS, ids=lambda leg: leg.name)
def test_cdr_variables_are_the_esl_variables_decoded(leg: CDRLeg) -> None:
    assert leg.esl is not None
    event = event_from_cdr(leg.path.read_bytes())
    # ESL JSON writes array variables as JSON arrays, the CDR (as ESL plain) as ARRAY::a|:b
    esl_plain = {k: v for k, v in leg.esl.headers.items() if k.startswith("variable_") and v[:1] != "["}
    differ = {k: (event.headers.get(k), v) for k, v in esl_plain.items() if event.headers.get(k) != v}
    # mod_json_cdr wrote `digits_dialed` "" where the event says "#" (voicemail's terminator key)
    assert set(differ) <= {"variable_digits_dialed"}, differ


def test_encoded_values_are_decoded_and_plain_ones_kept() -> None:
    encoded, plain = event_from_cdr(ENCODED_A_LEG.read_bytes()), event_from_cdr(PLAIN_A_LEG.read_bytes())
    assert encoded.variable("sip_from_uri") == "5551000@127.0.0.1:5070"
    assert plain.variable("sip_from_uri") == "5551000@127.0.0.1:5070"
    assert encoded.variable("start_stamp") == "2026-12-05 15:29:30"


def _with_variable(path: Path, name: str, value: str) -> bytes:
    cdr = json.loads(path.read_bytes())
    cdr["variables"][name] = value
    return json.dumps(cdr).encode()


@pytest.mark.parametrize("value", ["100%", "%41", "50%off", "%zz%", "a%2Fb"])
def test_a_plain_value_holding_a_percent_sign_is_kept_as_written(value: str) -> None:
    event = event_from_cdr(_with_variable(PLAIN_A_LEG, "x_note", value))
    assert event.variable("x_note") == value
    assert event.variable("sip_from_uri") == "5551000@127.0.0.1:5070"


def test_an_encoded_percent_sign_is_decoded_once() -> None:
    event = event_from_cdr(_with_variable(ENCODED_A_LEG, "x_note", "100%25%2041"))
    assert event.variable("x_note") == "100% 41"


def test_bytes_that_are_not_utf8_in_a_plain_file_are_replaced_not_refused() -> None:
    data = _with_variable(PLAIN_A_LEG, "x_name", "MARKER").replace(b"MARKER", b"J\xf6rg")
    assert event_from_cdr(data).variable("x_name") == "J\ufffdrg"


@pytest.mark.parametrize("cut", [0, 1, 100, 5000, -2, -1])
def test_a_file_still_being_written_is_incomplete(cut: int) -> None:
    data = ENCODED_A_LEG.read_bytes().rstrip()
    with pytest.raises(CDRIncompleteError, match="still being written"):
        event_from_cdr(data[:cut])


def test_bytes_that_are_not_json_are_incomplete() -> None:
    with pytest.raises(CDRIncompleteError):
        event_from_cdr(b"not json at all, and long enough")


@pytest.mark.parametrize("data", [
    b"[]", b'"x"', b"{}", b'{"variables": {}}', b'{"variables": [], "callflow": []}',
    b'{"Event-Name": "CHANNEL_HANGUP_COMPLETE", "Unique-ID": "x"}',
])
def test_complete_json_that_is_not_a_cdr_is_an_event_error_not_incomplete(data: bytes) -> None:
    with pytest.raises(EventError) as caught:
        event_from_cdr(data)
    assert not isinstance(caught.value, CDRIncompleteError)


def test_a_cdr_without_unique_id_keeps_its_bytes_for_a_content_id() -> None:
    cdr = json.loads(ENCODED_A_LEG.read_bytes())
    del cdr["variables"]["uuid"]
    cdr["callflow"] = []
    data = json.dumps(cdr).encode()
    event = event_from_cdr(data)
    assert event.unique_id == ""
    assert event.raw == data
    assert build(event)["id"] == document.content_id(document.content_digest(data))


def test_the_event_is_a_hangup_complete_with_the_partner_of_the_newest_profile() -> None:
    event = event_from_cdr(ENCODED_A_LEG.read_bytes())
    assert event.is_hangup_complete
    assert event.other_type == "originatee"
    assert event.other_leg_unique_id == "24d4c6f3-1e21-4034-aa25-18e3afcc66f8"
    assert event.header("Answer-State") == "hangup"
    assert event.hostname == ""


@pytest.mark.parametrize(("name", "unique_id"), [
    ("a_596e6d5e-a9ff-49b4-88b1-aeaf25db2f0f.cdr.json", "596e6d5e-a9ff-49b4-88b1-aeaf25db2f0f"),
    ("24d4c6f3-1e21-4034-aa25-18e3afcc66f8.cdr.json", "24d4c6f3-1e21-4034-aa25-18e3afcc66f8"),
    ("my-own-id.cdr.json", "my-own-id"),
    ("a_.cdr.json", None), (".cdr.json", None), ("x.json", None), ("x.cdr.json.tmp", None),
    ("2026/x.cdr.json", None), ("hangup_complete.json.txt", None),
])
def test_unique_id_from_name_strips_the_a_prefix_and_suffix(name: str, unique_id: str | None) -> None:
    assert unique_id_from_name(name) == unique_id


@pytest.mark.parametrize("leg", LEGS, ids=lambda leg: leg.name)
def test_every_fixture_file_name_gives_its_content_unique_id(leg: CDRLeg) -> None:
    assert unique_id_from_name(leg.path.name) == event_from_cdr(leg.path.read_bytes()).unique_id
