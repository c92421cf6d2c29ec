"""``check-config`` on broken configurations: exit 78, every problem by its path, no secret echoed."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

SECRET = "pw-s3cret-never-shown"


def check(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "listener.toml"
    path.write_text(text)
    environ = {k: v for k, v in os.environ.items() if not k.startswith("HANGUP_LISTENER_")}
    return subprocess.run(
        [sys.executable, "-m", "listener", "check-config", "--config", str(path)],
        capture_output=True, text=True, timeout=60, check=False, env={**environ, **(env or {})},
    )


BROKEN = {
    "a typo in a section": ("[esl]\nliveness_timout = 30\n",
                            ["esl.liveness_timout: unknown key (did you mean 'liveness_timeout'?)"]),
    "a wrong type and a range": (
        '[[freeswitch]]\nport = "8021"\n[esl]\nliveness_timeout = 0\n',
        ["freeswitch[0].port: must be an integer, got str", "esl.liveness_timeout: must be >= 1, got 0"],
    ),
    "a password given twice": (
        f'[[freeswitch]]\npassword = "{SECRET}"\npassword_env = "X"\n',
        ["freeswitch[0].password: give only one of password, password_env"],
    ),
    "an unreadable password file": (
        '[[freeswitch]]\npassword_file = "/nonexistent/pw"\n',
        ["freeswitch[0].password_file: cannot read /nonexistent/pw: No such file or directory"],
    ),
    "a health listener on a name": (
        '[health]\nhost = "metrics.example.com"\nport = -1\n',
        ["health.host: must be an IP address (or localhost), got 'metrics.example.com'",
         "health.port: must be >= 0, got -1"],
    ),
    "hashing without a key": (
        '[privacy]\nmask_numbers = "hash"\n',
        ['privacy.hash_key: required when mask_numbers = "hash" (or hash_key_file, hash_key_env)'],
    ),
    "a short hash key": (
        f'[privacy]\nmask_numbers = "hash"\nhash_key = "{SECRET[:10]}"\n',
        ["privacy.hash_key: must be at least 16 characters"],
    ),
    "an invalid rule": (
        '[[classification.rules]]\nid = "x"\nwhen = { hangup_cause = "USER_BUSY" }\nstatus = "bzy"\n'
        'bye_reason = "USER_BUSY"\nwhy = "typo"\n',
        ["classification.rules[0] (id 'x').status: unknown status 'bzy'"],
    ),
    "broken TOML": (f'[[freeswitch]]\npassword = "{SECRET}\n', ["not valid TOML"]),
}


@pytest.mark.parametrize("case", BROKEN)
def test_each_broken_configuration_is_reported_with_its_path(tmp_path: Path, case: str) -> None:
    text, expected = BROKEN[case]
    result = check(tmp_path, text)
    assert result.returncode == 78, result.stderr
    for problem in expected:
        assert problem in result.stderr
    assert SECRET not in result.stderr + result.stdout
    assert SECRET[:10] not in result.stderr + result.stdout


def test_every_problem_is_reported_at_once_including_the_environment_s(tmp_path: Path) -> None:
    names = ("a password given twice", "a health listener on a name", "an invalid rule")
    cases = [BROKEN[name] for name in names]
    result = check(tmp_path, "".join(text for text, _ in cases), {"HANGUP_LISTENER_LOG__LEVEL": "loud"})
    assert result.returncode == 78
    for _, expected in cases:
        for problem in expected:
            assert problem in result.stderr
    assert "log.level (from $HANGUP_LISTENER_LOG__LEVEL): must be one of" in result.stderr


def test_a_valid_configuration_exits_0(tmp_path: Path) -> None:
    result = check(tmp_path, '[health]\nport = 9000\n', {"HANGUP_LISTENER_ESL__LIVENESS_TIMEOUT": "30"})
    assert result.returncode == 0, result.stderr
    assert "is valid" in result.stdout
