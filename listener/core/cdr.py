"""mod_json_cdr's JSON CDR files: one leg's file to the ``HangupEvent`` its CHANNEL_HANGUP_COMPLETE gives.

A CDR is written from the same reporting step as the event, so it holds the same channel variables
and caller profile. ``event_from_cdr`` synthesizes the ESL headers from them (the mapping of
``tests/data/fixtures-cdr/README.md``), so that classification, facts and the document need no
second code path. Invariants:

- Only facts the CDR holds become headers; what it lacks is left out, never guessed:
  ``FreeSWITCH-Hostname``/``-IPv4``/``-IPv6``, ``Event-Date-*``, ``Event-Sequence``,
  ``Caller-Logical-Direction``, ``Channel-HIT-Dialplan``, the ``Other-Leg-*`` times.
- ``Answer-State`` and ``Channel-Call-State`` are ``hangup``/``HANGUP``: a CDR exists only for a
  channel in its reporting state, which is where FreeSWITCH sends CHANNEL_HANGUP_COMPLETE.
- ``Other-Type`` / ``Other-Leg-*`` come from the newest caller profile's originator (else
  originatee) profile, as FreeSWITCH builds them for the event. ``variables.originator``,
  ``signal_bond``, ``bridge_uuid`` and ``last_bridge_to`` are not used for them: after a REFER they
  name a partner the event does not (two captured legs), and would change ``hangup_by``.
- ``variables`` are percent-decoded only when the file was written with ``encode-values=true``:
  see ``_encoded``. Every other section is plain in both modes.
- The event's ``raw`` is the file's bytes, so a CDR without a Unique-ID still gets a stable id.

Pure: bytes in, a frozen event out; no file is read here.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, TypeGuard
from urllib.parse import unquote

import orjson

from listener.core.errors import CDRIncompleteError, EventError
from listener.core.event import HANGUP_COMPLETE, HangupEvent

SUFFIX = ".cdr.json"
A_LEG_PREFIX = "a_"

#: caller_profile field -> the ESL header name after ``Caller-`` / ``Other-Leg-``.
_PROFILE_FIELDS = (
    ("username", "Username"), ("dialplan", "Dialplan"), ("caller_id_name", "Caller-ID-Name"),
    ("caller_id_number", "Caller-ID-Number"), ("ani", "ANI"), ("aniii", "ANI-II"),
    ("network_addr", "Network-Addr"), ("rdnis", "RDNIS"), ("destination_number", "Destination-Number"),
    ("uuid", "Unique-ID"), ("source", "Source"), ("context", "Context"), ("chan_name", "Channel-Name"),
)
#: callflow[].times field -> the ESL header name after ``Caller-``.
_TIME_FIELDS = (
    ("created_time", "Channel-Created-Time"), ("profile_created_time", "Profile-Created-Time"),
    ("progress_time", "Channel-Progress-Time"), ("progress_media_time", "Channel-Progress-Media-Time"),
    ("answered_time", "Channel-Answered-Time"), ("bridged_time", "Channel-Bridged-Time"),
    ("last_hold_time", "Channel-Last-Hold"), ("hold_accum_time", "Channel-Hold-Accum"),
    ("hangup_time", "Channel-Hangup-Time"), ("resurrect_time", "Channel-Resurrect-Time"),
    ("transfer_time", "Channel-Transfer-Time"),
)
#: A character FreeSWITCH's URL encoder (``switch_url_encode``) always escapes, or a ``%`` that does
#: not start an escape (the encoder leaves an existing ``%XX`` as is and escapes any other ``%``).
_NEVER_ENCODED = re.compile(r'[^\x21-\x7e]|["#&+:;<=>?@\[\\\]^`{|}]|%(?![0-9A-Fa-f]{2})')


def unique_id_from_name(filename: str) -> str | None:
    """The Unique-ID a CDR file's name gives (``[a_]<Unique-ID>.cdr.json``); None for any other name.

    A hint for skipping files, not the truth: the content's ``variables.uuid`` is (a B leg whose
    Unique-ID itself starts with ``a_`` loses it here).
    """
    if "/" in filename or not filename.endswith(SUFFIX):
        return None
    return filename[: -len(SUFFIX)].removeprefix(A_LEG_PREFIX) or None


def event_from_cdr(data: bytes) -> HangupEvent:
    """The CHANNEL_HANGUP_COMPLETE event of the leg whose JSON CDR file holds ``data``.

    Raises CDRIncompleteError when ``data`` is not complete JSON (retry later: the file may still be
    being written), EventError when it is JSON but not a CDR.
    """
    cdr = _load(data)
    headers = _headers(cdr, _variables(cdr["variables"]))
    return HangupEvent(MappingProxyType(headers), None, data)


def _load(data: bytes) -> dict[str, Any]:
    """The CDR object; a truncated or non-JSON file is incomplete, other JSON is not a CDR."""
    try:
        cdr = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        cdr = _load_replacing(data, exc)
    except RecursionError:
        raise EventError("CDR is not usable JSON: nested too deeply") from None
    if not is_cdr(cdr):
        raise EventError("not a JSON CDR: no 'variables' object and 'callflow' list")
    return cdr


def is_cdr(obj: object) -> TypeGuard[dict[str, Any]]:
    """Whether parsed JSON is a CDR: an object with a ``variables`` object and a ``callflow`` list."""
    return (isinstance(obj, dict) and isinstance(obj.get("variables"), dict)
            and isinstance(obj.get("callflow"), list))


def _load_replacing(data: bytes, first: orjson.JSONDecodeError) -> Any:
    """Parse again with bytes that are not UTF-8 replaced (``encode-values=false`` writes them as is)."""
    try:
        return orjson.loads(data.decode("utf-8", "replace"))
    except orjson.JSONDecodeError:
        pass
    if first.pos >= len(data.rstrip()):
        raise CDRIncompleteError(f"CDR ends before its JSON does ({len(data)} bytes): still being written?")
    raise CDRIncompleteError(f"CDR is not (yet) complete JSON: {first.msg} at byte {first.pos}")


def _variables(raw: Mapping[str, Any]) -> dict[str, str]:
    """The channel variables as text, percent-decoded when the file was written encoded."""
    values = {name: _text(value) for name, value in raw.items()}
    if not _encoded(values):
        return values
    return {name: unquote(v, errors="replace") if "%" in v else v for name, v in values.items()}


def _encoded(values: Mapping[str, str]) -> bool:
    """Whether the file was written with ``encode-values=true``: no value holds what the encoder escapes.

    Decided per file, not per value: a plain value may hold ``%41`` legitimately, but a plain file
    also holds values the encoder would have escaped (``start_stamp`` alone has a space and ``:``),
    so it is never taken for an encoded one. Values joined by ``,`` (never part of an escape).
    """
    return _NEVER_ENCODED.search(",".join(values.values())) is None


def _text(value: Any) -> str:
    """FreeSWITCH writes strings only; anything else as its JSON text."""
    return value if isinstance(value, str) else orjson.dumps(value).decode()


def _headers(cdr: Mapping[str, Any], variables: Mapping[str, str]) -> dict[str, str]:
    """The ESL headers of the leg's CHANNEL_HANGUP_COMPLETE that the CDR holds the facts for."""
    flow = _newest(cdr["callflow"])
    profile, channel = _mapping(flow.get("caller_profile")), _mapping(cdr.get("channel_data"))
    direction = variables.get("direction") or channel.get("direction")
    headers = _present({
        "Event-Name": HANGUP_COMPLETE,
        "Core-UUID": cdr.get("core-uuid"),
        "FreeSWITCH-Switchname": cdr.get("switchname"),
        "Hangup-Cause": variables.get("hangup_cause"),
        "Channel-State": channel.get("state"),
        "Channel-Call-State": "HANGUP",
        "Channel-State-Number": channel.get("state_number"),
        "Channel-Name": profile.get("chan_name") or variables.get("channel_name"),
        "Unique-ID": variables.get("uuid") or profile.get("uuid"),
        "Call-Direction": direction,
        "Channel-Call-UUID": variables.get("call_uuid"),
        "Answer-State": "hangup",
        "Caller-Direction": direction,
        "Caller-Profile-Index": flow.get("profile_index"),
    })
    headers.update(_profile_headers("Caller", profile))
    times = _mapping(flow.get("times"))
    headers.update(_present({"Caller-" + name: times.get(key) for key, name in _TIME_FIELDS}))
    headers.update(_other_leg(profile))
    headers.update({"variable_" + name: value for name, value in variables.items()})
    return headers


def _newest(callflow: list[Any]) -> Mapping[str, Any]:
    """``callflow[0]``, the newest caller-profile snapshot (empty when there is none)."""
    return _mapping(callflow[0]) if callflow else {}


def _other_leg(profile: Mapping[str, Any]) -> dict[str, str]:
    """``Other-Type`` and the partner's ``Other-Leg-*`` profile headers, as FreeSWITCH sets them."""
    for kind in ("originator", "originatee"):
        partners = _mapping(profile.get(kind)).get(f"{kind}_caller_profiles")
        if isinstance(partners, list) and partners:
            return {"Other-Type": kind, **_profile_headers("Other-Leg", _mapping(partners[0]))}
    return {}


def _profile_headers(prefix: str, profile: Mapping[str, Any]) -> dict[str, str]:
    return _present({f"{prefix}-{name}": profile.get(key) for key, name in _PROFILE_FIELDS})


def _present(candidates: Mapping[str, Any]) -> dict[str, str]:
    """The non-empty string values (FreeSWITCH leaves empty profile fields out of its events)."""
    return {name: value for name, value in candidates.items() if isinstance(value, str) and value}


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, dict) else {}
