"""Reading the ``[[webhooks]]`` and ``[outbox]`` tables into their frozen values (``settings``).

Every problem is reported through the ``TableReader`` with its dotted path; a secret never
appears in a problem message nor in a ``repr``.
"""

from __future__ import annotations

import base64
import binascii
from pathlib import Path
from urllib.parse import urlsplit

from listener.config.reader import TableReader
from listener.config.settings import (
    DIRECTIONS,
    LEGS,
    SYNCHRONOUS,
    OutboxConfig,
    WebhookConfig,
    default_outbox_path,
)
from listener.config.variables import parse_variables
from listener.core.document import TYPES
from listener.core.retry import DEFAULT_DELAYS, DEFAULT_JITTER, DEFAULT_RETRY_AFTER_MAX, RetrySchedule
from listener.core.signing import safe_url
from listener.core.spec import load_spec

SECRET_PREFIX = "whsec_"  # noqa: S105 - the format's prefix, not a secret
MIN_SECRET_BYTES = 24  # Standard Webhooks: keys SHOULD be 24 to 64 bytes
MAX_SECRET_BYTES = 64
SECRET_KEYS = ("secret", "secret_file", "secret_env", "secrets", "secret_files", "secret_envs")
"""One secret, or a list of them (rotation): exactly one of these keys is given."""
KEEP_DELIVERED_MAX_HOURS = 168.0
"""A week of delivered messages at 100 legs/s is 130 to 260 GB (docs/operations.md): more is a typo."""


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
    keys = _keys(reader)
    name = reader.string("name") or (safe_url(url) if url else "")
    timeout = reader.number("timeout", float, 10.0, minimum=0, exclusive_min=True)
    connect_timeout = reader.number(
        "connect_timeout", float, min(5.0, timeout), minimum=0, exclusive_min=True)
    variables, variables_max_bytes = parse_variables(reader)
    config = WebhookConfig(
        name=name, url=url, keys=keys,
        types=frozenset(_types(reader)),
        statuses=frozenset(_choices(reader, "statuses", tuple(load_spec().statuses))),
        legs=frozenset(_choices(reader, "legs", LEGS)),
        directions=frozenset(_choices(reader, "directions", DIRECTIONS)),
        timeout=timeout, connect_timeout=connect_timeout,
        retry=_schedule(reader),
        max_concurrency=reader.number("max_concurrency", int, 4, minimum=1, maximum=256),
        ca_bundle=_ca_bundle(reader),
        variables=variables, variables_max_bytes=variables_max_bytes,
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


def _keys(reader: TableReader) -> tuple[bytes, ...]:
    """The HMAC key of every secret given, in order; each problem names the key it came from."""
    secrets = reader.secrets("secret")
    if not secrets and not any(reader.has(k) for k in SECRET_KEYS):
        reader.problem("secret", f"is required ({', '.join(SECRET_KEYS[:3])}, or a list: "
                                 f"{', '.join(SECRET_KEYS[3:])})")
    keys: dict[bytes, str] = {}
    for path, secret in secrets:
        key = _key(reader, path, secret)
        if key is not None and key in keys:
            reader.problem(path, f"the same secret as {keys[key]}")
        elif key is not None:
            keys[key] = path
    return tuple(keys)


def _key(reader: TableReader, path: str, secret: str) -> bytes | None:
    key = decode_secret(secret)
    if key is None:
        reader.problem(path, "must be whsec_ followed by base64")
    elif not MIN_SECRET_BYTES <= len(key) <= MAX_SECRET_BYTES:
        size = f"{MIN_SECRET_BYTES}..{MAX_SECRET_BYTES}"
        reader.problem(path, f"must decode to {size} bytes, got {len(key)}")
        return None
    return key


def _types(reader: TableReader) -> tuple[str, ...]:
    """``types``: the event types the endpoint gets (default both); an empty list is a mistake."""
    if not reader.has("types"):
        return TYPES
    values = _choices(reader, "types", TYPES)
    if reader.has("types") and not reader.value("types", list, []):
        reader.problem("types", f"must name at least one of {', '.join(TYPES)} (remove the endpoint instead)")
    return values or TYPES


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


def parse_outbox(reader: TableReader) -> OutboxConfig:
    """The ``[outbox]`` table of the root ``reader``."""
    table = reader.table_at("outbox")
    raw = table.string("path")
    path = Path(raw) if raw else default_outbox_path(table.environ)
    synchronous = table.string("synchronous", "full", choices=SYNCHRONOUS)
    hours = table.number("taken_retention_hours", float, 168.0, minimum=1.0)
    keep = table.number("keep_delivered_hours", float, 24.0, minimum=0.0, maximum=KEEP_DELIVERED_MAX_HOURS)
    table.removed("delivery_process")
    table.reject_unknown()
    return OutboxConfig(path=path, synchronous=synchronous, taken_retention_s=hours * 3600.0,
                        keep_delivered_s=keep * 3600.0)
