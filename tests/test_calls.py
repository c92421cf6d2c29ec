"""Legs into calls (listener.core.calls) on the real captures: grouping, completion, the bound, late legs.

The captures in tests/data/fixtures-cdr hold every leg of each call three ways (the ESL JSON and
plain frames, and mod_json_cdr's files); expected.json gives the caller's leg (``_leg`` ``a``) its
expected status, which is the call's.
"""

from __future__ import annotations

import dataclasses
import json
import random
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from listener.config import loader
from listener.core import calls, document
from listener.core.cdr import event_from_cdr
from listener.core.event import HangupEvent
from tests.cdr_fixture_loader import calls as call_folders
from tests.fixture_loader import split_frames
from tests.schemas import call_document

CLASSIFIER = loader.load(None, {}).classifier
FOLDERS = call_folders()


def esl_events(folder: Path, kind: str = "json") -> list[HangupEvent]:
    frames = split_frames((folder / f"hangup_complete.{kind}.txt").read_bytes())
    parse = HangupEvent.from_json if kind == "json" else HangupEvent.from_plain
    return [parse(body) for body in frames]


def cdr_events(folder: Path) -> list[HangupEvent]:
    return [event_from_cdr(p.read_bytes()) for p in sorted((folder / "json_cdr").glob("*.cdr.json"))]


def leg_of(event: HangupEvent, at: float = 0.0, node: str = "n") -> calls.Leg:
    built = document.build(event, CLASSIFIER.classify(event), node)
    return calls.Leg(built, node, calls.partners(event), at)


def feed(grouper: calls.Grouper, legs: Iterable[calls.Leg], now: float = 0.0) -> list[calls.Call]:
    """Each leg in its own step, each plan kept: the calls completed, in order."""
    done: list[calls.Call] = []
    for leg in legs:
        plan = grouper.add([leg])
        grouper.apply(plan, now)
        done += plan.completed
    return done


def expected_status(folder: Path) -> Any:
    path = folder / "expected.json"
    expected = json.loads(path.read_text()) if path.exists() else {}
    callers = [leg for leg in expected.values() if leg.get("_leg") == "a"]
    return callers[0].get("status") if callers else None


def status_ok(status: str, want: Any) -> bool:
    if isinstance(want, str):
        return status == want
    if isinstance(want, list):
        return status in want
    return bool(status != want["not"])


@pytest.mark.parametrize("source", ["json", "plain", "cdr"])
@pytest.mark.parametrize("folder", FOLDERS, ids=lambda f: f"{f.parent.name}/{f.name}" if f.name ==
                         "encode_values_false" else f.name)
def test_every_capture_is_one_call_with_every_leg_and_the_callers_status(folder: Path, source: str) -> None:
    events = cdr_events(folder) if source == "cdr" else esl_events(folder, source)
    grouper = calls.Grouper()
    completed = feed(grouper, [leg_of(e) for e in events])
    assert len(completed) == 1
    (call,) = completed
    assert {leg.unique_id for leg in call.legs} == {e.unique_id for e in events}  # every leg, once
    assert grouper.open_calls == grouper.waiting_legs == 0
    body = call.document
    assert body["complete"] is True
    assert body["missing_legs"] == []
    call_document().validate(body)
    want = expected_status(folder)
    if want is not None:
        assert status_ok(str(body["status"]), want), (body["status"], want)
    caller = next(leg for leg in call.legs if leg.id == body["caller_leg_id"])
    assert caller.document["leg"] == "a"
    assert body["status"] == caller.document["status"]
    assert body["hangup_by"] == caller.document["hangup_by"]
    assert body["id"] == str(uuid.uuid5(calls.CALL_NAMESPACE, f"{caller.document['node']['core_uuid']}/"
                                                          f"{caller.unique_id}"))
    assert body["id"] not in {leg.id for leg in call.legs}


MAIN_CALLS = [f for f in FOLDERS if f.name != "encode_values_false"]


@pytest.mark.parametrize("folder", MAIN_CALLS, ids=lambda f: f.name)
def test_the_event_socket_and_the_cdr_files_name_the_same_partners(folder: Path) -> None:
    by_uid = {e.unique_id: calls.partners(e) for e in esl_events(folder)}
    assert {e.unique_id: calls.partners(e) for e in cdr_events(folder)} == by_uid


