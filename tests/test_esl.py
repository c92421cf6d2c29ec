"""The hardened ESL edge against a fake FreeSWITCH on 127.0.0.1: each greenswitch trap pinned."""

from __future__ import annotations

import dataclasses
import socket
from collections.abc import Iterator, Sequence

import gevent
import gevent.queue
import pytest
import structlog

from listener.config.settings import ESLSettings, Node
from listener.core.event import HangupEvent
from listener.core.frame import Frame
from listener.esl.connection import HardenedInboundESL
from listener.esl.source import ESLSource
from tests.fakeesl import (
    FIXTURES,
    FakeFreeSWITCH,
    Recording,
    capture_bodies,
    event_frame,
    frame,
    split_frames,
    with_header,
)

FAST = ESLSettings(
    connect_timeout=2, command_timeout=1, liveness_timeout=5, backoff_initial=0.01, backoff_max=0.05
)


class Listener:
    """An ESLSource under test feeding a real pipeline, with the events it handled in a queue."""

    def __init__(self, port: int, settings: ESLSettings = FAST, password: str = "ClueCon") -> None:
        node = Node(name="fs1", host="127.0.0.1", port=port, password=password)
        self.pipeline = Recording(node)
        self.events = self.pipeline.events
        self.source = ESLSource(node, settings, self.pipeline, structlog.get_logger(), rand=lambda: 0.5)
        self.greenlet = gevent.spawn(self.source.run)

    def take(self, count: int, timeout: float = 5.0) -> list[HangupEvent]:
        return self.pipeline.get(count, timeout)

    def stop(self) -> None:
        self.source.stop()
        self.greenlet.join(timeout=5)
        assert self.greenlet.dead


@pytest.fixture
def fake() -> Iterator[FakeFreeSWITCH]:
    with FakeFreeSWITCH() as server:
        yield server


def wait_for_log(logs: list[dict[str, object]], event: str, timeout: float = 5.0) -> dict[str, object]:
    with gevent.Timeout(timeout, AssertionError(f"no {event} log; got {[e['event'] for e in logs]}")):
        while True:
            for entry in logs:
                if entry["event"] == event:
                    return entry
            gevent.sleep(0.005)  # yields to the greenlets under test; bounded by the Timeout above


def busy_body() -> bytes:
    return capture_bodies("uas_486")[0]


def test_authenticates_subscribes_then_asks_the_core_uuid(fake: FakeFreeSWITCH, logs: list) -> None:
    listener = Listener(fake.port)
    session = fake.next_session()
    wait_for_log(logs, "esl.connected")
    with gevent.Timeout(5):
        while len(session.commands) < 3:
            gevent.sleep(0.005)
    assert session.commands == [
        "auth ClueCon", "event json CHANNEL_HANGUP_COMPLETE HEARTBEAT", "api global_getvar core_uuid"
    ]
    listener.stop()
    assert listener.source.stats.core_uuid == fake.core_uuid


def test_a_reconnect_reports_the_gap_and_a_new_core_uuid_says_freeswitch_restarted(
    fake: FakeFreeSWITCH, logs: list
) -> None:
    listener = Listener(fake.port)
    first = fake.next_session()
    wait_for_log(logs, "esl.connected")
    fake.core_uuid = "2c9f6a10-0000-4000-8000-000000000001"  # FreeSWITCH restarts...
    first.abort()
    fake.next_session()
    gap = wait_for_log(logs, "esl.gap")
    assert isinstance(gap["gap_s"], float)
    assert gap["gap_s"] >= 0
    restarted = wait_for_log(logs, "esl.freeswitch_restarted")
    assert restarted["previous_core_uuid"] == "1b8e5af5-676a-4b2e-91a0-1ac1b56080da"
    assert restarted["core_uuid"] == fake.core_uuid
    stats = listener.source.stats
    assert (stats.gaps, stats.freeswitch_restarts) == (1, 1)
    assert stats.gap_seconds == stats.last_gap_seconds
    listener.stop()


