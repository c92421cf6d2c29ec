"""The daemon as systemd runs it: a real subprocess, signals, sd_notify on a socket the test binds, HTTP."""

from __future__ import annotations

import json
import signal
import socket
from collections.abc import Iterator
from pathlib import Path

import gevent
import gevent.socket
import pytest

from tests.daemon import Daemon, fetch
from tests.fakeesl import FIXTURES, FakeFreeSWITCH

ESL_SECRET = "esl-s3cret-do-not-log"
HASH_SECRET = "hash-s3cret-do-not-log"
OTHER_SECRET = "new-s3cret-do-not-log"
BUSY = (FIXTURES / "uas_486" / "hangup_complete.plain.txt").read_bytes()
RULE = """
[[classification.rules]]
id = "busy-as-declined"
when = { hangup_cause = "USER_BUSY" }
status = "declined"
bye_reason = "USER_BUSY"
why = "reload test"
"""

pytestmark = pytest.mark.slow


def base_config(port: int) -> str:
    return (
        f'[[freeswitch]]\nname = "lab"\nport = {port}\npassword = "{ESL_SECRET}"\n'
        '[esl]\nbackoff_initial = 0.05\nbackoff_max = 0.2\n'
        '[health]\nport = 0\n'
        f'[privacy]\nmask_numbers = "hash"\nhash_key = "{HASH_SECRET}"\n'
    )


@pytest.fixture
def notify(tmp_path: Path) -> Iterator[tuple[gevent.socket.socket, str]]:
    sock = gevent.socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = str(tmp_path / "notify")
    sock.bind(path)
    sock.settimeout(15)
    with sock:
        yield sock, path


def until(sock: gevent.socket.socket, prefix: str) -> str:
    while not (message := sock.recv(4096).decode()).startswith(prefix):
        pass
    return message



def statuses(daemon: Daemon) -> list[str]:
    return [str(daemon.expect("leg.classified")["leg"]["status"]) for _ in range(2)]


def test_sighup_reloads_rules_keeps_connections_and_keeps_the_old_config_when_the_new_is_invalid(
    tmp_path: Path, notify: tuple[gevent.socket.socket, str]
) -> None:
    sock, path = notify
    config = tmp_path / "listener.toml"
    with FakeFreeSWITCH(password=ESL_SECRET) as fake:
        config.write_text(base_config(fake.port))
        daemon = Daemon(config, {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "200000"})
        try:
            session = fake.next_session(timeout=15)
            assert until(sock, "READY=1")
            port = daemon.expect("health.listening")["port"]
            daemon.expect("esl.connected")
            assert until(sock, "WATCHDOG=1") == "WATCHDOG=1"
            session.send(BUSY)
            assert statuses(daemon) == ["busy", "busy"]

            config.write_text(base_config(fake.port) + RULE)
            daemon.send(signal.SIGHUP)
            assert daemon.expect("config.reloaded")["restart_required_for"] == []
            session.send(BUSY)
            assert statuses(daemon) == ["declined", "declined"]

            broken = '[log]\nlevel = "loud"\nlevle = 1\n'
            config.write_text(base_config(fake.port).replace(ESL_SECRET, OTHER_SECRET) + broken)
            daemon.send(signal.SIGHUP)
            assert daemon.expect("config.reload_failed")["problems"] == [
                "log.level: must be one of debug, info, warning, error, critical; got 'loud'",
                "log.levle: unknown key (did you mean 'level'?)",
            ]
            session.send(BUSY)
            assert statuses(daemon) == ["declined", "declined"]
            assert fake.accepted == 1  # never reconnected

            status, body = fetch(port, "/readyz")
            assert status == 200
            assert json.loads(body)["nodes"]["details"]["lab"]["connections"] == 1
            metrics = fetch(port, "/metrics")[1].decode()
            labels = 'bye_reason="USER_BUSY",node="lab",status="declined"'
            assert f"hangup_listener_calls_classified_total{{{labels}}} 4.0" in metrics

            daemon.send(signal.SIGTERM)
            assert until(sock, "STOPPING=1") == "STOPPING=1"
            assert daemon.finish() == 0
        finally:
            daemon.kill()
    text = "\n".join(daemon.output)
    events = [json.loads(line)["event"] for line in daemon.output if line.startswith("{")]
    assert "listener.stopped" in events
    for secret in (ESL_SECRET, HASH_SECRET, OTHER_SECRET, "5551000"):  # 5551000: the caller, hashed
        assert secret not in text, secret


def test_an_invalid_toml_on_reload_is_logged_and_the_daemon_goes_on(tmp_path: Path) -> None:
    config = tmp_path / "listener.toml"
    with FakeFreeSWITCH(password=ESL_SECRET) as fake:
        config.write_text(base_config(fake.port))
        daemon = Daemon(config)
        try:
            session = fake.next_session(timeout=15)
            daemon.expect("esl.connected")
            config.write_text(f'[[freeswitch]]\npassword = "{OTHER_SECRET}\n')
            daemon.send(signal.SIGHUP)
            failed = daemon.expect("config.reload_failed")
            assert "not valid TOML" in failed["problems"][0]
            session.send(BUSY)
            assert statuses(daemon) == ["busy", "busy"]
            daemon.send(signal.SIGTERM)
            assert daemon.finish() == 0
        finally:
            daemon.kill()
    assert OTHER_SECRET not in "\n".join(daemon.output)