def test_the_grouping_is_not_channel_call_uuid() -> None:
    """After a transfer or an intercept the legs of one call carry different Channel-Call-UUIDs."""
    for name in ("att_xfer_complete", "intercept_picked_off"):
        folder = next(f for f in FOLDERS if f.name == name)
        events = esl_events(folder)
        assert len({e.call_uuid for e in events}) > 1
        assert len(feed(calls.Grouper(), [leg_of(e) for e in events])) == 1


@settings(max_examples=60, deadline=None)
@given(st.randoms(use_true_random=False))
def test_legs_of_many_calls_interleaved_in_any_order_give_each_call_once(rng: random.Random) -> None:
    """Every capture's legs, shuffled together (real traffic interleaves calls; two sources may each
    deliver a leg first): one call per capture, with exactly its legs."""
    folders = [f for f in FOLDERS if f.name != "encode_values_false"]
    legs = [(f.name, leg_of(e)) for f in folders for e in esl_events(f)]
    rng.shuffle(legs)
    owner = {leg.unique_id: name for name, leg in legs}
    completed = feed(calls.Grouper(), [leg for _, leg in legs])
    assert len(completed) == len(folders)
    for call in completed:
        assert len({owner[leg.unique_id] for leg in call.legs}) == 1
    assert sorted(leg.unique_id for call in completed for leg in call.legs) == sorted(owner)


def two_leg_call() -> tuple[calls.Leg, calls.Leg]:
    """uas_486: the callee's leg (``b``, first to hang up) and the caller's (``a``)."""
    folder = next(f for f in FOLDERS if f.name == "uas_486")
    b, a = (leg_of(e) for e in esl_events(folder))
    assert (b.document["leg"], a.document["leg"]) == ("b", "a")
    return b, a


def test_a_leg_waits_for_the_legs_it_names_and_the_call_completes_with_the_last() -> None:
    b, a = two_leg_call()
    grouper = calls.Grouper()
    plan = grouper.add([b])
    assert (plan.completed, plan.waiting) == ((), (b,))
    grouper.apply(plan, 0.0)
    assert (grouper.open_calls, grouper.waiting_legs) == (1, 1)
    plan = grouper.add([a])
    assert {leg.unique_id for leg in plan.completed[0].legs} == {b.unique_id, a.unique_id}
    assert plan.released == (("n", b.unique_id),)  # its durable wait ends
    grouper.apply(plan, 1.0)
    assert (grouper.open_calls, grouper.waiting_legs) == (0, 0)


def test_a_call_open_past_its_bound_is_completed_incomplete_and_a_late_leg_is_a_leg_only() -> None:
    b, a = two_leg_call()
    grouper = calls.Grouper(wait_s=60.0)
    feed(grouper, [calls.Leg(b.document, b.node, b.partners, 100.0)])
    assert grouper.next_expiry() == 100.0
    assert grouper.expire(159.9).completed == ()
    plan = grouper.expire(160.0)
    (call,) = plan.completed
    assert call.document["complete"] is False
    assert call.document["missing_legs"] == [a.unique_id]
    assert call.document["caller_leg_id"] is None  # the caller's leg never came: the first leg's view
    assert call.document["status"] == b.document["status"]
    grouper.apply(plan, 160.0)
    late = grouper.add([a])
    assert (late.completed, late.late) == ((), (a,))
    assert grouper.late_call("n", a.unique_id) == call.id


def test_the_uuids_of_completed_calls_remembered_are_bounded_and_older_late_legs_are_told_by_the_outbox(
        ) -> None:
    """Memory stays flat at any rate: only the newest ``remember_max`` uuids are kept; a late leg of a call
    forgotten since is told by the outbox's record of legs taken (``taken``)."""
    b, a = two_leg_call()
    grouper = calls.Grouper(wait_s=60.0, remember_max=3)
    feed(grouper, [calls.Leg(b.document, b.node, b.partners, 100.0)])
    plan = grouper.expire(160.0)  # b's call completes without a: b and a are remembered
    grouper.apply(plan, 160.0)
    for n in range(3):  # three more one-leg calls push them out
        other = calls.Leg({**b.document, "channel_uuid": f"x{n}"}, "n", frozenset(), 161.0 + n)
        feed(grouper, [dataclasses.replace(other, document={**other.document, "id": f"id-{n}"})], 161.0 + n)
    assert grouper.late_call("n", b.unique_id) is None
    assert len(grouper._done) == 3
    asked: list[list[tuple[str, str]]] = []

    def taken(keys: list[tuple[str, str]]) -> list[tuple[str, str]]:
        asked.append(list(keys))
        return [key for key in keys if key == ("n", b.unique_id)]

    late = grouper.add([a], taken)
    assert (late.completed, late.late) == ((), (a,))  # still late, not a new call
    assert asked == [[("n", b.unique_id)]]


