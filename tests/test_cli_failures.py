"""Every command's expected failures: one line on stderr (``run``: its last log line) and the sysexits
code of ``listener.core.exits``, never a traceback. Real subprocesses, as an operator runs them."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from listener import cli
from listener.core.exits import EX_CONFIG, EX_INTERRUPTED, EX_IOERR, EX_NOINPUT, EX_TEMPFAIL
from tests.fakeesl import FIXTURES

CAPTURE = str(FIXTURES / "uas_486" / "hangup_complete.plain.txt")
SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
COMMANDS = {
    "run": ["run"],
    "check-config": ["check-config"],
    "classify": ["classify", CAPTURE],
    "outbox stats": ["outbox", "stats"],
    "outbox list": ["outbox", "list"],
    "outbox retry": ["outbox", "retry", "--all"],
    "outbox resend": ["outbox", "resend", "--all", "--yes"],
    "outbox purge": ["outbox", "purge", "--all"],
    "webhook test": ["webhook", "test", "--endpoint", "crm"],
}
OUTBOX_COMMANDS = [name for name in COMMANDS if name.startswith("outbox")]


def cli_run(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The command with a clean environment: no HANGUP_LISTENER_* variable, the state folder in tmp_path,
    and no gevent monitor (conftest's: without psutil it warns on stderr)."""
    prefixes = ("HANGUP_LISTENER_", "CREDENTIALS_", "GEVENT_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(prefixes)}
    env["STATE_DIRECTORY"] = str(tmp_path / "state")
    return subprocess.run([sys.executable, "-m", "listener", *args], capture_output=True, text=True,
                          timeout=60, check=False, env=env, cwd=tmp_path)


def one_line(result: subprocess.CompletedProcess[str], code: int) -> str:
    """The one line the failed command printed on stderr (nothing on stdout, no traceback)."""
    assert result.returncode == code, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr + result.stdout
    assert result.stdout == ""
    (line,) = result.stderr.splitlines()
    assert line.startswith("hangup-listener: ")
    return line


def config(tmp_path: Path, text: str) -> str:
    path = tmp_path / "listener.toml"
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_a_broken_configuration_is_one_line_and_78(name: str, tmp_path: Path) -> None:
    path = config(tmp_path, "[log]\nlevel = 3\n")
    line = one_line(cli_run(tmp_path, *COMMANDS[name], "--config", path), EX_CONFIG)
    assert line == f"hangup-listener: invalid configuration ({path}): log.level: must be a string, got int"


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_a_missing_configuration_file_is_one_line_and_78(name: str, tmp_path: Path) -> None:
    missing = str(tmp_path / "missing.toml")
    line = one_line(cli_run(tmp_path, *COMMANDS[name], "--config", missing), EX_CONFIG)
    assert line == f"hangup-listener: {missing}: cannot read: No such file or directory"


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_a_credentials_option_that_is_no_folder_is_one_line_and_78(name: str, tmp_path: Path) -> None:
    nowhere = tmp_path / "nowhere"
    line = one_line(cli_run(tmp_path, *COMMANDS[name], "--credentials", str(nowhere)), EX_CONFIG)
    assert line == f"hangup-listener: --credentials {nowhere}: not a folder"


def test_a_missing_capture_is_one_line_and_66(tmp_path: Path) -> None:
    line = one_line(cli_run(tmp_path, "classify", str(tmp_path / "nope.txt")), EX_NOINPUT)
    assert line.endswith("nope.txt: No such file or directory")


@pytest.mark.parametrize("name", OUTBOX_COMMANDS)
def test_a_missing_outbox_is_one_line_and_66(name: str, tmp_path: Path) -> None:
    line = one_line(cli_run(tmp_path, *COMMANDS[name]), EX_NOINPUT)
    assert line == f"hangup-listener: no outbox at {tmp_path / 'state' / 'outbox.sqlite3'}"


@pytest.mark.parametrize("name", OUTBOX_COMMANDS)
def test_an_outbox_that_is_not_a_database_or_not_a_file_is_one_line_and_74(name: str, tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.sqlite3"
    garbage.write_bytes(b"not an outbox " * 100)
    path = config(tmp_path, f'[outbox]\npath = "{garbage}"\n')
    line = one_line(cli_run(tmp_path, *COMMANDS[name], "--config", path), EX_IOERR)
    assert "file is not a database (SQLITE_NOTADB)" in line
    path = config(tmp_path, f'[outbox]\npath = "{tmp_path}"\n')
    assert "is not a file" in one_line(cli_run(tmp_path, *COMMANDS[name], "--config", path), EX_IOERR)


def critical_line(result: subprocess.CompletedProcess[str], code: int) -> dict[str, object]:
    """``run``'s failure once its log is set up: one critical log line naming the exit code and what to do."""
    assert result.returncode == code, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr + result.stdout
    assert result.stderr == ""
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    (line,) = [line for line in lines if line["level"] == "critical"]
    assert line["exit_code"] == code
    assert line["action"]
    return dict(line)


def test_run_on_an_outbox_that_is_not_a_database_is_one_critical_line_and_74(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.sqlite3"
    garbage.write_bytes(b"not an outbox " * 100)
    path = config(tmp_path, f'[outbox]\npath = "{garbage}"\n[health]\nport = 0\n'
                            f'[[webhooks]]\nurl = "http://127.0.0.1:9/"\nsecret = "{SECRET}"\n')
    line = critical_line(cli_run(tmp_path, "run", "--config", path), EX_IOERR)
    assert line["event"] == "listener.outbox_unusable"


def test_run_with_its_health_port_taken_is_one_critical_line_and_75(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        path = config(tmp_path, f"[health]\nport = {taken.getsockname()[1]}\n")
        line = critical_line(cli_run(tmp_path, "run", "--config", path), EX_TEMPFAIL)
    assert line["event"] == "listener.port_in_use"


def test_a_closed_stdout_ends_the_command_quietly_with_74(tmp_path: Path) -> None:
    captures = map(str, FIXTURES.glob("*/plain.txt"))
    proc = subprocess.Popen([sys.executable, "-m", "listener", "classify", *captures],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=tmp_path)
    assert proc.stdout is not None
    assert proc.stderr is not None
    proc.stdout.close()  # as `| head` does once it has its lines
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == EX_IOERR
    assert err == ""


def test_ctrl_c_is_one_line_and_130(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    def interrupted(args: object) -> int:
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "_check_config", interrupted)
    assert cli.main(["check-config"]) == EX_INTERRUPTED
    assert capsys.readouterr().err == "hangup-listener: interrupted\n"


def test_help_lists_exactly_the_commands_an_operator_runs(tmp_path: Path) -> None:
    """No hidden command shows as ``==SUPPRESS==`` (``deliver``, ``classify-process`` are gone)."""
    result = cli_run(tmp_path, "--help")
    assert result.returncode == 0
    assert "SUPPRESS" not in result.stdout
    listed = re.search(r"\{([a-z,-]+)\}", result.stdout)
    assert listed is not None, result.stdout
    assert listed.group(1).split(",") == ["run", "classify", "check-config", "outbox", "webhook"]
    for command in ("deliver", "classify-process"):
        assert command not in result.stdout
        assert cli_run(tmp_path, command).returncode == 2  # an unknown command
