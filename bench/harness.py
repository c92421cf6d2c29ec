"""The processes of a benchmark run: the fake FreeSWITCH, the receiver, greenswitch's loop, the daemon.

Every process talks JSON lines; times are ``time.monotonic()``, which on Linux is one clock for
every process of the machine, so a write time in one process and an arrival time in another
subtract. The daemon's stdout is read in big chunks on a thread: counting ``leg.classified``
lines must not become the bottleneck.
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
MARK = b'"leg.classified"'


class Child:
    """A helper process (``python -m bench.X``) spoken to in JSON lines."""

    def __init__(self, module: str, *args: object, stderr: int | None = None) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", module, *map(str, args)], cwd=ROOT, stderr=stderr,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(ROOT)})
        self._lines: queue.Queue[bytes] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._lines.put(line)
        self._lines.put(b"")

    def tell(self, command: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(command.encode() + b"\n")
        self.proc.stdin.flush()

    def read(self, timeout: float = 600) -> dict[str, Any]:
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError(f"{self.proc.args[2]}: no answer within {timeout:g}s") from None
        if not line:
            raise RuntimeError(f"{self.proc.args[2]} exited ({self.proc.wait()})")
        result: dict[str, Any] = json.loads(line)
        return result

    def ask(self, command: str, timeout: float = 600) -> dict[str, Any]:
        self.tell(command)
        return self.read(timeout)

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.tell("quit")
                self.proc.wait(timeout=5)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()


def rss_kb(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (the peak) of a process, in kB."""
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, rest = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            values[name] = int(rest.split()[0])
    return values


def cpu_s(pid: int) -> float:
    """CPU time (user + system) of a process so far, all its threads, in seconds (``/proc/<pid>/stat``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime, stime: fields 14 and 15


def threads_cpu_s(pid: int) -> dict[int, float]:
    """CPU time (user + system) of each thread of a process so far, by thread id (the main thread's id is
    ``pid``); a thread that ended meanwhile is left out."""
    times = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        times[int(task.name)] = (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
    return times


def children(pid: int) -> list[int]:
    """The direct children of ``pid``: the daemon has none (what is measured is one process)."""
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(child) for child in text.split()]


def write_config(folder: Path, esl_port: int, receiver_port: int, *, synchronous: str,
                 concurrency: int, types: tuple[str, ...] = ("leg.classified",),
                 cdr_dir: Path | None = None) -> Path:
    """The daemon's configuration: one node, one endpoint taking ``types``; ``cdr_dir`` set when given."""
    config = folder / "listener.toml"
    cdr = f'cdr_dir = "{cdr_dir}"\n' if cdr_dir is not None else ""
    config.write_text(
        f'[[freeswitch]]\nname = "bench"\nport = {esl_port}\n{cdr}'
        "[esl]\nbackoff_initial = 0.1\nbackoff_max = 1.0\n"
        "[health]\nenabled = false\n"
        f'[outbox]\npath = "{folder / "outbox.sqlite3"}"\nsynchronous = "{synchronous}"\n'
        f'[[webhooks]]\nname = "receiver"\nurl = "http://127.0.0.1:{receiver_port}/hook"\n'
        f'secret = "{SECRET}"\nmax_concurrency = {concurrency}\ntypes = {json.dumps(list(types))}\n'
    )
    return config


class Daemon:
    """``python -m listener run --config``; counts its ``leg.classified`` lines as they are flushed."""

    def __init__(self, config: Path, log_path: Path | None, milestones: tuple[int, ...] = ()) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "listener", "run", "--config", str(config)], cwd=ROOT,
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env={**os.environ, "PYTHONPATH": str(ROOT)})
        self.count = 0
        self.reached: dict[int, float] = {}
        self.rss_at: dict[int, dict[str, int]] = {}
        self._milestones = sorted(milestones)
        self._log_path = log_path
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        out = open(self._log_path, "wb", buffering=0) if self._log_path else None  # noqa: SIM115
        tail = b""
        try:
            while chunk := os.read(fd, 1 << 20):
                if out is not None:
                    out.write(chunk)
                data = tail + chunk if tail else chunk
                cut = data.rfind(b"\n") + 1
                tail = data[cut:]
                self._counted(data.count(MARK, 0, cut))
        finally:
            if out is not None:
                out.close()
            with self._changed:
                self._changed.notify_all()

    def _counted(self, new: int) -> None:
        if not new:
            return
        now = time.monotonic()
        with self._changed:
            self.count += new
            while self._milestones and self.count >= self._milestones[0]:
                reached = self._milestones.pop(0)
                self.reached[reached] = now
                self.rss_at[reached] = rss_kb(self.proc.pid)
            self._changed.notify_all()

    def wait_count(self, count: int, timeout: float) -> None:
        """Until ``count`` calls were logged (each after its commit); raises on timeout or exit."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while self.count < count:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"the daemon exited ({self.proc.returncode}) after {self.count} calls")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"only {self.count} of {count} calls logged within {timeout:g}s")
                self._changed.wait(min(left, 1.0))

    def rss(self) -> dict[str, int]:
        return rss_kb(self.proc.pid)

    def cpu_s(self) -> float:
        return cpu_s(self.proc.pid)

    def threads_cpu_s(self) -> dict[int, float]:
        return threads_cpu_s(self.proc.pid)

    def settled(self, timeout: float = 30.0) -> dict[str, int]:
        """The daemon's RSS once it stopped growing (everything imported, connected).

        Raises if the daemon still runs a child process then: every figure here is its one process's
        (a short-lived one at start-up, such as ``ctypes.util.find_library``'s ``ldconfig`` when a
        ``cdr_dir`` is watched, is waited out).
        """
        deadline = time.monotonic() + timeout
        last = None
        while True:
            extra = children(self.proc.pid)
            now = rss_kb(self.proc.pid)
            if not extra and last is not None and abs(now["VmRSS"] - last["VmRSS"]) < 256:
                return now
            if time.monotonic() > deadline:
                if extra:
                    raise RuntimeError(f"the daemon runs {len(extra)} child process(es): "
                                       "the bench measures one")
                raise TimeoutError(f"the daemon's RSS kept growing for {timeout:g}s")
            last = now
            time.sleep(0.5)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._reader.join(timeout=10)
        return self.proc.returncode
