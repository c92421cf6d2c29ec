"""The systemd unit: what the daemon relies on is in it, and systemd rates its exposure 2.0 or lower."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from listener.core.exits import NO_RESTART

UNIT = Path(__file__).parent.parent / "config" / "hangup-listener.service"
MAX_EXPOSURE = 2.0


def directives() -> dict[str, list[str]]:
    """Every ``Key=value`` of the unit (a key may repeat)."""
    found: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        if "=" in line and not line.lstrip().startswith(("#", ";", "[")):
            key, value = line.split("=", 1)
            found.setdefault(key.strip(), []).append(value.strip())
    return found


def test_the_unit_runs_the_daemon_as_a_notify_service_that_is_not_restarted_on_bad_config() -> None:
    unit = directives()
    assert unit["Type"] == ["notify"]
    assert unit["ExecStart"] == [
        "/opt/hangup-listener/bin/hangup-listener run --config /etc/hangup-listener/listener.toml"
    ]
    assert unit["RestartPreventExitStatus"] == [" ".join(map(str, NO_RESTART))]  # the one exit-code map
    assert unit["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert "WatchdogSec" in unit


def test_the_unit_has_a_dynamic_user_a_state_directory_credentials_and_hardening() -> None:
    unit = directives()
    assert unit["DynamicUser"] == ["yes"]
    assert unit["StateDirectory"] == ["hangup-listener"]
    assert unit["LoadCredential"] == ["esl-password:/etc/hangup-listener/credentials/esl-password"]
    assert unit["CapabilityBoundingSet"] == [""]
    for key in ("ProtectSystem", "NoNewPrivileges", "PrivateTmp", "SystemCallFilter"):
        assert key in unit, key


def test_the_unit_raises_the_open_file_limit_so_the_health_cap_is_its_64_and_webhooks_have_room() -> None:
    from listener.service.health import MAX_CONNECTIONS, connection_cap  # noqa: PLC0415

    (limit,) = directives()["LimitNOFILE"]
    assert ":" not in limit  # one value: soft and hard alike
    assert int(limit) >= 65536
    assert connection_cap(int(limit)) == MAX_CONNECTIONS


def _exposure(output: str) -> float:
    match = re.search(r"Overall exposure level for \S+: (\d+(?:\.\d+)?)", output)
    assert match, output
    return float(match.group(1))


def test_systemd_analyze_rates_the_unit_exposure_at_most_2() -> None:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze is not installed (Debian: apt-get install systemd)")
    result = subprocess.run(
        [tool, "security", "--offline=yes", "--no-pager", str(UNIT)],
        capture_output=True, text=True, timeout=60, check=False,
    )
    if "--offline" in result.stderr or "unrecognized option" in result.stderr:
        pytest.skip(f"this systemd-analyze has no --offline (systemd >= 250 needed): {result.stderr.strip()}")
    assert _exposure(result.stdout + result.stderr) <= MAX_EXPOSURE, result.stdout


DROP_IN = UNIT.parent / "cdr-dir.conf"


def _with_drop_in(tmp_path: Path, drop_in: str) -> Path:
    """The shipped unit (its ExecStart pointed at /bin/true: not installed here) and the drop-in, as
    systemd would find them in a unit folder."""
    folder = tmp_path / "units"
    (folder / f"{UNIT.name}.d").mkdir(parents=True)
    (folder / UNIT.name).write_text(re.sub(r"(?m)^ExecStart=.*$", "ExecStart=/bin/true", UNIT.read_text()))
    (folder / f"{UNIT.name}.d" / "cdr-dir.conf").write_text(drop_in)
    return folder


def test_the_cdr_dir_drop_in_verifies_and_keeps_the_units_exposure(tmp_path: Path) -> None:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze is not installed (Debian: apt-get install systemd)")

    def analyze(folder: Path, *args: str) -> subprocess.CompletedProcess[str]:
        env = {"SYSTEMD_UNIT_PATH": f"{folder}:", "PATH": "/usr/bin:/bin"}
        return subprocess.run([tool, *args, str(folder / UNIT.name)], capture_output=True, text=True,
                              timeout=60, check=False, env=env)

    good = _with_drop_in(tmp_path / "good", DROP_IN.read_text())
    verified = analyze(good, "verify", "--man=no")
    assert (verified.returncode, verified.stdout + verified.stderr) == (0, "")
    broken = _with_drop_in(tmp_path / "broken", DROP_IN.read_text().replace("=/var/log", "=var/log"))
    assert "not absolute" in analyze(broken, "verify", "--man=no").stderr  # the drop-in is read
    security = analyze(good, "security", "--offline=yes", "--no-pager")
    if "--offline" in security.stderr or "unrecognized option" in security.stderr:
        pytest.skip("this systemd-analyze has no --offline (systemd >= 250 needed)")
    assert "SupplementaryGroups=" in security.stdout  # the drop-in's line is rated
    assert _exposure(security.stdout + security.stderr) <= MAX_EXPOSURE, security.stdout
