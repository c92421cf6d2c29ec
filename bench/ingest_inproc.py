"""Ingest speed of the daemon run in this process: first byte written to last ``leg.classified``.

The daemon's own pieces (``App.from_config``: a real ``OutboxWriter`` on a temporary SQLite file;
its one endpoint is down, so the circuit keeps delivery idle: ingest only) read a burst of real
events (``event json``) from the bench's fake FreeSWITCH, its own process as FreeSWITCH is; the
log lines go to ``/dev/null`` through a counter. Reported: events/s; how busy the loop's thread and
the whole process (the loop and the outbox's thread) were, as CPU time over wall time; the
process's CPU time per event.
Much cheaper than ``python -m bench``, for comparing two versions of the ingest path::

    .venv/bin/python -m bench.ingest_inproc --events 20000 --runs 3
"""

from __future__ import annotations

from gevent import monkey

monkey.patch_all()  # as the daemon does, first

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import gevent  # noqa: E402
import gevent.event  # noqa: E402
import gevent.subprocess  # noqa: E402

from listener.app import App  # noqa: E402
from listener.config.settings import Config, HealthConfig, Node, OutboxConfig, WebhookConfig  # noqa: E402
from listener.outbox.store import Outbox  # noqa: E402
from listener.service import logs  # noqa: E402

MARK = '"leg.classified"'
ROOT = Path(__file__).resolve().parent.parent


class Lines:
    """The daemon's stdout: every line written to /dev/null, ``leg.classified`` lines counted."""

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.count = 0
        self.done = gevent.event.Event()
        self._out = open(os.devnull, "w")  # noqa: SIM115 - lives as long as the measure

    def write(self, text: str) -> None:
        self._out.write(text)
        if MARK in text:
            self.count += 1
            if self.count == self.expected:
                self.done.set()

    def flush(self) -> None:
        self._out.flush()


class Feeder:
    """``bench.fakefs`` as a child process, spoken to in JSON lines."""

    def __init__(self) -> None:
        self.proc = gevent.subprocess.Popen(
            [sys.executable, "-m", "bench.fakefs", "1"], cwd=ROOT, stdin=gevent.subprocess.PIPE,
            stdout=gevent.subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(ROOT)})
        self.port = int(self.read()["port"])

    def read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        answer: dict[str, Any] = json.loads(self.proc.stdout.readline())
        return answer

    def tell(self, command: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(command.encode() + b"\n")
        self.proc.stdin.flush()

    def close(self) -> None:
        self.tell("quit")
        self.proc.wait()


def measure(events: int, folder: Path, synchronous: str) -> dict[str, Any]:
    """One burst of ``events`` into a fresh daemon and a fresh outbox; the figures of the docstring."""
    lines = Lines(events)
    logs.configure("info", stream=lines)  # type: ignore[arg-type]
    feeder = Feeder()
    config = Config(
        nodes=(Node("bench", port=feeder.port),), health=HealthConfig(enabled=False),
        outbox=OutboxConfig(folder / "outbox.sqlite3", synchronous=synchronous),
        webhooks=(WebhookConfig(name="down", url="http://127.0.0.1:9/", keys=(b"k" * 32,)),))
    app = App.from_config(config)
    app.start()
    gevent.sleep(0.5)  # connected, subscribed, the core-UUID query answered
    cpu, process = time.thread_time(), time.process_time()
    feeder.tell(f"burst {events}")
    lines.done.wait(timeout=600)
    end, cpu, process = time.monotonic(), time.thread_time() - cpu, time.process_time() - process
    wall = end - feeder.read()["first"]
    app.stop(timeout=10)
    feeder.close()
    return {"events": lines.count, "seconds": round(wall, 3), "events_per_s": round(lines.count / wall),
            "loop_busy": round(cpu / wall, 3), "process_busy": round(process / wall, 3),
            "cpu_us_per_event": round(process / events * 1e6, 1)}


def slow_disk(delay_s: float) -> None:
    """Make every outbox commit take ``delay_s`` longer on the outbox's thread (a slower disk, simulated)."""
    put = Outbox.put
    sleep = monkey.get_original("time", "sleep")  # blocks the outbox's thread, not the loop

    def slow_put(self: Outbox, *args: Any) -> int:
        sleep(delay_s)
        return put(self, *args)

    Outbox.put = slow_put  # type: ignore[method-assign]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=20000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--synchronous", default="full", choices=("full", "normal"))
    parser.add_argument("--disk-delay-ms", type=float, default=0.0,
                        help="added to every outbox commit, on its thread: a slower disk, simulated")
    args = parser.parse_args()
    if args.disk_delay_ms:
        slow_disk(args.disk_delay_ms / 1000)
    results = []
    for _ in range(args.runs):
        with tempfile.TemporaryDirectory() as folder:
            results.append(measure(args.events, Path(folder), args.synchronous))
        print(json.dumps(results[-1]), flush=True)
    rates = sorted(r["events_per_s"] for r in results)
    print(json.dumps({"median_events_per_s": rates[len(rates) // 2]}))


if __name__ == "__main__":
    main()
