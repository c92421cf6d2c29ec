"""After a run: every event logged and delivered exactly as classified, each call once, and when each arrived.

The expected document of each event is rebuilt independently (``corpus.Expected``); the log line's
``call`` and the ``data`` of the webhook's envelope (``{"type": "leg.classified", "timestamp":
<ended_at>, "data": <document>}``; a bare document from a daemon before the envelope) must equal
it field for field. A ``call.completed`` envelope's ``data.legs`` must be exactly the legs of one
copy of one call (their ``channel_uuid``s), each call once. Every ``webhook-id`` is its document's
``id`` and every signature must verify (Standard Webhooks, HMAC-SHA256 over ``id.timestamp.body``).
Duplicates are counted, not failed: delivery is at least once.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections import Counter
from collections.abc import Hashable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.corpus import Expected
from bench.harness import MARK, SECRET

KEY = base64.b64decode(SECRET.removeprefix("whsec_"))
LEG, CALL = "leg.classified", "call.completed"


@dataclass
class Check:
    """What one output (the log, or the receiver's legs or calls) held against what a run must deliver."""

    expected: int
    seen: int = 0
    duplicates: int = 0
    missing: int = 0
    wrong: int = 0
    bad_signatures: int = 0
    arrivals: dict[int, float] = field(default_factory=dict, repr=False)
    counts: Counter[Hashable] = field(default_factory=Counter, repr=False)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.wrong or self.bad_signatures)

    def add(self, key: Hashable | None, right: bool) -> None:
        """One output: ``key`` is the leg or call it is (None: none of this run's), ``right`` as expected."""
        self.seen += 1
        self.wrong += key is None or not right
        if key is not None:
            self.counts[key] += 1

    def finish(self, wanted: Iterable[Hashable]) -> Check:
        self.duplicates = sum(n - 1 for n in self.counts.values())
        self.missing = sum(1 for key in wanted if key not in self.counts)
        return self

    def summary(self) -> dict[str, int | bool]:
        return {"expected": self.expected, "seen": self.seen, "duplicates": self.duplicates,
                "missing": self.missing, "wrong": self.wrong, "bad_signatures": self.bad_signatures,
                "ok": self.ok}


def check_log(path: Path, expected: Expected, start: int, stop: int) -> Check:
    """Every ``leg.classified`` line of the daemon's stdout against the expected documents."""
    check = Check(stop - start)
    with path.open("rb") as lines:
        for line in lines:
            if MARK in line:
                document = json.loads(line)["leg"]
                i = expected.corpus.event_of(document.get("channel_uuid"))
                check.add(i, i is not None and start <= i < stop and document == expected.document(i))
    return check.finish(range(start, stop))


def signed(webhook_id: bytes, timestamp: bytes, signature: bytes, body: bytes) -> bool:
    mac = hmac.new(KEY, webhook_id + b"." + timestamp + b"." + body, hashlib.sha256).digest()
    return hmac.compare_digest(b"v1," + base64.b64encode(mac), signature)


def opened(body: bytes) -> tuple[str, Any, Any]:
    """A webhook body's (type, data, timestamp): a Standard Webhooks envelope, or a bare leg document as
    the daemon sent before the envelope (read as ``leg.classified`` at its own ``ended_at``)."""
    value = json.loads(body)
    if "type" in value and "data" in value:
        return value["type"], value["data"], value.get("timestamp")
    return LEG, value, value.get("ended_at")


@dataclass
class Webhooks:
    """What the receiver recorded: a check of the legs and, once the daemon sends them, of the calls."""

    legs: Check
    calls: Check | None
    """None when no ``call.completed`` arrived: a daemon that does not send them (yet)."""

    @property
    def received(self) -> int:
        return self.legs.seen + (self.calls.seen if self.calls is not None else 0)

    def summaries(self) -> dict[str, dict[str, int | bool]]:
        calls = {"calls": self.calls.summary()} if self.calls is not None else {}
        return {"webhooks": self.legs.summary(), **calls}


class _Reader:
    """Reads the receiver's record line by line into the checks of ``Webhooks``."""

    def __init__(self, expected: Expected, start: int, stop: int) -> None:
        self.expected, self.start, self.stop = expected, start, stop
        self.wanted_calls = expected.corpus.calls_within(start, stop)
        self.legs, self.calls = Check(stop - start), Check(len(self.wanted_calls))

    def read(self, line: bytes) -> None:
        arrival, webhook_id, timestamp, signature, body = line.rstrip(b"\n").split(b" ", 4)
        kind, key, right = self._judged(body, webhook_id.decode())
        check = self.calls if kind == CALL else self.legs
        check.bad_signatures += not signed(webhook_id, timestamp, signature, body)
        check.add(key, right)
        if kind == LEG and isinstance(key, int):
            check.arrivals.setdefault(key, float(arrival))

    def _judged(self, body: bytes, webhook_id: str) -> tuple[str, Hashable | None, bool]:
        """The body's type, the leg or call it is (None: none of this run's), whether it is as expected."""
        try:
            kind, data, at = opened(body)
            if kind == LEG:
                return (kind, *self._leg(data, at, webhook_id))
            if kind == CALL:
                return (kind, *self._call(data, at, webhook_id))
        except (ValueError, TypeError, AttributeError):  # not JSON, or not shaped as an envelope or document
            pass
        return "", None, False

    def _leg(self, data: dict[str, Any], at: object, webhook_id: str) -> tuple[int | None, bool]:
        """The event whose leg ``data`` is, and whether it is exactly that leg's document, at its end."""
        i = self.expected.corpus.event_of(data.get("channel_uuid"))
        if i is None:
            return None, False
        document = self.expected.document(i)
        return i, (self.start <= i < self.stop and data == document and at == document["ended_at"]
                   and webhook_id == document["id"])

    def _call(self, data: dict[str, Any], at: object, webhook_id: str) -> tuple[tuple[int, int] | None, bool]:
        """The (copy, call) ``data`` is, and whether its legs are exactly that copy's legs."""
        uuids = sorted(str(leg.get("channel_uuid")) for leg in data.get("legs") or ())
        place = self.expected.corpus.slot_of(uuids[0]) if uuids else None
        if place is None:
            return None, False
        copy, call = place[:2]
        return (copy, call), ((copy, call) in self.wanted_calls and at == data.get("ended_at")
                              and uuids == sorted(self.expected.corpus.leg_ids(copy, call))
                              and webhook_id == data.get("id"))


def check_webhooks(path: Path, expected: Expected, start: int, stop: int) -> Webhooks:
    """Every request the receiver recorded: signature, envelope, body, first arrival per leg.

    Each leg of the events ``start..stop`` must arrive as its document (in a ``leg.classified``
    envelope or, from a daemon before the envelope, bare); each call among them whose legs are all
    there, once the daemon sends ``call.completed``, with exactly that copy's legs."""
    reader = _Reader(expected, start, stop)
    with path.open("rb") as lines:
        for line in lines:
            reader.read(line)
    calls = reader.calls.finish(reader.wanted_calls) if reader.calls.seen else None
    return Webhooks(reader.legs.finish(range(start, stop)), calls)
