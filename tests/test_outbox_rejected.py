"""The outbox's ``rejected`` table: frames that held no usable event, kept whole and bounded.

A version-1 file gains the table on open; ``outbox list --rejected`` shows the rows and prints a
body by its id.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from listener.config.settings import OutboxConfig
from listener.core import document as payload
from listener.core.frame import Frame
from listener.core.rejection import Rejection
from listener.outbox.commands import add_outbox_parser, run_outbox_command
from listener.outbox.store import SCHEMA_VERSION, Outbox
from tests.fakeesl import capture_bodies

JSON = "text/event-json"

#: The schema text of version 1 as 0.2.0 wrote it (listener/outbox/store.py at f23e8a6).
V1_SCHEMA = """
CREATE TABLE IF NOT EXISTS message (
    id INTEGER PRIMARY KEY,
    event_id TEXT NOT NULL UNIQUE,
    body TEXT NOT NULL,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS delivery (
    id INTEGER PRIMARY KEY,
    message INTEGER NOT NULL REFERENCES message(id),
    endpoint TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'dead')),
    attempts INTEGER NOT NULL DEFAULT 0,
    next_at REAL NOT NULL,
    last_error TEXT NOT NULL DEFAULT '',
    updated_at REAL NOT NULL,
    UNIQUE (message, endpoint)
);
CREATE INDEX IF NOT EXISTS delivery_due ON delivery (endpoint, state, next_at);
CREATE TRIGGER IF NOT EXISTS message_done AFTER DELETE ON delivery
WHEN NOT EXISTS (SELECT 1 FROM delivery WHERE message = OLD.message)
BEGIN DELETE FROM message WHERE id = OLD.message; END;
"""


def cut_short() -> list[bytes]:
    """Real CHANNEL_HANGUP_COMPLETE JSON bodies cut 40 bytes short: not JSON any more."""
    return [body[:-40] for body in capture_bodies("uas_486", "hangup_complete.json.txt")]


def rejection(body: bytes, node: str = "pbx1", reason: str = "event-json body is not JSON") -> Rejection:
    return Rejection.of(Frame({"Content-Type": JSON}, body), node, reason)


@pytest.fixture
def outbox(tmp_path: Path) -> Iterator[Outbox]:
    box = Outbox.open(tmp_path / "outbox.sqlite3")
    yield box
    box.close()


# -- the store ---------------------------------------------------------------------------------


def test_a_version_1_outbox_with_pending_rows_opens_keeps_them_and_gains_the_rejected_table(
    tmp_path: Path,
) -> None:
    path = tmp_path / "outbox.sqlite3"
    db = sqlite3.connect(path, isolation_level=None)
    db.executescript(f"BEGIN IMMEDIATE; {V1_SCHEMA} PRAGMA user_version=1; COMMIT;")
    db.execute("INSERT INTO message (event_id, body, created_at) VALUES ('e1', '{\"id\":\"e1\"}', 10.0)")
    db.execute("INSERT INTO delivery (message, endpoint, next_at, updated_at) VALUES (1, 'crm', 10.0, 10.0)")
    db.close()
    box = Outbox.open(path)
    assert [(d.event_id, d.body) for d in box.due("crm", 10.0, 10)] == [("e1", '{"id":"e1"}')]
    assert box._db.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
    kept = rejection(cut_short()[0])
    assert box.reject([kept], now=11.0) == 0
    assert [r.id for r in box.rejected()] == [kept.id]
    box.close()


def test_reject_keeps_the_frame_byte_for_byte_with_its_reason_node_and_time(outbox: Outbox) -> None:
    body = cut_short()[0] + b"\xff\xfe not utf-8"
    kept = rejection(body, node="pbx2", reason="event-json body is not JSON: unexpected end")
    outbox.reject([kept], now=1234.5)
    (listed,) = outbox.rejected()
    assert (listed.id, listed.node, listed.reason, listed.content_type, listed.size, listed.received_at) == (
        kept.id, "pbx2", "event-json body is not JSON: unexpected end", JSON, len(body), 1234.5)
    assert listed.digest == hashlib.sha256(body).hexdigest()
    assert listed.body == b""  # a listing leaves the bodies out
    (read,) = outbox.rejected(ids=[kept.id], bodies=True)
    assert read.body == body


def test_the_rejected_table_keeps_the_newest_rows_and_counts_the_ones_dropped(outbox: Outbox) -> None:
    kept = [rejection(f"garbage {i}".encode()) for i in range(5)]
    dropped = [outbox.reject([k], now=float(i), max_rows=3) for i, k in enumerate(kept)]
    assert dropped == [0, 0, 0, 1, 1]
    assert [r.id for r in outbox.rejected()] == [k.id for k in reversed(kept[2:])]  # newest first


def test_the_rejected_table_keeps_within_its_byte_budget_but_always_the_newest(outbox: Outbox) -> None:
    small = [rejection(bytes([65 + i]) * 60) for i in range(3)]
    assert [outbox.reject([k], now=1.0, max_bytes=130) for k in small] == [0, 0, 1]
    assert [r.id for r in outbox.rejected()] == [small[2].id, small[1].id]
    huge = rejection(b"x" * 500)
    assert outbox.reject([huge], now=2.0, max_bytes=130) == 2
    assert [r.id for r in outbox.rejected()] == [huge.id]


def test_the_same_bytes_rejected_twice_are_kept_once(outbox: Outbox) -> None:
    body = cut_short()[0]
    outbox.reject([rejection(body, node="a")], now=1.0)
    outbox.reject([rejection(body, node="b")], now=2.0)
    assert [(r.node, r.received_at) for r in outbox.rejected()] == [("a", 1.0)]


def test_a_rejected_frame_is_named_by_the_id_of_its_content() -> None:
    body = cut_short()[0]
    kept = rejection(body)
    assert kept.digest == hashlib.sha256(body).hexdigest()
    assert kept.id == payload.content_id(kept.digest)
    assert rejection(cut_short()[1]).id != kept.id


# -- the operator's command --------------------------------------------------------------------


def run(config: OutboxConfig, *argv: str, out: Any = None) -> tuple[int, str, str]:
    parser = argparse.ArgumentParser(prog="hangup-listener")
    add_outbox_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["outbox", *argv])
    out, err = out or io.StringIO(), io.StringIO()
    code = run_outbox_command(args, config, out=out, err=err, now=lambda: 4600.0)
    return code, out.getvalue() if isinstance(out, io.StringIO) else "", err.getvalue()


@pytest.fixture
def config(tmp_path: Path) -> OutboxConfig:
    box = Outbox.open(tmp_path / "outbox.sqlite3")
    for i, body in enumerate(cut_short()):
        box.reject([rejection(body, node=f"pbx{i}")], now=1000.0 + i)
    box.close()
    return OutboxConfig(tmp_path / "outbox.sqlite3")


def test_list_rejected_shows_id_time_node_reason_type_and_size_newest_first(config: OutboxConfig) -> None:
    bodies = cut_short()
    code, out, _ = run(config, "list", "--rejected", "--json")
    rows = [json.loads(line) for line in out.splitlines()]
    assert code == 0
    assert [(r["id"], r["node"], r["size"], r["content_type"]) for r in rows] == [
        (rejection(bodies[1]).id, "pbx1", len(bodies[1]), JSON),
        (rejection(bodies[0]).id, "pbx0", len(bodies[0]), JSON)]
    assert rows[1]["received_at"] == "1970-01-01T00:16:40+00:00"
    assert rows[1]["reason"] == "event-json body is not JSON"
    _, out, _ = run(config, "list", "--rejected", "--limit", "1")
    header, row = out.splitlines()
    assert header.split() == ["id", "received_at", "node", "content_type", "size", "reason"]
    assert row.split()[:3] == [rejection(bodies[1]).id, "1970-01-01T00:16:41+00:00", "pbx1"]


def test_list_rejected_with_an_id_prints_the_body_as_received(config: OutboxConfig) -> None:
    body = cut_short()[0]
    raw = io.TextIOWrapper(io.BytesIO(), encoding="utf-8")
    code, _, _ = run(config, "list", "--rejected", "--id", rejection(body).id, out=raw)
    raw.flush()
    assert code == 0
    assert raw.buffer.getvalue() == body  # type: ignore[attr-defined]
    _, out, _ = run(config, "list", "--rejected", "--id", rejection(body).id, "--json")
    assert json.loads(out)["body"] == body.decode()


def test_list_rejected_with_an_unknown_id_says_so(config: OutboxConfig) -> None:
    code, out, err = run(config, "list", "--rejected", "--id", "nope")
    assert (code, out) == (66, "")
    assert "no rejected frame nope" in err


def test_list_rejected_refuses_delivery_filters(config: OutboxConfig) -> None:
    code, _, err = run(config, "list", "--rejected", "--endpoint", "crm")
    assert code == 64
    assert "--rejected" in err
