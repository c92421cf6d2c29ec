"""Numbers and the caller's name in every line that carries a call: shown, masked or keyed-hashed;
other fields untouched."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import structlog
from structlog.testing import capture_logs

from listener.config.settings import Node
from listener.core.classifier import default_classifier
from listener.core.errors import OutboxError
from listener.core.frame import Frame
from listener.core.privacy import Redactor, keyed_hash, mask
from listener.pipeline import Pipeline
from tests.fakeesl import capture_bodies

DOCUMENT = {"caller_number": "+4930123456", "destination_number": "1001", "caller_name": "Alice",
            "status": "busy"}
KEY = "0123456789abcdef-key"


def test_none_returns_the_document_itself() -> None:
    assert Redactor()(DOCUMENT) is DOCUMENT


def test_mask_keeps_the_length_and_the_last_two_characters() -> None:
    redacted = Redactor("mask")(DOCUMENT)
    assert redacted["caller_number"] == "*********56"
    assert redacted["destination_number"] == "**01"
    assert redacted["caller_name"] == "***ce"  # often the number itself: masked like one
    assert redacted["status"] == "busy"
    assert DOCUMENT["caller_number"] == "+4930123456"  # the sink's document is untouched
    assert mask("7") == "7"


def test_hash_is_stable_per_key_and_hides_the_number() -> None:
    redacted = Redactor("hash", KEY)(DOCUMENT)
    token = redacted["caller_number"]
    assert token == keyed_hash("+4930123456", KEY)
    assert token.startswith("h:")
    assert len(token) == 18
    assert "30123456" not in token
    assert keyed_hash("+4930123456", KEY + "x") != token


def test_empty_or_missing_numbers_stay_as_they_are() -> None:
    redact = Redactor("mask")
    assert redact({"caller_number": "", "destination_number": None}) == {
        "caller_number": "", "destination_number": None}


def test_the_log_line_is_masked_the_sink_keeps_the_numbers() -> None:
    class Keep:
        def __init__(self) -> None:
            self.documents: list[dict[str, object]] = []

        def put(self, documents: Sequence[Mapping[str, object]]) -> frozenset[str]:
            self.documents += (dict(getattr(d, "document", d)) for d in documents)
            return frozenset()

    sink = Keep()
    with capture_logs() as logs:
        pipeline = Pipeline(Node("lab"), default_classifier(), structlog.get_logger(), store=sink,
                            redact=Redactor("mask"))
        pipeline([Frame({"Content-Type": "text/event-plain"}, capture_bodies("uas_486")[0])])
    assert sink.documents[0]["caller_number"] == "5551000"
    assert logs[0]["leg"]["caller_number"] == "*****00"


def test_a_call_the_outbox_could_not_store_is_logged_masked_too() -> None:
    class Full:
        def put(self, documents: Sequence[Mapping[str, object]]) -> frozenset[str]:
            raise OutboxError("outbox put failed: database or disk is full", "SQLITE_FULL")

    body = capture_bodies("uas_486")[0]
    with capture_logs() as logs:
        pipeline = Pipeline(Node("lab"), default_classifier(), structlog.get_logger(), store=Full(),
                            redact=Redactor("mask"))
        pipeline([Frame({"Content-Type": "text/event-plain"}, body)])
    (failed,) = [e for e in logs if e["event"] == "outbox.write_failed"]
    call = failed["leg"]
    assert call["caller_number"] == "*****00"
    assert call["destination_number"].startswith("*")
    assert set(call["caller_name"]) <= {"*"} | set(call["caller_name"][-2:])
    assert call["status"] == "busy"
    assert b"5551000" not in repr(logs).encode()


def test_hash_hides_the_callers_name_too() -> None:
    redacted = Redactor("hash", KEY)(DOCUMENT)
    assert redacted["caller_name"] == keyed_hash("Alice", KEY)
