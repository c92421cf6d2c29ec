"""HTTPS endpoints: the certificate is verified (system store or the endpoint's ca_bundle), never skipped."""

from __future__ import annotations

import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme
from standardwebhooks.webhooks import Webhook
from webhook_receiver import Receiver

from listener.config.settings import WebhookConfig
from listener.config.webhooks import decode_secret
from listener.core.retry import RetrySchedule
from listener.core.signing import Delivered, Retry, build_request
from listener.webhooks.transport import Transport

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def tls_receiver(ca: trustme.CA) -> Iterator[Receiver]:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    receiver = Receiver(tls=context)
    yield receiver
    receiver.close()


def endpoint(url: str, ca_bundle: Path | None) -> WebhookConfig:
    return WebhookConfig(
        name="tls", url=url, keys=(decode_secret(SECRET) or b"",), timeout=5.0, connect_timeout=5.0,
        retry=RetrySchedule(delays=(5.0,), jitter=0.0, retry_after_max=60.0), ca_bundle=ca_bundle,
    )


def post(config: WebhookConfig) -> object:
    transport = Transport(config)
    try:
        now = int(time.time())
        request = build_request(config.url, config.keys, "evt-1", '{"id":"evt-1"}', now)
        return transport.send(request, clock=time.time)
    finally:
        transport.close()


def test_an_https_endpoint_signed_by_the_configured_ca_bundle_is_delivered(
    ca: trustme.CA, tls_receiver: Receiver, tmp_path: Path
) -> None:
    bundle = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(bundle))
    assert post(endpoint(tls_receiver.url(), bundle)) == Delivered(200)
    request = tls_receiver.get()
    assert Webhook(SECRET).verify(request.body, request.headers) == {"id": "evt-1"}


def test_an_untrusted_certificate_is_refused_and_retried_never_delivered(tls_receiver: Receiver) -> None:
    outcome = post(endpoint(tls_receiver.url(), None))  # the system store does not know the test CA
    assert outcome == Retry(reason="tls_error")
    assert tls_receiver.received == []


def test_a_trusted_certificate_for_another_host_is_refused(ca: trustme.CA, tmp_path: Path) -> None:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("crm.example.invalid").configure_cert(context)
    receiver = Receiver(tls=context)
    bundle = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(bundle))
    try:
        assert post(endpoint(receiver.url(), bundle)) == Retry(reason="tls_error")
        assert receiver.received == []
    finally:
        receiver.close()
