"""The pins: README's commands and CI install exactly the versions in packaging/constraints.txt."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).parent.parent
PIN = re.compile(r"^([A-Za-z0-9_.-]+)==(\S+)$")


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pins() -> dict[str, str]:
    found = {}
    for line in (ROOT / "packaging" / "constraints.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            match = PIN.match(line)
            assert match, f"not an exact pin: {line!r}"
            found[_canonical(match.group(1))] = match.group(2)
    return found


def test_every_runtime_and_test_dependency_is_pinned_exactly() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = [*project["dependencies"], *project["optional-dependencies"]["test"]]
    names = {_canonical(re.split(r"[<>=!~\[; ]", spec, maxsplit=1)[0]) for spec in wanted}
    assert names - pins().keys() == set()


def test_the_readme_commands_and_ci_install_with_the_pins() -> None:
    readme = (ROOT / "README.md").read_text()
    commands = [line for line in readme.splitlines() if line.startswith("python3 -m venv .venv &&")]
    assert len(commands) == 2
    assert all("pip install -q -c packaging/constraints.txt " in command for command in commands)
    ci = (ROOT / ".ci" / "run").read_text().rstrip().splitlines()
    assert ci[-1] == commands[1]  # CI runs exactly README's test command
