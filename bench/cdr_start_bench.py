"""Start-up with a CDR directory full of old files: how long until the daemon is up, and the scan.

Fills a folder with ``--old`` files named like mod_json_cdr's (``a_<uuid>.cdr.json``) and modified
a month ago, plus the real CDR files of the test fixtures (``--recent``, modified now: hangups the
daemon never saw). Starts ``hangup-listener run`` with that ``cdr_dir`` (no FreeSWITCH listening: the
scan does not wait for one) and reads its log: the time to ``listener.started`` (start-up), to the
``cdr.scanned`` line of the start scan (``took_s``: the scan itself, in the background after
READY), and the legs it recovered.

usage: python -m bench.cdr_start_bench [--old 200000] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

FIXTURES = Path(__file__).resolve().parents[1] / "tests" / "data" / "fixtures-cdr"


def fill(folder: Path, old: int) -> int:
    month_ago = time.time() - 30 * 86400
    for _ in range(old):
        path = folder / f"a_{uuid.uuid4()}.cdr.json"
        path.write_bytes(b"{}\n")
        os.utime(path, (month_ago, month_ago))
    recent = 0
    for path in sorted(FIXTURES.glob("*/json_cdr/*.cdr.json")):
        shutil.copy(path, folder / path.name)
        recent += 1
    return recent


def run(folder: Path, work: Path) -> dict[str, Any]:
    config = work / "listener.toml"
    config.write_text(f'[[freeswitch]]\nname = "lab"\nport = 1\ncdr_dir = "{folder}"\n'
                      f'[outbox]\npath = "{work / "outbox.sqlite3"}"\nsynchronous = "normal"\n'
                      "[health]\nenabled = false\n")
    started = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "listener", "run", "--config", str(config)],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    result: dict[str, Any] = {}
    assert proc.stdout is not None
    try:
        for raw in proc.stdout:
            line = json.loads(raw)
            if line["event"] == "listener.started":
                result["started_s"] = round(time.monotonic() - started, 3)
            elif line["event"] == "cdr.scanned" and line.get("reason") == "start":
                result["scan_done_s"] = round(time.monotonic() - started, 3)
                result["scan_took_s"] = line["took_s"]
                result["recovered"] = line["recovered"]
                break
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--old", type=int, default=200_000)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder, work = Path(tmp) / "json_cdr", Path(tmp) / "work"
        folder.mkdir()
        work.mkdir()
        filled = time.monotonic()
        recent = fill(folder, args.old)
        report = {"old_files": args.old, "recent_files": recent,
                  "fill_s": round(time.monotonic() - filled, 1), **run(folder, work)}
    print(json.dumps(report))
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
