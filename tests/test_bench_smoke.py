"""The benchmark still runs end to end and every event arrives exactly as classified (not its speed)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench.harness import write_config

ROOT = Path(__file__).resolve().parent.parent


def test_the_benchmark_configuration_is_valid_and_sets_no_removed_key(tmp_path: Path) -> None:
    config = write_config(tmp_path, 8021, 8080, synchronous="full", concurrency=16)
    check = subprocess.run([sys.executable, "-m", "listener", "check-config", "--config", str(config)],
                           cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)
    assert check.returncode == 0, check.stderr
    assert "warning" not in check.stderr


@pytest.mark.slow
def test_a_small_benchmark_run_completes_and_delivers_every_event_as_classified(tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    run = subprocess.run(
        [sys.executable, "-m", "bench", "--only", "ingest", "e2e", "latency", "memory", "steady",
         "--events", "1500", "--latency-rate", "300",
         "--latency-seconds", "2", "--memory-events", "1500", "--backlog-new-rate", "200",
         "--steady-rate", "200", "--steady-seconds", "2", "--synchronous", "normal", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=110, check=False)
    assert run.returncode == 0, run.stdout + run.stderr
    results = json.loads(out.read_text())
    assert results["correct"] is True
    log = results["ingest_backlog"]["checks"]["log"]
    assert log["seen"] == log["expected"]
    assert results["e2e"]["checks"]["webhooks"]["missing"] == 0
    assert results["latency"]["checks"]["webhooks"]["bad_signatures"] == 0
    assert results["memory"]["checks"]["webhooks"]["ok"] is True
    memory = results["memory"]["memory"]
    assert 0 < memory["idle_rss_mb"] <= memory["peak_rss_mb"]
    steady = results["steady"]
    # 200/s for 2 s, then the call in progress finished: whole calls only
    assert steady["checks"]["webhooks"]["seen"] == steady["checks"]["webhooks"]["expected"] == 401
    assert steady["checks"]["outbox"]["left"] == 0
    figures = steady["steady"]
    assert figures["daemon_cpu_ms_per_event"] > 0
    assert figures["bare_greenswitch_cpu_ms_per_event"] > 0
    assert 0 < figures["idle_rss_mb"] <= figures["peak_rss_mb"]
    split = figures["daemon_threads_ms_per_event"]  # by thread: the loop, then the others (SQLite first)
    assert split["loop"] > 0
    assert split["loop"] + sum(split["others"]) <= figures["daemon_cpu_ms_per_event"] + 0.1  # 10 ms ticks


@pytest.mark.slow
def test_the_other_rates_the_cdr_and_both_types_row_and_idle_connected_run_and_deliver_every_event(
        tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    run = subprocess.run(
        [sys.executable, "-m", "bench", "--only", "rates", "steady-cdr", "connected", "--rates", "50", "400",
         "--steady-rate", "200", "--steady-seconds", "2", "--connected-seconds", "2",
         "--synchronous", "normal", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=110, check=False)
    assert run.returncode == 0, run.stdout + run.stderr
    results = json.loads(out.read_text())
    assert results["correct"] is True
    for key in ("steady_50", "steady_400", "steady_cdr"):  # each with its own reference at its rate
        figures = results[key]["steady"]
        assert results[key]["checks"]["outbox"]["left"] == 0
        assert figures["daemon_cpu_ms_per_event"] > 0
        assert figures["bare_greenswitch_cpu_ms_per_event"] > 0
    assert results["steady_400"]["steady"]["events_per_s"] > results["steady_50"]["steady"]["events_per_s"]
    assert results["steady_cdr"]["checks"]["calls"]["missing"] == 0  # both types: the calls arrived too
    assert "calls" not in results["steady_50"]["checks"]  # the defaults: legs only
    connected = results["idle_connected"]["idle_connected"]
    assert connected["seconds"] >= 2
    assert 0 <= connected["core_share"] < 1
