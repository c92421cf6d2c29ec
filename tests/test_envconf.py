"""HANGUP_LISTENER_* variables: every key settable, values read as TOML, problems name the variable."""

from __future__ import annotations

from pathlib import Path

import pytest

from listener.config import loader as config
from listener.config.environ import Overrides, dotted, key_path, parse_value
from listener.core.errors import ConfigError


def problems_of(environ: dict[str, str], path: Path | None = None) -> tuple[str, ...]:
    with pytest.raises(ConfigError) as raised:
        config.load(path, environ=environ)
    return raised.value.problems


@pytest.mark.parametrize(("raw", "value"), [
    ("30", 30), ("2.5", 2.5), ("true", True), ('"0123"', "0123"), ("debug", "debug"),
    ('["a", "b"]', ["a", "b"]), ("not valid = toml", "not valid = toml"), ("", ""),
])
def test_values_are_toml_scalars_or_else_plain_text(raw: str, value: object) -> None:
    assert parse_value(raw) == value


def test_a_variable_name_is_the_dotted_path_with_double_underscores() -> None:
    assert key_path("HANGUP_LISTENER_ESL__LIVENESS_TIMEOUT") == ("esl", "liveness_timeout")
    assert key_path("HANGUP_LISTENER_FREESWITCH__0__PASSWORD_ENV") == ("freeswitch", 0, "password_env")
    assert dotted(("freeswitch", 0, "password_env")) == "freeswitch[0].password_env"
    assert key_path("HANGUP_LISTENER_ESL____X") is None
    assert key_path("HANGUP_LISTENER_0__X") is None


def test_the_environment_overrides_the_file_and_the_defaults(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[[freeswitch]]\nname = "pbx1"\n[esl]\nliveness_timeout = 90\n')
    cfg = config.load(path, environ={
        "HANGUP_LISTENER_ESL__LIVENESS_TIMEOUT": "30",
        "HANGUP_LISTENER_LOG__LEVEL": "debug",
        "HANGUP_LISTENER_FREESWITCH__0__PASSWORD_ENV": "PBX1_PW",
        "PBX1_PW": "from-env",
        "HANGUP_LISTENER_FREESWITCH__1__NAME": "pbx2",
        "HANGUP_LISTENER_HEALTH__ENABLED": "false",
        "HANGUP_LISTENER_PRIVACY__MASK_NUMBERS": "mask",
    })
    assert cfg.esl.liveness_timeout == 30
    assert cfg.log.level == "debug"
    assert [(n.name, n.password) for n in cfg.nodes] == [("pbx1", "from-env"), ("pbx2", "ClueCon")]
    assert cfg.health.enabled is False
    assert cfg.privacy.mask_numbers == "mask"


def test_without_a_file_the_environment_alone_configures() -> None:
    cfg = config.load(None, environ={"HANGUP_LISTENER_FREESWITCH__0__PORT": "8022"})
    assert [(n.name, n.port) for n in cfg.nodes] == [("127.0.0.1:8022", 8022)]


def test_problems_name_the_variable_and_never_the_value() -> None:
    problems = problems_of({
        "HANGUP_LISTENER_ESL__LIVENESS_TIMOUT": "30",
        "HANGUP_LISTENER_FREESWITCH__0__PASSWORD": "12345678",
        "HANGUP_LISTENER_LOG__LEVEL": "loud",
        "HANGUP_LISTENER_ESL__QUEUE_SIZE__X": "1",
        "HANGUP_LISTENER_FREESWITCH__2__HOST": "pbx",
        "HANGUP_LISTENER_BAD____NAME": "1",
    })
    assert problems == (
        "$HANGUP_LISTENER_BAD____NAME: not a key path (parts are separated by __)",
        "$HANGUP_LISTENER_FREESWITCH__2__HOST: freeswitch has no entry 2 (entries: 1)",
        "freeswitch[0].password (from $HANGUP_LISTENER_FREESWITCH__0__PASSWORD): must be a string, got int",
        "esl.queue_size (from $HANGUP_LISTENER_ESL__QUEUE_SIZE__X): must be an integer, got dict",
        "esl.liveness_timout (from $HANGUP_LISTENER_ESL__LIVENESS_TIMOUT): unknown key"
        " (did you mean 'liveness_timeout'?)",
        "log.level (from $HANGUP_LISTENER_LOG__LEVEL): must be one of debug, info, warning, error, critical;"
        " got 'loud'",
    )
    assert not any("12345678" in p for p in problems)


def test_a_scalar_in_the_way_of_a_table_is_a_problem() -> None:
    overrides = Overrides({"log": "x"}, {"HANGUP_LISTENER_LOG__LEVEL": "debug", "OTHER": "1"})
    assert overrides.problems == ["$HANGUP_LISTENER_LOG__LEVEL: log is not a table"]
    assert overrides.data == {"log": "x"}


def test_the_file_s_data_is_not_changed() -> None:
    data = {"esl": {"queue_size": 5}}
    Overrides(data, {"HANGUP_LISTENER_ESL__QUEUE_SIZE": "6"})
    assert data == {"esl": {"queue_size": 5}}
