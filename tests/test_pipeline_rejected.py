"""A frame that held no usable event is accounted for: kept in the outbox, or written in its line.

With webhooks (an outbox) it goes to the outbox's ``rejected`` table; without, the
``esl.event_rejected`` line is the only record and carries the body, unless number masking is on.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
import structlog
from structlog.testing import capture_logs

from listener.config.settings import Node, OutboxConfig
from listener.core import document as payload
from listener.core.classifier import default_classifier
from listener.core.errors import OutboxError
from listener.core.frame import Frame
from listener.core.privacy import Redactor
from listener.core.rejection import Rejection
from listener.outbox.writer import OutboxWriter
from listener.pipeline import Pipeline
from tests.fakeesl import capture_bodies

JSON = "text/event-json"


def cut_short() -> list[bytes]:
    """Real CHANNEL_HANGUP_COMPLETE JSON bodies cut 40 bytes short: not JSON any more."""
    return [body[:-40] for body in capture_bodies("uas_486", "hangup_complete.json.txt")]


def rejection(body: bytes, node: str = "pbx1", reason: str = "event-json body is not JSON") -> Rejection:
    return Rejection.of(Frame({"Content-Type": JSON}, body), node, reason)


# -- the pipeline ------------------------------------------------------------------------------


@pytest.fixture
def writer(tmp_path: Path) -> Iterator[OutboxWriter]:
    w = OutboxWriter.open(OutboxConfig(tmp_path / "outbox.sqlite3"), [], clock=lambda: 1800.0)
    yield w
    w.close()


def rejected_lines(logs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in logs if e["event"] == "esl.event_rejected"]


def test_with_an_outbox_a_rejected_frame_is_kept_and_its_line_names_id_size_and_node(
    writer: OutboxWriter,
) -> None:
    bodies = cut_short()
    pipeline = Pipeline(Node("lab"), default_classifier(), structlog.get_logger(), store=writer)
    with capture_logs() as logs:
        tally = pipeline([Frame({"Content-Type": JSON}, body) for body in bodies])
    assert tally.rejected == 2
    lines = rejected_lines(logs)
    ids = [payload.content_id(hashlib.sha256(b).hexdigest()) for b in bodies]
    assert [(e["id"], e["size"], e["node"], e["kept"]) for e in lines] == [
        (ids[0], len(bodies[0]), "lab", "outbox"), (ids[1], len(bodies[1]), "lab", "outbox")]
    assert all("body" not in e and e["rejected_dropped"] == 0 for e in lines)
    assert lines[0]["reason"].startswith("event-json body is not JSON")
    stored = writer.call(writer.outbox.rejected, ids=ids, bodies=True)
    assert {r.id: (r.body, r.node, r.received_at) for r in stored} == {
        ids[0]: (bodies[0], "lab", 1800.0), ids[1]: (bodies[1], "lab", 1800.0)}


def test_without_an_outbox_the_rejected_line_carries_the_body_capped_at_64_kib() -> None:
    short, = cut_short()[:1]
    big = short * 9  # ~75 KB, still not JSON
    pipeline = Pipeline(Node("lab"), default_classifier(), structlog.get_logger())
    with capture_logs() as logs:
        pipeline([Frame({"Content-Type": JSON}, short), Frame({"Content-Type": JSON}, big)])
    first, second = rejected_lines(logs)
    assert (first["body"], first["kept"], first["size"]) == (short.decode(), "log", len(short))
    assert "body_truncated" not in first
    assert second["body"] == big[:65536].decode("utf-8", "replace")
    assert (second["body_truncated"], second["size"]) == (True, len(big))


@pytest.mark.parametrize("mode", ["mask", "hash"])
def test_with_number_masking_on_the_rejected_line_withholds_the_body(mode: str) -> None:
    pipeline = Pipeline(Node("lab"), default_classifier(), structlog.get_logger(),
                        redact=Redactor(mode, "key"))
    with capture_logs() as logs:
        pipeline([Frame({"Content-Type": JSON}, cut_short()[0])])
    (line,) = rejected_lines(logs)
    assert "body" not in line
    assert line["body_withheld"] == "masking on"
    assert line["id"] == payload.content_id(hashlib.sha256(cut_short()[0]).hexdigest())


class FullDisk:
    """An outbox writer whose disk filled up."""

    def put(self, documents: Sequence[Mapping[str, Any]]) -> frozenset[str]:
        raise OutboxError("outbox put failed: database or disk is full", "SQLITE_FULL")

    def reject(self, rejection: Rejection) -> int:
        raise OutboxError("outbox reject failed: database or disk is full", "SQLITE_FULL")


def test_a_rejected_frame_the_outbox_cannot_take_is_logged_with_its_body_and_reported() -> None:
    failures: list[OutboxError] = []
    pipeline = Pipeline(Node("lab"), default_classifier(), structlog.get_logger(), store=FullDisk(),
                        on_outbox_failure=failures.append)
    body = cut_short()[0]
    with capture_logs() as logs:
        pipeline([Frame({"Content-Type": JSON}, body)])
    (line,) = rejected_lines(logs)
    assert (line["body"], line["kept"]) == (body.decode(), "log")
    assert "disk is full" in line["outbox_error"]
    assert [f.code for f in failures] == ["SQLITE_FULL"]


