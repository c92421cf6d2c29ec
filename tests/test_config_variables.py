"""Channel variables in the configuration: ``variables`` and ``variables_max_bytes`` of
``[[webhooks]]`` and ``[log]``, ``[privacy] number_variables``; every problem names its key."""

from __future__ import annotations

from typing import Any

import pytest

from listener.config import loader
from listener.config.environ import Overrides
from listener.core.errors import ConfigError
from listener.core.variables import NUMBER_VARIABLES, Selection

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


def webhook(**keys: Any) -> dict[str, Any]:
    return {"webhooks": [{"url": "https://crm.example.com/hooks", "secret": SECRET, **keys}]}


def problems_of(data: dict[str, Any]) -> tuple[str, ...]:
    with pytest.raises(ConfigError) as raised:
        loader.from_mapping(data, environ={})
    return raised.value.problems


def test_no_variables_by_default_and_the_default_cap() -> None:
    config = loader.from_mapping(webhook(), environ={})
    assert not config.webhooks[0].variables
    assert config.webhooks[0].variables_max_bytes == 8192
    assert not config.log.variables
    assert config.log.variables_max_bytes == 8192
    assert config.privacy.number_variables == NUMBER_VARIABLES


def test_an_endpoint_and_the_log_take_names_and_globs() -> None:
    config = loader.from_mapping({
        **webhook(variables=["sip_call_id", "accountcode", "domain_name", "cc_*"], variables_max_bytes=256),
        "log": {"variables": ["sip_call_id"], "variables_max_bytes": 1 << 20},
    }, environ={})
    (endpoint,) = config.webhooks
    assert endpoint.variables == Selection(("sip_call_id", "accountcode", "domain_name", "cc_*"))
    assert endpoint.variables.matches("cc_queue")
    assert endpoint.variables_max_bytes == 256
    assert config.log.variables == Selection(("sip_call_id",))
    assert config.log.variables_max_bytes == 1 << 20


def test_the_operators_number_variables_replace_the_default() -> None:
    config = loader.from_mapping({"privacy": {"number_variables": ["x_account_*"]}}, environ={})
    assert config.privacy.number_variables == Selection(("x_account_*",))
    assert not config.privacy.number_variables.matches("sip_from_user")
    none = loader.from_mapping({"privacy": {"number_variables": []}}, environ={})
    assert not none.privacy.number_variables


def test_each_bad_pattern_is_named_by_its_key_and_index() -> None:
    problems = problems_of({
        **webhook(variables=["sip_call_id", "sip call", "", "cc_[queue"]),
        "log": {"variables": ["variable_sip_call_id"]},
        "privacy": {"number_variables": ["ok", "a:b"]},
    })
    assert sorted(problems) == sorted((
        "webhooks[0].variables[1]: 'sip call' is not a variable name (letters, digits, _ - .) "
        "nor a glob of one (* ? [...])",
        "webhooks[0].variables[2]: must not be empty",
        "webhooks[0].variables[3]: 'cc_[queue' is not a variable name (letters, digits, _ - .) "
        "nor a glob of one (* ? [...])",
        "log.variables[0]: names are given without the variable_ prefix of ESL headers: 'sip_call_id'",
        "privacy.number_variables[1]: 'a:b' is not a variable name (letters, digits, _ - .) "
        "nor a glob of one (* ? [...])",
    ))


@pytest.mark.parametrize(("value", "problem"), [
    ("sip_call_id", "must be a list, got str"),
    (["sip_call_id", 7], "must be a list of strings"),
])
def test_variables_must_be_a_list_of_strings(value: Any, problem: str) -> None:
    assert problems_of(webhook(variables=value)) == (f"webhooks[0].variables: {problem}",)
    assert problems_of({"log": {"variables": value}}) == (f"log.variables: {problem}",)
    assert problems_of({"privacy": {"number_variables": value}}) == (f"privacy.number_variables: {problem}",)


@pytest.mark.parametrize(("value", "problem"), [
    (255, "must be >= 256, got 255"),
    (1048577, "must be <= 1048576, got 1048577"),
    ("8k", "must be an integer, got str"),
    (8192.0, "must be an integer, got float"),
])
def test_the_cap_must_be_an_integer_in_range(value: Any, problem: str) -> None:
    assert problems_of(webhook(variables_max_bytes=value)) == (f"webhooks[0].variables_max_bytes: {problem}",)
    assert problems_of({"log": {"variables_max_bytes": value}}) == (f"log.variables_max_bytes: {problem}",)


def test_a_typo_near_the_new_keys_is_still_an_unknown_key() -> None:
    assert problems_of(webhook(variable=["sip_call_id"])) == (
        "webhooks[0].variable: unknown key (did you mean 'variables'?)",)
    assert problems_of({"log": {"variables_max_byte": 300}}) == (
        "log.variables_max_byte: unknown key (did you mean 'variables_max_bytes'?)",)


def test_the_environment_sets_the_logs_variables() -> None:
    environ = {"HANGUP_LISTENER_LOG__VARIABLES": '["sip_call_id", "cc_*"]'}
    config = loader.from_mapping(Overrides({}, environ).data, environ=environ)
    assert config.log.variables == Selection(("cc_*", "sip_call_id"))
