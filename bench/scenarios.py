"""The measurements of issue 6 (and the steady CPU measure), each with its reference taken in the same run;
the idle CPU of a daemon whose receiver is down (issue 15).

Each scenario starts its own processes (fake FreeSWITCH, receiver, daemon) in a fresh temporary
folder and stops them; the daemon is the real thing, ``python -m listener run --config``.
"""

from __future__ import annotations

import sqlite3
import statistics
import time
from array import array
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.corpus import Corpus, Expected
from bench.harness import Child, Daemon, cpu_s, write_config
from bench.verify import Webhooks, check_log, check_webhooks

Result = dict[str, Any]


@dataclass(frozen=True)
class Settings:
    run: int
    folder: Path
    synchronous: str = "full"
    concurrency: int = 16
    timeout: float = 900.0
    types: tuple[str, ...] = ("leg.classified",)
    """The endpoint's ``types`` (the defaults: legs only)."""
    cdr_dir: bool = False
    """Whether the node has a ``cdr_dir`` (an empty folder: the daemon watches it, nothing is recovered)."""


class Setup:
    """A fake FreeSWITCH, a receiver (down until ``listen``) and a daemon between them."""

    def __init__(self, settings: Settings, name: str, *, listening: bool, keep_log: bool = True,
                 milestones: tuple[int, ...] = ()) -> None:
        self.folder = settings.folder / name
        self.folder.mkdir(parents=True)
        self.fake = Child("bench.fakefs", settings.run)
        self.webhooks = self.folder / "webhooks.txt"
        self.receiver = Child("bench.receiver", self.webhooks)
        fake_port, receiver_port = self.fake.read()["port"], self.receiver.read()["port"]
        if listening:
            self.listen()
        cdr_dir = self.folder / "cdr" if settings.cdr_dir else None
        if cdr_dir is not None:
            cdr_dir.mkdir()
        config = write_config(self.folder, fake_port, receiver_port, synchronous=settings.synchronous,
                              concurrency=settings.concurrency, types=settings.types, cdr_dir=cdr_dir)
        self.log = self.folder / "stdout.jsonl" if keep_log else None
        self.daemon = Daemon(config, self.log, milestones)

    def listen(self) -> float:
        started = time.monotonic()
        self.receiver.ask("listen")
        return started

    def close(self) -> int:
        code = self.daemon.stop()
        self.fake.close()
        self.receiver.close()
        return code


@contextmanager
def setup(settings: Settings, name: str, **options: Any) -> Iterator[Setup]:
    s = Setup(settings, name, **options)
    try:
        yield s
    finally:
        s.close()


def bare_greenswitch(settings: Settings, count: int) -> float:
    """Events/s of greenswitch's bare receive loop on the same bytes (first byte written to last handled)."""
    with bare_loop(settings, count) as (fake, bare):
        first = fake.ask(f"burst {count}", settings.timeout)["first"]
        last = bare.read(settings.timeout)["last"]
    return count / (last - first)


@contextmanager
def bare_loop(settings: Settings, count: int) -> Iterator[tuple[Child, Child]]:
    """A fake FreeSWITCH and greenswitch's bare loop connected to it, subscribed, waiting for ``count``."""
    fake = Child("bench.fakefs", settings.run)
    try:
        bare = Child("bench.bare", fake.read()["port"], count)
        try:
            bare.read(timeout=30)  # subscribed
            yield fake, bare
        finally:
            bare.close()
    finally:
        fake.close()


def against_bare(rate: float, before: float, after: float) -> dict[str, int | float]:
    """``rate`` and its ratio to the bare loop measured right before and right after the daemon.

    The reference is their mean: on this shared machine speed drifts from minute to minute, and
    bracketing the daemon's measure cancels a drift that is steady over the three (a single run
    before did not).
    """
    reference = (before + after) / 2
    return {"events_per_s": round(rate), "bare_greenswitch_per_s": round(reference),
            "bare_greenswitch_before_per_s": round(before), "bare_greenswitch_after_per_s": round(after),
            "ratio": round(rate / reference, 2)}


