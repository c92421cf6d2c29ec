"""Every documented command works as printed.

The convention: a fenced ``sh`` block right after a ``<!-- doc-test -->`` line in README.md or
docs/*.md is run here. Its ``hangup-listener`` commands (a ``NAME=value`` prefix and ``\\``
continuations included) run as printed, each must exit 0, except ``run`` (it needs FreeSWITCH:
the daemon tests start it); other lines of the block (``printf``, ``dpkg``, ``systemctl``) are the
operator's and are not run. Absolute paths of the host (``/etc/hangup-listener``, ``/var/log/cdrs``,
``/var/lib/hangup-listener``) are those of a sandbox that holds what an operator has there: the
configuration with a webhook endpoint ``crm`` (a local receiver), its credentials, CDR files, an
ESL capture, and an outbox with delivered, dead and rejected rows.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from listener.core.frame import Frame
from listener.core.rejection import Rejection
from listener.outbox.store import Entry, Outbox
from tests.fixture_loader import FIXTURES
from tests.webhook_receiver import Receiver

ROOT = Path(__file__).parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
MARK = "<!-- doc-test -->"
HOST_PATHS = ("/etc/hangup-listener", "/var/log/cdrs", "/var/lib/hangup-listener")
SECRET = "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"  # 24 bytes once decoded
CDR_FILES = FIXTURES.parent / "fixtures-cdr" / "answered_caller_bye" / "json_cdr"


@dataclass(frozen=True)
class Command:
    doc: str
    line: int
    text: str

    def __str__(self) -> str:
        return f"{self.doc}:{self.line}: {self.text}"


def documented() -> list[Command]:
    """The ``hangup-listener`` commands of every marked block, in order."""
    found: list[Command] = []
    for path in DOCS:
        lines = path.read_text().splitlines()
        for i, line in enumerate(lines):
            if line.strip() != MARK:
                continue
            assert lines[i + 1].startswith("```sh"), f"{path.name}:{i + 2}: {MARK} must precede a ```sh block"
            j = i + 2
            while not lines[j].startswith("```"):
                start, text = j, lines[j]
                while text.endswith("\\"):
                    j += 1
                    text = text[:-1] + " " + lines[j].strip()
                command = text.split(" #", 1)[0].strip()
                words = shlex.split(command) if command else []
                program = next((w for w in words if "=" not in w), "")
                if program == "hangup-listener" and "run" not in words[1:2]:
                    found.append(Command(str(path.relative_to(ROOT)), start + 1, command))
                j += 1
    return found


COMMANDS = documented()


def test_the_docs_mark_the_commands_an_operator_types() -> None:
    assert len(COMMANDS) >= 15
    verbs = {c.text.split("hangup-listener ", 1)[1].split()[0] for c in COMMANDS}
    assert {"check-config", "classify", "outbox", "webhook", "--version"} <= verbs


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Receiver]]:
    root = tmp_path_factory.mktemp("host")
    receiver = Receiver()
    etc = root / "etc" / "hangup-listener"
    credentials = etc / "credentials"
    credentials.mkdir(parents=True)
    (credentials / "esl-password").write_text("ClueCon")
    (credentials / "webhook-crm").write_text(SECRET)
    outbox = root / "var" / "lib" / "hangup-listener" / "outbox.sqlite3"
    config = (
        '[[freeswitch]]\nname = "pbx1"\nhost = "127.0.0.1"\npassword_file = "esl-password"\n'
        f'[outbox]\npath = "{outbox}"\n'
        f'[[webhooks]]\nname = "crm"\nurl = "{receiver.url()}"\nsecret_file = "webhook-crm"\ntimeout = 5\n'
    )
    (etc / "listener.toml").write_text(config)
    (root / "listener.toml").write_text(config)
    shutil.copy(FIXTURES / "uas_486" / "hangup_complete.plain.txt", root / "capture.txt")
    cdrs = root / "var" / "log" / "cdrs"
    cdrs.mkdir(parents=True)
    for path in CDR_FILES.glob("*.cdr.json"):
        shutil.copy(path, cdrs / path.name)
    _fill(outbox)
    yield root, receiver
    receiver.close()


def _fill(path: Path) -> None:
    """An outbox as an operator finds it: delivered, pending, dead and rejected rows of ``crm``."""
    path.parent.mkdir(parents=True)
    outbox = Outbox.open(path)
    try:
        outbox.put([Entry(f"doc-{n}", '{"type":"leg.classified","timestamp":"x","data":{}}', ("crm",))
                    for n in range(4)], now=1_764_892_800.0)  # 2025-12-05
        rows = outbox.due("crm", now=2e9, limit=10)
        outbox.ack(rows[0].id, now=1_764_979_200.0 + 365 * 86400 - 3600)  # delivered within resend's range
        outbox.bury(rows[1].id, 7, "server_error", now=1_764_892_900.0)
        garbage = Frame({"Content-Type": "text/event-json"}, b"{not json")
        outbox.reject([Rejection.of(garbage, "pbx1", "event-json body is not JSON")], now=1_764_892_900.0)
    finally:
        outbox.close()


def _as_on_the_host(command: str, root: Path) -> str:
    for host in HOST_PATHS:
        command = command.replace(host, f"{root}{host}")
    return command


@pytest.mark.parametrize("command", COMMANDS, ids=str)
def test_a_documented_command_runs_as_printed(command: Command, sandbox: tuple[Path, Receiver]) -> None:
    root, _ = sandbox
    bin_dir = Path(sys.executable).parent
    credentials = f"{root}/etc/hangup-listener/credentials"  # the unit's folder, as on the host
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
           "CREDENTIALS_DIRECTORY": credentials}
    env.pop("HANGUP_LISTENER_LOG__LEVEL", None)
    done = subprocess.run(["bash", "-c", _as_on_the_host(command.text, root)], cwd=root, env=env,
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, f"{command}\nexit {done.returncode}\n{done.stderr}{done.stdout[-2000:]}"
    assert "Traceback" not in done.stderr
    if re.search(r"\bclassify\b", command.text):
        assert done.stdout.strip(), "classify printed nothing"
