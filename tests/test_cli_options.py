"""The options every command takes (``--config``), before or after its sub-command."""

from __future__ import annotations

from pathlib import Path

import pytest

from listener.cli import build_parser, main
from listener.outbox.store import Entry, Outbox

OUTBOX_COMMANDS = {
    "stats": [],
    "list": [],
    "retry": ["--all"],
    "resend": ["--all", "--yes"],
    "purge": ["--all"],
}


@pytest.fixture
def config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A configuration naming an outbox with rows; the default outbox folder is elsewhere and empty."""
    box = Outbox.open(tmp_path / "box" / "outbox.sqlite3")
    box.put([Entry(f"e{i}", "{}", ("crm",)) for i in range(3)], now=1000.0)
    box.close()
    monkeypatch.setenv("STATE_DIRECTORY", str(tmp_path / "elsewhere"))
    path = tmp_path / "listener.toml"
    path.write_text(f'[outbox]\npath = "{tmp_path / "box" / "outbox.sqlite3"}"\n')
    return path


@pytest.mark.parametrize("command", sorted(OUTBOX_COMMANDS))
def test_every_outbox_command_takes_config_after_as_well_as_before_the_sub_command(
        command: str, config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    extra = OUTBOX_COMMANDS[command]
    for argv in (["outbox", command, *extra, "--config", str(config)],  # the README's spelling
                 ["outbox", "--config", str(config), command, *extra]):
        assert main(argv) == 0, (argv, capsys.readouterr())
        assert "no outbox at" not in capsys.readouterr().err


def test_without_config_the_outbox_commands_look_in_the_default_folder(
        config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["outbox", "stats"]) == 66
    assert "elsewhere" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [
    ["run"], ["check-config"], ["classify", "capture.txt"], ["outbox", "stats"], ["outbox", "list"],
    ["webhook", "test", "--endpoint", "crm"],
])
def test_every_command_reads_config_wherever_it_is_given(argv: list[str]) -> None:
    parser = build_parser()
    command, rest = argv[0], argv[1:]
    placements = [[*argv, "--config", "c.toml"], ["--config", "c.toml", *argv],
                  [command, "--config", "c.toml", *rest]]
    for placement in placements:
        assert parser.parse_args(placement).config == Path("c.toml"), placement
    assert parser.parse_args(argv).config is None
    assert parser.parse_args([*placements[2], "--config", "last.toml"]).config == Path("last.toml")
