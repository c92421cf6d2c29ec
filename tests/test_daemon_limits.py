"""The whole daemon as a subprocess against hostile peers at its HTTP edges: a webhook receiver whose
answer never ends, and a crowd of idle connections to the health port. Neither costs it more than a
bounded share of memory, CPU or file descriptors, nor delays ingestion or another endpoint."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from hostile_server import HostileServer, endless_chunked, wait
from webhook_receiver import Receiver

from tests.daemon import assert_never_blocked
from tests.fakeesl import FakeFreeSWITCH
from tests.test_daemon_webhooks import bodies, expected_ids, send, verified_ids, write_config

MIB = 1024 * 1024
ADDRESS_SPACE = 1024 * MIB
"""The daemon's RLIMIT_AS: about twice what it maps when idle (~470 MiB, most of it thread stacks and
malloc arenas reserved, not used); a reader of a 1 GB body could not stay within it."""


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


def start(config: Path, *limits: str) -> subprocess.Popen[bytes]:
    """The daemon under ``prlimit`` (same pid), its log in a file beside the config."""
    with open(config.parent / "daemon.log", "wb") as out:
        return subprocess.Popen(
            ["prlimit", *limits, "--", sys.executable, "-m", "listener", "run", "--config", str(config)],
            stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )


def status(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {key: value.strip() for key, _, value in (line.partition(":") for line in lines)}


def log(config: Path) -> list[dict[str, object]]:
    lines = (config.parent / "daemon.log").read_text().splitlines()
    assert_never_blocked(lines)
    return [json.loads(line) for line in lines if line.startswith("{")]


@pytest.mark.slow
def test_an_endless_webhook_answer_costs_little_memory_and_delays_no_other_endpoint(
    tmp_path: Path, receiver: Receiver
) -> None:
    flood = HostileServer(default=endless_chunked, budget=None)  # 200, then chunks for ever, fast
    events = bodies(20)
    try:
        with FakeFreeSWITCH() as fake:
            config = write_config(tmp_path, fake, flood.url(), receiver.url())
            daemon = start(config, f"--as={ADDRESS_SPACE}")
            try:
                send(fake.next_session(timeout=15), events)
                while set(verified_ids(receiver)) != expected_ids(events):
                    receiver.get(timeout=15)
                flooded = [wait(flood.requests, timeout=15)[1]["webhook-id"] for _ in events]
                assert daemon.poll() is None
                peak_rss_kib = int(status(daemon.pid)["VmHWM"].split()[0])
                daemon.send_signal(signal.SIGTERM)
                assert daemon.wait(timeout=20) == 0
            finally:
                if daemon.poll() is None:
                    daemon.kill()
                    daemon.wait()
        written = [wait(flood.dropped).written for _ in range(flood.accepted)]
    finally:
        flood.close()
    assert sorted(flooded) == sorted(expected_ids(events))  # each delivered once: a 200 is a 200
    assert max(written) < 16 * MIB  # each answer read 64 KiB at most, its connection then dropped
    assert peak_rss_kib < 150 * 1024  # ~45 MiB on a quiet day
    lines = log(config)
    assert not [line for line in lines if line["level"] in ("error", "critical")]
    assert not [line for line in lines if line["event"] == "webhook.delivery_failed"]
