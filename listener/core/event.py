"""The frozen ``HangupEvent``: an ESL event's decoded headers, and the only place raw header names live.

Parsing follows FreeSWITCH's wire format, not greenswitch's: a ``text/event-plain`` body is split
into header lines *first* and each value is URL-decoded on its own, so a caller-controlled ``%0A``
inside a value can never inject a header. Bytes that are not UTF-8 are decoded with replacement.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any
from urllib.parse import unquote

import orjson

from listener.core.errors import EventError

HANGUP_COMPLETE = "CHANNEL_HANGUP_COMPLETE"
HEARTBEAT = "HEARTBEAT"


_HEADER_LINE = re.compile(r"^([^:\n]+): ([^\n]*)$", re.MULTILINE)


def _decode_value(raw: str) -> str:
    """URL-decode one header value (the fast path skips values with no escape)."""
    if "%" not in raw:
        return raw
    return unquote(raw, errors="replace")


class DecodedHeaders(Mapping[str, str]):
    """The header block of one plain event, each value found and URL-decoded on first access.

    An event has ~240 headers and a classification reads ~30: finding a line with ``str.find``
    and decoding only that value is most of the parser's speed. A value never crosses a line, so
    ``%0A`` cannot inject a header; the first of duplicate names wins.
    """

    __slots__ = ("_all", "_cache", "_text")

    def __init__(self, head: str) -> None:
        self._text = "\n" + head + "\n"
        self._cache: dict[str, str | None] = {}
        self._all: dict[str, str] | None = None

    def _raw(self, name: str) -> str | None:
        key = "\n" + name + ": "
        found = self._text.find(key)
        if found < 0 or "\n" in name:
            return None
        start = found + len(key)
        return self._text[start : self._text.index("\n", start)].rstrip("\r")

    def _lookup(self, name: str) -> str | None:
        """The decoded value, or None; both remembered (absent names are asked for again and again)."""
        cache = self._cache
        if name in cache:
            return cache[name]
        raw = self._raw(name)
        value = cache[name] = None if raw is None else _decode_value(raw)
        return value

    def __getitem__(self, name: str) -> str:
        value = self._lookup(name)
        if value is None:
            raise KeyError(name)
        return value

    def get(self, name: str, default: Any = None) -> Any:
        value = self._lookup(name)
        return default if value is None else value

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self._lookup(name) is not None

    def _names(self) -> dict[str, str]:
        if self._all is None:
            self._all = split_header_lines(self._text)
        return self._all

    def __iter__(self) -> Iterator[str]:
        return iter(self._names())

    def __len__(self) -> int:
        return len(self._names())


def split_header_lines(text: str) -> dict[str, str]:
    """``Name: value`` lines to a dict of raw values; other lines are ignored, the first duplicate wins."""
    pairs = _HEADER_LINE.findall(text)
    pairs.reverse()
    return {name: value.rstrip("\r") for name, value in pairs}


def parse_header_block(text: str) -> Mapping[str, str]:
    """Header lines split first, then each value decoded on its own (lazily)."""
    return DecodedHeaders(text)


def parse_plain(body: bytes | str) -> tuple[Mapping[str, str], str | None]:
    """Parse a ``text/event-plain`` body into (headers, inner body or None)."""
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
    end = text.find("\n\n")
    head = text if end < 0 else text[:end]
    headers = parse_header_block(head)
    inner: str | None = None
    if end >= 0 and "Content-Length" in headers:
        inner = text[end + 2 : end + 2 + _int(headers["Content-Length"], 0)]
    return headers, inner


def parse_json(body: bytes | str) -> tuple[dict[str, str], str | None]:
    """Parse a ``text/event-json`` body into (headers, inner body or None).

    orjson parses in C (a 9 KB hangup in ~15 us); it refuses bytes that are not UTF-8, so such a
    body is decoded with replacement and parsed again (the event is kept, never dropped).
    """
    try:
        obj = _loads(body)
    except orjson.JSONDecodeError as exc:
        raise EventError(f"event-json body is not JSON: {exc}") from None
    except RecursionError:  # nesting deeper than the stack
        raise EventError("event-json body is not usable JSON: RecursionError") from None
    if not isinstance(obj, dict):
        raise EventError("event-json body is not a JSON object")
    inner = obj.pop("_body", None)
    try:
        "".join(obj.values())  # in C: TypeError at the first value that is not a string (~1 us, not ~6)
    except TypeError:
        for key, value in obj.items():
            if not isinstance(value, str):  # FreeSWITCH writes strings only; anything else as its JSON text
                obj[key] = orjson.dumps(value).decode()
    return obj, inner if isinstance(inner, str) else None


def _loads(body: bytes | str) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        if isinstance(body, str):
            raise
        return orjson.loads(body.decode("utf-8", "replace"))


def _int(value: str | None, default: int) -> int:
    try:
        return int(value) if value is not None else default
    except ValueError:
        return default


def _opt_int(value: str | None) -> int | None:
    """An integer header value; None when absent, not a number, or beyond 64 bits (no such count or
    time exists, and JSON encoders for the document refuse it)."""
    if value is None:
        return None
    value = value.strip()
    if not value:
        return None
    try:
        number = int(value)
    except ValueError:
        return None
    return number if -(2**63) <= number < 2**63 else None


def _sip_code(value: str | None) -> int | None:
    """A SIP code from ``486`` or ``sip:486``; None for anything else (``q850:17``, empty)."""
    if value is None:
        return None
    value = value.strip()
    if value.startswith("sip:"):
        value = value[4:]
    code = _opt_int(value)
    return code if code is not None and 100 <= code <= 699 else None


@dataclass(frozen=True, slots=True)
class HangupEvent:
    """One ESL event's decoded headers (a read-only mapping), its inner body if any, and the frame
    body it was parsed from (``raw``: what an event with no Unique-ID is identified by)."""

    headers: Mapping[str, str]
    body: str | None = None
    raw: bytes | str | None = field(default=None, repr=False, compare=False)

    @classmethod
    def from_headers(cls, headers: Mapping[str, str], body: str | None = None) -> HangupEvent:
        """Freeze a header mapping into an event."""
        return cls(MappingProxyType(dict(headers)), body)

    @classmethod
    def from_plain(cls, body: bytes | str) -> HangupEvent:
        """Build an event from a ``text/event-plain`` body (values decoded lazily, read-only)."""
        headers, inner = parse_plain(body)
        return cls(headers, inner, body)

    @classmethod
    def from_json(cls, body: bytes | str) -> HangupEvent:
        """Build an event from a ``text/event-json`` body (its fresh dict frozen without a copy)."""
        headers, inner = parse_json(body)
        return cls(MappingProxyType(headers), inner, body)

    # -- generic access -------------------------------------------------------------------
    def header(self, name: str) -> str | None:
        """Any header by its exact name."""
        return self.headers.get(name)

    def variable(self, name: str) -> str | None:
        """A channel variable by name (``sip_term_status`` reads ``variable_sip_term_status``)."""
        return self.headers.get("variable_" + name)

    def _epoch_us(self, name: str) -> int | None:
        value = _opt_int(self.headers.get(name))
        return value if value else None  # FreeSWITCH writes 0 for "never happened"

    # -- identity ---------------------------------------------------------------------------
    @property
    def event_name(self) -> str:
        return self.headers.get("Event-Name", "")

    @property
    def is_hangup_complete(self) -> bool:
        return self.event_name == HANGUP_COMPLETE

    @property
    def unique_id(self) -> str:
        return self.headers.get("Unique-ID") or self.headers.get("Caller-Unique-ID") or ""

    @property
    def core_uuid(self) -> str:
        return self.headers.get("Core-UUID", "")

    @property
    def hostname(self) -> str:
        return self.headers.get("FreeSWITCH-Hostname", "")

    @property
    def call_uuid(self) -> str:
        """The same on both legs of a bridged call (``Channel-Call-UUID``, else ``call_uuid``)."""
        return (
            self.headers.get("Channel-Call-UUID")
            or self.headers.get("variable_call_uuid")
            or self.unique_id
        )

    @property
    def other_leg_unique_id(self) -> str | None:
        return self.headers.get("Other-Leg-Unique-ID")

    @property
    def event_sequence(self) -> int | None:
        return _opt_int(self.headers.get("Event-Sequence"))

    # -- who and where ----------------------------------------------------------------------
    @property
    def direction(self) -> str | None:
        return self.headers.get("Call-Direction") or self.headers.get("Caller-Direction")

    @property
    def other_type(self) -> str | None:
        """``originatee`` on the caller's (A) leg, ``originator`` on the callee's (B) leg."""
        return self.headers.get("Other-Type")

    @property
    def caller_number(self) -> str | None:
        return self.headers.get("Caller-Caller-ID-Number") or self.headers.get("Caller-ANI")

    @property
    def caller_name(self) -> str | None:
        return self.headers.get("Caller-Caller-ID-Name")

    @property
    def destination_number(self) -> str | None:
        return self.headers.get("Caller-Destination-Number")

    @property
    def channel_name(self) -> str | None:
        return self.headers.get("Channel-Name")

    # -- how it ended ---------------------------------------------------------------------------
    @property
    def hangup_cause(self) -> str:
        return self.headers.get("Hangup-Cause") or self.headers.get("variable_hangup_cause") or ""

    @property
    def hangup_cause_q850(self) -> int | None:
        """Informational only: 16 for every FreeSWITCH-only cause, so never classify on it."""
        return _opt_int(self.headers.get("variable_hangup_cause_q850"))

    @property
    def sip_term_status(self) -> int | None:
        return _sip_code(self.headers.get("variable_sip_term_status"))

    @property
    def proto_specific_hangup_cause(self) -> int | None:
        return _sip_code(self.headers.get("variable_proto_specific_hangup_cause"))

    @property
    def last_bridge_proto_specific_hangup_cause(self) -> int | None:
        return _sip_code(self.headers.get("variable_last_bridge_proto_specific_hangup_cause"))

    @property
    def sip_invite_failure_status(self) -> int | None:
        return _sip_code(self.headers.get("variable_sip_invite_failure_status"))

    @property
    def sip_hangup_disposition(self) -> str | None:
        return self.headers.get("variable_sip_hangup_disposition")

    @property
    def endpoint_disposition(self) -> str | None:
        return self.headers.get("variable_endpoint_disposition")

    @property
    def originate_disposition(self) -> str | None:
        return self.headers.get("variable_originate_disposition")

    @property
    def last_bridge_hangup_cause(self) -> str | None:
        return self.headers.get("variable_last_bridge_hangup_cause")

    @property
    def current_application(self) -> str | None:
        return self.headers.get("variable_current_application")

    @property
    def last_application(self) -> str | None:
        return self.headers.get("variable_last_app")

    @property
    def transfer_history(self) -> str | None:
        return self.headers.get("variable_transfer_history")

    @property
    def transfer_source(self) -> str | None:
        return self.headers.get("variable_transfer_source")

    # -- timing -----------------------------------------------------------------------------------
    @property
    def created_us(self) -> int | None:
        return self._epoch_us("Caller-Channel-Created-Time")

    @property
    def answered_us(self) -> int | None:
        return self._epoch_us("Caller-Channel-Answered-Time")

    @property
    def progress_us(self) -> int | None:
        return self._epoch_us("Caller-Channel-Progress-Time")

    @property
    def hangup_us(self) -> int | None:
        return self._epoch_us("Caller-Channel-Hangup-Time") or self._epoch_us(
            "Event-Date-Timestamp"
        )

    @property
    def answer_epoch(self) -> int | None:
        value = _opt_int(self.headers.get("variable_answer_epoch"))
        return value if value else None

    @property
    def billsec(self) -> int | None:
        return _opt_int(self.headers.get("variable_billsec"))

    @property
    def duration_s(self) -> int | None:
        return _opt_int(self.headers.get("variable_duration"))

    @property
    def answered(self) -> bool:
        """Whether this leg was ever answered (``answer_epoch`` or the answered time is set)."""
        return bool(self.answer_epoch or self.answered_us)