def _delivered(s: Setup, expected: Expected, count: int, timeout: float) -> dict[str, Any]:
    """The receiver's answer once the legs ``0..count`` arrived (its ``last``: the last leg's arrival).

    From a daemon that sends ``call.completed`` (one arrived by then), it also waits for every call
    among them; from one that sends none, only the legs are checked."""
    legs = s.receiver.ask(f"target {count}", timeout)
    if legs["calls"]:
        s.receiver.ask(f"calls {len(expected.corpus.calls_within(0, count))}", timeout)
    return legs


def _verified(s: Setup, expected: Expected, start: int, stop: int) -> tuple[Result, Webhooks]:
    """The checks of the log, of the legs' webhooks (with their arrival times) and of the calls'."""
    result: Result = {}
    if s.log is not None:
        result["log"] = check_log(s.log, expected, start, stop).summary()
    hooks = check_webhooks(s.webhooks, expected, start, stop)
    result.update(hooks.summaries())
    return result, hooks


def ingest_and_backlog(settings: Settings, count: int, new_rate: float, expected: Expected) -> Result:
    """Ingest ``count`` with the receiver down, then start it and drain while ``new_rate``/s keep coming."""
    before = bare_greenswitch(settings, count)
    with setup(settings, "ingest", listening=False, milestones=(count,)) as s:
        first = s.fake.ask(f"burst {count}", settings.timeout)["first"]
        s.daemon.wait_count(count, settings.timeout)
        ingest = count / (s.daemon.reached[count] - first)
        after = bare_greenswitch(settings, count)  # the daemon idle meanwhile
        listened = s.listen()
        s.fake.tell(f"rate {new_rate} {settings.timeout}")
        s.receiver.ask(f"target {count}", settings.timeout)
        time.sleep(1.0)
        s.fake.tell("stop")
        new = s.fake.read()["sent"]
        _delivered(s, expected, count + new, settings.timeout)
        s.daemon.wait_count(count + new, settings.timeout)
        checks, hooks = _verified(s, expected, 0, count + new)
    arrivals = hooks.legs.arrivals
    backlog = [arrivals[i] for i in range(count) if i in arrivals]
    drained = max(backlog) - listened
    during = sum(1 for i, t in arrivals.items() if i >= count and t <= max(backlog))
    return {
        "ingest": {"events": count, **against_bare(ingest, before, after), "target_ratio": 2.0},
        "backlog": {"events": count, "drain_per_s": round(count / drained),
                    "first_delivery_after_s": round(min(backlog) - listened, 3),
                    "new_events_per_s": new_rate, "new_events_delivered_during_drain": during,
                    "target_per_s": 2000},
        "checks": checks,
    }


def end_to_end(settings: Settings, count: int, expected: Expected) -> Result:
    """First byte written to the last webhook received, receiver up from the start."""
    before = bare_greenswitch(settings, count)
    with setup(settings, "e2e", listening=True, milestones=(count,)) as s:
        first = s.fake.ask(f"burst {count}", settings.timeout)["first"]
        last = _delivered(s, expected, count, settings.timeout)["last"]
        s.daemon.wait_count(count, settings.timeout)
        logged = s.daemon.reached[count]
        checks, _ = _verified(s, expected, 0, count)
    rate = count / (last - first)
    return {
        "end_to_end": {"events": count, **against_bare(rate, before, bare_greenswitch(settings, count)),
                       "target_ratio": 1.0,
                       "ingest_while_delivering_per_s": round(count / (logged - first))},
        "checks": checks,
    }


def _percentile(values: list[float], q: float) -> float:
    if len(values) < 2:
        return values[0]
    return statistics.quantiles(values, n=1000, method="inclusive")[int(q * 10) - 1]


