"""The Debian package (``packaging/build-deb``): its configuration changes nothing, its maintainer
scripts parse, and a freshly built .deb holds a virtual environment that runs from /opt, the unit,
the docs its ``Documentation=`` names and the conffile. Nothing is installed."""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from listener.config import loader
from listener.config.settings import Config
from listener.core.rulebook import RuleBook

ROOT = Path(__file__).parent.parent
BUILD = ROOT / "packaging" / "build-deb"
SCRIPTS = ROOT / "packaging" / "debian"
UNIT = ROOT / "config" / "hangup-listener.service"
EXAMPLE = ROOT / "config" / "listener.example.toml"
TARGET = "/opt/hangup-listener"
DOC = "/usr/share/doc/hangup-listener/"


def packaged_config(tmp_path: Path) -> Path:
    """The /etc/hangup-listener/listener.toml the package installs."""
    path = tmp_path / "listener.toml"
    path.write_text(subprocess.run([str(BUILD), "--config"], capture_output=True, text=True,
                                   check=True, timeout=30).stdout)
    return path


def rule_table(book: RuleBook) -> list[tuple[object, ...]]:
    """The rules as written (their conditions hold compiled getters, which compare by identity)."""
    return [(rule.id, rule.status, rule.bye_reason, rule.why, [(c.fact, c.source) for c in rule.when])
            for rule in book.rules]


def behaviour(config: Config) -> tuple[Config, list[tuple[object, ...]], RuleBook]:
    book = config.classifier.book
    return dataclasses.replace(config, classifier=Config().classifier, source=None), rule_table(book), \
        dataclasses.replace(book, rules=())


def test_the_packaged_configuration_behaves_exactly_as_no_configuration(tmp_path: Path) -> None:
    base = Config()
    defaults, packaged = loader.load(None, environ={}), loader.load(packaged_config(tmp_path), environ={})
    assert behaviour(packaged) == behaviour(defaults)
    assert dataclasses.replace(packaged, classifier=base.classifier, source=None) == dataclasses.replace(
        defaults, classifier=base.classifier)
    assert not packaged.warnings


def test_the_packaged_configuration_passes_check_config(tmp_path: Path) -> None:
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("HANGUP_LISTENER_", "CREDENTIALS_"))}
    result = subprocess.run([sys.executable, "-m", "listener", "check-config", "--config",
                             str(packaged_config(tmp_path))],
                            capture_output=True, text=True, timeout=60, check=False, env=environ)
    assert (result.returncode, result.stderr) == (0, "")


def test_the_packaged_configuration_is_the_example_with_every_setting_commented_out(tmp_path: Path) -> None:
    packaged = packaged_config(tmp_path).read_text().splitlines()
    example = EXAMPLE.read_text().splitlines()
    body = packaged[len(packaged) - len(example):]
    assert all(line.startswith("#") for line in packaged[: len(packaged) - len(example)])  # the header
    for mine, theirs in zip(body, example, strict=True):
        setting = theirs.strip() and not theirs.lstrip().startswith("#")
        assert mine == (f"# {theirs}" if setting else theirs)
    assert tomllib.loads("\n".join(packaged)) == {}
    assert "password_file = \"esl-password\"" in "\n".join(packaged)  # what the unit's credential needs


def test_the_units_documentation_is_a_file_the_package_installs() -> None:
    (documentation,) = [line.split("=", 1)[1] for line in UNIT.read_text().splitlines()
                        if line.startswith("Documentation=")]
    assert documentation.startswith(f"file://{DOC}")
    assert (ROOT / "docs" / documentation.removeprefix(f"file://{DOC}")).is_file()  # build-deb: docs/*.md


@pytest.mark.parametrize("script", ["postinst", "prerm", "postrm"])
def test_each_maintainer_script_is_valid_sh_and_never_starts_the_daemon(script: str) -> None:
    path = SCRIPTS / script
    assert os.access(path, os.X_OK)
    result = subprocess.run(["sh", "-n", str(path)], capture_output=True, text=True, check=False, timeout=10)
    assert (result.returncode, result.stderr) == (0, "")
    text = path.read_text()
    assert text.startswith("#!/bin/sh\n")
    assert "\nset -e\n" in text
    assert text.endswith("exit 0\n")
    for start in ("invoke start", "enable --now", "systemctl start"):
        assert start not in text


