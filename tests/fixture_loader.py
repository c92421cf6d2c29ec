"""Test helper: the real FreeSWITCH captures under tests/data/fixtures and what each leg should give.

Each scenario folder holds ``hangup_complete.plain.txt`` (CHANNEL_HANGUP_COMPLETE frames as on the
wire), ``meta.json``, and ``expected.json`` (what the spec calls for, per Unique-ID) and/or
``decided.json`` (outcomes the spec leaves open, decided by us; each entry says why).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from listener.core.event import HangupEvent

FIXTURES = Path(__file__).parent / "data" / "fixtures"


@dataclass(frozen=True)
class Leg:
    scenario: str
    unique_id: str
    event: HangupEvent
    expected: dict[str, Any] | None

    @property
    def name(self) -> str:
        leg = (self.expected or {}).get("_leg", "?")
        return f"{self.scenario}:{leg}:{self.unique_id[:8]}"


def split_frames(data: bytes) -> Iterator[bytes]:
    """The bodies of ``Content-Length``-framed ESL messages, in order."""
    rest = data
    while rest.strip():
        head, sep, rest = rest.partition(b"\n\n")
        if not sep:
            return
        length = next(
            int(line.split(b":", 1)[1]) for line in head.split(b"\n") if line.startswith(b"Content-Length:")
        )
        yield rest[:length]
        rest = rest[length:]


def _expectations(folder: Path) -> dict[str, dict[str, Any]]:
    merged: dict[str, dict[str, Any]] = {}
    for name in ("expected.json", "decided.json"):
        path = folder / name
        if path.exists():
            for uid, value in json.loads(path.read_text()).items():
                merged.setdefault(uid, {}).update(value)
    return merged


def scenarios() -> list[str]:
    return sorted(p.name for p in FIXTURES.iterdir() if (p / "hangup_complete.plain.txt").exists())


def legs(scenario: str) -> list[Leg]:
    folder = FIXTURES / scenario
    expected = _expectations(folder)
    found = []
    for body in split_frames((folder / "hangup_complete.plain.txt").read_bytes()):
        event = HangupEvent.from_plain(body)
        found.append(Leg(scenario, event.unique_id, event, expected.get(event.unique_id)))
    return found


def all_legs() -> list[Leg]:
    return [leg for scenario in scenarios() for leg in legs(scenario)]


def satisfies(value: Any, wanted: Any) -> bool:
    """expected.json semantics: exact value, list of acceptable values, or {"not": value}."""
    if isinstance(wanted, list):
        return value in wanted
    if isinstance(wanted, dict) and set(wanted) == {"not"}:
        return bool(value != wanted["not"])
    return bool(value == wanted)


def synthetic(
    cause: str = "NORMAL_CLEARING",
    *,
    answered: bool = False,
    leg: str = "a",
    disposition: str | None = None,
    app: str | None = None,
    **variables: str,
) -> HangupEvent:
    """A hand-made CHANNEL_HANGUP_COMPLETE with just the headers a test cares about."""
    headers = {
        "Event-Name": "CHANNEL_HANGUP_COMPLETE",
        "Unique-ID": "00000000-0000-0000-0000-000000000001",
        "Hangup-Cause": cause,
        "Call-Direction": "inbound" if leg == "a" else "outbound",
        "variable_answer_epoch": "1795728787" if answered else "0",
    }
    if leg == "b":
        headers["Other-Type"] = "originator"
        headers["variable_originator"] = "00000000-0000-0000-0000-00000000000a"
        headers["Other-Leg-Unique-ID"] = "00000000-0000-0000-0000-00000000000a"
    if disposition:
        headers["variable_sip_hangup_disposition"] = disposition
    if app:
        headers["variable_current_application"] = app
    headers.update({f"variable_{name}": value for name, value in variables.items()})
    return HangupEvent.from_headers(headers)
