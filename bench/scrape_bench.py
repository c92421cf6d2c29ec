"""Ingest while /metrics is scraped often with a large backlog pending: the commit thread's share.

Fills an outbox with ``--pending`` undelivered rows, then commits hangups (batches of 50, as the
pipeline does under load) for ``--seconds`` while a greenlet scrapes ``--rate`` times a second.
Three runs: no scrapes (the reference), scrapes as 0.2.0-dev did them (``Outbox.stats``, a GROUP BY
over the whole outbox, on the writer's thread: every commit waits behind it), and scrapes as the
daemon does now (``OutboxReader``: its own read-only connection and thread, at most every 2 s).

usage: python -m bench.scrape_bench [--pending 300000] [--seconds 10] [--rate 10] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gevent

from listener.config.settings import WebhookConfig
from listener.outbox.reader import OutboxReader
from listener.outbox.store import Entry, Outbox
from listener.outbox.writer import OutboxWriter

HOOK = WebhookConfig(name="crm", url="http://127.0.0.1:9/hook", keys=(b"k" * 32,))
BODY = json.dumps({"status": "answered", "caller_number": "+4930123456", "padding": "x" * 600})


def doc(n: int) -> dict[str, Any]:
    return {"id": f"live-{n}", "status": "answered", "leg": "a", "direction": "inbound", "padding": "x" * 600}


def fill(path: Path, pending: int) -> None:
    outbox = Outbox.open(path, synchronous="normal")
    for start in range(0, pending, 10_000):
        outbox.put([Entry(f"old-{n}", BODY, ("crm",)) for n in range(start, min(start + 10_000, pending))],
                   time.time())
    outbox.close()


def ingest(path: Path, seconds: float, rate: float, scrape: str) -> dict[str, Any]:
    writer = OutboxWriter(Outbox.open(path, synchronous="normal"), [HOOK])
    reader = OutboxReader(path)
    scrapes = {"none": None,
               "commit_thread": lambda: writer.call(writer.outbox.stats, time.time()),
               "reader": reader.stats}[scrape]
    done, scraped = 0, 0

    def scraper(fn: Callable[[], Any]) -> None:
        nonlocal scraped
        while True:
            fn()
            scraped += 1
            gevent.sleep(1 / rate)

    looping = gevent.spawn(scraper, scrapes) if scrapes is not None else None
    started = time.perf_counter()
    cpu = time.process_time()
    while time.perf_counter() - started < seconds:
        writer.put([doc(done + i) for i in range(50)])
        done += 50
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    if looping is not None:
        looping.kill()
    reader.close()
    writer.close()
    return {"scrape": scrape, "hangups_per_s": round(done / elapsed), "scrapes": scraped,
            "cpu_s": round(cpu, 2), "seconds": round(elapsed, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pending", type=int, default=300_000)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rate", type=float, default=10.0, help="scrapes per second")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "outbox.sqlite3"
        fill(path, args.pending)
        for scrape in ("none", "commit_thread", "reader"):
            results.append(ingest(path, args.seconds, args.rate, scrape))
            print(json.dumps(results[-1]), flush=True)
    report = {"pending": args.pending, "rate": args.rate, "runs": results}
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
