"""The operator's outbox commands, called as the CLI calls them, on a real file."""

from __future__ import annotations

import argparse
import io
import json
from pathlib import Path

import pytest

from listener.config.settings import OutboxConfig
from listener.outbox.commands import add_outbox_parser, run_outbox_command
from listener.outbox.store import Entry, Outbox


@pytest.fixture
def config(tmp_path: Path) -> OutboxConfig:
    box = Outbox.open(tmp_path / "outbox.sqlite3")
    box.put([Entry(f"e{i}", "{}", ("crm", "billing")) for i in range(3)], now=1000.0)
    for row in box.due("billing", 1000.0, 2):
        box.bury(row.id, 8, "gone (410)", now=1001.0)
    box.close()
    return OutboxConfig(tmp_path / "outbox.sqlite3")


def run(config: OutboxConfig, *argv: str, now: float = 4600.0) -> tuple[int, str, str]:
    """``hangup-listener outbox ARGV`` in process, at ``now``: the exit code, stdout, stderr."""
    parser = argparse.ArgumentParser(prog="hangup-listener")
    add_outbox_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["outbox", *argv])
    out, err = io.StringIO(), io.StringIO()
    code = run_outbox_command(args, config, out=out, err=err, now=lambda: now)
    return code, out.getvalue(), err.getvalue()


def test_stats_shows_pending_dead_and_oldest_age_per_endpoint(config: OutboxConfig) -> None:
    code, out, _ = run(config, "stats")
    assert code == 0
    lines = out.splitlines()
    assert lines[1].split() == ["billing", "1", "2", "1.0h"]
    assert lines[2].split() == ["crm", "3", "0", "1.0h"]
    code, out, _ = run(config, "stats", "--json")
    assert json.loads(out) == {"billing": {"pending": 1, "dead": 2, "oldest_pending_age": 3600.0},
                               "crm": {"pending": 3, "dead": 0, "oldest_pending_age": 3600.0}}
    assert len(out.splitlines()) == 1


def test_stats_json_of_an_outbox_with_nothing_undelivered_is_an_empty_object(config: OutboxConfig) -> None:
    run(config, "purge", "--pending", "--all", "--yes")
    run(config, "purge", "--all")
    assert run(config, "stats", "--json")[:2] == (0, "{}\n")


def test_list_filters_by_state_endpoint_and_id(config: OutboxConfig) -> None:
    _, out, _ = run(config, "list", "--state", "dead", "--json")
    rows = [json.loads(line) for line in out.splitlines()]
    assert [(r["id"], r["endpoint"], r["last_error"]) for r in rows] == [
        ("e0", "billing", "gone (410)"), ("e1", "billing", "gone (410)")]
    _, out, _ = run(config, "list", "--endpoint", "crm", "--id", "e2")
    header, row = out.splitlines()
    assert header.split() == ["id", "endpoint", "state", "attempts", "created", "next_attempt", "delivered",
                              "last_error"]
    created = "1970-01-01T00:16:40+00:00"
    assert row.split() == ["e2", "crm", "pending", "0", created, created, "-", "-"]
    assert header.index("endpoint") == row.index("crm")  # the columns line up


def test_list_says_when_nothing_matches(config: OutboxConfig) -> None:
    assert run(config, "list", "--endpoint", "nobody")[1].splitlines()[1:] == ["(no deliveries match)"]


def test_retry_by_id_then_all(config: OutboxConfig) -> None:
    assert run(config, "retry", "--id", "e0")[:2] == (0, "1 dead deliveries made pending again\n")
    assert run(config, "retry", "--all")[:2] == (0, "1 dead deliveries made pending again\n")
    box = Outbox.open(config.path)
    assert sorted(r.next_at for r in box.due("billing", 4600.0, 10)) == [1000.0, 4600.0, 4600.0]
    box.close()


def test_retry_and_purge_need_a_selection(config: OutboxConfig) -> None:
    code, _, err = run(config, "retry")
    assert code == 64  # EX_USAGE
    assert "--all" in err


def test_purge_removes_dead_only_unless_pending_is_confirmed(config: OutboxConfig) -> None:
    assert run(config, "purge", "--endpoint", "billing")[:2] == (0, "2 dead deliveries purged\n")
    assert run(config, "purge", "--pending", "--all")[0] == 64
    code, out, err = run(config, "purge", "--pending", "--all", "--yes")
    assert (code, out) == (0, "4 pending deliveries purged\n")
    assert err == "purged 4...\n"
    assert run(config, "stats")[1].endswith("(empty: everything was delivered)\n")


def test_a_missing_outbox_file_is_an_error_not_a_new_file(tmp_path: Path) -> None:
    code, _, err = run(OutboxConfig(tmp_path / "nope.sqlite3"), "stats")
    assert code == 66  # EX_NOINPUT
    assert "no outbox at" in err
    assert not (tmp_path / "nope.sqlite3").exists()
