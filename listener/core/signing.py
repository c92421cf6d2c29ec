"""Standard Webhooks signing, the request we send, and the pure mapping of the answer that came back.

Only 2xx is success; 410 Gone means "stop sending this to me"; everything else is retried. (What a
transport *failure* means is the edge's to say: ``listener.webhooks.transport.outcome_of_error``.)
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import orjson

from listener.core.retry import parse_retry_after

CONTENT_TYPE = "application/json"
USER_AGENT = "hangup-listener"
SECRET_HEADERS = frozenset({"webhook-signature", "authorization"})


def safe_url(url: str) -> str:
    """The URL as it may be logged and used as a default name: no credentials, query or fragment."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path or '/'}"



def render(document: Mapping[str, Any]) -> str:
    """The body POSTed for a document: compact, deterministic JSON, UTF-8 kept as is."""
    return orjson.dumps(document).decode()


def sign(key: bytes, msg_id: str, timestamp: int, body: str) -> str:
    """One signature: ``v1,`` + base64(HMAC-SHA256(key, "id.timestamp.body"))."""
    return _v1(key, f"{msg_id}.{timestamp}.{body}".encode())


def signature(keys: Sequence[bytes], msg_id: str, timestamp: int, body: str) -> str:
    """The ``webhook-signature`` value: one signature per key, in order, space-separated.

    A receiver holding any one of the keys verifies the request: that is how a secret is rotated.
    """
    if not keys:
        raise ValueError("no signing key")
    message = f"{msg_id}.{timestamp}.{body}".encode()
    return " ".join(_v1(key, message) for key in keys)


def _v1(key: bytes, message: bytes) -> str:
    return "v1," + base64.b64encode(hmac.new(key, message, hashlib.sha256).digest()).decode("ascii")


@dataclass(frozen=True, slots=True)
class Request:
    """One POST, ready for the wire; ``repr`` never shows the signature."""

    target: str
    headers: Mapping[str, str]
    body: bytes

    def __repr__(self) -> str:
        headers = scrub(self.headers)
        return f"Request(target={self.target!r}, headers={headers!r}, body=<{len(self.body)} bytes>)"


def request_target(url: str) -> str:
    """The origin-form target of ``url``: its path and query."""
    parts = urlsplit(url)
    return (parts.path or "/") + (f"?{parts.query}" if parts.query else "")


def build_request(url: str, keys: Sequence[bytes], msg_id: str, body: str, timestamp: int) -> Request:
    """The POST of ``body`` for this attempt, signed with every key (a new timestamp and signature each
    attempt)."""
    headers = {
        "content-type": CONTENT_TYPE,
        "user-agent": USER_AGENT,
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signature(keys, msg_id, timestamp, body),
    }
    return Request(request_target(url), headers, body.encode())


def scrub(headers: Mapping[str, str]) -> dict[str, str]:
    """Headers safe to log: signatures and credentials replaced."""
    return {k: ("<redacted>" if k.lower() in SECRET_HEADERS else v) for k, v in headers.items()}


@dataclass(frozen=True, slots=True)
class Delivered:
    status: int


@dataclass(frozen=True, slots=True)
class Retry:
    """Try again later: ``reason`` is a short token for logs and metric labels."""

    reason: str
    status: int | None = None
    retry_after: float | None = None


@dataclass(frozen=True, slots=True)
class GiveUp:
    """Stop for good (410 Gone): the row is kept as dead."""

    reason: str
    status: int | None = None


DeliveryOutcome = Delivered | Retry | GiveUp


def outcome_of_response(status: int, retry_after: str | None, now: float) -> DeliveryOutcome:
    """What an HTTP answer means for the delivery."""
    if 200 <= status < 300:
        return Delivered(status)
    if status == 410:
        return GiveUp("gone", status)
    wait = parse_retry_after(retry_after, now) if status in (429, 503) else None
    if status == 429:
        return Retry("throttled", status, wait)
    if 300 <= status < 400:
        return Retry("redirected", status)  # redirects are not followed: the URL must be the final one
    return Retry("server_error" if status >= 500 else "client_error", status, wait)
