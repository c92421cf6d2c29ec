"""The [health] and [privacy] sections: defaults, every problem by its dotted path, secrets never echoed."""

from __future__ import annotations

from pathlib import Path

import pytest

from listener.config import loader as config
from listener.core.errors import ConfigError


def load(text: str, tmp_path: Path, environ: dict[str, str] | None = None) -> config.Config:
    path = tmp_path / "listener.toml"
    path.write_text(text)
    return config.load(path, environ=environ or {})


def problems_of(text: str, tmp_path: Path, environ: dict[str, str] | None = None) -> tuple[str, ...]:
    with pytest.raises(ConfigError) as raised:
        load(text, tmp_path, environ)
    return raised.value.problems


def test_health_listens_on_loopback_9468_by_default_and_can_be_turned_off(tmp_path: Path) -> None:
    assert config.load(None).health == config.HealthConfig(enabled=True, host="127.0.0.1", port=9468)
    cfg = load('[health]\nenabled = false\nhost = "::1"\nport = 0\n', tmp_path)
    assert cfg.health == config.HealthConfig(enabled=False, host="::1", port=0)


def test_health_problems_are_named_by_their_path(tmp_path: Path) -> None:
    text = '[health]\nenabled = "yes"\nhost = "example.com"\nport = 70000\nprot = 1\n'
    problems = problems_of(text, tmp_path)
    assert problems == (
        "health.enabled: must be true or false, got str",
        "health.host: must be an IP address (or localhost), got 'example.com'",
        "health.port: must be <= 65535, got 70000",
        "health.prot: unknown key (did you mean 'port'?)",
    )


def test_numbers_are_shown_by_default_masked_or_hashed_on_request(tmp_path: Path) -> None:
    assert config.load(None).privacy.mask_numbers == "none"
    assert load('[privacy]\nmask_numbers = "mask"\n', tmp_path).privacy.mask_numbers == "mask"
    key = tmp_path / "hash-key"
    key.write_text("a-long-enough-secret-key\n")
    cfg = load('[privacy]\nmask_numbers = "hash"\nhash_key_file = "hash-key"\n', tmp_path,
               {"CREDENTIALS_DIRECTORY": str(tmp_path)})
    assert cfg.privacy.hash_key == "a-long-enough-secret-key"
    assert "a-long-enough" not in repr(cfg)


def test_privacy_problems_never_echo_the_key(tmp_path: Path) -> None:
    assert problems_of('[privacy]\nmask_numbers = "hash"\n', tmp_path) == (
        'privacy.hash_key: required when mask_numbers = "hash" (or hash_key_file, hash_key_env)',
    )
    problems = problems_of('[privacy]\nmask_numbers = "blur"\nhash_key = "short-secret"\n', tmp_path)
    assert problems == (
        "privacy.mask_numbers: must be one of none, mask, hash; got 'blur'",
        "privacy.hash_key: must be at least 16 characters",
    )
    assert problems_of('[privacy]\nmask_numbers = "hash"\nhash_key_env = "NOPE"\n', tmp_path) == (
        "privacy.hash_key_env: environment variable NOPE is not set or empty",
    )