def test_a_core_uuid_change_seen_in_events_counts_as_a_restart(fake: FakeFreeSWITCH, logs: list) -> None:
    listener = Listener(fake.port)
    session = fake.next_session()
    heartbeat = "Event-Name: HEARTBEAT\nCore-UUID: {}\n"
    session.send_event(heartbeat.format(fake.core_uuid).encode())
    session.send_event(heartbeat.format("3d0a7b21-0000-4000-8000-000000000002").encode())
    listener.take(2)
    restarted = wait_for_log(logs, "esl.freeswitch_restarted")
    assert restarted["core_uuid"] == "3d0a7b21-0000-4000-8000-000000000002"
    listener.stop()


def test_replays_a_real_capture_and_handles_every_hangup_in_order(fake: FakeFreeSWITCH) -> None:
    listener = Listener(fake.port)
    session = fake.next_session()
    wire = (FIXTURES / "att_xfer_complete" / "plain.txt").read_bytes()
    hangup = b"Event-Name: CHANNEL_HANGUP_COMPLETE\n"
    expected = [body for _, body in split_frames(wire) if body.startswith(hangup)]
    session.send(wire)
    got = listener.take(len(expected))
    assert [e.unique_id for e in got] == [HangupEvent.from_plain(b).unique_id for b in expected]
    assert all(e.is_hangup_complete for e in got)
    assert listener.events.empty()
    listener.stop()


def test_reconnects_with_a_fresh_connection_after_an_abrupt_drop(fake: FakeFreeSWITCH, logs: list) -> None:
    listener = Listener(fake.port)
    fake.next_session().abort()
    second = fake.next_session()
    second.send_event(busy_body())
    assert listener.take(1)[0].hangup_cause == "USER_BUSY"
    lost = wait_for_log(logs, "esl.connection_lost")
    assert lost["node"] == "fs1"
    assert "reconnect_in" in lost
    assert fake.accepted == 2
    listener.stop()


def test_reconnects_after_a_disconnect_notice(fake: FakeFreeSWITCH, logs: list) -> None:
    listener = Listener(fake.port)
    first = fake.next_session()
    first.send_event(busy_body())
    first.disconnect_notice()
    first.close()
    assert listener.take(1)[0].hangup_cause == "USER_BUSY"
    fake.next_session()
    assert wait_for_log(logs, "esl.connection_lost")["reason"] == "disconnect-notice from FreeSWITCH"
    listener.stop()


def test_a_wrong_password_is_logged_as_such_and_retried_at_the_backoff_cap(logs: list) -> None:
    with FakeFreeSWITCH(password="secret") as fake:
        listener = Listener(fake.port, password="wrong-pw")
        fake.next_session(subscribed=False)
        entry = wait_for_log(logs, "esl.auth_failed")
        assert "refused the password" in str(entry["reason"])
        assert entry["reconnect_in"] == FAST.backoff_max
        assert entry["log_level"] == "error"
        fake.next_session(subscribed=False)  # retried
        listener.stop()
    assert "wrong-pw" not in repr(logs)


def test_an_acl_rejection_is_logged_as_such(logs: list) -> None:
    with FakeFreeSWITCH(reject_acl=True) as fake:
        listener = Listener(fake.port)
        entry = wait_for_log(logs, "esl.auth_failed")
        assert "apply-inbound-acl" in str(entry["reason"])
        listener.stop()


def test_a_refused_connection_is_retried_with_growing_backoff(logs: list) -> None:
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()  # nothing listens there now
    settings = ESLSettings(connect_timeout=1, command_timeout=1, backoff_initial=0.02, backoff_max=0.08)
    listener = Listener(port, settings)
    with gevent.Timeout(5):
        while len([e for e in logs if e["event"] == "esl.connect_failed"]) < 4:
            gevent.sleep(0.005)
    delays = [e["reconnect_in"] for e in logs if e["event"] == "esl.connect_failed"][:4]
    assert delays == [0.015, 0.03, 0.06, 0.06]  # rand=0.5: 3/4 of min(cap, initial*2**n)
    assert "refused" in str(logs[0]["reason"]).lower()
    listener.stop()


