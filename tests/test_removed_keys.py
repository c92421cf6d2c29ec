"""The keys of the two removed child processes strand no install: for one release a configuration (or
a variable) that still sets them starts normally, with one warning line naming each key."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from listener.config import loader
from tests.daemon import Daemon
from tests.fakeesl import FakeFreeSWITCH

REMOVED = '[esl]\nclassify_process = true\n[outbox]\ndelivery_process = false\n'


def clean_environ(**extra: str) -> dict[str, str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("HANGUP_LISTENER_")}
    return {**environ, **extra}


def test_a_file_that_sets_them_loads_with_one_warning_per_key(tmp_path: Path) -> None:
    path = tmp_path / "listener.toml"
    path.write_text(REMOVED)
    config = loader.load(path, environ=clean_environ())
    assert [w.split(": ")[0] for w in config.warnings] == ["esl.classify_process", "outbox.delivery_process"]
    assert all("removed in 0.2.0" in w and "ignored" in w for w in config.warnings)
    defaults = loader.load(None, environ=clean_environ())
    assert (config.esl, config.outbox) == (defaults.esl, defaults.outbox)  # ignored: nothing else changes


def test_a_variable_that_sets_one_is_named_in_its_warning() -> None:
    config = loader.load(None, environ=clean_environ(HANGUP_LISTENER_ESL__CLASSIFY_PROCESS="false"))
    (warning,) = config.warnings
    assert warning.startswith("esl.classify_process (from $HANGUP_LISTENER_ESL__CLASSIFY_PROCESS): removed")


def test_a_configuration_without_them_has_no_warning() -> None:
    assert loader.load(None, environ=clean_environ()).warnings == ()


def test_check_config_prints_the_same_warnings_and_exits_0(tmp_path: Path) -> None:
    path = tmp_path / "listener.toml"
    path.write_text(REMOVED)
    result = subprocess.run([sys.executable, "-m", "listener", "check-config", "--config", str(path)],
                            capture_output=True, text=True, timeout=60, check=False, env=clean_environ())
    assert result.returncode == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if "warning:" in line]
    assert len(warnings) == 2
    assert "esl.classify_process: removed in 0.2.0" in warnings[0]
    assert "outbox.delivery_process: removed in 0.2.0" in warnings[1]
    assert "is valid" in result.stdout


@pytest.mark.slow
def test_the_daemon_starts_normally_and_logs_one_warning_line_per_key(tmp_path: Path) -> None:
    with FakeFreeSWITCH() as fake:
        path = tmp_path / "listener.toml"
        path.write_text(f'[[freeswitch]]\nname = "lab"\nport = {fake.port}\n[health]\nport = 0\n{REMOVED}'
                        f'path = "{tmp_path / "outbox.sqlite3"}"\n')
        daemon = Daemon(path, clean_environ())
        try:
            daemon.expect("esl.connected")
            daemon.send(signal.SIGTERM)
            assert daemon.finish() == 0
        finally:
            daemon.kill()
    lines = [json.loads(line) for line in daemon.output if line.startswith("{")]
    removed = [line for line in lines if line["event"] == "config.key_removed"]
    assert [(line["key"], line["level"]) for line in removed] == [
        ("esl.classify_process", "warning"), ("outbox.delivery_process", "warning")]
    assert not [line for line in lines if line["level"] in ("error", "critical")]
