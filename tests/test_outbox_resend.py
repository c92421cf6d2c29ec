"""Delivered messages kept for ``[outbox] keep_delivered_hours``: the setting, the writer's pruning,
and ``hangup-listener outbox resend`` called as the CLI calls it, on a real file."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from listener.config import loader
from listener.config.settings import OutboxConfig
from listener.core.errors import ConfigError
from listener.outbox.store import BATCH, DELIVERED, Entry, Outbox
from listener.outbox.writer import OutboxWriter
from tests.test_outbox_cli import run as run_outbox

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC).timestamp()


def iso(offset_s: float) -> str:
    return datetime.fromtimestamp(T0 + offset_s, UTC).isoformat()


# -- the setting -------------------------------------------------------------------------------


def outbox_config(tmp_path: Path, table: str) -> OutboxConfig:
    path = tmp_path / "listener.toml"
    path.write_text(f"[outbox]\n{table}\n")
    return loader.load(path, environ={}).outbox


def test_delivered_messages_are_kept_a_day_by_default_and_zero_means_not_at_all(tmp_path: Path) -> None:
    assert outbox_config(tmp_path, "").keep_delivered_s == 86400.0
    assert outbox_config(tmp_path, "keep_delivered_hours = 0").keep_delivered_s == 0.0
    assert outbox_config(tmp_path, "keep_delivered_hours = 1.5").keep_delivered_s == 5400.0


@pytest.mark.parametrize("value", ["-1", "169", '"24"'])
def test_a_negative_huge_or_non_numeric_keep_delivered_is_refused_with_its_path(
    tmp_path: Path, value: str,
) -> None:
    with pytest.raises(ConfigError) as raised:
        outbox_config(tmp_path, f"keep_delivered_hours = {value}")
    assert any("outbox.keep_delivered_hours" in p for p in raised.value.problems)


# -- the writer --------------------------------------------------------------------------------


@pytest.fixture
def made() -> Iterator[list[OutboxWriter]]:
    writers: list[OutboxWriter] = []
    yield writers
    for writer in writers:
        writer.close(deadline_s=0.5)


def test_the_writer_prunes_delivered_rows_older_than_keep_delivered_in_batches(
    tmp_path: Path, made: list[OutboxWriter],
) -> None:
    outbox = Outbox.open(tmp_path / "outbox.sqlite3")
    clock = [T0]
    writer = OutboxWriter(outbox, [], clock=lambda: clock[0], keep_delivered_s=3600.0, forget_every_s=1e9)
    made.append(writer)
    outbox.put([Entry(f"e{i}", "{}", ("crm",)) for i in range(BATCH + 5)], now=T0)
    rows = outbox.due("crm", T0, BATCH + 5)
    outbox.settle([r.id for r in rows[:BATCH + 1]], [], [], now=T0)
    outbox.settle([r.id for r in rows[BATCH + 1:BATCH + 3]], [], [], now=T0 + 1800.0)
    clock[0] = T0 + 3601.0
    assert writer.prune_delivered() == BATCH + 1
    assert [d.event_id for d in outbox.list(state=DELIVERED)] == [f"e{BATCH + 1}", f"e{BATCH + 2}"]
    assert len(outbox.due("crm", T0, 10)) == 2  # pending ones are never pruned


def test_with_keep_delivered_zero_an_ack_deletes_the_row_at_once(
    tmp_path: Path, made: list[OutboxWriter],
) -> None:
    outbox = Outbox.open(tmp_path / "outbox.sqlite3")
    made.append(OutboxWriter(outbox, [], keep_delivered_s=0.0, forget_every_s=1e9))
    outbox.put([Entry("e1", "{}", ("crm",))], now=T0)
    outbox.settle([outbox.due("crm", T0, 1)[0].id], [], [], now=T0)
    assert outbox.list(state=DELIVERED) == ()
    assert outbox._db.execute("SELECT count(*) FROM message").fetchone() == (0,)


# -- the command -------------------------------------------------------------------------------


@pytest.fixture
def config(tmp_path: Path) -> OutboxConfig:
    """e0..e3 to crm and billing: delivered at T0 + 60 s * n; billing's e3 is dead, crm's e3 pending."""
    box = Outbox.open(tmp_path / "outbox.sqlite3")
    box.put([Entry(f"e{i}", "{}", ("crm", "billing")) for i in range(4)], now=T0)
    for n, endpoint in enumerate(("crm", "billing")):
        rows = box.due(endpoint, T0, 3)
        for i, row in enumerate(rows):
            box.ack(row.id, now=T0 + 60.0 * i + n)
    box.bury(box.due("billing", T0, 1)[0].id, 8, "gone (410)", now=T0)
    box.close()
    return OutboxConfig(tmp_path / "outbox.sqlite3")


def run(config: OutboxConfig, *argv: str) -> tuple[int, str, str]:
    return run_outbox(config, *argv, now=T0 + 3600.0)


def due(config: OutboxConfig) -> set[tuple[str, str, int]]:
    box = Outbox.open(config.path)
    try:
        return {(d.endpoint, d.event_id, d.attempts) for d in
                box.due("crm", T0 + 3600.0, 10) + box.due("billing", T0 + 3600.0, 10)}
    finally:
        box.close()


def test_list_shows_delivered_rows_only_when_asked_with_when_they_were_delivered(
    config: OutboxConfig,
) -> None:
    _, out, _ = run(config, "list", "--json")
    assert {(r["id"], r["state"]) for r in map(json.loads, out.splitlines())} == {
        ("e3", "pending"), ("e3", "dead")}
    _, out, _ = run(config, "list", "--state", "delivered", "--endpoint", "crm", "--json")
    rows = [json.loads(line) for line in out.splitlines()]
    assert [(r["id"], r["delivered"]) for r in rows] == [
        ("e0", "2026-03-01T12:00:00+00:00"), ("e1", "2026-03-01T12:01:00+00:00"),
        ("e2", "2026-03-01T12:02:00+00:00")]
    assert len(run(config, "list", "--state", "all")[1].splitlines()) == 1 + 2  # as before: undelivered


def test_resend_by_id_makes_the_delivered_rows_pending_due_now_with_a_fresh_schedule(
    config: OutboxConfig,
) -> None:
    code, out, err = run(config, "resend", "--id", "e1")
    assert code == 0
    assert out == "2 delivered deliveries made pending again (sent within seconds if the daemon runs)\n"
    assert err == "resent 2...\n"
    assert due(config) == {("crm", "e1", 0), ("billing", "e1", 0), ("crm", "e3", 0)}


def test_resend_by_endpoint(config: OutboxConfig) -> None:
    assert run(config, "resend", "--endpoint", "billing")[0] == 0
    assert due(config) == {("billing", "e0", 0), ("billing", "e1", 0), ("billing", "e2", 0), ("crm", "e3", 0)}
    _header, row = run(config, "list", "--state", "dead")[1].splitlines()
    assert row.split()[:3] == ["e3", "billing", "dead"]  # untouched


def test_resend_by_time_range_of_delivery_half_open_and_utc_unless_said(config: OutboxConfig) -> None:
    code, out, _ = run(config, "resend", "--since", iso(60.0), "--until", "2026-03-01T13:02:00+01:00")
    assert (code, out.split()[0]) == (0, "2")  # e1 at +60 s and +61 s; e2 at +120 s is not before --until
    assert due(config) == {("crm", "e1", 0), ("billing", "e1", 0), ("crm", "e3", 0)}
    assert run(config, "resend", "--since", "2026-03-01T12:02:00")[1].split()[0] == "2"


def test_resend_of_many_rows_shows_progress_in_batches(tmp_path: Path) -> None:
    box = Outbox.open(tmp_path / "outbox.sqlite3")
    box.put([Entry(f"e{i}", "{}", ("crm",)) for i in range(2 * BATCH + 1)], now=T0)
    box.settle([d.id for d in box.due("crm", T0, 3 * BATCH)], [], [], now=T0)
    box.close()
    code, out, err = run(OutboxConfig(tmp_path / "outbox.sqlite3"), "resend", "--all", "--yes")
    assert (code, out.split()[0]) == (0, str(2 * BATCH + 1))
    assert err.splitlines() == [f"resent {BATCH}...", f"resent {2 * BATCH}...", f"resent {2 * BATCH + 1}..."]


@pytest.mark.parametrize("argv", [
    ["resend"], ["resend", "--all"],
    ["resend", "--since", "2026-03-01T12:00", "--until", "2026-03-01T11:00"]])
def test_resend_needs_a_selection_and_yes_for_all(config: OutboxConfig, argv: list[str]) -> None:
    code, out, err = run(config, *argv)
    assert (code, out) == (64, "")  # EX_USAGE
    assert err.startswith("hangup-listener: outbox resend")
    assert due(config) == {("crm", "e3", 0)}


def test_resend_refuses_a_time_that_is_not_iso_8601(config: OutboxConfig) -> None:
    code, _, err = run(config, "resend", "--since", "yesterday")
    assert code == 64  # EX_USAGE
    assert err == "hangup-listener: outbox resend --since: not an ISO 8601 time: 'yesterday'\n"


def test_resend_on_a_missing_outbox_is_an_error_not_a_new_file(tmp_path: Path) -> None:
    code, _, err = run(OutboxConfig(tmp_path / "nope.sqlite3"), "resend", "--id", "e1")
    assert code == 66  # EX_NOINPUT
    assert "no outbox at" in err
    assert not (tmp_path / "nope.sqlite3").exists()
