"""The whole daemon as a subprocess against hostile peers at its HTTP edges: a webhook receiver whose
answer never ends, and a crowd of idle connections to the health port. Neither costs it more than a
bounded share of memory, CPU or file descriptors, nor delays ingestion or another endpoint."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import IO, Any

import gevent.socket
import pytest
from hostile_server import HostileServer, endless_chunked, wait
from webhook_receiver import Receiver

from listener.service.health import MAX_CONNECTIONS
from tests.daemon import fetch
from tests.fakeesl import FakeFreeSWITCH
from tests.test_daemon_webhooks import bodies, expected_ids, send, verified_ids, write_config
from tests.test_health import closed_by_server

MIB = 1024 * 1024
ADDRESS_SPACE = 1024 * MIB
"""The daemon's RLIMIT_AS: about twice what it maps when idle (~470 MiB, most of it thread stacks and
malloc arenas reserved, not used); a reader of a 1 GB body could not stay within it."""


class Log:
    """The daemon's JSON log lines, read on a thread as they are flushed, waited for with timeouts."""

    def __init__(self, stream: IO[bytes]) -> None:
        self.lines: list[dict[str, Any]] = []
        self._queue: queue.Queue[dict[str, Any] | None] = queue.Queue()
        threading.Thread(target=self._read, args=(stream,), daemon=True).start()

    def _read(self, stream: IO[bytes]) -> None:
        for line in stream:
            if line.startswith(b"{"):
                self._queue.put(json.loads(line))
        self._queue.put(None)

    def expect(self, event: str, timeout: float = 15) -> dict[str, Any]:
        """The next line with ``event``; every line read is kept in ``lines``."""
        while True:
            entry = wait(self._queue, timeout)
            assert entry is not None, f"the daemon exited before {event}"
            self.lines.append(entry)
            assert entry["event"] != "loop.blocked", f"the daemon's loop was blocked: {entry}"
            if entry["event"] == event:
                return entry

    def rest(self) -> list[dict[str, Any]]:
        """Every line, once the daemon has exited; none may say its loop was blocked."""
        while (entry := wait(self._queue)) is not None:
            self.lines.append(entry)
        assert not [e for e in self.lines if e["event"] == "loop.blocked"]
        return self.lines


def start(config: Path, *limits: str) -> tuple[subprocess.Popen[bytes], Log]:
    """The daemon under ``prlimit`` (same pid), and its log."""
    daemon = subprocess.Popen(
        ["prlimit", *limits, "--", sys.executable, "-m", "listener", "run", "--config", str(config)],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert daemon.stdout is not None
    return daemon, Log(daemon.stdout)


def stop(daemon: subprocess.Popen[bytes]) -> None:
    """SIGTERM: the daemon exits 0 (else it is killed, and the test fails)."""
    try:
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(timeout=20) == 0
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait()


def status(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {key: value.strip() for key, _, value in (line.partition(":") for line in lines)}


@pytest.mark.slow
def test_an_endless_webhook_answer_costs_little_memory_and_delays_no_other_endpoint(
    tmp_path: Path, receiver: Receiver
) -> None:
    flood = HostileServer(default=endless_chunked, budget=None)  # 200, then chunks for ever, fast
    events = bodies(20)
    try:
        with FakeFreeSWITCH() as fake:
            daemon, log = start(write_config(tmp_path, fake, flood.url(), receiver.url()),
                                f"--as={ADDRESS_SPACE}")
            try:
                send(fake.next_session(timeout=15), events)
                while set(verified_ids(receiver)) != expected_ids(events):
                    receiver.get(timeout=15)
                flooded = [wait(flood.requests, timeout=15)[1]["webhook-id"] for _ in events]
                assert daemon.poll() is None
                peak_rss_kib = int(status(daemon.pid)["VmHWM"].split()[0])
            finally:
                stop(daemon)
        written = [wait(flood.dropped).written for _ in range(flood.accepted)]
    finally:
        flood.close()
    assert sorted(flooded) == sorted(expected_ids(events))  # each delivered once: a 200 is a 200
    assert max(written) < 16 * MIB  # each answer read 64 KiB at most, its connection then dropped
    assert peak_rss_kib < 150 * 1024  # ~40 MiB seen
    lines = log.rest()
    assert not [line for line in lines if line["level"] in ("error", "critical")]
    assert not [line for line in lines if line["event"] == "webhook.delivery_failed"]


@pytest.mark.slow
def test_a_crowd_of_idle_health_connections_leaves_the_daemon_its_file_descriptors(
    tmp_path: Path, receiver: Receiver
) -> None:
    """1,100 connections that send nothing, under the usual limit of 1,024 open files: the daemon
    holds at most 64 of them (5 s each), closes the rest at once, and keeps ingesting and delivering."""
    events = bodies(1)
    with FakeFreeSWITCH() as fake:
        daemon, log = start(write_config(tmp_path, fake, receiver.url()), "--nofile=1024")
        try:
            port = log.expect("health.listening")["port"]
            session = fake.next_session(timeout=15)
            crowd = [gevent.socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(1100)]
            fds = len(os.listdir(f"/proc/{daemon.pid}/fd"))
            send(session, events)
            log.expect("leg.classified")  # logged once committed to the outbox
            assert {receiver.get(timeout=15).webhook_id} == expected_ids(events)  # delivered: a new socket
            for sock in crowd:
                closed_by_server(sock)  # the idle ones after 5 s, the rest at once
            livez = fetch(port, "/livez")
        finally:
            stop(daemon)
    assert fds < MAX_CONNECTIONS + 40  # ~20 of its own
    assert livez[0] == 200
    assert not [line for line in log.rest() if line["level"] in ("error", "critical")]
