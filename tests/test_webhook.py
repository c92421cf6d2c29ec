"""Signing, the request, the outcome mapping and the [[webhooks]]/[outbox] configuration."""

from __future__ import annotations

import errno
import socket
import ssl
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from standardwebhooks.webhooks import Webhook

from listener.config.reader import Problems, TableReader
from listener.config.settings import WebhookConfig, default_outbox_path
from listener.config.webhooks import decode_secret, parse_outbox, parse_webhooks
from listener.core.signing import (
    Delivered,
    GiveUp,
    Retry,
    build_request,
    outcome_of_response,
    render,
    safe_url,
    scrub,
    sign,
)
from listener.webhooks.transport import outcome_of_error

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
KEY = decode_secret(SECRET)
assert KEY is not None


def test_signature_verifies_with_the_reference_library() -> None:
    body = render({"id": "call-1", "status": "answered", "caller": "Zoë"})
    request = build_request("https://crm.example/hooks?x=1", (KEY,), "call-1", body, int(time.time()))
    assert Webhook(SECRET).verify(request.body, dict(request.headers)) == {
        "id": "call-1", "status": "answered", "caller": "Zoë"}
    assert request.target == "/hooks?x=1"
    assert request.headers["webhook-id"] == "call-1"


def test_signature_matches_the_reference_for_a_fixed_timestamp() -> None:
    expected = Webhook(SECRET).sign("msg_1", datetime.fromtimestamp(1614265330, UTC), '{"test": 2432232314}')
    assert sign(KEY, "msg_1", 1614265330, '{"test": 2432232314}') == expected


def test_body_is_compact_deterministic_utf8_json() -> None:
    assert render({"id": "x", "n": "é"}) == '{"id":"x","n":"é"}'


def test_request_repr_and_scrub_hide_the_signature() -> None:
    request = build_request("http://h/", (KEY,), "id", "{}", 1)
    assert request.headers["webhook-signature"] not in repr(request)
    assert scrub({"Webhook-Signature": "v1,abc", "webhook-id": "i"}) == {
        "Webhook-Signature": "<redacted>", "webhook-id": "i"}


@pytest.mark.parametrize(("status", "header", "expected"), [
    (200, None, Delivered(200)),
    (204, None, Delivered(204)),
    (410, None, GiveUp("gone", 410)),
    (500, None, Retry("server_error", 500)),
    (503, "30", Retry("server_error", 503, 30.0)),
    (429, "7", Retry("throttled", 429, 7.0)),
    (429, None, Retry("throttled", 429)),
    (400, "30", Retry("client_error", 400)),
    (301, None, Retry("redirected", 301)),
])
def test_response_outcome(status: int, header: str | None, expected: object) -> None:
    assert outcome_of_response(status, header, now=0.0) == expected


@pytest.mark.parametrize(("exc", "connected", "reason"), [
    (ConnectionRefusedError(errno.ECONNREFUSED, "refused"), False, "connection_refused"),
    (TimeoutError("timed out"), False, "connect_timeout"),
    (TimeoutError("timed out"), True, "read_timeout"),
    (ConnectionResetError(errno.ECONNRESET, "reset"), True, "connection_reset"),
    (socket.gaierror(-2, "Name or service not known"), False, "dns_error"),
    (ssl.SSLCertVerificationError("bad cert"), False, "tls_error"),
    (ValueError("parser"), True, "protocol_error"),
])
def test_error_outcome_tells_refused_timeout_and_reset_apart(exc: BaseException, connected: bool,
                                                             reason: str) -> None:
    assert outcome_of_error(exc, connected=connected) == Retry(reason)


# -- configuration ---------------------------------------------------------------------------

def read(doc: dict[str, Any], environ: dict[str, str] | None = None) -> tuple[Any, list[str]]:
    problems = Problems()
    reader = TableReader(doc, "", problems, environ or {})
    return parse_webhooks(reader), problems.items


def test_minimal_webhook_gets_defaults_and_a_credential_free_name() -> None:
    url = "https://crm.example:8443/h?token=1"
    _, problems = read({"webhooks": [{"url": url.replace("//", "//u:p@"), "secret": SECRET}]})
    assert problems == ["webhooks[0].url: must not carry credentials; the signature authenticates us"]
    (config,), problems = read({"webhooks": [{"url": url, "secret": SECRET}]})
    assert problems == []
    assert config.name == "https://crm.example:8443/h"
    assert config.keys == (KEY,)
    assert (config.timeout, config.max_concurrency, config.retry.max_attempts) == (10.0, 4, 8)