def test_the_postinst_enables_the_unit_and_touches_systemd_only_when_it_runs() -> None:
    text = (SCRIPTS / "postinst").read_text()
    assert 'deb-systemd-helper enable "$UNIT"' in text
    running = text.index("if [ -d /run/systemd/system ]; then\n        systemctl --system daemon-reload")
    assert text.index("try-restart") > running


def test_a_purge_removes_the_configuration_and_the_state_the_unit_made() -> None:
    text = (SCRIPTS / "postrm").read_text()
    purge = text[text.index('if [ "$1" = purge ]'):]
    assert "rm -rf /etc/hangup-listener /var/lib/private/hangup-listener\n" in purge
    assert "rm -f /var/lib/hangup-listener\n" in purge


def _buildable() -> str | None:
    """Why this machine cannot build the package, or None."""
    if not shutil.which("dpkg-deb"):
        return "not Debian (no dpkg-deb)"
    if os.geteuid() != 0:
        return "build-deb needs root (it builds the venv in place, at /opt/hangup-listener)"
    if Path(TARGET).exists() and not (Path(TARGET) / ".built-by-build-deb").exists():
        return f"{TARGET} exists: the package is installed here"
    return None


def dpkg_deb(*args: str) -> str:
    return subprocess.run(["dpkg-deb", *args], capture_output=True, text=True, check=True, timeout=60).stdout


@pytest.mark.slow
def test_the_built_package_runs_from_opt_with_its_unit_docs_and_conffile(tmp_path: Path) -> None:
    reason = _buildable()
    if reason:
        pytest.skip(reason)
    built = subprocess.run([str(BUILD), "--out", str(tmp_path / "dist")], capture_output=True, text=True,
                           check=False, timeout=300)
    assert built.returncode == 0, built.stderr
    deb = Path(built.stdout.strip())
    assert not Path(TARGET).exists()  # the build's own venv is gone
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    arch = subprocess.run(["dpkg", "--print-architecture"], capture_output=True, text=True,
                          check=True).stdout.strip()
    assert deb.name == f"hangup-listener_{version}_{arch}.deb"
    fields = dpkg_deb("--field", str(deb), "Package", "Version", "Architecture", "Depends")
    assert f"Version: {version}\nArchitecture: {arch}\n" in fields
    assert "python3 (>= 3." in fields

    contents = dpkg_deb("--contents", str(deb)).splitlines()
    listing = {line.split()[5].removeprefix("."): line for line in contents}
    assert listing["/usr/bin/hangup-listener"].endswith(f"-> {TARGET}/bin/hangup-listener")
    assert "/lib/systemd/system/hangup-listener.service" in listing
    assert listing["/etc/hangup-listener/credentials/"].startswith("drwx------")
    documentation = next(line.split("file://", 1)[1] for line in UNIT.read_text().splitlines()
                         if line.startswith("Documentation="))
    for doc in (documentation, f"{DOC}README.md", f"{DOC}CHANGELOG.md", f"{DOC}copyright",
                f"{DOC}examples/cdr-dir.conf"):
        assert doc in listing, doc
    assert not [path for path in listing if path.startswith("/var/")]  # the unit makes its state

    tree = tmp_path / "tree"
    dpkg_deb("--raw-extract", str(deb), str(tree))
    control = tree / "DEBIAN"
    assert (control / "conffiles").read_text() == "/etc/hangup-listener/listener.toml\n"
    for script in ("postinst", "prerm", "postrm"):
        assert (control / script).read_bytes() == (SCRIPTS / script).read_bytes()
    venv = tree / TARGET.lstrip("/")
    assert "home = /usr/bin\n" in (venv / "pyvenv.cfg").read_text()
    scripts = [path for path in (venv / "bin").iterdir()
               if path.is_file() and not path.is_symlink() and path.read_bytes().startswith(b"#!")]
    assert [path.name for path in scripts] == ["hangup-listener"]  # pip and its kin are not shipped
    assert scripts[0].read_text().splitlines()[0] == f"#!{TARGET}/bin/python3"
    assert os.readlink(venv / "bin" / "python3") == "/usr/bin/python3"
    unit = tree / "lib/systemd/system/hangup-listener.service"
    assert unit.read_bytes() == UNIT.read_bytes()
    ran = subprocess.run([str(venv / "bin/python3"), "-m", "listener", "check-config", "--config",
                          str(tree / "etc/hangup-listener/listener.toml")],
                         capture_output=True, text=True, check=False, timeout=60,
                         env={"PATH": "/usr/bin:/bin"})
    assert (ran.returncode, ran.stderr) == (0, "")
