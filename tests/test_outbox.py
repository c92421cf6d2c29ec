"""The SQLite outbox on a real file: put, due, ack, reschedule, bury and the operator's commands."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from listener.core.errors import OutboxError
from listener.outbox.store import (
    _MIGRATIONS,
    DEAD,
    DELIVERED,
    PENDING,
    SCHEMA_VERSION,
    Entry,
    Outbox,
)


@pytest.fixture
def outbox(tmp_path: Path) -> Outbox:
    box = Outbox.open(tmp_path / "outbox.sqlite3")
    yield box  # type: ignore[misc]
    box.close()


def entry(event_id: str, *endpoints: str) -> Entry:
    return Entry(event_id, f'{{"id":"{event_id}"}}', endpoints)


def test_open_uses_wal_and_the_chosen_synchronous(tmp_path: Path) -> None:
    box = Outbox.open(tmp_path / "o.sqlite3", synchronous="normal")
    assert box._db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    assert box._db.execute("PRAGMA synchronous").fetchone() == (1,)
    box.close()
    box = Outbox.open(tmp_path / "o.sqlite3")
    assert box._db.execute("PRAGMA synchronous").fetchone() == (2,)
    box.close()


def test_put_stores_body_once_and_one_delivery_row_per_endpoint(outbox: Outbox) -> None:
    created = outbox.put([entry("e1", "crm", "billing"), entry("e2", "crm")], now=100.0)
    assert created == {"crm": 2, "billing": 1}
    assert outbox._db.execute("SELECT count(*) FROM message").fetchone() == (2,)
    assert [d.event_id for d in outbox.due("crm", 100.0, 10)] == ["e1", "e2"]
    assert [d.body for d in outbox.due("billing", 100.0, 10)] == ['{"id":"e1"}']


def test_put_skips_documents_no_endpoint_wants(outbox: Outbox) -> None:
    assert outbox.put([entry("e1")], now=1.0) == {}
    assert outbox._db.execute("SELECT count(*) FROM message").fetchone() == (0,)


def test_put_of_the_same_event_id_again_creates_no_duplicate(outbox: Outbox) -> None:
    outbox.put([entry("e1", "crm")], now=1.0)
    assert outbox.put([entry("e1", "crm", "billing")], now=2.0) == {"billing": 1}
    assert len(outbox.list()) == 2


def test_due_honours_time_limit_and_exclusions(outbox: Outbox) -> None:
    outbox.put([entry(f"e{i}", "crm") for i in range(5)], now=10.0)
    first = outbox.due("crm", 10.0, 2)
    assert [d.event_id for d in first] == ["e0", "e1"]
    assert [d.event_id for d in outbox.due("crm", 10.0, 2, exclude=[d.id for d in first])] == ["e2", "e3"]
    assert outbox.due("crm", 9.0, 10) == ()
    assert outbox.due("other", 10.0, 10) == ()


def test_ack_without_keeping_deletes_the_row_and_the_message_with_its_last_row(outbox: Outbox) -> None:
    outbox.keep_delivered = False
    outbox.put([entry("e1", "crm", "billing")], now=1.0)
    (crm,) = outbox.due("crm", 1.0, 10)
    outbox.ack(crm.id, now=2.0)
    assert outbox._db.execute("SELECT count(*) FROM message").fetchone() == (1,)
    (billing,) = outbox.due("billing", 1.0, 10)
    outbox.ack(billing.id, now=2.0)
    assert outbox._db.execute("SELECT count(*) FROM message").fetchone() == (0,)


def test_reschedule_records_attempts_and_hides_the_row_until_its_time(outbox: Outbox) -> None:
    outbox.put([entry("e1", "crm")], now=1.0)
    (row,) = outbox.due("crm", 1.0, 10)
    outbox.reschedule(row.id, 1, next_at=6.0, error="server_error (503)", now=1.0)
    assert outbox.due("crm", 5.9, 10) == ()
    (again,) = outbox.due("crm", 6.0, 10)
    assert (again.attempts, again.last_error) == (1, "server_error (503)")
    assert outbox.next_due_at("crm") == 6.0


def test_bury_keeps_the_row_as_dead_and_out_of_due(outbox: Outbox) -> None:
    outbox.put([entry("e1", "crm")], now=1.0)
    (row,) = outbox.due("crm", 1.0, 10)
    outbox.bury(row.id, 8, "gone (410)", now=2.0)
    assert outbox.due("crm", 1e12, 10) == ()
    (dead,) = outbox.list(state=DEAD)
    assert (dead.event_id, dead.attempts, dead.last_error) == ("e1", 8, "gone (410)")


def test_stats_counts_pending_dead_and_oldest_pending_age_per_endpoint(outbox: Outbox) -> None:
    outbox.put([entry("e1", "crm", "billing")], now=100.0)
    outbox.put([entry("e2", "crm")], now=150.0)
    outbox.bury(outbox.due("billing", 200.0, 1)[0].id, 1, "gone", now=200.0)
    stats = {s.endpoint: s for s in outbox.stats(now=200.0)}
    assert (stats["crm"].pending, stats["crm"].dead, stats["crm"].oldest_pending_age) == (2, 0, 100.0)
    billing = stats["billing"]
    assert (billing.pending, billing.dead, billing.oldest_pending_age) == (0, 1, None)


def test_retry_dead_by_endpoint_and_by_id_resets_attempts_and_makes_them_due(outbox: Outbox) -> None:
    outbox.put([entry("e1", "crm", "billing"), entry("e2", "crm")], now=1.0)
    for row in outbox.due("crm", 1.0, 10) + outbox.due("billing", 1.0, 10):
        outbox.bury(row.id, 8, "schedule_exhausted", now=2.0)
    assert outbox.retry_dead(now=50.0, endpoint="billing") == 1
    assert outbox.retry_dead(now=50.0, event_ids=["e2"]) == 1
    assert {(d.endpoint, d.event_id, d.attempts) for d in outbox.due("crm", 50.0, 10)
            + outbox.due("billing", 50.0, 10)} == {("billing", "e1", 0), ("crm", "e2", 0)}
    assert [d.event_id for d in outbox.list(state=DEAD)] == ["e1"]


def test_retry_and_purge_of_many_rows_report_progress_in_batches(outbox: Outbox) -> None:
    outbox.put([entry(f"e{i}", "crm") for i in range(2500)], now=1.0)
    outbox._db.execute("UPDATE delivery SET state = 'dead'")
    seen: list[int] = []
    assert outbox.retry_dead(now=2.0, progress=seen.append) == 2500
    assert seen == [1000, 2000, 2500]
    assert outbox.purge(state=PENDING, progress=seen.append) == 2500
    assert outbox._db.execute("SELECT count(*) FROM message").fetchone() == (0,)


def test_purge_defaults_to_dead_rows_only(outbox: Outbox) -> None:
    outbox.put([entry("e1", "crm"), entry("e2", "crm")], now=1.0)
    outbox.bury(outbox.due("crm", 1.0, 1)[0].id, 1, "gone", now=1.0)
    assert outbox.purge() == 1
    assert [d.event_id for d in outbox.list()] == ["e2"]


def test_everything_not_delivered_is_there_after_reopening(tmp_path: Path) -> None:
    box = Outbox.open(tmp_path / "o.sqlite3")
    box.put([entry("e1", "crm"), entry("e2", "crm")], now=1.0)
    box.ack(box.due("crm", 1.0, 1)[0].id, now=2.0)
    box.close()
    box = Outbox.open(tmp_path / "o.sqlite3")
    assert [d.event_id for d in box.due("crm", 1.0, 10)] == ["e2"]
    box.close()


def test_a_full_disk_is_an_outbox_error_and_nothing_half_written(outbox: Outbox) -> None:
    outbox.put([entry("e0", "crm")], now=1.0)
    (pages,) = outbox._db.execute("PRAGMA page_count").fetchone()
    outbox._db.execute(f"PRAGMA max_page_count={pages + 2}")
    big = [Entry(f"big{i}", "x" * 100_000, ("crm",)) for i in range(3)]
    with pytest.raises(OutboxError) as caught:
        outbox.put(big, now=2.0)
    assert caught.value.code == "SQLITE_FULL"
    assert [d.event_id for d in outbox.list()] == ["e0"]


def test_an_unreadable_file_is_an_outbox_error(tmp_path: Path) -> None:
    path = tmp_path / "o.sqlite3"
    path.write_bytes(b"this is not a database" * 100)
    with pytest.raises(OutboxError) as caught:
        Outbox.open(path)
    assert caught.value.code == "SQLITE_NOTADB"


def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    box = Outbox.open(tmp_path / "o.sqlite3")
    box._db.execute("PRAGMA user_version=99")
    box.close()
    with pytest.raises(OutboxError, match="newer"):
        Outbox.open(tmp_path / "o.sqlite3")


def test_stats_with_endpoints_gives_configured_endpoints_a_zero_row() -> None:
    from listener.outbox.store import EndpointStats, with_endpoints  # noqa: PLC0415

    stats = (EndpointStats("crm", 2, 1, 30.0),)
    assert with_endpoints(stats, ["billing", "crm"]) == (
        EndpointStats("billing", 0, 0, None), EndpointStats("crm", 2, 1, 30.0))


def test_settle_records_acks_reschedules_and_burials_in_one_call(outbox: Outbox) -> None:
    outbox.put([Entry(f"e{n}", "{}", ("crm",)) for n in range(3)], 100.0)
    first, second, third = outbox.due("crm", 100.0, 10)
    outbox.settle([first.id], [(second.id, 1, 200.0, "server_error (500)")],
                  [(third.id, 1, "gone (410)")], 101.0)
    rows = {r.event_id: r for r in outbox.list()}
    assert set(rows) == {"e1", "e2"}
    assert (rows["e1"].attempts, rows["e1"].next_at) == (1, 200.0)
    assert rows["e1"].last_error == "server_error (500)"
    assert (rows["e2"].state, rows["e2"].last_error) == ("dead", "gone (410)")


def test_put_counts_the_rows_it_created_per_endpoint_as_due_reads_them(outbox: Outbox) -> None:
    created = outbox.put([entry("e1", "crm", "billing"), entry("e2", "crm")], now=100.0)
    assert created == {"crm": 2, "billing": 1}
    rows = outbox.due("crm", 100.0, 10) + outbox.due("billing", 100.0, 10)
    assert [(d.event_id, d.endpoint) for d in rows] == [("e1", "crm"), ("e2", "crm"), ("e1", "billing")]


def test_put_of_an_id_stored_before_keeps_the_first_body_and_adds_only_missing_rows(outbox: Outbox) -> None:
    outbox.put([Entry("e1", '{"first":1}', ("crm",))], now=1.0)
    assert outbox.put([Entry("e1", '{"second":2}', ("crm", "billing")), entry("e1", "crm")], now=2.0) == {
        "billing": 1}
    (row,) = outbox.due("billing", 2.0, 10)
    assert (row.endpoint, row.body, row.created_at) == ("billing", '{"first":1}', 1.0)


def test_put_of_more_rows_than_one_insert_takes_stores_them_all(outbox: Outbox) -> None:
    assert outbox.put([entry(f"e{i}", "crm", "billing") for i in range(450)], now=1.0) == {
        "crm": 450, "billing": 450}
    rows = outbox.due("crm", 1.0, 1000) + outbox.due("billing", 1.0, 1000)
    assert len({d.id for d in rows}) == 900
    assert [d.event_id for d in outbox.due("crm", 1.0, 1000)] == [f"e{i}" for i in range(450)]


def test_the_same_event_twice_in_one_put_is_stored_once_with_its_first_body(outbox: Outbox) -> None:
    twice = [Entry("e1", '{"first":1}', ("crm",)), Entry("e1", '{"second":2}', ("crm", "billing"))]
    created = outbox.put(twice, now=1.0)
    assert created == {"crm": 1, "billing": 1}
    assert [(d.endpoint, d.body) for d in outbox.due("crm", 1.0, 10) + outbox.due("billing", 1.0, 10)] == [
        ("crm", '{"first":1}'), ("billing", '{"first":1}')]


def test_ack_keeps_the_row_as_delivered_out_of_due_stats_and_the_default_list(outbox: Outbox) -> None:
    outbox.put([entry("e1", "crm"), entry("e2", "crm")], now=1.0)
    first = outbox.due("crm", 1.0, 1)[0]
    outbox.ack(first.id, now=5.0)
    outbox.settle([outbox.due("crm", 1.0, 1)[0].id], [], [], now=6.0)
    assert outbox.due("crm", 1e12, 10) == ()
    assert outbox.next_due_at("crm") is None
    assert outbox.stats(now=10.0) == ()
    assert outbox.list() == ()
    delivered = outbox.list(state=DELIVERED)
    assert [(d.event_id, d.state) for d in delivered] == [("e1", DELIVERED), ("e2", DELIVERED)]
    assert outbox._db.execute("SELECT delivered_at FROM delivery ORDER BY id").fetchall() == [(5.0,), (6.0,)]
    assert outbox._db.execute("SELECT count(*) FROM message").fetchone() == (2,)


def test_retry_and_purge_never_touch_delivered_rows(outbox: Outbox) -> None:
    outbox.put([entry("e1", "crm"), entry("e2", "crm")], now=1.0)
    outbox.ack(outbox.due("crm", 1.0, 1)[0].id, now=2.0)
    assert outbox.retry_dead(now=3.0) == 0
    assert outbox.purge() == 0
    assert outbox.purge(state=PENDING) == 1
    assert [d.event_id for d in outbox.list(state=DELIVERED)] == ["e1"]


def test_prune_delivered_deletes_old_delivered_rows_in_batches_and_their_messages(outbox: Outbox) -> None:
    outbox.put([entry(f"e{i}", "crm") for i in range(3)] + [entry("both", "crm", "billing")], now=1.0)
    rows = outbox.due("crm", 1.0, 10)
    outbox.settle([r.id for r in rows[:2]], [], [], now=100.0)
    outbox.settle([r.id for r in rows[2:]], [], [], now=200.0)
    assert outbox.prune_delivered(before=150.0, limit=1) == 1
    assert outbox.prune_delivered(before=150.0, limit=1) == 1
    assert outbox.prune_delivered(before=150.0) == 0
    assert outbox.prune_delivered(before=250.0) == 2
    assert outbox._db.execute("SELECT event_id FROM message").fetchall() == [("both",)]  # billing pending
    assert [d.event_id for d in outbox.due("billing", 1.0, 10)] == ["both"]


def test_resend_makes_delivered_rows_pending_due_now_with_a_fresh_schedule(outbox: Outbox) -> None:
    outbox.put([entry("e1", "crm", "billing"), entry("e2", "crm")], now=1.0)
    outbox.reschedule(outbox.due("crm", 1.0, 1)[0].id, 3, next_at=2.0, error="timeout", now=1.0)
    rows = outbox.due("crm", 2.0, 10) + outbox.due("billing", 2.0, 10)
    for row, at in zip(rows, (10.0, 20.0, 30.0), strict=True):
        outbox.ack(row.id, now=at)
    assert outbox.resend(now=50.0, event_ids=["e1"], endpoint="crm") == 1
    assert outbox.resend(now=50.0, since=5.0, until=15.0) == 1  # e2 (due first), at 10.0
    due = outbox.due("crm", 50.0, 10)
    assert {(d.event_id, d.attempts, d.last_error, d.next_at) for d in due} == {
        ("e1", 0, "", 50.0), ("e2", 0, "", 50.0)}
    assert [(d.event_id, d.endpoint) for d in outbox.list(state=DELIVERED)] == [("e1", "billing")]
    assert outbox.resend(now=60.0) == 1


def test_resend_of_many_rows_reports_progress_in_batches(outbox: Outbox) -> None:
    outbox.put([entry(f"e{i}", "crm") for i in range(2100)], now=1.0)
    outbox.settle([d.id for d in outbox.due("crm", 1.0, 3000)], [], [], now=2.0)
    seen: list[int] = []
    assert outbox.resend(now=3.0, progress=seen.append) == 2100
    assert seen == [1000, 2000, 2100]
    assert len(outbox.due("crm", 3.0, 3000)) == 2100


V3_DELIVERY = """
CREATE TABLE message (id INTEGER PRIMARY KEY, event_id TEXT NOT NULL UNIQUE, body TEXT NOT NULL,
    created_at REAL NOT NULL);
