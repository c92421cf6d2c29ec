"""The benchmark still runs end to end and every event arrives exactly as classified (not its speed)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_a_small_benchmark_run_completes_and_delivers_every_event_as_classified(tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    run = subprocess.run(
        [sys.executable, "-m", "bench", "--events", "1500", "--latency-rate", "300",
         "--latency-seconds", "2", "--memory-events", "1500", "--backlog-new-rate", "200",
         "--synchronous", "normal", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=100, check=False)
    assert run.returncode == 0, run.stdout + run.stderr
    results = json.loads(out.read_text())
    assert results["correct"] is True
    log = results["ingest_backlog"]["checks"]["log"]
    assert log["seen"] == log["expected"]
    assert results["e2e"]["checks"]["webhooks"]["missing"] == 0
    assert results["latency"]["checks"]["webhooks"]["bad_signatures"] == 0
    assert results["memory"]["checks"]["webhooks"]["ok"] is True
    memory = results["memory"]["memory"]
    assert memory["processes"] == 3  # daemon, classify process, delivery process (the defaults)
    assert len(memory["idle_rss_by_process_mb"]) == 3
    assert 0 < memory["idle_pss_mb"] <= memory["idle_rss_mb"] <= memory["peak_rss_mb"]
