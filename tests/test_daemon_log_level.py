"""A SIGHUP that changes ``[log]`` reaches every part of the running daemon: the loggers each node's
pipeline and each webhook endpoint bound at start too. On a terminal (a pty) the daemon writes for a
person unless told otherwise."""

from __future__ import annotations

import json
import os
import pty
import re
import signal
import subprocess
import sys
from pathlib import Path

import gevent
import pytest
from webhook_receiver import Receiver

from tests.daemon import Daemon
from tests.fakeesl import FakeFreeSWITCH, event_frame
from tests.test_daemon_webhooks import bodies

pytestmark = pytest.mark.slow

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
HEARTBEAT = (b"Event-Name: HEARTBEAT\nCore-UUID: 1b8e5af5-676a-4b2e-91a0-1ac1b56080da\n"
             b"FreeSWITCH-Hostname: pbx\n")


def write_config(path: Path, fake: FakeFreeSWITCH, url: str, level: str) -> None:
    path.write_text(
        f'[[freeswitch]]\nname = "lab"\nport = {fake.port}\n[log]\nlevel = "{level}"\n'
        f'[outbox]\npath = "{path.parent / "outbox.sqlite3"}"\nsynchronous = "normal"\n[health]\nport = 0\n'
        f'[[webhooks]]\nname = "crm"\nurl = "{url}"\nsecret = "{SECRET}"\ntypes = ["leg.classified"]\n')


def test_a_reload_from_warning_to_debug_shows_the_debug_lines_of_the_pipeline_and_the_endpoints(
        tmp_path: Path, receiver: Receiver) -> None:
    config = tmp_path / "listener.toml"
    first, second = bodies(2)
    with FakeFreeSWITCH() as fake:
        write_config(config, fake, receiver.url(), "warning")
        daemon = Daemon(config)
        try:
            session = fake.next_session(timeout=15)
            session.send(event_frame(HEARTBEAT) + event_frame(first))
            receiver.get(timeout=15)  # delivered at warning: no line says so
            write_config(config, fake, receiver.url(), "debug")
            daemon.send(signal.SIGHUP)
            daemon.expect("config.reloaded")
            before = [json.loads(line) for line in daemon.output]
            session.send(event_frame(HEARTBEAT) + event_frame(second))
            heartbeat = daemon.expect("esl.heartbeat_received")
            delivered = daemon.expect("webhook.delivered")
            daemon.send(signal.SIGTERM)
            assert daemon.finish() == 0
        finally:
            daemon.kill()
    assert before[-1]["event"] == "config.reloaded"
    assert [line["level"] for line in before] == ["info"] * len(before)  # the reload's own lines only
    assert (heartbeat["level"], heartbeat["node"]) == ("debug", "lab")  # the pipeline's, bound at start
    assert (delivered["level"], delivered["endpoint"]) == ("debug", "crm")  # the endpoint's


def read_until(fd: int, text: str, timeout: float = 15) -> str:
    """The line the terminal showed holding ``text``, its colours taken out."""
    seen = b""
    with gevent.Timeout(timeout, AssertionError(f"no {text!r}; got {seen[-500:]!r}")):
        while text.encode() not in seen or b"\n" not in seen[seen.index(text.encode()):]:
            seen += gevent.get_hub().threadpool.apply(os.read, (fd, 65536))
    line = next(line for line in seen.decode().splitlines() if text in line)
    return re.sub(r"\x1b\[[0-9;]*m", "", line).strip()


def test_on_a_terminal_the_daemon_writes_for_a_person_and_a_reload_switches_to_json(tmp_path: Path) -> None:
    config = tmp_path / "listener.toml"
    primary, secondary = pty.openpty()
    with FakeFreeSWITCH() as fake:
        base = f'[[freeswitch]]\nname = "lab"\nport = {fake.port}\n[health]\nport = 0\n'
        config.write_text(base)
        env = {**os.environ, "STATE_DIRECTORY": str(tmp_path)}
        proc = subprocess.Popen([sys.executable, "-m", "listener", "run", "--config", str(config)],
                                stdout=secondary, stderr=subprocess.DEVNULL, env=env)
        os.close(secondary)
        try:
            fake.next_session(timeout=15)
            shown = read_until(primary, "esl.connected")
            config.write_text(base + '[log]\nformat = "json"\n')
            proc.send_signal(signal.SIGHUP)
            reloaded = read_until(primary, '"event":"config.reloaded"')
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=15) == 0
        finally:
            proc.kill()
            proc.wait()
            os.close(primary)
    assert not shown.startswith("{")  # structlog's console columns
    assert "node=lab" in shown
    assert json.loads(reloaded)["level"] == "info"