def test_a_burst_of_hangups_then_close_loses_none(fake: FakeFreeSWITCH) -> None:
    listener = Listener(fake.port)
    session = fake.next_session()
    body = busy_body()
    bodies = [with_header(body, "Unique-ID", f"burst-{n:05d}") for n in range(2000)]
    session.send(b"".join(event_frame(b) for b in bodies))
    session.disconnect_notice()
    session.close()
    got = listener.take(2000)
    assert [e.unique_id for e in got] == [f"burst-{n:05d}" for n in range(2000)]
    listener.stop()


def test_percent_0a_in_a_value_cannot_inject_a_header(fake: FakeFreeSWITCH) -> None:
    listener = Listener(fake.port)
    session = fake.next_session()
    evil = "Mallory%0AHangup-Cause%3A%20NORMAL_CLEARING%0Avariable_sip_term_status%3A%20200"
    body = with_header(busy_body(), "Caller-Caller-ID-Name", evil)
    session.send_event(body)
    event = listener.take(1)[0]
    assert event.hangup_cause == "USER_BUSY"
    assert event.sip_term_status == 486
    assert event.caller_name == "Mallory\nHangup-Cause: NORMAL_CLEARING\nvariable_sip_term_status: 200"
    listener.stop()


def test_a_non_utf8_byte_is_replaced_and_the_connection_kept(fake: FakeFreeSWITCH, logs: list) -> None:
    listener = Listener(fake.port)
    session = fake.next_session()
    body = busy_body().replace(b"Caller-Caller-ID-Name: sipp%20UAC", b"Caller-Caller-ID-Name: Jos\xe9 \xff")
    session.send_event(body)
    session.send_event(with_header(busy_body(), "Unique-ID", "after-bad-byte"))
    first, second = listener.take(2)
    assert first.caller_name == "Jos\ufffd \ufffd"
    assert first.hangup_cause == "USER_BUSY"
    assert second.unique_id == "after-bad-byte"
    assert fake.accepted == 1
    assert not [e for e in logs if e["event"] in ("esl.connection_lost", "esl.frame_rejected")]
    listener.stop()


def test_a_truncated_body_then_eof_is_rejected_and_reconnected(fake: FakeFreeSWITCH, logs: list) -> None:
    listener = Listener(fake.port)
    session = fake.next_session()
    session.send_event(with_header(busy_body(), "Unique-ID", "complete-one"))
    session.send(b"Content-Length: 5000\nContent-Type: text/event-plain\n\nEvent-Name: CHANNEL_HANG")
    session.close()
    assert listener.take(1)[0].unique_id == "complete-one"  # what came whole before is kept
    rejected = wait_for_log(logs, "esl.frame_rejected")
    assert "closed inside a frame" in str(rejected["reason"])
    assert "CHANNEL_HANG" not in repr(rejected)  # never the frame's contents
    fake.next_session()  # reconnected: the reader neither hung nor spun
    listener.stop()


def test_an_oversize_content_length_is_rejected_unallocated(fake: FakeFreeSWITCH, logs: list) -> None:
    listener = Listener(fake.port)
    session = fake.next_session()
    session.send(b"Content-Length: 999999999999\nContent-Type: text/event-plain\n\n")
    rejected = wait_for_log(logs, "esl.frame_rejected")
    assert "exceeds the frame cap" in str(rejected["reason"])
    fake.next_session()
    listener.stop()


def test_a_half_open_peer_is_detected_by_the_liveness_timeout(fake: FakeFreeSWITCH, logs: list) -> None:
    settings = ESLSettings(command_timeout=1, liveness_timeout=1, backoff_initial=0.01, backoff_max=0.05)
    listener = Listener(fake.port, settings)
    fake.next_session()  # then it sends nothing at all, and keeps the socket open
    lost = wait_for_log(logs, "esl.connection_lost", timeout=5)
    assert "liveness" in str(lost["reason"])
    fake.next_session()
    listener.stop()


def test_heartbeats_keep_a_quiet_connection_alive(fake: FakeFreeSWITCH, logs: list) -> None:
    settings = ESLSettings(command_timeout=1, liveness_timeout=1, backoff_initial=0.01, backoff_max=0.05)
    listener = Listener(fake.port, settings)
    session = fake.next_session()
    heartbeat = b"Event-Name: HEARTBEAT\nCore-UUID: core-1\nFreeSWITCH-Hostname: vm\n"
    for _ in range(4):
        session.send_event(heartbeat)
        assert listener.take(1)[0].event_name == "HEARTBEAT"
        gevent.sleep(0.4)  # the quiet gap itself is what is tested, and it is shorter than the window
    assert not [e for e in logs if e["event"] == "esl.connection_lost"]
    listener.stop()


