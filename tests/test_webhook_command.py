"""``hangup-listener webhook test``: one signed sample call, sent as delivery sends it, the answer shown."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from standardwebhooks.webhooks import Webhook
from webhook_receiver import Receiver, Reply, refused_url

from listener.core.classifier import default_classifier
from listener.core.exits import EX_CONFIG, EX_DATAERR, EX_OK, EX_TEMPFAIL, EX_USAGE
from listener.core.sample import SAMPLE_CALL_ID, SAMPLE_ID, sample_call, sample_document
from listener.core.signing import Delivered, GiveUp, Retry
from listener.webhooks.commands import exit_code, printable
from tests import schemas

OLD = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
NEW = "whsec_AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="


def config(tmp_path: Path, url: str) -> Path:
    path = tmp_path / "listener.toml"
    path.write_text(f'[[webhooks]]\nname = "crm"\nurl = "{url}"\nsecrets = ["{OLD}", "{NEW}"]\ntimeout = 2\n'
                    f'[[webhooks]]\nname = "billing"\nurl = "{url}"\nsecret = "{OLD}"\n')
    return path


def webhook_test(path: Path, endpoint: str = "crm") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "listener", "webhook", "test", "--config", str(path), "--endpoint", endpoint],
        capture_output=True, text=True, timeout=60, check=False)


def test_a_2xx_answer_exits_0_and_the_request_verifies_with_each_secret(
        tmp_path: Path, receiver: Receiver) -> None:
    result = webhook_test(config(tmp_path, receiver.url()))
    assert result.returncode == EX_OK, result.stderr
    leg, call = receiver.received  # a sample of each type the endpoint gets (both by default)
    for secret in (OLD, NEW):
        body = Webhook(secret).verify(leg.body, leg.headers)
        assert body["type"] == "leg.classified"
        assert body["data"] == sample_document(default_classifier())
        assert body["timestamp"] == body["data"]["ended_at"]
        called = Webhook(secret).verify(call.body, call.headers)
        assert called["type"] == "call.completed"
        assert called["data"] == sample_call(default_classifier())
        schemas.body("call.completed").validate(called)
        schemas.body("leg.classified").validate(body)
    assert (leg.webhook_id, call.webhook_id) == (SAMPLE_ID, SAMPLE_CALL_ID)
    assert len(leg.headers["webhook-signature"].split(" ")) == 2
    first, answer, body_line, second, *_ = result.stdout.splitlines()
    assert first.startswith(f"crm: POST leg.classified {receiver.url()} webhook-id {SAMPLE_ID} (")
    assert first.endswith(" bytes, 2 signatures)")
    assert answer.startswith("200: delivered in ")
    assert answer.endswith(" ms")
    assert body_line == "ok"
    assert second.startswith(f"crm: POST call.completed {receiver.url()} webhook-id {SAMPLE_CALL_ID} (")
    for secret in (OLD, NEW, OLD[6:], NEW[6:], *leg.headers["webhook-signature"].split(" ")):
        assert secret not in result.stdout + result.stderr


def test_an_endpoint_of_one_type_gets_only_its_sample(tmp_path: Path, receiver: Receiver) -> None:
    path = config(tmp_path, receiver.url())
    only_calls = 'name = "crm"\ntypes = ["call.completed"]\n'
    path.write_text(path.read_text().replace('name = "crm"\n', only_calls, 1))
    assert webhook_test(path).returncode == EX_OK
    (request,) = receiver.received
    assert request.webhook_id == SAMPLE_CALL_ID


def test_the_sample_is_a_real_classified_leg_with_a_fixed_id() -> None:
    document = sample_document(default_classifier())
    assert (document["id"], document["status"], document["leg"]) == (SAMPLE_ID, "busy", "a")
    assert (document["last_response_code"], document["node"]["name"]) == (486, "webhook-test")
    assert SAMPLE_ID == "0cdd4746-603e-5f30-87ec-d65a16cfcf4e"


def test_a_5xx_answer_exits_75_and_shows_the_status(tmp_path: Path, receiver: Receiver) -> None:
    receiver.default = Reply(500)
    result = webhook_test(config(tmp_path, receiver.url()))
    assert result.returncode == EX_TEMPFAIL
    assert "500: server_error (the daemon would retry) in " in result.stdout
    assert len(receiver.received) == 2  # once each type: no retry


def test_a_4xx_answer_exits_65(tmp_path: Path, receiver: Receiver) -> None:
    receiver.default = Reply(401)
    result = webhook_test(config(tmp_path, receiver.url()), "billing")
    assert result.returncode == EX_DATAERR
    assert "401: client_error" in result.stdout


def test_a_receiver_that_cannot_be_reached_exits_75(tmp_path: Path) -> None:
    result = webhook_test(config(tmp_path, refused_url()))
    assert result.returncode == EX_TEMPFAIL
    assert "no answer: connection_refused in " in result.stdout


def test_an_unknown_endpoint_lists_the_configured_ones_and_exits_64(tmp_path: Path) -> None:
    result = webhook_test(config(tmp_path, refused_url()), "erp")
    assert result.returncode == EX_USAGE
    assert result.stderr == "hangup-listener: no webhook endpoint named 'erp'; configured: 'crm', 'billing'\n"
    empty = tmp_path / "empty.toml"
    empty.write_text("")
    result = webhook_test(empty, "erp")
    assert result.returncode == EX_USAGE
    assert "configured: none ([[webhooks]] is empty)" in result.stderr


def test_an_invalid_configuration_exits_78(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('[[webhooks]]\nurl = "http://127.0.0.1/"\nsecrets = []\n')
    result = webhook_test(path)
    assert result.returncode == EX_CONFIG
    assert "webhooks[0].secrets: must not be empty" in result.stderr


@pytest.mark.parametrize(("outcome", "code"), [
    (Delivered(204), EX_OK),
    (Retry("server_error", 503), EX_TEMPFAIL),
    (Retry("throttled", 429), EX_TEMPFAIL),
    (Retry("connect_timeout"), EX_TEMPFAIL),
    (Retry("tls_error"), EX_TEMPFAIL),
    (Retry("read_timeout"), EX_TEMPFAIL),
    (Retry("client_error", 400), EX_DATAERR),
    (Retry("redirected", 301), EX_DATAERR),
    (GiveUp("gone", 410), EX_DATAERR),
])
def test_exit_codes(outcome: Delivered | Retry | GiveUp, code: int) -> None:
    assert exit_code(outcome) == code


def test_the_answer_is_printed_with_control_characters_escaped() -> None:
    assert printable(b'{"ok":true}\n\x1b[2J\x07caf\xc3\xa9\xff') == '{"ok":true}\n\\x1b[2J\\x07café\ufffd'
    assert json.loads(printable(b'{"a": 1}')) == {"a": 1}
