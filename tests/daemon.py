"""The daemon as a real subprocess: its JSON log lines read as they are flushed, its exit awaited;
an HTTP GET for its health listener.

Reads happen on a thread of gevent's pool, so fake servers in the test keep running meanwhile.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import gevent


class Daemon:
    """``hangup-listener run --config PATH`` with extra environment variables.

    As under systemd, ``STATE_DIRECTORY`` is set (to the config's folder, unless ``env`` says): the
    default outbox folder, where the daemon keeps its state file, is never the current folder.
    """

    def __init__(self, config: Path, env: dict[str, str] | None = None, *, user: int | None = None,
                 cwd: Path | None = None) -> None:
        state = {"STATE_DIRECTORY": str(config.parent)}
        environ = {**state, **os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "listener", "run", "--config", str(config)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=environ, user=user, cwd=cwd,
        )
        self.output: list[str] = []

    def expect(self, event: str, timeout: float = 15) -> dict[str, Any]:
        """Read log lines until one has event ``event``; every line read is kept in ``output``."""
        assert self.proc.stdout is not None
        with gevent.Timeout(timeout, AssertionError(f"no {event} line; got {self.output[-5:]}")):
            while True:
                line = gevent.get_hub().threadpool.apply(self.proc.stdout.readline).decode()
                assert line, f"daemon exited before {event}: {self.output[-5:]}"
                self.output.append(line)
                entry: dict[str, Any] = json.loads(line)
                assert entry["event"] != "loop.blocked", f"the daemon's loop was blocked: {entry}"
                if entry["event"] == event:
                    return entry

    def send(self, signum: signal.Signals) -> None:
        self.proc.send_signal(signum)

    def finish(self, timeout: float = 15) -> int:
        """Wait for the exit; the rest of stdout and all of stderr land in ``output``."""
        out, err = gevent.get_hub().threadpool.apply(self.proc.communicate, kwds={"timeout": timeout})
        self.output += out.decode().splitlines() + err.decode().splitlines()
        assert_never_blocked(self.output)
        return int(self.proc.returncode)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate()


def assert_never_blocked(lines: list[str]) -> None:
    """No ``loop.blocked`` line: the daemon's loop never stalled (conftest enables gevent's monitor)."""
    blocked = [line for line in lines if '"event": "loop.blocked"' in line]
    assert not blocked, f"the daemon's loop was blocked: {blocked[0]}"


def fetch(port: int, path: str) -> tuple[int, bytes]:
    """GET from 127.0.0.1 on a real thread (so the hub keeps serving); the status and the body."""
    def get() -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as reply:
                return reply.status, reply.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()
    result: tuple[int, bytes] = gevent.get_hub().threadpool.apply(get)
    return result