def test_a_command_that_gets_no_reply_times_out_and_is_retried(logs: list) -> None:
    with FakeFreeSWITCH(silent=True) as fake:
        settings = ESLSettings(command_timeout=0.2, backoff_initial=0.01, backoff_max=0.05)
        listener = Listener(fake.port, settings)
        failed = wait_for_log(logs, "esl.connect_failed")
        assert "no reply within 0.2s" in str(failed["reason"])
        fake.next_session(subscribed=False)
        fake.next_session(subscribed=False)
        listener.stop()


def test_an_exception_in_a_handler_does_not_stop_the_stream(fake: FakeFreeSWITCH, logs: list) -> None:
    node = Node(name="fs1", port=fake.port)
    pipeline = Recording(node, fail_on="poison")
    source = ESLSource(node, FAST, pipeline, structlog.get_logger())
    greenlet = gevent.spawn(source.run)
    session = fake.next_session()
    session.send_event(with_header(busy_body(), "Unique-ID", "poison"))
    session.send_event(with_header(busy_body(), "Unique-ID", "healthy"))
    assert pipeline.get(1)[0].unique_id == "healthy"
    failure = wait_for_log(logs, "call.handler_failed")
    assert failure["channel_uuid"] == "poison"
    assert source.stats.handler_failures == 1
    assert fake.accepted == 1
    source.stop()
    greenlet.join(timeout=5)


def test_an_unparseable_json_event_is_skipped_connection_kept(fake: FakeFreeSWITCH, logs: list) -> None:
    listener = Listener(fake.port)
    session = fake.next_session()
    session.send(frame("text/event-json", b"{not json"))
    session.send_event(with_header(busy_body(), "Unique-ID", "next"))
    assert listener.take(1)[0].unique_id == "next"
    assert wait_for_log(logs, "esl.event_rejected")["content_type"] == "text/event-json"
    assert fake.accepted == 1
    listener.stop()


def test_stop_ends_the_source_even_while_backing_off(logs: list) -> None:
    with FakeFreeSWITCH(password="other") as fake:
        settings = ESLSettings(command_timeout=1, backoff_initial=30, backoff_max=60)
        listener = Listener(fake.port, settings)
        wait_for_log(logs, "esl.auth_failed")
        listener.stop()
        assert listener.source.state == "stopped"


def test_queued_events_reach_the_consumer_in_one_batch_even_after_the_close(logs: list) -> None:
    batches: list[list[bytes]] = []
    conn = HardenedInboundESL(Node("fs1"), FAST, lambda frames: batches.append([f.body for f in frames]),
                              structlog.get_logger())
    bodies = [with_header(busy_body(), "Unique-ID", uid) for uid in ("a", "b", "c")]
    for body in bodies:
        conn._esl_event_queue.put(Frame({"Content-Type": "text/event-plain"}, body))
    conn._finish()  # the end marker: process_events returns once everything queued was handed on
    conn.process_events()
    assert batches == [bodies]


def test_a_consumer_that_raises_loses_its_batch_alone_and_the_stream_goes_on(logs: list) -> None:
    seen: list[int] = []

    def consume(frames: Sequence[Frame]) -> None:
        seen.append(len(frames))
        if len(seen) == 1:
            raise RuntimeError("a bug")

    conn = HardenedInboundESL(Node("fs1"), FAST, consume, structlog.get_logger())
    conn._esl_event_queue.put(Frame({"Content-Type": "text/event-plain"}, busy_body()))
    processing = gevent.spawn(conn.process_events)
    wait_for_log(logs, "call.batch_failed")
    conn._esl_event_queue.put(Frame({"Content-Type": "text/event-plain"}, busy_body()))
    conn._finish()
    processing.join(timeout=5)
    assert seen == [1, 1]


