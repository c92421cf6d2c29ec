"""The versioned JSON document for one classified leg, and the envelope every webhook body is.

``docs/payload.md`` documents it field by field and ``listener/data/leg.classified.schema.json`` is
its JSON Schema; a test validates every document the real captures produce against that schema.
The call a leg belongs to gets its own document (``listener.core.calls``). Both travel in the
Standard Webhooks envelope ``{"type", "timestamp", "data"}`` (``envelope``).
"""

from __future__ import annotations

import hashlib
import json
import uuid
from datetime import UTC, date, datetime
from functools import lru_cache
from typing import Any

from listener.core.classifier import Classification
from listener.core.event import HangupEvent

SCHEMA_VERSION = 2
"""2: webhook bodies are enveloped (``envelope``) and calls have documents of their own; the leg
document's fields are those of version 1."""
LEG_CLASSIFIED = "leg.classified"
CALL_COMPLETED = "call.completed"
TYPES = (LEG_CLASSIFIED, CALL_COMPLETED)
#: uuid5 namespace for document ids: id = uuid5(NAMESPACE, "<Core-UUID>/<Unique-ID>"), or, for an
#: event lacking either, uuid5(NAMESPACE, "sha256:<hex SHA-256 of the event's bytes>").
ID_NAMESPACE = uuid.UUID("6f1c0c8e-3a4b-5d7e-9f10-2b3c4d5e6f70")
_NAMESPACE_BYTES = ID_NAMESPACE.bytes
#: A uuid's variant nibble from the hash's: the top two bits become ``10`` (RFC 4122).
_VARIANT = {digit: "89ab"[int(digit, 16) & 3] for digit in "0123456789abcdef"}


def document_id(core_uuid: str, unique_id: str) -> str:
    """Stable id of one hangup event: the same event always gets the same id.

    Exactly ``str(uuid.uuid5(ID_NAMESPACE, f"{core_uuid}/{unique_id}"))`` (a test compares them), with
    the version and variant written into the SHA-1's hex digits: 1.1 us instead of 3.9 us.
    """
    name = f"{core_uuid}/{unique_id}".encode()
    digest = hashlib.sha1(_NAMESPACE_BYTES + name, usedforsecurity=False).hexdigest()
    return (
        f"{digest[:8]}-{digest[8:12]}-5{digest[13:16]}-{_VARIANT[digest[16]]}{digest[17:20]}-{digest[20:32]}"
    )


def content_digest(content: bytes | str) -> str:
    """Hex SHA-256 of an event's bytes (text as UTF-8): what an event with no Unique-ID is known by."""
    data = content if isinstance(content, bytes) else content.encode("utf-8", "surrogatepass")
    return hashlib.sha256(data).hexdigest()


def content_id(digest: str) -> str:
    """The id of the content whose SHA-256 is ``digest``: never one of ``document_id``'s (no ``/``)."""
    return str(uuid.uuid5(ID_NAMESPACE, f"sha256:{digest}"))


def event_id(event: HangupEvent) -> str:
    """The document id of ``event``: from its Core-UUID and Unique-ID, else from its content.

    Without either, ids made from the rest would be shared by unrelated events (``"<core>/"`` or
    ``"/<uuid an application chose>"``) and the receiver would drop all but the first.
    """
    core_uuid, unique_id = event.core_uuid, event.unique_id
    if core_uuid and unique_id:
        return document_id(core_uuid, unique_id)
    return content_id(content_digest(_content(event)))


def _content(event: HangupEvent) -> bytes | str:
    """The bytes ``event`` was parsed from; for one built from a mapping, its headers and body as JSON."""
    if event.raw is not None:
        return event.raw
    return json.dumps([sorted(event.headers.items()), event.body], ensure_ascii=False)


def iso_utc(epoch_us: int | None) -> str | None:
    """Microseconds since the epoch as ISO-8601 UTC with a ``Z``, milliseconds truncated.

    Years 1970..2106 (every real timestamp) are formatted from integers and a cache of minutes,
    0.9 us instead of 2.0 us; in that range the float the datetime spelling divides into is exact
    to well under half a microsecond, so both give the same text (a test compares them).
    """
    if epoch_us is None:
        return None
    if 0 <= epoch_us < _FAST_UNTIL_US:
        minutes, us = divmod(epoch_us, 60_000_000)
        return f"{_minute_prefix(minutes)}{us // 1_000_000:02d}.{us // 1000 % 1000:03d}Z"
    return _iso_utc_datetime(epoch_us)


