"""The body one endpoint's request carries, built from the one stored body of a message.

Every message is stored once, enveloped (``{"type", "timestamp", "data"}``), whatever the endpoints
that want it; what differs per endpoint is applied here, when its request is built: the channel
variables it asked for (``variables``). A row stored before the envelope (schema version 1: the bare
leg document) is sent enveloped as a ``leg.classified`` whose ``data`` is that version-1 document,
unchanged, so the receiver reads every body the same way.
"""

from __future__ import annotations

from typing import Any

import orjson

from listener.core.document import LEG_CLASSIFIED, envelope
from listener.core.variables import DEFAULT_MAX_BYTES, NO_VARIABLES, Selection, attach

ENVELOPED = '{"type":'
"""How every body stored since schema version 2 begins (``render`` writes keys in order, compact)."""


def request_body(stored: str, variables: str | None = None, selection: Selection = NO_VARIABLES,
                 max_bytes: int = DEFAULT_MAX_BYTES) -> str:
    """The body to send for a stored one: as stored (a version-1 row enveloped), with the endpoint's
    share of the message's variables (``selection``, at most ``max_bytes``) when it asked for some."""
    body = stored if stored.startswith(ENVELOPED) else _legacy(stored)
    if not selection:
        return body
    try:
        message: Any = orjson.loads(body)
        kept: Any = orjson.loads(variables) if variables else {}
    except orjson.JSONDecodeError:
        return body
    data = message.get("data") if isinstance(message, dict) else None
    if not isinstance(data, dict) or not isinstance(kept, dict):
        return body
    message["data"] = attach(data, kept, selection, max_bytes)
    return orjson.dumps(message).decode()


def _legacy(stored: str) -> str:
    try:
        document: Any = orjson.loads(stored)
    except orjson.JSONDecodeError:
        return stored  # not ours to change: sent as it was stored
    if not isinstance(document, dict):
        return stored
    return orjson.dumps(envelope(LEG_CLASSIFIED, document)).decode()