def test_undo_leaves_the_grouping_exactly_as_before() -> None:
    """A plan the outbox could not commit is undone: the legs can be added again, and complete once."""
    folder = next(f for f in FOLDERS if f.name == "att_xfer_complete")
    legs = [leg_of(e) for e in esl_events(folder)]
    grouper = calls.Grouper()
    feed(grouper, legs[:1])
    before = (grouper.open_calls, grouper.waiting_legs, grouper.next_expiry())
    for _ in range(3):  # three failed commits of the rest
        plan = grouper.add(legs[1:])
        assert len(plan.completed) == 1
        grouper.undo(plan)
        assert (grouper.open_calls, grouper.waiting_legs, grouper.next_expiry()) == before
    (call,) = feed(grouper, legs[1:])
    assert {leg.unique_id for leg in call.legs} == {leg.unique_id for leg in legs}


def test_restored_legs_keep_the_time_they_began_to_wait() -> None:
    b, a = two_leg_call()
    grouper = calls.Grouper(wait_s=60.0)
    grouper.restore([calls.Leg(b.document, b.node, b.partners, 10.0)])
    assert (grouper.open_calls, grouper.waiting_legs, grouper.next_expiry()) == (1, 1, 10.0)
    plan = grouper.add([calls.Leg(a.document, a.node, a.partners, 50.0)])
    assert len(plan.completed) == 1
    assert plan.released == (("n", b.unique_id),)


def test_a_uuid_that_hundreds_of_legs_name_cannot_gather_an_endless_call() -> None:
    b, _ = two_leg_call()
    grouper = calls.Grouper(max_legs=8)
    copies = [calls.Leg({**b.document, "id": f"id-{n}", "channel_uuid": f"leg-{n}"}, "n", b.partners, 0.0)
              for n in range(20)]
    completed = feed(grouper, copies)
    assert len(completed) == 1
    assert len(completed[0].legs) == 8
    assert completed[0].document["complete"] is False
    assert grouper.open_calls == 0  # the other 12 are late: leg.classified only


def test_nodes_never_share_a_call() -> None:
    b, a = two_leg_call()
    grouper = calls.Grouper()
    legs = [calls.Leg(b.document, "pbx1", b.partners, 0.0), calls.Leg(a.document, "pbx2", a.partners, 0.0)]
    assert feed(grouper, legs) == []
    assert grouper.open_calls == 2


def test_the_call_document_times_and_answering_leg() -> None:
    folder = next(f for f in FOLDERS if f.name == "forked_ring_one_answers")
    (call,) = feed(calls.Grouper(), [leg_of(e) for e in esl_events(folder)])
    body = call.document
    answering = next(leg for leg in call.legs if leg.id == body["answered_leg_id"])
    assert answering.document["answered"] is True
    assert answering.document["leg"] == "b"
    assert body["answered_at"] == answering.document["answered_at"]
    caller = next(leg for leg in call.legs if leg.id == body["caller_leg_id"])
    assert body["started_at"] == caller.document["created_at"]
    assert body["ended_at"] == max(leg.document["ended_at"] for leg in call.legs)
    assert body["ring_s"] is not None
    assert body["talk_s"] is not None
    assert body["ring_s"] > 0
    assert body["talk_s"] > 0
    assert body["callee_number"] == caller.document["destination_number"]


@pytest.mark.parametrize(("value", "found"), [
    ("ARRAY::u1;Outbound Call;uas|:u2;Outbound Call;uas2", {"u1", "u2"}),
    ('["u1;Outbound Call;uas","u2;Outbound Call;uas2"]', {"u1", "u2"}),
    ("u1;NORMAL_CLEARING", {"u1"}),
])
def test_array_partner_facts_in_either_spelling(value: str, found: set[str]) -> None:
    event = HangupEvent.from_headers({"Event-Name": "CHANNEL_HANGUP_COMPLETE", "Unique-ID": "me",
                                      "variable_originated_legs": value})
    assert calls.partners(event) == found


def test_a_blind_transfer_names_no_channel_an_attended_one_does() -> None:
    event = HangupEvent.from_headers({
        "Event-Name": "CHANNEL_HANGUP_COMPLETE", "Unique-ID": "me",
        "variable_transfer_history":
            "ARRAY::1796484588:d8ec9ce3:uuid_br:target-1|:1796484590:d8ec9ce3:bl_xfer:7014/public/XML",
    })
    assert calls.partners(event) == {"target-1"}

