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

from listener.event import HangupEvent

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
