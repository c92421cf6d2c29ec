"""Configuration loading: defaults, every problem named by its dotted path, secrets never echoed."""

from __future__ import annotations

from pathlib import Path

import pytest

from listener.config import loader as config
from listener.core.errors import ConfigError
from listener.core.event import HangupEvent

EXAMPLE = Path(__file__).parent.parent / "config" / "listener.example.toml"


def problems_of(text: str, tmp_path: Path, environ: dict[str, str] | None = None) -> tuple[str, ...]:
    path = tmp_path / "listener.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as raised:
        config.load(path, environ=environ or {})
    return raised.value.problems


def test_no_file_means_freeswitch_stock_settings() -> None:
    cfg = config.load(None)
    assert [(n.host, n.port, n.password) for n in cfg.nodes] == [("127.0.0.1", 8021, "ClueCon")]
    assert cfg.esl.liveness_timeout == 60
    assert cfg.log.level == "info"


def test_the_example_configuration_is_valid(tmp_path: Path) -> None:
    secret = tmp_path / "esl-password"
    secret.write_text("s3cret\n")
    (tmp_path / "webhook-crm").write_text("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\n")
    environ = {"ESL_PASSWORD_PBX2": "from-env", "CREDENTIALS_DIRECTORY": str(tmp_path)}
    cfg = config.load(EXAMPLE, environ=environ)
    assert [n.name for n in cfg.nodes] == ["pbx1", "pbx2"]
    assert cfg.nodes[0].password == "s3cret"
    assert [w.name for w in cfg.webhooks] == ["crm"]
    assert cfg.webhooks[0].variables.matches("cc_queue")
    survey = HangupEvent.from_headers({
        "Event-Name": "CHANNEL_HANGUP_COMPLETE", "Hangup-Cause": "NORMAL_CLEARING",
        "Call-Direction": "inbound",
        "variable_answer_epoch": "1795728797", "variable_sip_hangup_disposition": "recv_bye",
        "variable_survey_active": "true",
    })
    outcome = cfg.classifier.classify(survey)
    assert (outcome.status, outcome.bye_reason) == ("abandoned", "Abandoned_Survey")
    assert outcome.last_response_code == 951
    assert cfg.nodes[1].password == "from-env"


def test_every_problem_is_reported_at_once_with_its_path(tmp_path: Path) -> None:
    problems = problems_of(
        """
        [[freeswitch]]
        host = "pbx"
        port = 70000
        pasword = "typo"

        [esl]
        liveness_timeout = "60"
        backoff_initial = 10
        backoff_max = 1

        [log]
        level = "loud"

        [surprise]
        """,
        tmp_path,
    )
    assert problems == (
        "freeswitch[0].port: must be <= 65535, got 70000",
        "freeswitch[0].pasword: unknown key (did you mean 'password'?)",
        "esl.liveness_timeout: must be a number, got str",
        "esl.backoff_max: must be >= backoff_initial",
        "log.level: must be one of debug, info, warning, error, critical; got 'loud'",
        "surprise: unknown key",
    )


def test_a_password_from_a_file_or_the_environment(tmp_path: Path) -> None:
    secret = tmp_path / "pw"
    secret.write_text("from-file\n")
    path = tmp_path / "c.toml"
    path.write_text(
        f'[[freeswitch]]\nname = "a"\npassword_file = "{secret}"\n'
        '[[freeswitch]]\nname = "b"\npassword_env = "FS_PW"\n'
    )
    cfg = config.load(path, environ={"FS_PW": "from-env"})
    assert [n.password for n in cfg.nodes] == ["from-file", "from-env"]


def test_secret_problems_name_the_key_but_never_the_secret(tmp_path: Path) -> None:
    problems = problems_of(
        '[[freeswitch]]\nname = "a"\npassword = "hunter2"\npassword_env = "X"\n'
        '[[freeswitch]]\nname = "b"\npassword_env = "MISSING"\n'
        f'[[freeswitch]]\nname = "c"\npassword_file = "{tmp_path}/absent"\n',
        tmp_path,
    )
    assert problems[0] == "freeswitch[0].password: give only one of password, password_env"
    assert problems[1] == "freeswitch[1].password_env: environment variable MISSING is not set or empty"
    assert problems[2].startswith("freeswitch[2].password_file: cannot read")
    assert "hunter2" not in " ".join(problems)


def test_duplicate_node_names_are_refused(tmp_path: Path) -> None:
    problems = problems_of('[[freeswitch]]\nhost = "a"\n[[freeswitch]]\nhost = "a"\n', tmp_path)
    assert problems == ("freeswitch: node name 'a:8021' is used twice; give each node a unique name",)


def test_a_file_that_is_not_toml_says_so(tmp_path: Path) -> None:
    (problem,) = problems_of("[[freeswitch]\n", tmp_path)
    assert "not valid TOML" in problem


def test_a_range_problem_writes_a_large_bound_as_written(tmp_path: Path) -> None:
    (problem,) = problems_of("[esl]\nmax_frame_bytes = 2147483648\n", tmp_path)
    assert problem == "esl.max_frame_bytes: must be <= 1073741824, got 2147483648"


def test_the_log_format_is_auto_unless_json_or_console(tmp_path: Path) -> None:
    assert config.load(None).log.format == "auto"
    path = tmp_path / "c.toml"
    path.write_text('[log]\nformat = "console"\n')
    assert config.load(path, environ={}).log.format == "console"
    assert config.load(None, environ={"HANGUP_LISTENER_LOG__FORMAT": "json"}).log.format == "json"
    assert problems_of('[log]\nformat = "pretty"\n', tmp_path) == (
        "log.format: must be one of auto, json, console; got 'pretty'",)


def test_a_misspelt_key_names_the_known_key_it_most_likely_means(tmp_path: Path) -> None:
    text = ('[esl]\nclassify_proces = true\n[[webhooks]]\nurl = "http://a/"\nsecert = "whsec_x"\n'
            '[[classification.rules]]\nid = "r"\nstatus = "busy"\nbye_reson = "USER_BUSY"\n')
    assert problems_of(text, tmp_path) == (
        "esl.classify_proces: unknown key",  # a removed key is never suggested
        "classification.rules[0] (id 'r').bye_reson: unknown key (did you mean 'bye_reason'?)",
        "classification.rules[0] (id 'r').bye_reason: is required",
        "webhooks[0].secret: is required (secret, secret_file, secret_env, or a list: secrets, secret_files, "
        "secret_envs)",
        "webhooks[0].secert: unknown key (did you mean 'secret'?)",
    )
