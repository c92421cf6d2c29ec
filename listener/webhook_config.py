"""The ``[[webhooks]]`` and ``[outbox]`` configuration as frozen, validated values.

Every problem is reported through the ``TableReader`` with its dotted path; a secret never
appears in a problem message nor in a ``repr``.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from listener.confread import TableReader
from listener.retry import DEFAULT_DELAYS, DEFAULT_JITTER, DEFAULT_RETRY_AFTER_MAX, RetrySchedule
from listener.spec import load_spec

SECRET_PREFIX = "whsec_"  # noqa: S105 - the format's prefix, not a secret
MIN_SECRET_BYTES = 24  # Standard Webhooks: keys SHOULD be 24 to 64 bytes
MAX_SECRET_BYTES = 64
LEGS = ("a", "b")
DIRECTIONS = ("inbound", "outbound")
SYNCHRONOUS = ("full", "normal")
STATE_DIRECTORY = Path("/var/lib/hangup-listener")
OUTBOX_FILE = "outbox.sqlite3"


@dataclass(frozen=True, slots=True)
class WebhookConfig:
    """One endpoint: where to POST, how to sign, which documents, how hard to try."""

    name: str
    url: str
    key: bytes = field(repr=False)
    statuses: frozenset[str] = frozenset()
    legs: frozenset[str] = frozenset()
    directions: frozenset[str] = frozenset()
    timeout: float = 10.0
    connect_timeout: float = 5.0
    retry: RetrySchedule = field(default_factory=RetrySchedule)
    max_concurrency: int = 4
    ca_bundle: Path | None = None

    def matches(self, document: Mapping[str, Any]) -> bool:
        """Whether this endpoint wants ``document`` (an empty filter accepts everything)."""
        return (
            (not self.statuses or document.get("status") in self.statuses)
            and (not self.legs or document.get("leg") in self.legs)
            and (not self.directions or document.get("direction") in self.directions)
        )


@dataclass(frozen=True, slots=True)
class OutboxConfig:
    """Where the SQLite outbox lives and how hard each commit is pushed to the disk."""

    path: Path
    synchronous: str = "full"
    delivery_process: bool = True
    """Deliver from a process of its own (a second core) rather than the daemon's loop."""


def safe_url(url: str) -> str:
    """The URL as it may be logged and used as a default name: no credentials, query or fragment."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path or '/'}"


def decode_secret(secret: str) -> bytes | None:
    """The HMAC key of a ``whsec_<base64>`` secret, or None when it is not one."""
    if not secret.startswith(SECRET_PREFIX):
        return None
    raw = secret[len(SECRET_PREFIX):]
    try:
        key = base64.b64decode(raw + "=" * (-len(raw) % 4), validate=True)
    except (binascii.Error, ValueError):
        return None
    return key or None


def parse_webhooks(reader: TableReader) -> tuple[WebhookConfig, ...]:
    """Every ``[[webhooks]]`` entry of the root table; names must be unique."""
    configs = [c for c in (_parse_webhook(r) for r in reader.tables("webhooks")) if c is not None]
    seen: set[str] = set()
    for index, config in enumerate(configs):
        if config.name in seen:
            reader.problems.add(f"webhooks[{index}].name", f"duplicate endpoint name {config.name!r}")
        seen.add(config.name)
    return tuple(configs)


def _parse_webhook(reader: TableReader) -> WebhookConfig | None:
    before = len(reader.problems.items)
    url = _url(reader)
    key = _key(reader)
    name = reader.string("name") or (safe_url(url) if url else "")
    timeout = reader.number("timeout", float, 10.0, minimum=0, exclusive_min=True)
    connect_timeout = reader.number(
        "connect_timeout", float, min(5.0, timeout), minimum=0, exclusive_min=True)
    config = WebhookConfig(
        name=name, url=url, key=key or b"",
        statuses=frozenset(_choices(reader, "statuses", tuple(load_spec().statuses))),
        legs=frozenset(_choices(reader, "legs", LEGS)),
        directions=frozenset(_choices(reader, "directions", DIRECTIONS)),
        timeout=timeout, connect_timeout=connect_timeout,
        retry=_schedule(reader),
        max_concurrency=reader.number("max_concurrency", int, 4, minimum=1, maximum=256),
        ca_bundle=_ca_bundle(reader),
    )
    reader.reject_unknown()
    return config if len(reader.problems.items) == before else None


def _url(reader: TableReader) -> str:
    if not reader.has("url"):
        reader.problem("url", "is required")
        return ""
    url = reader.string("url")
    try:
        parts = urlsplit(url)
        _ = parts.port
    except ValueError:
        parts = None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        reader.problem("url", "must be an http(s) URL")
        return ""
    if parts.username is not None or parts.password is not None:
        reader.problem("url", "must not carry credentials; the signature authenticates us")
        return ""
    return url


def _key(reader: TableReader) -> bytes | None:
    secret = reader.secret("secret")
    if secret is None:
        if not any(reader.has(k) for k in ("secret", "secret_file", "secret_env")):
            reader.problem("secret", "is required (secret, secret_file or secret_env)")
        return None
    key = decode_secret(secret)
    if key is None:
        reader.problem("secret", "must be whsec_ followed by base64")
    elif not MIN_SECRET_BYTES <= len(key) <= MAX_SECRET_BYTES:
        size = f"{MIN_SECRET_BYTES}..{MAX_SECRET_BYTES}"
        reader.problem("secret", f"must decode to {size} bytes, got {len(key)}")
        return None
    return key


def _choices(reader: TableReader, key: str, allowed: tuple[str, ...]) -> tuple[str, ...]:
    values = reader.strings(key)
    wrong = [v for v in values if v not in allowed]
    if wrong:
        reader.problem(key, f"must be among {', '.join(allowed)}; got {', '.join(map(repr, wrong))}")
        return ()
    return values


def _schedule(reader: TableReader) -> RetrySchedule:
    delays = reader.numbers("retry_schedule", DEFAULT_DELAYS)
    jitter = reader.number("retry_jitter", float, DEFAULT_JITTER, minimum=0, maximum=0.9)
    ceiling = reader.number("retry_after_max", float, DEFAULT_RETRY_AFTER_MAX, minimum=0)
    return RetrySchedule(delays=delays, jitter=jitter, retry_after_max=ceiling)


def _ca_bundle(reader: TableReader) -> Path | None:
    raw = reader.string("ca_bundle")
    if not raw:
        return None
    path = Path(raw)
    if not path.is_file():
        reader.problem("ca_bundle", f"{path} is not a readable file")
        return None
    return path


def default_outbox_path(environ: Mapping[str, str]) -> Path:
    """``$STATE_DIRECTORY`` (systemd), else /var/lib/hangup-listener if it exists, else the current folder."""
    state = environ.get("STATE_DIRECTORY", "").split(":")[0]
    if state:
        return Path(state) / OUTBOX_FILE
    if STATE_DIRECTORY.is_dir():
        return STATE_DIRECTORY / OUTBOX_FILE
    return Path(OUTBOX_FILE)


def parse_outbox(reader: TableReader) -> OutboxConfig:
    """The ``[outbox]`` table of the root ``reader``."""
    table = reader.table_at("outbox")
    raw = table.string("path")
    path = Path(raw) if raw else default_outbox_path(table.environ)
    synchronous = table.string("synchronous", "full", choices=SYNCHRONOUS)
    delivery_process = table.boolean("delivery_process", True)
    table.reject_unknown()
    return OutboxConfig(path=path, synchronous=synchronous, delivery_process=delivery_process)