def latency(settings: Settings, per_s: float, seconds: float, expected: Expected) -> Result:
    """Write to the socket -> webhook arrival, at a steady rate."""
    with setup(settings, "latency", listening=True) as s:
        times_file = s.folder / "write_times.bin"
        sent = s.fake.ask(f"rate {per_s} {seconds} {times_file}", seconds + settings.timeout)
        count = sent["sent"]
        _delivered(s, expected, count, settings.timeout)
        s.daemon.wait_count(count, settings.timeout)
        checks, hooks = _verified(s, expected, 0, count)
    written = array("d")
    with times_file.open("rb") as f:
        written.fromfile(f, count)
    arrivals = hooks.legs.arrivals
    ms = sorted((arrivals[i] - written[i]) * 1000 for i in range(count) if i in arrivals)
    return {
        "latency": {"events": count, "events_per_s": round(count / (sent["last"] - sent["first"])),
                    "p50_ms": round(_percentile(ms, 50), 1), "p99_ms": round(_percentile(ms, 99), 1),
                    "max_ms": round(ms[-1], 1), "target_p99_ms": 50},
        "checks": checks,
    }


def memory(settings: Settings, count: int) -> Result:
    """Peak RSS over ``count`` events ingested at full speed, RSS at the end against after the first tenth.

    The daemon is one process: its VmHWM (peak RSS), read after everything was delivered. Also
    recorded: its RSS idle, once connected and before the first event (the floor no working set
    goes under).

    The receiver is down during the burst (the circuit keeps delivery idle; at full ingest speed
    delivery would otherwise lag far behind); it is started afterwards and everything delivered.
    """
    early = max(count // 10, 1)
    with setup(settings, "memory", listening=False, keep_log=False, milestones=(early, count)) as s:
        s.fake.ask("connected", settings.timeout)
        idle = s.daemon.settled()
        first = s.fake.ask(f"burst {count}", settings.timeout * 4)["first"]
        s.daemon.wait_count(count, settings.timeout * 4)
        ingested = s.daemon.reached[count]
        time.sleep(1.0)
        end = s.daemon.rss()
        at_early = s.daemon.rss_at[early]["VmRSS"]
        s.listen()
        done = s.receiver.ask(f"target {count}", settings.timeout * 4)
        delivered = s.daemon.rss()  # the peak now includes the delivery of everything
    return {
        "memory": {"events": count, "peak_rss_mb": _mb(delivered["VmHWM"]),
                   "rss_after_first_tenth_mb": _mb(at_early), "first_tenth": early,
                   "rss_end_mb": _mb(end["VmRSS"]),
                   "growth_pct": round((end["VmRSS"] - at_early) / at_early * 100, 1),
                   "idle_rss_mb": _mb(idle["VmRSS"]),
                   "ingest_per_s": round(count / (ingested - first)),
                   "target_peak_mb": 60, "target_growth_pct": 10},
        "checks": {"webhooks": {"expected": count, "unique": done["unique"], "requests": done["requests"],
                                "ok": done["unique"] == count}},
    }


def _mb(kb: int) -> float:
    return round(kb / 1024, 1)


def steady(settings: Settings, per_s: float, seconds: float, expected: Expected, name: str = "steady",
           ) -> Result:
    """CPU time per hangup at a steady rate: the daemon (ingest, commit, delivery) against bare greenswitch.

    The daemon's window runs from just before the first event is written until the last webhook
    was received and its row left the outbox (the 2xx recorded): everything each hangup costs it.
    The reference is greenswitch's bare loop fed the same events at the same rate, right before
    and right after the daemon (their mean, as for ingest). CPU is user + system time of the one
    process, all its threads (``/proc/<pid>/stat``); its peak RSS is read at the end.
    """
    whole = expected.corpus.whole(int(per_s * seconds))  # what the fake writes: whole calls
    before = bare_cpu(settings, per_s, seconds, whole)
    with setup(settings, name, listening=True) as s:
        s.fake.ask("connected", settings.timeout)
        idle = s.daemon.settled()
        started, cpu, threads = time.monotonic(), s.daemon.cpu_s(), s.daemon.threads_cpu_s()
        sent = s.fake.ask(f"rate {per_s} {seconds}", seconds + settings.timeout)
        count = sent["sent"]
        received = _delivered(s, expected, count, settings.timeout)
        s.daemon.wait_count(count, settings.timeout)
        left = outbox_emptied(s.folder / "outbox.sqlite3", settings.timeout)
        cpu, wall = s.daemon.cpu_s() - cpu, time.monotonic() - started
        split = thread_split(s.daemon.proc.pid, threads, s.daemon.threads_cpu_s(), count)
        rss = s.daemon.rss()
        checks, _ = _verified(s, expected, 0, count)
    after = bare_cpu(settings, per_s, seconds, whole)
    reference = (before["cpu_ms_per_event"] + after["cpu_ms_per_event"]) / 2
    daemon_ms = cpu / count * 1000
    checks["outbox"] = {"left": left, "received": received["unique"], "ok": left == 0}
    return {
        "steady": {"events": count, "events_per_s": round(count / (sent["last"] - sent["first"]), 1),
                   "daemon_cpu_ms_per_event": round(daemon_ms, 3), "daemon_cpu_s": round(cpu, 2),
                   "daemon_window_s": round(wall, 2), "daemon_core_share": round(cpu / wall, 3),
                   "daemon_threads_ms_per_event": split,
                   "bare_greenswitch_cpu_ms_per_event": round(reference, 3),
                   "bare_greenswitch_before": before, "bare_greenswitch_after": after,
                   "ratio": round(daemon_ms / reference, 2), "target_ratio": 1.5,
                   "peak_rss_mb": _mb(rss["VmHWM"]), "idle_rss_mb": _mb(idle["VmRSS"]),
                   "rss_end_mb": _mb(rss["VmRSS"])},
        "checks": checks,
    }


def thread_split(pid: int, before: dict[int, float], after: dict[int, float], count: int,
                 ) -> dict[str, Any]:
    """The daemon's CPU per event by thread: ``loop`` (the main thread: gevent, parsing, classifying, the
    log lines' rendering, HTTP) and the others, busiest first (the first is the outbox's SQLite thread,
    the only other one with steady work; then the log writer's). Clock ticks are 10 ms: at 20/s over
    60 s one tick is 0.008 ms an event."""
    spent = {tid: (cpu - before.get(tid, 0.0)) * 1000 / count for tid, cpu in after.items()}
    loop = spent.pop(pid, 0.0)
    return {"loop": round(loop, 3), "others": [round(ms, 3) for ms in sorted(spent.values(), reverse=True)
                                                if ms > 0]}


def idle_connected(settings: Settings, seconds: float) -> Result:
    """The daemon's CPU while connected to a FreeSWITCH that sends nothing, its receiver up: a quiet night.

    Its CPU time (user + system, all threads) over ``seconds`` after it settled (connected,
    subscribed, RSS steady), also each slice of at most a minute.
    """
    with setup(settings, "connected", listening=True) as s:
        s.fake.ask("connected", settings.timeout)
        idle = s.daemon.settled()
        wall, total, slices, step = _cpu_slices(s.daemon, seconds)
        rss = s.daemon.rss()
    return {
        "idle_connected": {"seconds": round(wall, 1), "daemon_cpu_s": round(total, 2),
                           "core_share": round(total / wall, 4), "cpu_s_each_slice": slices,
                           "slice_s": step, "idle_rss_mb": _mb(idle["VmRSS"]),
                           "rss_end_mb": _mb(rss["VmRSS"]), "target_core_share": 0.005},
        "checks": {"connected": {"ok": True}},
    }


def _cpu_slices(daemon: Daemon, seconds: float) -> tuple[float, float, list[float], float]:
    """The daemon's CPU time over ``seconds`` from now, read every minute (or ``seconds``, if shorter):
    (wall seconds, CPU seconds, the CPU seconds of each slice, the slice's length)."""
    started, cpu = time.monotonic(), daemon.cpu_s()
    slices, last = [], cpu
    step = min(60.0, seconds)
    while (mark := started + step * (len(slices) + 1)) <= started + seconds + 0.001:
        time.sleep(max(mark - time.monotonic(), 0.0))
        now = daemon.cpu_s()
        slices.append(round(now - last, 2))
        last = now
    return time.monotonic() - started, last - cpu, slices, step


def bare_cpu(settings: Settings, per_s: float, seconds: float, count: int) -> dict[str, float]:
    """CPU time per event of greenswitch's bare loop, fed ``per_s`` events/s for ``seconds``.

    ``count`` is how many events that makes: whole calls, as the fake writes them."""
    with bare_loop(settings, count) as (fake, bare):
        cpu = cpu_s(bare.proc.pid)
        fake.ask(f"rate {per_s} {seconds}", seconds + settings.timeout)
        bare.read(settings.timeout)  # the last event handled; it waits for ``quit`` to exit
        cpu = cpu_s(bare.proc.pid) - cpu
    return {"events": count, "cpu_s": round(cpu, 2), "cpu_ms_per_event": round(cpu / count * 1000, 3)}


def outbox_emptied(path: Path, timeout: float) -> int:
    """Wait until the outbox holds no undelivered row (every 2xx recorded); the rows left at the deadline.

    Delivered rows are kept (``[outbox] keep_delivered_hours``) and do not count."""
    deadline = time.monotonic() + timeout
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5.0)
    try:
        undelivered = "SELECT count(*) FROM delivery WHERE state != 'delivered'"
        while (left := int(db.execute(undelivered).fetchone()[0])) \
                and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        db.close()
    return left


