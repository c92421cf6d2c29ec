"""Soak: push many events (default 1,000,000) through a running daemon and watch its resources.

A fake FreeSWITCH (tests/fakeesl.py) sends CHANNEL_HANGUP_COMPLETE events as fast as the daemon
takes them (TCP backpressure paces it); the daemon (bench/soak_daemon.py: the real daemon plus a
greenlet counter) classifies each, commits it to its outbox and delivers it as a signed webhook to
a counting receiver in another process. Every few seconds the daemon's RSS, open file descriptors,
threads and greenlets are sampled (with the counts sent / classified / delivered / pending); at the
end a summary says whether anything grew after the warm-up. Everything runs on 127.0.0.1.

usage: .venv/bin/python bench/soak.py [--events 1000000] [--every 5] [--out samples.jsonl]
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


# -- the receiver (its own process: `soak.py --receiver`) -------------------------------------------
class _Count(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    count = 0

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length", "0")))
        type(self).count += 1
        self.send_response(200)
        self.send_header("content-length", "0")
        self.end_headers()

    def do_GET(self) -> None:
        body = str(type(self).count).encode()
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def run_receiver() -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Count)
    server.daemon_threads = True
    print(server.server_address[1], flush=True)
    server.serve_forever()


# -- the driver ---------------------------------------------------------------------------------
def die_with_parent() -> None:
    """In a child, before exec: SIGKILL when the driver dies, however it dies (Linux prctl)."""
    ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as reply:
        return str(reply.read().decode())


def metric(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def proc_stats(pid: int) -> dict[str, int]:
    status = Path(f"/proc/{pid}/status").read_text()
    fields = dict(line.split(":", 1) for line in status.splitlines())
    return {"rss_kb": int(fields["VmRSS"].split()[0]), "threads": int(fields["Threads"]),
            "fds": len(os.listdir(f"/proc/{pid}/fd"))}


def event_bodies(count: int) -> Any:
    from fakeesl import capture_bodies, event_frame  # noqa: PLC0415

    template = capture_bodies("uas_486")[0]
    marker = b"\nUnique-ID: "
    head, rest = template.split(marker, 1)
    tail = rest.split(b"\n", 1)[1]
    for n in range(count):
        yield event_frame(head + marker + f"soak-{n:08d}".encode() + b"\n" + tail)


def soak(events: int, every: float, out: Path | None, daemon_log: Path | None) -> int:
    import gevent  # noqa: PLC0415
    from fakeesl import FakeFreeSWITCH  # noqa: PLC0415

    tmp = Path(tempfile.mkdtemp(prefix="soak-"))
    receiver = subprocess.Popen([sys.executable, __file__, "--receiver"], stdout=subprocess.PIPE,
                                preexec_fn=die_with_parent)  # noqa: PLW1509 - no thread started yet
    assert receiver.stdout is not None
    hook_port = int(receiver.stdout.readline())
    health_port = free_port()
    samples_file = tmp / "greenlets.jsonl"
    with FakeFreeSWITCH() as fake:
        config = tmp / "listener.toml"
        config.write_text(
            f'[[freeswitch]]\nname = "soak"\nport = {fake.port}\n[health]\nport = {health_port}\n'
            f'[outbox]\npath = "{tmp / "outbox.sqlite3"}"\nsynchronous = "normal"\n'
            f'[[webhooks]]\nname = "sink"\nurl = "http://127.0.0.1:{hook_port}/hook"\nsecret = "{SECRET}"\n'
            f"max_concurrency = 8\ntypes = ['leg.classified']\n")
        env = {**os.environ, "SOAK_SAMPLES": str(samples_file), "SOAK_EVERY": str(every)}
        daemon = subprocess.Popen(
            [sys.executable, str(ROOT / "bench" / "soak_daemon.py"), "run", "--config", str(config)],
            stdout=daemon_log.open("wb") if daemon_log else subprocess.DEVNULL, stderr=subprocess.STDOUT,
            env=env, cwd=ROOT, preexec_fn=die_with_parent)  # noqa: PLW1509 - no thread started yet
        session = fake.next_session(timeout=30)
        samples: list[dict[str, Any]] = []
        started = time.monotonic()
        state = {"sent": 0}

        def send_all() -> None:
            batch: list[bytes] = []
            for frame in event_bodies(events):
                batch.append(frame)
                if len(batch) == 200:
                    session.send(b"".join(batch))
                    state["sent"] += len(batch)
                    batch = []
            if batch:
                session.send(b"".join(batch))
                state["sent"] += len(batch)

        sender = gevent.spawn(send_all)

        def take_sample() -> dict[str, Any]:
            def scrape() -> tuple[str, str]:
                return get(f"http://127.0.0.1:{health_port}/metrics"), get(f"http://127.0.0.1:{hook_port}/")
            metrics, received = gevent.get_hub().threadpool.apply(scrape)
            greenlets = samples_file.read_text().splitlines()[-1] if samples_file.exists() else "{}"
            grew = json.loads(greenlets).pop("grew", None)
            if grew:
                print("\n".join(["  grew most:", *grew]), file=sys.stderr, flush=True)
            row = {"t_s": round(time.monotonic() - started, 1), **proc_stats(daemon.pid),
                   **{k: v for k, v in json.loads(greenlets).items() if k not in ("t", "grew")},
                   "sent": state["sent"],
                   "classified": int(metric(metrics, "hangup_listener_calls_classified_total")),
                   "delivered": int(received),
                   "pending": int(metric(metrics, "hangup_listener_outbox_pending_messages"))}
            print(json.dumps(row), flush=True)
            return row

        try:
            while True:
                gevent.sleep(every)  # the sampling period (the stimulus runs meanwhile)
                row = take_sample()
                samples.append(row)
                if daemon.poll() is not None:
                    print(f"daemon exited with {daemon.returncode}", file=sys.stderr)
                    return 1
                if sender.dead and row["classified"] >= events and row["delivered"] >= events \
                        and row["pending"] == 0:
                    break
            elapsed = time.monotonic() - started
            daemon.send_signal(signal.SIGTERM)
            code = daemon.wait(timeout=60)
        finally:
            sender.kill()
            if daemon.poll() is None:
                daemon.kill()
            receiver.kill()
    if out is not None:
        out.write_text("".join(json.dumps(s) + "\n" for s in samples))
    summarize(samples, events, elapsed, code)
    return 0 if code == 0 else 1


def summarize(samples: list[dict[str, Any]], events: int, elapsed: float, code: int) -> None:
    """First / warm / peak / last of each resource; 'grew' compares the last quarter to the second."""
    quarter = max(len(samples) // 4, 1)
    second, last = samples[quarter: 2 * quarter] or samples, samples[-quarter:]
    print(f"\n{events} events in {elapsed:.0f} s ({events / elapsed:.0f}/s), daemon exit {code}, "
          f"{len(samples)} samples")
    print(f"{'':12} {'first':>10} {'2nd qtr':>10} {'peak':>10} {'last qtr':>10}  grew")
    for key in ("rss_kb", "fds", "threads", "greenlets", "gc_objects", "pending"):
        values = [s[key] for s in samples if key in s]
        if not values:
            continue
        mean2 = sum(s.get(key, 0) for s in second) / len(second)
        mean4 = sum(s.get(key, 0) for s in last) / len(last)
        grew = "yes" if mean4 > mean2 * 1.10 + 2 else "no"
        print(f"{key:12} {values[0]:>10} {mean2:>10.0f} {max(values):>10} {mean4:>10.0f}  {grew}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--every", type=float, default=5.0, help="seconds between samples")
    parser.add_argument("--out", type=Path, help="write every sample as JSON lines here")
    parser.add_argument("--daemon-log", type=Path, help="the daemon's output (default: discarded)")
    parser.add_argument("--receiver", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.receiver:
        run_receiver()
        return 0
    return soak(args.events, args.every, args.out, args.daemon_log)


if __name__ == "__main__":
    sys.exit(main())
