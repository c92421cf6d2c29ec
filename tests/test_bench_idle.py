"""The bench's idle scenario runs, and the real daemon with its receiver down does not spin.

A busy loop is a bug, not a speed: a daemon with a refused receiver and a few rows pending must
use next to no CPU while it waits. Before the fix its loop spun from each probe time until the next
row was due (about 4 of the first 10 s here). The bound is far above the fixed daemon's (well
under 1% of a core) so that a busy machine does not fail it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_a_daemon_whose_receiver_is_down_does_not_spin_while_rows_wait(tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    run = subprocess.run(
        [sys.executable, "-m", "bench", "--only", "idle", "--idle-rows", "4", "--idle-seconds", "10",
         "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=90, check=False)
    assert run.returncode == 0, run.stdout + run.stderr
    results = json.loads(out.read_text())
    idle = results["idle"]
    assert idle["checks"]["outbox"] == {"pending": 4, "expected": 4, "ok": True}  # two whole calls
    assert idle["checks"]["webhooks"]["received"] == 0
    assert idle["idle_down"]["attempts"] >= 4  # the rows were tried and wait for their retry
    assert idle["idle_down"]["core_share"] < 0.1
