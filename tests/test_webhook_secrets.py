"""Secret rotation: several secrets per endpoint, one signature per secret in ``webhook-signature``."""

from __future__ import annotations

import base64
import time
from pathlib import Path
from typing import Any

import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from listener.config.reader import Problems, TableReader
from listener.config.settings import WebhookConfig
from listener.config.webhooks import decode_secret, parse_webhooks
from listener.core.signing import build_request, render, sign, signature

OLD = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
NEW = "whsec_" + base64.b64encode(bytes(range(32))).decode()
OTHER = "whsec_" + base64.b64encode(bytes(range(100, 132))).decode()
OLD_KEY, NEW_KEY = decode_secret(OLD), decode_secret(NEW)
assert OLD_KEY is not None
assert NEW_KEY is not None


def test_a_request_signed_with_two_secrets_verifies_with_either_alone() -> None:
    body = render({"id": "call-1", "status": "busy"})
    request = build_request("https://crm.example/h", (OLD_KEY, NEW_KEY), "call-1", body, int(time.time()))
    headers = dict(request.headers)
    assert Webhook(OLD).verify(request.body, headers) == {"id": "call-1", "status": "busy"}
    assert Webhook(NEW).verify(request.body, headers) == {"id": "call-1", "status": "busy"}
    with pytest.raises(WebhookVerificationError):
        Webhook(OTHER).verify(request.body, headers)


def test_the_signatures_are_space_separated_in_the_order_of_the_secrets() -> None:
    value = signature((OLD_KEY, NEW_KEY), "msg_1", 1614265330, "{}")
    assert value == f"{sign(OLD_KEY, 'msg_1', 1614265330, '{}')} {sign(NEW_KEY, 'msg_1', 1614265330, '{}')}"
    assert signature((OLD_KEY,), "msg_1", 1614265330, "{}") == sign(OLD_KEY, "msg_1", 1614265330, "{}")
    with pytest.raises(ValueError, match="no signing key"):
        signature((), "msg_1", 1614265330, "{}")


def test_neither_the_request_nor_the_config_shows_any_secret_or_signature() -> None:
    request = build_request("http://h/", (OLD_KEY, NEW_KEY), "id", "{}", 1)
    config = WebhookConfig(name="n", url="http://a/", keys=(OLD_KEY, NEW_KEY))
    shown = repr(request) + repr(config) + str(config)
    for secret in (OLD_KEY, NEW_KEY):
        assert repr(secret) not in shown
        assert base64.b64encode(secret).decode() not in shown
    for part in request.headers["webhook-signature"].split(" "):
        assert part not in shown


# -- configuration ---------------------------------------------------------------------------

def read(hook: dict[str, Any], environ: dict[str, str] | None = None,
         credentials: Path | None = None) -> tuple[Any, list[str]]:
    problems = Problems()
    hooks = {"webhooks": [{"url": "http://a/", **hook}]}
    reader = TableReader(hooks, "", problems, environ or {}, credentials)
    return parse_webhooks(reader), problems.items


def test_one_secret_is_one_key() -> None:
    (config,), problems = read({"secret": OLD})
    assert problems == []
    assert config.keys == (OLD_KEY,)


def test_secrets_keep_their_order() -> None:
    (config,), problems = read({"secrets": [OLD, NEW]})
    assert problems == []
    assert config.keys == (OLD_KEY, NEW_KEY)


def test_secret_files_read_one_secret_each_bare_names_from_the_credentials_directory(tmp_path: Path) -> None:
    (tmp_path / "old.secret").write_text(OLD + "\n")
    (tmp_path / "new.secret").write_text(NEW + "\n")
    (config,), problems = read({"secret_files": [str(tmp_path / "new.secret"), "old.secret"]},
                               credentials=tmp_path)
    assert problems == []
    assert config.keys == (NEW_KEY, OLD_KEY)


def test_secret_envs_name_one_variable_each() -> None:
    (config,), problems = read({"secret_envs": ["CRM_OLD", "CRM_NEW"]}, {"CRM_OLD": OLD, "CRM_NEW": NEW})
    assert problems == []
    assert config.keys == (OLD_KEY, NEW_KEY)


@pytest.mark.parametrize(("hook", "environ", "expected"), [
    ({"secrets": []}, {}, "webhooks[0].secrets: must not be empty"),
    ({"secrets": OLD}, {}, "webhooks[0].secrets: must be a list, got str"),
    ({"secrets": [OLD, 1]}, {}, "webhooks[0].secrets: must be a list of strings"),
    ({"secrets": [OLD, ""]}, {}, "webhooks[0].secrets[1]: must not be empty"),
    ({"secrets": [OLD, "whsec_!!!notbase64"]}, {},
     "webhooks[0].secrets[1]: must be whsec_ followed by base64"),
    ({"secrets": ["whsec_QUJD", NEW]}, {}, "webhooks[0].secrets[0]: must decode to 24..64 bytes, got 3"),
    ({"secrets": [OLD, NEW, OLD]}, {}, "webhooks[0].secrets[2]: the same secret as secrets[0]"),
    ({"secret_envs": ["CRM_OLD", "CRM_NEW"]}, {"CRM_OLD": OLD},
     "webhooks[0].secret_envs[1]: environment variable CRM_NEW is not set or empty"),
    ({"secret_files": ["/nonexistent/crm.secret"]}, {},
     "webhooks[0].secret_files[0]: cannot read /nonexistent/crm.secret: No such file or directory"),
    ({"secret": OLD, "secrets": [NEW]}, {}, "webhooks[0].secret: give only one of secret, secrets"),
    ({"secret_file": "x", "secret_envs": ["Y"]}, {},
     "webhooks[0].secret: give only one of secret_file, secret_envs"),
    ({}, {}, "webhooks[0].secret: is required (secret, secret_file, secret_env, or a list: secrets, "
             "secret_files, secret_envs)"),
])
def test_a_bad_or_missing_secret_names_its_key_never_the_secret(hook: dict[str, Any], environ: dict[str, str],
                                                                 expected: str) -> None:
    configs, problems = read(hook, environ)
    assert problems == [expected]
    assert configs == ()
    for secret in (OLD, NEW, OLD[6:], NEW[6:], "notbase64", "QUJD"):
        assert secret not in " ".join(problems)


def test_an_empty_secret_file_in_the_list_names_its_key(tmp_path: Path) -> None:
    (tmp_path / "empty").write_text("\n")
    _, problems = read({"secret_files": [str(tmp_path / "empty")]})
    assert problems == [f"webhooks[0].secret_files[0]: {tmp_path / 'empty'} is empty"]
