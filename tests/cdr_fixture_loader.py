"""Test helper: the FreeSWITCH 1.10.12 captures with per-leg JSON CDRs under tests/data/fixtures-cdr.

Each scenario folder holds the CHANNEL_HANGUP_COMPLETE frames of one call (``hangup_complete.json.txt``),
the CDR file mod_json_cdr wrote for each leg (``json_cdr/*.cdr.json``), and ``expected.json``; five
also hold ``encode_values_false/``, a second call written with ``encode-values=false`` (no
expected.json: its legs are compared with their own ESL frames). See the folder's README.md.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fixture_loader import split_frames

from listener.core.event import HangupEvent

FIXTURES_CDR = Path(__file__).parent / "data" / "fixtures-cdr"
PLAIN_CALLS = "encode_values_false"


@dataclass(frozen=True)
class CDRLeg:
    """One leg: its CDR file, the ESL event of the same leg, and its expectation if the call has one."""

    call: str
    path: Path
    esl: HangupEvent | None
    expected: dict[str, Any] | None

    @property
    def name(self) -> str:
        return f"{self.call}:{self.path.name[:10]}"


def calls() -> list[Path]:
    """Every call folder: each scenario, and each scenario's ``encode_values_false`` call."""
    scenarios = sorted(p for p in FIXTURES_CDR.iterdir() if (p / "json_cdr").is_dir())
    return [folder for s in scenarios for folder in (s, s / PLAIN_CALLS) if (folder / "json_cdr").is_dir()]


def esl_events(call: Path) -> dict[str, HangupEvent]:
    """The call's CHANNEL_HANGUP_COMPLETE events (JSON frames), by Unique-ID."""
    frames = split_frames((call / "hangup_complete.json.txt").read_bytes())
    events = (HangupEvent.from_json(body) for body in frames)
    return {event.unique_id: event for event in events}


def cdr_legs() -> list[CDRLeg]:
    found = []
    for call in calls():
        events = esl_events(call)
        expected_path = call / "expected.json"
        expected = json.loads(expected_path.read_text()) if expected_path.exists() else {}
        for path in sorted((call / "json_cdr").glob("*.cdr.json")):
            uid = json.loads(path.read_bytes())["variables"]["uuid"]
            name = str(call.relative_to(FIXTURES_CDR))
            found.append(CDRLeg(name, path, events.get(uid), expected.get(uid)))
    return found
