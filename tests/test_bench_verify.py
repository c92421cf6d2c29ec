"""The bench's verifier reads Standard Webhooks envelopes (and bare leg documents) and checks legs and calls.

Each leg once as its document, each call once with exactly the legs of its copy; what is off is
counted where a run's results show it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import io
import json
from functools import cache
from pathlib import Path
from typing import Any

import pytest

from bench.corpus import Corpus, Expected
from bench.receiver import Tally
from bench.verify import KEY, check_webhooks

STOP = 7  # three whole calls: 2 + 2 + 1 legs, then the first 2 of a 3-leg call (not whole)
CALLS = [(0, 0), (0, 1), (0, 2)]


@cache
def expected() -> Expected:
    return Expected(Corpus(0xC0FFEE))


def request(webhook_id: str, body: dict[str, Any], *, arrival: float = 1.0, key: bytes = KEY) -> bytes:
    """One line of the receiver's record, signed as the daemon signs."""
    text, stamp = json.dumps(body, separators=(",", ":")).encode(), b"1796000000"
    mac = hmac.new(key, webhook_id.encode() + b"." + stamp + b"." + text, hashlib.sha256).digest()
    return b"%.6f %s %s v1,%s %s\n" % (arrival, webhook_id.encode(), stamp, base64.b64encode(mac), text)


def leg(i: int, *, bare: bool = False, **changes: Any) -> bytes:
    document = expected().document(i)
    envelope = {"type": "leg.classified", "timestamp": document["ended_at"], "data": document, **changes}
    return request(document["id"], document if bare else envelope, arrival=float(i))


def call(copy: int, number: int, legs: list[int] | None = None) -> bytes:
    c = expected().corpus
    legs = legs if legs is not None else [c.event(copy, number, n) for n in range(c.calls[number].legs)]
    documents = [expected().document(i) for i in legs]
    ended = max(d["ended_at"] for d in documents)
    data = {"id": f"call-{copy}-{number}", "ended_at": ended, "legs": documents}
    return request(data["id"], {"type": "call.completed", "timestamp": ended, "data": data})


def checked(tmp_path: Path, lines: list[bytes]) -> dict[str, dict[str, int | bool]]:
    record = tmp_path / "webhooks.txt"
    record.write_bytes(b"".join(lines))
    return check_webhooks(record, expected(), 0, STOP).summaries()


def test_envelopes_of_every_leg_and_every_whole_call_verify(tmp_path: Path) -> None:
    result = checked(tmp_path, [*map(leg, range(STOP)), *(call(*c) for c in CALLS)])
    assert result["webhooks"] == {"expected": STOP, "seen": STOP, "duplicates": 0, "missing": 0, "wrong": 0,
                                  "bad_signatures": 0, "ok": True}
    assert result["calls"] == {"expected": 3, "seen": 3, "duplicates": 0, "missing": 0, "wrong": 0,
                               "bad_signatures": 0, "ok": True}


def test_bare_leg_documents_from_a_daemon_before_the_envelope_verify_and_no_call_is_asked_for(
        tmp_path: Path) -> None:
    result = checked(tmp_path, [leg(i, bare=True) for i in range(STOP)])
    assert result["webhooks"]["ok"] is True
    assert result["webhooks"]["seen"] == STOP
    assert "calls" not in result


def test_a_leg_delivered_twice_is_counted_as_a_duplicate_and_one_never_delivered_as_missing(
        tmp_path: Path) -> None:
    result = checked(tmp_path, [leg(0), leg(0), *map(leg, range(2, STOP))])
    assert result["webhooks"]["duplicates"] == 1
    assert result["webhooks"]["missing"] == 1
    assert result["webhooks"]["ok"] is False


@pytest.mark.parametrize("changes", [{"timestamp": "2026-01-01T00:00:00Z"}, {"type": "leg.updated"}])
def test_a_leg_envelope_with_another_timestamp_or_type_is_wrong(tmp_path: Path,
                                                                 changes: dict[str, str]) -> None:
    result = checked(tmp_path, [leg(0, **changes), *map(leg, range(1, STOP))])
    assert result["webhooks"]["wrong"] == 1


def test_a_leg_whose_document_differs_or_whose_signature_fails_is_flagged(tmp_path: Path) -> None:
    document = expected().document(1)
    altered = {**document, "status": "not-this"}
    lines = [leg(0), request(document["id"], {"type": "leg.classified", "timestamp": document["ended_at"],
                                              "data": altered}),
             *map(leg, range(2, STOP)), request("x", {"no": "envelope"}, key=b"another key")]
    result = checked(tmp_path, lines)
    assert result["webhooks"]["wrong"] == 2
    assert result["webhooks"]["bad_signatures"] == 1


def test_a_call_with_a_leg_of_another_copy_or_a_leg_missing_is_wrong(tmp_path: Path) -> None:
    c = expected().corpus
    other_copy = [c.event(0, 0, 0), c.event(1, 0, 1)]
    one_leg_short = [c.event(0, 1, 0)]
    result = checked(tmp_path, [*map(leg, range(STOP)), call(0, 0, other_copy), call(0, 1, one_leg_short),
                                call(0, 2)])
    assert result["calls"]["wrong"] == 2
    assert result["calls"]["ok"] is False


def test_a_call_sent_twice_is_a_duplicate_one_never_sent_is_missing_one_not_whole_is_wrong(
        tmp_path: Path) -> None:
    result = checked(tmp_path, [*map(leg, range(STOP)), call(0, 0), call(0, 0), call(0, 3)])
    assert result["calls"]["duplicates"] == 1
    assert result["calls"]["missing"] == 2  # (0, 1) and (0, 2)
    assert result["calls"]["wrong"] == 1  # (0, 3): only two of its three legs were sent


def test_a_body_that_is_not_json_is_counted_wrong_not_raised(tmp_path: Path) -> None:
    line = request("x", {})
    broken = line.rsplit(b" ", 1)[0] + b" {not json\n"
    result = checked(tmp_path, [*map(leg, range(STOP)), broken])
    assert result["webhooks"]["wrong"] == 1


def test_the_receiver_counts_legs_and_calls_apart(capsys: pytest.CaptureFixture[str]) -> None:
    tally = Tally(io.BytesIO())
    tally.wait_for(tally.ids, 2)
    tally.record({b"webhook-id": b"a"}, b'{"type":"leg.classified","data":{}}')
    tally.record({b"webhook-id": b"c"}, b'{"type":"call.completed","data":{}}')
    assert capsys.readouterr().out == ""  # one leg and one call are not two legs
    tally.record({b"webhook-id": b"b"}, b'{"channel_uuid":"bare"}')
    assert json.loads(capsys.readouterr().out) | {"last": 0} == {"unique": 2, "calls": 1, "requests": 3,
                                                                   "last": 0}
    tally.wait_for(tally.call_ids, 1)
    assert json.loads(capsys.readouterr().out)["calls"] == 1
