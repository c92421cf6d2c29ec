"""One endpoint's HTTP transport: send one signed POST over a keep-alive connection, map what
happened to an ``Outcome``."""

from __future__ import annotations

import ssl
from collections.abc import Callable
from typing import Any

import gevent
from geventhttpclient import HTTPClient

from listener.webhook import Outcome, Request, outcome_of_error, outcome_of_response
from listener.webhook_config import WebhookConfig

Clock = Callable[[], float]


class _DeadlineExceededError(TimeoutError):
    """The whole request took longer than connect_timeout + timeout."""


class Transport:
    """One endpoint's keep-alive HTTP client; never raises for a failed request, returns an Outcome."""

    def __init__(self, config: WebhookConfig) -> None:
        self.config = config
        self._client = self._new_client()

    def _new_client(self) -> HTTPClient:
        cfg = self.config
        factory = None
        if cfg.url.startswith("https:"):
            cafile = str(cfg.ca_bundle) if cfg.ca_bundle else None
            factory = lambda **_: ssl.create_default_context(cafile=cafile)  # noqa: E731 - system store unless a bundle
        client = HTTPClient.from_url(
            cfg.url, concurrency=cfg.max_concurrency, connection_timeout=cfg.connect_timeout,
            network_timeout=cfg.timeout, ssl_context_factory=factory, headers={"connection": "keep-alive"})
        pool = client._connection_pool
        get_socket = pool.get_socket

        def get_socket_marked() -> Any:
            try:
                return get_socket()
            except Exception as exc:
                exc.connect_phase = True  # type: ignore[attr-defined]
                raise

        pool.get_socket = get_socket_marked  # type: ignore[method-assign]
        return client

    def send(self, request: Request, clock: Clock) -> Outcome:
        """POST ``request``; on any transport failure the pool is replaced (no half-read socket reused)."""
        client = self._client
        try:
            with gevent.Timeout(self.config.timeout + self.config.connect_timeout, _DeadlineExceededError):
                response = client.request(
                    "POST", request.target, body=request.body, headers=dict(request.headers))
                try:
                    response.read()
                finally:
                    response.release()
        except Exception as exc:  # noqa: BLE001 - every transport failure is an outcome, mapped below
            self._reset(client)
            return outcome_of_error(exc, connected=not getattr(exc, "connect_phase", False))
        retry_after = response.get("retry-after")
        if isinstance(retry_after, list):
            retry_after = retry_after[0] if retry_after else None
        return outcome_of_response(response.status_code, retry_after, clock())

    def _reset(self, client: HTTPClient) -> None:
        if client is self._client:
            self._client = self._new_client()
        client.close()

    def close(self) -> None:
        self._client.close()
