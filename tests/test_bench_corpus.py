"""The bench's corpus copies whole calls: each copy's legs carry fresh ids of that copy only, consistently.

A daemon that groups legs into calls by the partner ids they carry (Other-Leg-Unique-ID,
originator, signal_bond, uuid_br:<uuid>, ...) must see every copy as a call of its own.
"""

from __future__ import annotations

import json
from functools import cache

import pytest

from bench.corpus import NODE, UUID, Corpus, Expected, header, uuid_of
from listener.core import document
from listener.core.classifier import default_classifier
from listener.core.event import HangupEvent

RUN = 0x5EED
COPIES = (0, 1, 7)
FORMATS = ("plain", "json")


@cache
def corpus() -> Corpus:
    return Corpus(RUN)


def body(frame: bytes) -> bytes:
    return frame.split(b"\n\n", 1)[1]


def ids_in(data: bytes) -> set[str]:
    return {found.group().decode() for found in UUID.finditer(data)}


def node_of(call: int) -> str:
    return header(corpus().calls[call].plain[0].body, "Core-UUID")


def restored(data: bytes, back: dict[bytes, bytes]) -> bytes:
    """``data`` with every fresh id put back to the original it replaced."""
    return UUID.sub(lambda found: back.get(found.group(), found.group()), data)


def copy_frames(copy: int, call: int, fmt: str) -> list[bytes]:
    c = corpus()
    return [c.frame(c.event(copy, call, leg), fmt) for leg in range(c.calls[call].legs)]


def test_the_corpus_is_every_capture_folder_as_one_call_legs_first_in_its_ids() -> None:
    c = corpus()
    assert len(c.calls) == 42
    assert c.legs_per_copy == 75
    for call in c.calls:
        legs = [header(template.body, "Unique-ID") for template in call.plain]
        assert list(call.ids[: call.legs]) == legs
        assert node_of(c.calls.index(call)) not in call.ids


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_copy_of_a_call_carries_only_its_own_fresh_ids_and_the_node_core_uuid(fmt: str) -> None:
    c = corpus()
    originals = {uid for call in c.calls for uid in call.ids}
    for number in range(len(c.calls)):
        for copy in COPIES:
            allowed = {*c.ids(copy, number), node_of(number)}
            for frame in copy_frames(copy, number, fmt):
                assert ids_in(frame) <= allowed
                assert not any(original.encode() in frame for original in originals)


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_copy_is_its_capture_with_each_id_replaced_by_the_same_fresh_id_on_every_leg(fmt: str) -> None:
    c = corpus()
    for number, call in enumerate(c.calls):
        templates = call.json if fmt == "json" else call.plain
        back = {fresh.encode(): original.encode() for fresh, original in zip(c.ids(3, number), call.ids,
                                                                             strict=True)}
        for frame, template in zip(copy_frames(3, number, fmt), templates, strict=True):
            assert restored(body(frame), back) == template.body


def test_partner_ids_point_at_the_legs_of_the_same_copy() -> None:
    c = corpus()
    number = next(n for n, call in enumerate(c.calls) if call.name == "att_xfer_complete")
    for copy in COPIES:
        legs = set(c.leg_ids(copy, number))
        for frame in copy_frames(copy, number, "plain"):
            event = HangupEvent.from_plain(body(frame))
            assert event.unique_id in legs
            assert event.other_leg_unique_id in legs | {None}
            assert event.call_uuid in legs


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_frame_s_content_length_is_exactly_its_body_s_length(fmt: str) -> None:
    c = corpus()
    for i in range(c.legs_per_copy * 2):
        head, rest = c.frame(i, fmt).split(b"\n\n", 1)
        assert head.startswith(b"Content-Length: %d\n" % len(rest))


def test_two_copies_of_the_same_call_share_no_id_but_the_node_s() -> None:
    c = corpus()
    for number in range(len(c.calls)):
        first = set().union(*map(ids_in, copy_frames(0, number, "plain")))
        second = set().union(*map(ids_in, copy_frames(1, number, "plain")))
        assert first & second == {node_of(number)}


def test_the_core_uuid_is_the_capture_s_in_every_copy() -> None:
    c = corpus()
    for i in range(c.legs_per_copy, c.legs_per_copy * 2):
        _, number, leg = c.place(i)
        assert header(body(c.frame(i)), "Core-UUID") == header(c.calls[number].plain[leg].body, "Core-UUID")


def test_events_come_call_by_call_legs_in_capture_order() -> None:
    c = corpus()
    places = [c.place(i) for i in range(c.legs_per_copy + 3)]
    assert places[:4] == [(0, 0, 0), (0, 0, 1), (0, 1, 0), (0, 1, 1)]
    assert places[c.legs_per_copy] == (1, 0, 0)
    assert all(c.event(*place) == i for i, place in enumerate(places))
    assert [header(body(c.frame(i)), "Unique-ID") for i in range(3)] == [
        uuid_of(RUN, 0, 0, 0), uuid_of(RUN, 0, 0, 1), uuid_of(RUN, 0, 1, 0)]


def test_a_count_ending_inside_a_call_is_rounded_up_to_its_last_leg() -> None:
    c = corpus()
    boundaries = {c.event(copy, n, 0) for copy in (0, 1) for n in range(len(c.calls))}
    assert c.whole(0) == 0
    assert c.whole(1) == 2  # the first call has two legs
    assert c.whole(2) == 2
    for count in range(1, c.legs_per_copy * 2):
        assert c.whole(count) in boundaries | {c.legs_per_copy * 2}
        assert count <= c.whole(count) < count + max(call.legs for call in c.calls)


def test_the_calls_within_a_range_are_those_whose_legs_all_are() -> None:
    c = corpus()
    assert c.calls_within(0, 4) == {(0, 0), (0, 1)}
    assert c.calls_within(1, 4) == {(0, 1)}
    assert c.calls_within(0, 3) == {(0, 0)}
    assert len(c.calls_within(0, c.legs_per_copy * 2)) == 2 * len(c.calls)


def test_a_leg_s_fresh_id_maps_back_to_its_event_and_nothing_else_does() -> None:
    c = corpus()
    number = next(n for n, call in enumerate(c.calls) if len(call.ids) > call.legs)
    assert c.event_of(uuid_of(RUN, 5, number, 1)) == c.event(5, number, 1)
    assert c.event_of(uuid_of(RUN, 5, number, c.calls[number].legs)) is None  # not a leg's id
    assert c.event_of(uuid_of(RUN + 1, 5, number, 0)) is None  # another run's
    assert c.event_of(c.calls[number].ids[0]) is None  # the capture's
    assert c.event_of(None) is None


def test_the_expected_document_is_what_the_classifier_makes_of_the_copy() -> None:
    c = corpus()
    expected, classify = Expected(c), default_classifier().classify
    for i in range(c.legs_per_copy * 2, c.legs_per_copy * 3):
        event = HangupEvent.from_plain(body(c.frame(i)))
        built = json.loads(json.dumps(document.build(event, classify(event), NODE)))
        assert expected.document(i) == built
        assert expected.webhook_id(i) == built["id"]