def test_plain_can_be_asked_for_instead_of_json(fake: FakeFreeSWITCH) -> None:
    listener = Listener(fake.port, dataclasses.replace(FAST, event_format="plain"))
    session = fake.next_session()
    assert session.commands[1] == "event plain CHANNEL_HANGUP_COMPLETE HEARTBEAT"
    listener.stop()


def test_json_events_as_freeswitch_sends_them_give_the_same_events_as_plain(fake: FakeFreeSWITCH) -> None:
    listener = Listener(fake.port)
    session = fake.next_session()
    session.send((FIXTURES / "att_xfer_complete" / "hangup_complete.json.txt").read_bytes())
    got = listener.take(3)
    plain = {e.unique_id: e for e in map(HangupEvent.from_plain, capture_bodies("att_xfer_complete"))}
    for event in got:
        twin = plain[event.unique_id]
        for name in ("Hangup-Cause", "Caller-Caller-ID-Name", "variable_sip_hangup_disposition",
                     "variable_transfer_history", "variable_billsec", "Channel-Name"):
            assert event.header(name) == twin.header(name), name
    listener.stop()


def test_a_non_utf8_byte_in_a_json_event_is_replaced_and_the_connection_kept(
    fake: FakeFreeSWITCH, logs: list
) -> None:
    listener = Listener(fake.port)
    session = fake.next_session()
    body = capture_bodies("uas_486", "hangup_complete.json.txt")[0]
    session.send(frame("text/event-json", body.replace(b'"sipp UAC"', b'"Jos\xe9 \xff"', 1)))
    session.send(frame("text/event-json", body.replace(b"e48fd8c8-aefe-4b68-8182-7ec3967c5864", b"after", 1)))
    first, second = listener.take(2)
    assert first.caller_name == "Jos\ufffd \ufffd"
    assert first.hangup_cause == "USER_BUSY"
    assert second.unique_id == "after"
    assert fake.accepted == 1
    assert not [e for e in logs if e["event"] in ("esl.connection_lost", "esl.event_rejected")]
    listener.stop()


def test_a_batch_lingers_for_followers_only_while_hangups_come_close_together(logs: list) -> None:
    """At a moderate rate a batch waits LINGER_S for the events right behind its first (one commit
    for them all); a lone event after a quiet spell is handed on at once, with no timer."""
    from listener.esl import connection  # noqa: PLC0415

    conn = HardenedInboundESL(Node("fs1"), FAST, lambda frames: None, structlog.get_logger())
    frame = Frame({"Content-Type": "text/event-plain"}, busy_body())
    queue = conn._esl_event_queue

    conn._esl_event_queue.put(frame)  # first ever: nothing came before, no wait
    with gevent.Timeout(connection.LINGER_S / 2, AssertionError("a lone event waited")):
        assert conn._next_batch() == ([frame], False)

    gevent.spawn_later(connection.LINGER_S / 4, queue.put, frame)  # a follower, a moment later
    queue.put(frame)  # a second batch right after the first: the rate is up, it lingers
    batch, ended = conn._next_batch()
    assert (len(batch), ended) == (2, False)


def test_a_lingering_batch_stops_waiting_once_it_holds_linger_batch_events(logs: list) -> None:
    """At a high rate the linger ends with the batch's LINGER_BATCH-th event, not at LINGER_S: the
    per-batch costs are shared by then, and the latency stays low."""
    from listener.esl import connection  # noqa: PLC0415

    conn = HardenedInboundESL(Node("fs1"), FAST, lambda frames: None, structlog.get_logger())
    frame = Frame({"Content-Type": "text/event-plain"}, busy_body())
    queue = conn._esl_event_queue
    queue.put(frame)
    conn._next_batch()  # the rate is up from here: the next batch lingers

    for _ in range(connection.LINGER_BATCH):
        queue.put(frame)
    later = gevent.spawn_later(connection.LINGER_S / 4, queue.put, frame)  # would join a lingering batch
    with gevent.Timeout(connection.LINGER_S / 8, AssertionError("a full batch kept lingering")):
        batch, ended = conn._next_batch()
    assert (len(batch), ended) == (connection.LINGER_BATCH, False)
    later.kill()
