"""Operator commands find credentials the way the service does: ``--credentials DIR``, else
``$CREDENTIALS_DIRECTORY``, else /etc/hangup-listener/credentials where it exists (injected here)."""

from __future__ import annotations

from pathlib import Path

import pytest

from listener.cli import build_parser, main
from listener.config import loader
from listener.config.settings import CREDENTIALS_FOLDER, credentials_folder
from listener.core.errors import ConfigError
from tests.test_unit_file import directives

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
CONFIG = """
[[freeswitch]]
password_file = "esl-password"
[privacy]
mask_numbers = "hash"
hash_key_file = "hash-key"
[[webhooks]]
name = "crm"
url = "http://127.0.0.1:9/hook"
secret_file = "webhook-crm"
"""


def folder(path: Path, password: str = "s3cret") -> Path:
    """A credentials folder with every secret CONFIG names."""
    path.mkdir()
    (path / "esl-password").write_text(password + "\n")
    (path / "hash-key").write_text("a-long-enough-hash-key\n")
    (path / "webhook-crm").write_text(SECRET + "\n")
    return path


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "listener.toml"
    path.write_text(CONFIG + f'[outbox]\npath = "{tmp_path / "outbox.sqlite3"}"\n')
    return path


def test_the_folder_is_the_option_else_the_services_variable_else_the_default_where_it_exists(
        tmp_path: Path) -> None:
    given, service, default = tmp_path / "given", tmp_path / "service", tmp_path / "etc"
    environ = {"CREDENTIALS_DIRECTORY": str(service)}
    assert credentials_folder(given, environ, default) == given
    assert credentials_folder(None, environ, default) == service
    assert credentials_folder(None, {}, default) is None  # the default does not exist
    default.mkdir()
    assert credentials_folder(None, {}, default) == default
    assert str(CREDENTIALS_FOLDER) == "/etc/hangup-listener/credentials"


def test_bare_names_are_read_from_each_folder_in_turn(config: Path, tmp_path: Path) -> None:
    given, service, default = (folder(tmp_path / name, name) for name in ("given", "service", "etc"))
    environ = {"CREDENTIALS_DIRECTORY": str(service)}

    def password(credentials: Path | None, env: dict[str, str]) -> str:
        loaded = loader.load(config, env, credentials=credentials, credentials_default=default)
        assert loaded.credentials is not None
        return loaded.nodes[0].password

    assert password(given, environ) == "given"
    assert password(None, environ) == "service"
    assert password(None, {}) == "etc"


def test_a_bare_name_without_any_folder_says_where_it_was_looked_for(config: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as raised:
        loader.load(config, {}, credentials_default=tmp_path / "absent")
    problem = raised.value.problems[0]
    assert problem.startswith("freeswitch[0].password_file: cannot read esl-password: No such file")
    assert "--credentials, else $CREDENTIALS_DIRECTORY, else /etc/hangup-listener/credentials" in problem


def test_a_credentials_option_that_is_not_a_folder_is_one_problem(config: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as raised:
        loader.load(config, {}, credentials=tmp_path / "nope")
    assert raised.value.problems == (f"credentials folder {tmp_path / 'nope'}: not a folder (--credentials)",)


@pytest.mark.parametrize("argv", [
    ["run"], ["check-config"], ["classify"], ["outbox", "stats"], ["webhook", "test", "--endpoint", "crm"],
])
def test_every_command_takes_credentials_before_or_after_its_sub_command(argv: list[str]) -> None:
    parser = build_parser()
    for placement in ([*argv, "--credentials", "d"], [argv[0], "--credentials", "d", *argv[1:]]):
        assert parser.parse_args(placement).credentials == Path("d"), placement
    assert parser.parse_args(argv).credentials is None


def test_operator_commands_read_the_secrets_from_the_credentials_option(
        config: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    creds = str(folder(tmp_path / "creds"))
    capture = Path(__file__).parent / "data" / "fixtures" / "uas_486" / "hangup_complete.plain.txt"
    assert main(["check-config", "--config", str(config), "--credentials", creds]) == 0
    assert capsys.readouterr().out.endswith(f"is valid (bare secret file names read from {creds})\n")
    assert main(["classify", str(capture), "--config", str(config), "--credentials", creds]) == 0
    assert main(["outbox", "--credentials", creds, "stats", "--config", str(config)]) == 66  # no file yet
    assert "no outbox at" in capsys.readouterr().err
    webhook = ["webhook", "test", "--endpoint", "other", "--config", str(config), "--credentials", creds]
    assert main(webhook) == 64
    assert "configured: 'crm'" in capsys.readouterr().err
    assert main(["check-config", "--config", str(config)]) == 78  # without: the secrets are not found
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", creds)  # as under systemd
    assert main(["check-config", "--config", str(config)]) == 0


def test_a_reload_reads_the_secrets_from_the_folder_the_daemon_started_with(
        config: Path, tmp_path: Path) -> None:
    from listener.app import App  # noqa: PLC0415

    creds = folder(tmp_path / "creds")
    daemon = App(loader.load(config, {}, credentials=creds))
    (creds / "hash-key").write_text("another-long-enough-hash-key\n")
    assert daemon.reload()
    assert daemon.config.privacy.hash_key == "another-long-enough-hash-key"
    assert daemon.config.credentials == creds


def test_the_units_credentials_come_from_the_default_folder() -> None:
    for line in directives()["LoadCredential"]:
        name, source = line.split(":", 1)
        assert Path(source) == CREDENTIALS_FOLDER / name, line
