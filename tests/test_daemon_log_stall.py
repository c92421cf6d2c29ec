"""The whole daemon with a stdout nobody reads. With webhooks configured, calls are still read,
stored and delivered, ``/livez`` still answers; the log lines that did not fit are dropped, counted
and reported once stdout is read again. Without webhooks (the log is the only output), ingestion
pauses while ``/livez`` still answers, and once stdout is read again no line is missing."""

from __future__ import annotations

import json
import re
import signal
import time
from pathlib import Path
from typing import Any

import gevent
import pytest
from webhook_receiver import Receiver

from listener.service import logs
from tests.daemon import Daemon, fetch
from tests.fakeesl import FakeFreeSWITCH, Session
from tests.test_daemon_webhooks import bodies, expected_ids, send, verified_ids, write_config

CALLS = 4_500
"""More ``leg.classified`` lines (about 1.1 KB each) than the pipe (64 KiB) and the buffer hold."""


def metric(port: int, name: str) -> float:
    """The sum of a metric's samples in ``/metrics`` (0 without any)."""
    status, body = fetch(port, "/metrics")
    assert status == 200
    found = re.findall(rf"^{name}(?:{{[^}}]*}})? (\S+)$".encode(), body, re.MULTILINE)
    return sum(float(value) for value in found)


def dropped_total(port: int) -> float:
    status, body = fetch(port, "/metrics")
    assert status == 200
    found = re.search(rb"^hangup_listener_log_lines_dropped_total (\S+)$", body, re.MULTILINE)
    assert found, "no hangup_listener_log_lines_dropped_total"
    return float(found.group(1))


def readiness(port: int) -> dict[str, Any]:
    report: dict[str, Any] = json.loads(fetch(port, "/readyz")[1])
    return report


def started_daemon(config: Path, fake: FakeFreeSWITCH) -> tuple[Daemon, int, Session]:
    """The daemon, its health port and its ESL session, its start-up lines read."""
    daemon = Daemon(config)
    port = daemon.expect("health.listening")["port"]
    session = fake.next_session(timeout=15)
    if not any('"esl.connected"' in line for line in daemon.output):  # either may come first
        daemon.expect("esl.connected")
    return daemon, port, session


@pytest.mark.slow
def test_with_webhooks_a_stdout_nobody_reads_drops_log_lines_never_calls(
    tmp_path: Path, receiver: Receiver
) -> None:
    assert CALLS * 1_000 > logs.CAPACITY + (64 << 10)
    events = bodies(CALLS)
    with FakeFreeSWITCH() as fake:
        daemon, port, session = started_daemon(write_config(tmp_path, fake, receiver.url()), fake)
        try:
            started = time.monotonic()
            sending = gevent.spawn(send, session, events)  # from now on nobody reads the daemon's stdout
            for _ in events:
                receiver.get(timeout=15)
            delivered_in = time.monotonic() - started
            sending.get(timeout=5)
            assert fetch(port, "/livez")[0] == 200
            ready = readiness(port)
            assert ready["ready"] is True
            assert not ready["log"]["ok"]
            assert "log lines dropped" in ready["log"]["details"]
            dropped = dropped_total(port)
            assert dropped > 0
            report = daemon.expect("log.lines_dropped")  # stdout is read again
            assert report["count"] == dropped
            daemon.send(signal.SIGTERM)
            assert daemon.finish() == 0
        finally:
            daemon.kill()
    assert set(verified_ids(receiver)) == expected_ids(events)
    logged = sum('"leg.classified"' in line for line in daemon.output)
    assert logged + dropped == CALLS
    print(f"{CALLS} calls delivered in {delivered_in:.1f}s with stdout unread; {dropped:.0f} lines dropped")


@pytest.mark.slow
def test_without_webhooks_a_stdout_nobody_reads_pauses_ingestion_and_loses_no_line(tmp_path: Path) -> None:
    calls = 6_000
    fit = (logs.CAPACITY + (64 << 10)) // 1_200  # fewer than the leg.classified lines that fit
    events = bodies(calls)
    with FakeFreeSWITCH() as fake:
        config = tmp_path / "listener.toml"
        config.write_text(f'[[freeswitch]]\nname = "lab"\nport = {fake.port}\n[health]\nport = 0\n')
        daemon, port, session = started_daemon(config, fake)
        try:
            sending = gevent.spawn(send, session, events)  # from now on nobody reads the daemon's stdout
            with gevent.Timeout(30, AssertionError("the daemon never filled its log buffer")):
                while metric(port, "hangup_listener_calls_classified_total") < fit:
                    pass
            assert fetch(port, "/livez")[0] == 200
            assert metric(port, "hangup_listener_calls_classified_total") < calls  # paused
            ready = readiness(port)
            assert ready["ready"] is False
            assert "ingestion paused" in ready["log"]["details"]
            classified = 0
            while classified < calls:  # stdout is read again
                daemon.expect("leg.classified")
                classified += 1
            sending.get(timeout=5)
            assert dropped_total(port) == 0
            daemon.send(signal.SIGTERM)
            assert daemon.finish() == 0
        finally:
            daemon.kill()
    assert not [line for line in daemon.output if '"log.lines_dropped"' in line]
    entries = [json.loads(line) for line in daemon.output if '"leg.classified"' in line]
    logged = [entry["leg"]["channel_uuid"] for entry in entries]
    assert len(set(logged)) == len(logged) == calls