def idle_down(settings: Settings, rows: int, seconds: float, expected: Expected) -> Result:
    """The daemon's CPU while its receiver is down (refused) with a few rows pending: a quiet night.

    ``rows`` hangups are ingested with the receiver refusing connections, then nothing happens for
    ``seconds``: the daemon's circuit is open and its rows wait for their next retry. Its CPU time
    (user + system, all threads) is read at the start and then every minute (or ``seconds``, if
    shorter). Checked: every row is still pending (none lost, none sent: the receiver never listened).
    """
    with setup(settings, "idle", listening=False) as s:
        s.fake.ask("connected", settings.timeout)
        idle = s.daemon.settled()
        s.fake.ask(f"burst {rows}", settings.timeout)
        s.daemon.wait_count(rows, settings.timeout)
        wall, total, slices, step = _cpu_slices(s.daemon, seconds)
        pending, attempts = outbox_rows(s.folder / "outbox.sqlite3")
        checks, hooks = _verified(s, expected, 0, rows)
        checks["webhooks"] = {"received": hooks.received, "ok": hooks.received == 0}  # it never listened
    checks["outbox"] = {"pending": pending, "expected": rows, "ok": pending == rows}
    return {
        "idle_down": {"rows": rows, "seconds": round(wall, 1), "daemon_cpu_s": round(total, 2),
                      "cpu_s_per_minute": round(total / wall * 60, 2),
                      "core_share": round(total / wall, 4), "cpu_s_each_slice": slices,
                      "slice_s": step, "attempts": attempts, "idle_rss_mb": _mb(idle["VmRSS"])},
        "checks": checks,
    }


def outbox_rows(path: Path) -> tuple[int, int]:
    """Pending delivery rows in the outbox and the attempts made on the undelivered rows so far (as when
    delivered rows were deleted)."""
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5.0)
    try:
        pending, attempts = db.execute(
            "SELECT sum(state = 'pending'), coalesce(sum(attempts), 0) FROM delivery"
            " WHERE state != 'delivered'").fetchone()
    finally:
        db.close()
    return int(pending or 0), int(attempts)


def quick_corpus(run: int) -> tuple[Corpus, Expected]:
    corpus = Corpus(run)
    return corpus, Expected(corpus)
