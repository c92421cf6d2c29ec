"""Every hangup gets its own document id: from Core-UUID and Unique-ID, else from its content.

The id is the webhook's ``webhook-id``, the receiver's idempotency key: two different hangups that
shared one would lose the second downstream.
"""

from __future__ import annotations

import hashlib
import json
import uuid

import structlog
from structlog.testing import capture_logs

from listener.config.settings import Node
from listener.core import document as payload
from listener.core.classifier import default_classifier
from listener.core.event import HangupEvent
from listener.core.frame import Frame
from listener.pipeline import Pipeline
from tests.fakeesl import Collect, capture_bodies

PLAIN = "text/event-plain"
JSON = "text/event-json"


def without(body: bytes, *names: str) -> bytes:
    """A plain event body with the named header lines left out."""
    prefixes = tuple(name.encode() + b": " for name in names)
    return b"\n".join(line for line in body.split(b"\n") if not line.startswith(prefixes))


def json_without(body: bytes, *names: str) -> bytes:
    obj = json.loads(body)
    for name in names:
        obj.pop(name, None)
    return json.dumps(obj).encode()


def document(body: bytes, content_type: str = PLAIN) -> dict[str, object]:
    pipeline = Pipeline(Node(name="lab"), default_classifier(), log=None)
    parse = HangupEvent.from_plain if content_type == PLAIN else HangupEvent.from_json
    return pipeline.document(parse(body))


def test_two_hangups_without_unique_id_get_different_ids() -> None:
    a, b = (without(body, "Unique-ID", "Caller-Unique-ID") for body in capture_bodies("uas_486"))
    first, second = document(a), document(b)
    assert first["channel_uuid"] == second["channel_uuid"] == ""
    assert first["id"] != second["id"]


def test_two_json_hangups_without_unique_id_get_different_ids() -> None:
    bodies = capture_bodies("uas_486", "hangup_complete.json.txt")
    a, b = (json_without(body, "Unique-ID", "Caller-Unique-ID") for body in bodies)
    assert document(a, JSON)["id"] != document(b, JSON)["id"]


def test_the_same_bytes_give_the_same_content_id_and_one_byte_more_another() -> None:
    body = without(capture_bodies("uas_603")[0], "Unique-ID", "Caller-Unique-ID")
    assert document(body)["id"] == document(bytes(body))["id"]
    changed = body.replace(b"Event-Sequence: ", b"Event-Sequence: 1")
    assert document(changed)["id"] != document(body)["id"]


def test_a_content_id_is_a_uuid5_of_the_body_digest_as_documented() -> None:
    body = without(capture_bodies("uas_603")[0], "Unique-ID", "Caller-Unique-ID")
    digest = payload.content_digest(body)
    assert digest == hashlib.sha256(body).hexdigest()
    expected = str(uuid.uuid5(payload.ID_NAMESPACE, f"sha256:{digest}"))
    assert document(body)["id"] == payload.content_id(digest) == expected


def test_a_hangup_with_a_unique_id_but_no_core_uuid_gets_a_content_id() -> None:
    # An application may choose a channel's uuid (origination_uuid) and use it again: without the
    # Core-UUID nothing tells two such channels apart, so the content decides.
    a = without(capture_bodies("uas_486")[0], "Core-UUID")
    same_uid = a.replace(b"Event-Sequence: ", b"Event-Sequence: 1")
    first, second = document(a), document(same_uid)
    assert first["channel_uuid"] == second["channel_uuid"] != ""
    assert first["id"] != second["id"]
    assert first["id"] != payload.document_id("", str(first["channel_uuid"]))


def test_an_event_built_from_headers_gets_a_content_id_from_its_headers() -> None:
    headers = {"Event-Name": "CHANNEL_HANGUP_COMPLETE", "Hangup-Cause": "NORMAL_CLEARING"}
    one = HangupEvent.from_headers(headers)
    other = HangupEvent.from_headers({**headers, "Hangup-Cause": "USER_BUSY"})
    assert payload.event_id(one) == payload.event_id(HangupEvent.from_headers(dict(headers)))
    assert payload.event_id(one) != payload.event_id(other)


def test_the_pipeline_stores_two_hangups_without_unique_id_as_two_documents() -> None:
    bodies = [without(body, "Unique-ID", "Caller-Unique-ID") for body in capture_bodies("uas_486")]
    store = Collect()
    pipeline = Pipeline(Node("lab"), default_classifier(), structlog.get_logger(), store=store)
    with capture_logs():
        pipeline([Frame({"Content-Type": PLAIN}, body) for body in bodies])
    ids = {d["id"] for d in store.take(2)}
    assert len(ids) == 2