#: 2**32 seconds (2106): below 2**33 s a float's half-ulp is under half a microsecond.
_FAST_UNTIL_US = 2**32 * 1_000_000
_EPOCH_ORDINAL = date(1970, 1, 1).toordinal()


@lru_cache(maxsize=1024)
def _minute_prefix(minutes: int) -> str:
    """``YYYY-MM-DDTHH:MM:`` of a minute since the epoch (a day of calls reuses a few hundred)."""
    days, minute_of_day = divmod(minutes, 1440)
    day = date.fromordinal(_EPOCH_ORDINAL + days).isoformat()
    return f"{day}T{minute_of_day // 60:02d}:{minute_of_day % 60:02d}:"


def _iso_utc_datetime(epoch_us: int) -> str | None:
    try:
        moment = datetime.fromtimestamp(epoch_us / 1_000_000, tz=UTC)
    except (ValueError, OverflowError, OSError):  # outside years 1..9999 or the platform's time_t
        return None
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _seconds(start_us: int | None, end_us: int | None) -> float | None:
    if start_us is None or end_us is None or end_us < start_us:
        return None
    return round((end_us - start_us) / 1_000_000, 3)


def timing(event: HangupEvent) -> dict[str, Any]:
    """Created / answered / ended timestamps, the call's duration, billed seconds and ring time."""
    created, answered, ended = event.created_us, event.answered_us, event.hangup_us
    ring_start = event.progress_us or created
    billsec = event.billsec
    return {
        "created_at": iso_utc(created),
        "answered_at": iso_utc(answered),
        "ended_at": iso_utc(ended),
        "duration_s": _seconds(created, ended),
        "billsec": billsec if billsec is None or billsec >= 0 else None,
        "ring_s": _seconds(ring_start, answered or ended),
    }


def build(event: HangupEvent, outcome: Classification, node_name: str) -> dict[str, Any]:
    """The classified document for one CHANNEL_HANGUP_COMPLETE."""
    facts = outcome.facts
    core_uuid, unique_id, direction = event.core_uuid, event.unique_id, event.direction
    return {
        "schema_version": SCHEMA_VERSION,
        "id": event_id(event),
        "status": outcome.status,
        "status_label": outcome.status_label,
        "status_definition": outcome.status_definition,
        "bye_reason": outcome.bye_reason,
        "bye_reason_definition": outcome.bye_reason_definition,
        "last_response_code": outcome.last_response_code,
        "rule": outcome.rule,
        "hangup_cause": facts.hangup_cause or None,
        "sip_status": facts.sip_status,
        "partner_sip_status": facts.partner_sip_status,
        "hangup_disposition": facts.hangup_disposition,
        "hangup_by": facts.hangup_by,
        "leg": facts.leg,
        "direction": direction if direction in ("inbound", "outbound") else None,
        "answered": facts.answered,
        "channel_uuid": unique_id,
        "call_uuid": event.call_uuid,
        "other_leg_uuid": event.other_leg_unique_id,
        "caller_number": event.caller_number,
        "caller_name": event.caller_name,
        "destination_number": event.destination_number,
        **timing(event),
        "node": {"name": node_name, "hostname": event.hostname, "core_uuid": core_uuid},
    }


def envelope(kind: str, data: dict[str, Any], stored_at: float | None = None) -> dict[str, Any]:
    """The Standard Webhooks body of one document: ``{"type", "timestamp", "data"}``.

    ``timestamp`` is the event's own time, the leg's or the call's ``ended_at`` (else when it began,
    else ``stored_at``, epoch seconds): fixed when the body is stored, so a retry sends the same bytes.
    ``data`` is last, so a body ends with the document's closing brace and the envelope's.
    """
    moment = data.get("ended_at") or data.get("created_at") or data.get("started_at")
    if not moment:
        moment = iso_utc(int((stored_at or 0.0) * 1_000_000))
    return {"type": kind, "timestamp": moment, "data": data}