def test_full_webhook_config(tmp_path: Path) -> None:
    bundle = tmp_path / "ca.pem"
    bundle.write_text("x")
    (config,), problems = read({"webhooks": [{
        "name": "crm", "url": "http://127.0.0.1/h", "secret_env": "CRM_SECRET",
        "statuses": ["ended"], "legs": ["a"], "directions": ["inbound"], "timeout": 3,
        "connect_timeout": 1.5, "retry_schedule": [1, 2], "retry_jitter": 0.0, "retry_after_max": 60,
        "max_concurrency": 2, "ca_bundle": str(bundle)}]}, {"CRM_SECRET": SECRET})
    assert problems == []
    assert config.retry.delays == (1.0, 2.0)
    assert (config.timeout, config.connect_timeout, config.ca_bundle) == (3.0, 1.5, bundle)
    assert config.matches({"status": "ended", "leg": "a", "direction": "inbound"})
    assert not config.matches({"status": "busy", "leg": "a", "direction": "inbound"})
    assert not config.matches({"status": "ended", "leg": "b", "direction": "inbound"})
    assert not config.matches({"status": "ended", "leg": "a", "direction": "outbound"})


def test_every_problem_is_reported_with_its_path_and_never_the_secret() -> None:
    bad_secret = "whsec_!!!notbase64"
    configs, problems = read({"webhooks": [
        {"url": "ftp://x", "secret": bad_secret, "legs": ["c"], "statuses": ["answered"],
         "timeout": 0, "tiemout": 1},
        {"url": "http://a/", "secret": "whsec_" + "QUJD"},
        {"url": "http://a/"},
        {"name": "n", "url": "http://a/", "secret": SECRET},
        {"name": "n", "url": "http://b/", "secret": SECRET, "max_concurrency": 0, "retry_schedule": [-1]},
    ]})
    assert "webhooks[0].url: must be an http(s) URL" in problems
    assert "webhooks[0].secret: must be whsec_ followed by base64" in problems
    assert any(p.startswith("webhooks[0].legs: must be among a, b") for p in problems)
    assert any(p.startswith("webhooks[0].statuses: must be among ended, declined") for p in problems)
    assert any(p.startswith("webhooks[0].timeout: must be > 0") for p in problems)
    assert "webhooks[0].tiemout: unknown key (did you mean 'timeout'?)" in problems
    assert "webhooks[1].secret: must decode to 24..64 bytes, got 3" in problems
    assert ("webhooks[2].secret: is required (secret, secret_file, secret_env, or a list: secrets, "
            "secret_files, secret_envs)") in problems
    assert "webhooks[4].max_concurrency: must be >= 1, got 0" in problems
    assert "webhooks[4].retry_schedule: every value must be >= 0" in problems
    assert not any("notbase64" in p or "QUJD" in p for p in problems)
    assert [c.name for c in configs] == ["n"]


def test_duplicate_names_are_a_problem() -> None:
    _, problems = read({"webhooks": [{"name": "n", "url": "http://a/", "secret": SECRET},
                                     {"name": "n", "url": "http://b/", "secret": SECRET}]})
    assert problems == ["webhooks[1].name: duplicate endpoint name 'n'"]


def test_secret_from_a_file(tmp_path: Path) -> None:
    (tmp_path / "s").write_text(SECRET + "\n")
    (config,), problems = read({"webhooks": [{"url": "http://a/", "secret_file": str(tmp_path / "s")}]})
    assert problems == []
    assert config.keys == (KEY,)


def test_safe_url_drops_credentials_query_and_fragment() -> None:
    assert safe_url("https://u:p@h.example:444/p/q?token=s#f") == "https://h.example:444/p/q"
    assert safe_url("http://[::1]:8080") == "http://[::1]:8080/"


def test_outbox_config_defaults_to_the_state_directory(tmp_path: Path) -> None:
    problems = Problems()
    config = parse_outbox(TableReader({}, "", problems, {"STATE_DIRECTORY": str(tmp_path)}))
    assert config.path == tmp_path / "outbox.sqlite3"
    assert config.synchronous == "full"
    assert default_outbox_path({}).name == "outbox.sqlite3"


def test_outbox_config_reports_bad_keys() -> None:
    problems = Problems()
    table = {"path": "/x/o.db", "synchronous": "off", "size": 1}
    config = parse_outbox(TableReader({"outbox": table}, "", problems, {}))
    assert config.path == Path("/x/o.db")
    assert problems.items == ["outbox.synchronous: must be one of full, normal; got 'off'",
                              "outbox.size: unknown key"]


@pytest.mark.parametrize("value", [False, True, "yes"])
def test_the_removed_delivery_process_key_is_accepted_with_a_warning_whatever_it_says(value: object) -> None:
    problems = Problems()
    parse_outbox(TableReader({"outbox": {"delivery_process": value}}, "", problems, {}))
    assert problems.items == []
    assert len(problems.warnings) == 1
    assert problems.warnings[0].startswith("outbox.delivery_process: removed in 0.2.0")


def test_webhook_config_repr_hides_the_key() -> None:
    config = WebhookConfig(name="n", url="http://a/", keys=(KEY,))
    assert repr(KEY) not in repr(config)
