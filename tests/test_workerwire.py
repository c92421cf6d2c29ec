"""The codec between the daemon and its delivery process: frames, settings and reports (pure)."""

from __future__ import annotations

import itertools
import pickle
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from listener.retry import RetrySchedule
from listener.webhook_config import OutboxConfig, WebhookConfig, decode_secret
from listener.workerwire import (
    SETTINGS,
    STOP,
    WAKE,
    FrameReader,
    Report,
    Settings,
    frame,
    read_report,
    read_settings,
    report_line,
    settings_frame,
    stop_frame,
    wake_frame,
)

KEY = decode_secret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw") or b""

kinds = st.sampled_from([SETTINGS, WAKE, STOP, b"\x00", b"\xff"])
frames = st.lists(st.tuples(kinds, st.binary(max_size=300)), max_size=12)


def read_all(reader: FrameReader, chunks: list[bytes]) -> list[tuple[bytes, bytes]]:
    return [f for chunk in chunks for f in reader.feed(chunk)]


@given(frames, st.lists(st.integers(min_value=0, max_value=4000)))
def test_frames_split_at_any_read_boundary_reassemble_exactly(
        sent: list[tuple[bytes, bytes]], cuts: list[int]) -> None:
    stream = b"".join(frame(kind, payload) for kind, payload in sent)
    bounds = [0, *sorted({c for c in cuts if c <= len(stream)}), len(stream)]
    chunks = [stream[a:b] for a, b in itertools.pairwise(bounds)]
    assert read_all(FrameReader(), chunks) == sent


@given(frames)
def test_frames_fed_one_byte_at_a_time_come_out_only_once_complete(sent: list[tuple[bytes, bytes]]) -> None:
    stream = b"".join(frame(kind, payload) for kind, payload in sent)
    reader = FrameReader()
    got: list[tuple[bytes, bytes]] = []
    for i in range(len(stream)):
        got += reader.feed(stream[i:i + 1])
    assert got == sent


def test_frames_a_consumer_left_unread_come_out_of_the_next_feed() -> None:
    reader = FrameReader()
    first = next(iter(reader.feed(settings_frame(settings()) + wake_frame() + stop_frame(2.5))))
    assert first[0] == SETTINGS
    assert list(reader.feed(b"")) == [(WAKE, b""), (STOP, b"2.5")]


def settings() -> Settings:
    webhook = WebhookConfig(
        name="crm", url="https://hooks.example.com/in", key=KEY,
        statuses=frozenset({"answered", "busy"}), legs=frozenset({"a"}), directions=frozenset({"inbound"}),
        timeout=3.5, connect_timeout=1.5,
        retry=RetrySchedule(delays=(1.0, 30.0, 600.0), jitter=0.2, retry_after_max=120.0),
        max_concurrency=7, ca_bundle=Path("/etc/ssl/private-ca.pem"))
    other = WebhookConfig(name="audit", url="http://127.0.0.1:9/x", key=b"k" * 32)
    return Settings((webhook, other), OutboxConfig(Path("/var/lib/x/outbox.sqlite3"), "normal"), "debug")


def test_settings_round_trip_with_every_webhook_field() -> None:
    sent = settings()
    ((kind, payload),) = FrameReader().feed(settings_frame(sent))
    got = read_settings(payload)
    assert kind == SETTINGS
    assert got == sent
    assert got.webhooks[0].key == KEY  # left out of the repr, not out of the pickle


@pytest.mark.parametrize("payload", [
    pickle.dumps({"webhooks": (), "log_level": "info"}),
    pickle.dumps(None),
    pickle.dumps(Report((), True)),
])
def test_a_settings_payload_that_is_not_settings_is_refused(payload: bytes) -> None:
    with pytest.raises(TypeError, match="expected Settings"):
        read_settings(payload)


def test_wake_and_stop_frames() -> None:
    reader = FrameReader()
    assert list(reader.feed(wake_frame() + stop_frame(7))) == [(WAKE, b""), (STOP, b"7.0")]
    assert float(stop_frame(0.25)[5:].decode()) == 0.25


@given(st.lists(st.tuples(st.text(), st.sampled_from(["delivered", "failed", "gave_up"]),
                          st.floats(min_value=0, max_value=1e6, allow_nan=False))),
       st.booleans(), st.lists(st.text()), st.integers(min_value=0, max_value=2**40))
def test_report_round_trip(attempts: list[tuple[str, str, float]], healthy: bool, crashed: list[str],
                           applied: int) -> None:
    sent = Report(tuple(attempts), healthy, tuple(crashed), applied)
    line = report_line(sent)
    assert line.endswith(b"\n")
    assert line.count(b"\n") == 1  # one report, one line
    assert read_report(line.rstrip(b"\n")) == sent


def test_a_report_without_crashed_endpoints_reads_as_none_crashed() -> None:
    assert read_report(b'{"attempts": [["crm", "delivered", 0.01]], "healthy": false}') == Report(
        (("crm", "delivered", 0.01),), False, ())
