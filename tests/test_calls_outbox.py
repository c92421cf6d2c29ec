"""Calls in the outbox: legs waiting for their call survive a restart, a call is stored in the same
commit as the leg that completes it, its bound is kept, and old rows are sent in the envelope."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gevent
import orjson
import pytest

from listener.config import loader
from listener.config.settings import WebhookConfig
from listener.core import calls, document
from listener.core.document import CALL_COMPLETED, LEG_CLASSIFIED
from listener.core.errors import ConfigError
from listener.core.event import HangupEvent
from listener.core.variables import Selection
from listener.outbox.store import Outbox
from listener.outbox.writer import OutboxWriter
from listener.webhooks.body import request_body
from tests.fixture_loader import FIXTURES, split_frames
from tests.schemas import body as body_schema

CLASSIFIER = loader.load(None, {}).classifier
LEGS = WebhookConfig("legs", "http://127.0.0.1:9/", (b"k" * 32,), types=frozenset({LEG_CLASSIFIED}))
CALLS = WebhookConfig("calls", "http://127.0.0.1:9/", (b"k" * 32,), types=frozenset({CALL_COMPLETED}),
                      statuses=frozenset({"ended"}))  # statuses filter legs only: a busy call still goes


def legs_of(scenario: str) -> list[calls.Leg]:
    frames = split_frames((FIXTURES / scenario / "hangup_complete.plain.txt").read_bytes())
    events = [HangupEvent.from_plain(body) for body in frames]
    return [calls.Leg(document.build(e, CLASSIFIER.classify(e), "pbx1"), "pbx1", calls.partners(e), 0.0,
                      {"sip_call_id": e.variable("sip_call_id") or ""}) for e in events]


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def opened(tmp_path: Path) -> Iterator[list[OutboxWriter]]:
    writers: list[OutboxWriter] = []
    yield writers
    for writer in writers:
        writer.close(deadline_s=1.0)


def writer_at(path: Path, writers: list[OutboxWriter], clock: Clock, wait_s: float = 3600.0) -> OutboxWriter:
    writer = OutboxWriter(Outbox.open(path, synchronous="normal"), [LEGS, CALLS], clock=clock, wait_s=wait_s)
    writers.append(writer)
    return writer


def rows(path: Path, sql: str) -> list[Any]:
    db = sqlite3.connect(path)
    try:
        return db.execute(sql).fetchall()
    finally:
        db.close()


def test_a_leg_waiting_for_its_call_survives_a_restart_and_the_call_is_stored_with_the_last_leg(
        tmp_path: Path, opened: list[OutboxWriter]) -> None:
    path, clock = tmp_path / "outbox.sqlite3", Clock()
    b, a = legs_of("uas_486")
    first = writer_at(path, opened, clock)
    stored = first.put([b])
    assert stored == {"legs"}
    assert getattr(stored, "calls", ()) == ()
    first.close(deadline_s=1.0)
    assert rows(path, "SELECT node, unique_id FROM call_wait") == [("pbx1", b.unique_id)]

    clock.now += 60
    second = writer_at(path, opened, clock)
    stored = second.put([a])
    (call,) = getattr(stored, "calls", ())
    assert {leg.unique_id for leg in call.legs} == {a.unique_id, b.unique_id}
    assert stored == {"legs", "calls"}  # the busy call goes to the calls endpoint: statuses filter legs only
    assert rows(path, "SELECT count(*) FROM call_wait") == [(0,)]
    messages = dict(rows(path, "SELECT event_id, body FROM message"))
    assert set(messages) == {a.id, b.id, call.id}
    envelope = json.loads(messages[call.id])
    body_schema(CALL_COMPLETED).validate(envelope)
    assert envelope["timestamp"] == envelope["data"]["ended_at"]
    assert [leg["channel_uuid"] for leg in envelope["data"]["legs"]] == [a.unique_id, b.unique_id]
    assert "variables" not in messages[call.id]  # the body is one for all endpoints: variables beside it
    shares = json.loads(rows(path, f"SELECT variables FROM message WHERE event_id = '{call.id}'")[0][0])
    assert shares == {b.id: b.variables, a.id: a.variables}
    body_schema(LEG_CLASSIFIED).validate(json.loads(messages[a.id]))


def test_the_bound_counts_from_the_first_wait_across_a_restart(
        tmp_path: Path, opened: list[OutboxWriter]) -> None:
    path, clock = tmp_path / "outbox.sqlite3", Clock()
    b, a = legs_of("uas_486")
    first = writer_at(path, opened, clock, wait_s=100.0)
    first.put([b])
    first.close(deadline_s=1.0)
    clock.now += 90  # down for 90 s: 10 s of the bound left
    second = writer_at(path, opened, clock, wait_s=100.0)
    completed: list[calls.Call] = []
    second.on_calls = completed.extend
    with gevent.Timeout(5):
        while second.grouper.next_expiry() is None:  # the restore runs as the commit loop starts
            gevent.sleep(0.01)
    assert second.grouper.next_expiry() == 1_000.0
    clock.now += 10
    second._wake.set()

    with gevent.Timeout(5):
        while not completed:
            gevent.sleep(0.01)
    (call,) = completed
    assert call.document["complete"] is False
    assert call.document["missing_legs"] == [a.unique_id]
    assert rows(path, "SELECT count(*) FROM call_wait") == [(0,)]
    assert rows(path, f"SELECT count(*) FROM message WHERE event_id = '{call.id}'") == [(1,)]
    second.close(deadline_s=1.0)
    third = writer_at(path, opened, clock, wait_s=100.0)  # a restart: the completed call is not in memory
    late = third.put([a])  # the caller's leg after the bound: a leg only, told by the record of legs taken
    assert getattr(late, "calls", ()) == ()
    assert third.grouper.open_calls == 0
    assert rows(path, "SELECT count(*) FROM call_wait") == [(0,)]


def test_a_row_stored_before_the_envelope_is_sent_enveloped_as_a_leg() -> None:
    old = {"schema_version": 1, "id": "x", "status": "busy", "ended_at": "2026-11-26T21:33:17.672Z"}
    sent = json.loads(request_body(orjson.dumps(old).decode()))
    assert sent == {"type": LEG_CLASSIFIED, "timestamp": old["ended_at"], "data": old}


def test_each_endpoint_gets_its_own_share_of_the_variables() -> None:
    stored = orjson.dumps(document.envelope(LEG_CLASSIFIED, {"id": "x", "ended_at": None}, 0.0)).decode()
    kept = orjson.dumps({"sip_call_id": "abc", "cc_queue": "q1", "sip_from_user": "5551000"}).decode()
    assert request_body(stored, kept) == stored  # no variables asked for: the stored bytes as they are
    mine = json.loads(request_body(stored, kept, Selection(("cc_*", "sip_call_id"))))
    assert mine["data"]["variables"] == {"cc_queue": "q1", "sip_call_id": "abc"}
    capped = json.loads(request_body(stored, kept, Selection(("cc_*", "sip_call_id")), max_bytes=20))
    assert capped["data"]["variables"] == {"cc_queue": "q1"}
    assert capped["data"]["variables_truncated"] is True
    call = orjson.dumps(document.envelope(CALL_COMPLETED, {"id": "c", "legs": [{"id": "l1"}, {"id": "l2"}]},
                                          0.0)).decode()
    shares = orjson.dumps({"l1": {"sip_call_id": "abc"}}).decode()
    legs = json.loads(request_body(call, shares, Selection(("sip_call_id",))))["data"]["legs"]
    assert [leg["variables"] for leg in legs] == [{"sip_call_id": "abc"}, {}]


@pytest.mark.parametrize(("table", "problem"), [
    ({"webhooks": [{"url": "http://h/", "secret": "whsec_" + "A" * 32, "types": ["call.done"]}]},
     "webhooks[0].types"),
    ({"webhooks": [{"url": "http://h/", "secret": "whsec_" + "A" * 32, "types": []}]}, "webhooks[0].types"),
    ({"calls": {"wait_hours": 0}}, "calls.wait_hours"),
    ({"calls": {"wait": 1}}, "calls.wait"),
])
def test_a_bad_calls_or_types_setting_names_its_key(table: dict[str, Any], problem: str) -> None:
    with pytest.raises(ConfigError) as raised:
        loader.from_mapping(table, environ={})
    assert any(p.startswith(problem) for p in raised.value.problems), raised.value.problems


def test_types_default_to_both_and_wait_hours_to_four() -> None:
    hook = {"url": "http://h/", "secret": "whsec_" + "A" * 32}
    config = loader.from_mapping({"webhooks": [hook]}, environ={})
    assert config.webhooks[0].types == {LEG_CLASSIFIED, CALL_COMPLETED}
    assert config.calls.wait_s == 4 * 3600.0


def test_classify_calls_prints_one_call_a_line() -> None:
    folder = FIXTURES / "forked_ring_one_answers"
    done = subprocess.run([sys.executable, "-m", "listener", "classify", "--calls",
                           str(folder / "hangup_complete.plain.txt"), str(FIXTURES / "uas_486" /
                                                                           "hangup_complete.json.txt")],
                          capture_output=True, text=True, check=False, timeout=60)
    assert done.returncode == 0, done.stderr
    documents = [json.loads(line) for line in done.stdout.splitlines()]
    assert [(d["status"], len(d["legs"]), d["complete"]) for d in documents] == [("ended", 3, True),
                                                                                   ("busy", 2, True)]
    callee = next(iter(split_frames((FIXTURES / "uas_486" / "hangup_complete.plain.txt").read_bytes())))
    one_leg = subprocess.run([sys.executable, "-m", "listener", "classify", "--calls"], input=callee.decode(),
                             capture_output=True, text=True, check=False, timeout=60)
    (incomplete,) = [json.loads(line) for line in one_leg.stdout.splitlines()]
    assert incomplete["complete"] is False
    assert len(incomplete["missing_legs"]) == 1


def _json_block_after(text: str, heading: str) -> dict[str, Any]:
    start = text.index("```json\n", text.index(heading)) + len("```json\n")
    return dict(json.loads(text[start:text.index("```", start)]))


def test_the_examples_in_docs_payload_are_what_classify_prints() -> None:
    text = (Path(__file__).parent.parent / "docs" / "payload.md").read_text()
    plain = str(FIXTURES / "uas_486" / "hangup_complete.plain.txt")

    def classify(*extra: str) -> list[dict[str, Any]]:
        done = subprocess.run([sys.executable, "-m", "listener", "classify", "--node", "pbx1", *extra, plain],
                              capture_output=True, text=True, check=True, timeout=60)
        return [json.loads(line) for line in done.stdout.splitlines()]

    leg = _json_block_after(text, "## `leg.classified`")
    assert leg in classify()
    call = _json_block_after(text, "## `call.completed`")
    (printed,) = classify("--calls")
    shown, legs = call.pop("legs"), printed.pop("legs")
    assert [(d["id"], d["leg"]) for d in shown] == [(d["id"], d["leg"]) for d in legs]
    assert call == printed