CREATE TABLE delivery (id INTEGER PRIMARY KEY, message INTEGER NOT NULL REFERENCES message(id),
    endpoint TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'dead')),
    attempts INTEGER NOT NULL DEFAULT 0, next_at REAL NOT NULL, last_error TEXT NOT NULL DEFAULT '',
    updated_at REAL NOT NULL, UNIQUE (message, endpoint));
CREATE INDEX delivery_due ON delivery (endpoint, state, next_at);
CREATE TRIGGER message_done AFTER DELETE ON delivery
WHEN NOT EXISTS (SELECT 1 FROM delivery WHERE message = OLD.message)
BEGIN DELETE FROM message WHERE id = OLD.message; END;
"""


def test_a_version_3_file_migrates_with_its_pending_and_dead_rows_untouched(tmp_path: Path) -> None:
    path = tmp_path / "v3.sqlite3"
    db = sqlite3.connect(path, isolation_level=None)
    db.executescript(f"BEGIN; {V3_DELIVERY} {_MIGRATIONS[1]} {_MIGRATIONS[2]} PRAGMA user_version=3; COMMIT;")
    db.executescript(
        "INSERT INTO message VALUES (1, 'e1', '{\"id\":\"e1\"}', 10.0), (2, 'e2', '{}', 20.0);"
        "INSERT INTO delivery VALUES (7, 1, 'crm', 'pending', 2, 40.0, 'timeout', 30.0),"
        " (8, 1, 'billing', 'dead', 8, 35.0, 'gone (410)', 35.0),"
        " (9, 2, 'crm', 'pending', 0, 20.0, '', 20.0);")
    db.close()
    box = Outbox.open(path)
    assert box._db.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
    assert [(d.id, d.event_id, d.endpoint, d.state, d.attempts, d.next_at, d.created_at, d.last_error)
            for d in box.list()] == [
        (7, "e1", "crm", PENDING, 2, 40.0, 10.0, "timeout"),
        (8, "e1", "billing", DEAD, 8, 35.0, 10.0, "gone (410)"),
        (9, "e2", "crm", PENDING, 0, 20.0, 20.0, "")]
    assert box._db.execute("PRAGMA foreign_key_check").fetchall() == []
    assert box._db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    box.settle([7, 9], [], [], now=50.0)
    assert [d.id for d in box.list(state=DELIVERED)] == [7, 9]
    assert box.purge() == 1
    assert box.prune_delivered(before=60.0) == 2
    assert box._db.execute("SELECT count(*) FROM message").fetchone() == (0,)  # the trigger came back too
    box.close()


def test_a_failed_migration_leaves_the_version_3_file_as_it_was(tmp_path: Path) -> None:
    path = tmp_path / "v3.sqlite3"
    db = sqlite3.connect(path, isolation_level=None)
    db.executescript(f"BEGIN; {V3_DELIVERY} {_MIGRATIONS[1]} {_MIGRATIONS[2]} PRAGMA user_version=3;"
                     " CREATE TABLE delivery_v4 (x); COMMIT;")  # in the way of the rebuild
    db.execute("INSERT INTO message VALUES (1, 'e1', '{}', 10.0)")
    db.execute("INSERT INTO delivery VALUES (7, 1, 'crm', 'pending', 0, 10.0, '', 10.0)")
    db.close()
    with pytest.raises(OutboxError):
        Outbox.open(path)
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA user_version").fetchone() == (3,)
    assert db.execute("SELECT id, state FROM delivery").fetchall() == [(7, "pending")]
    db.close()
