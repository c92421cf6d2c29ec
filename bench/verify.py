"""After a run: every event logged and delivered exactly as classified, and when each arrived.

The expected document of each event is rebuilt independently (``corpus.Expected``); the log line's
``call`` and the webhook body must equal it field for field, and every webhook signature must
verify (Standard Webhooks, HMAC-SHA256 over ``id.timestamp.body``).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from bench.corpus import Expected
from bench.harness import MARK, SECRET

KEY = base64.b64decode(SECRET.removeprefix("whsec_"))


@dataclass
class Check:
    """What one output (the log or the receiver) held for the events ``start..stop``."""

    expected: int
    seen: int = 0
    duplicates: int = 0
    missing: int = 0
    wrong: int = 0
    bad_signatures: int = 0
    arrivals: dict[int, float] = field(default_factory=dict, repr=False)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.wrong or self.bad_signatures)

    def summary(self) -> dict[str, int | bool]:
        return {"expected": self.expected, "seen": self.seen, "duplicates": self.duplicates,
                "missing": self.missing, "wrong": self.wrong, "bad_signatures": self.bad_signatures,
                "ok": self.ok}


def _finish(check: Check, counts: Counter[int | None], start: int, stop: int) -> Check:
    check.seen = sum(counts.values())
    check.duplicates = sum(n - 1 for i, n in counts.items() if n > 1 and i is not None)
    check.missing = sum(1 for i in range(start, stop) if i not in counts)
    return check


def check_log(path: Path, expected: Expected, start: int, stop: int) -> Check:
    """Every ``call.classified`` line of the daemon's stdout against the expected documents."""
    check, counts = Check(stop - start), Counter[int | None]()
    with path.open("rb") as lines:
        for line in lines:
            if MARK not in line:
                continue
            document = json.loads(line)["call"]
            i = expected.corpus.event_of(document.get("channel_uuid"))
            counts[i] += 1
            check.wrong += i is None or not (start <= i < stop) or document != expected.document(i)
    return _finish(check, counts, start, stop)


def signed(webhook_id: bytes, timestamp: bytes, signature: bytes, body: bytes) -> bool:
    mac = hmac.new(KEY, webhook_id + b"." + timestamp + b"." + body, hashlib.sha256).digest()
    return hmac.compare_digest(b"v1," + base64.b64encode(mac), signature)


def check_webhooks(path: Path, expected: Expected, start: int, stop: int) -> Check:
    """Every request the receiver recorded: signature, body, first arrival per event."""
    check, counts = Check(stop - start), Counter[int | None]()
    with path.open("rb") as lines:
        for line in lines:
            arrival, webhook_id, timestamp, signature, body = line.rstrip(b"\n").split(b" ", 4)
            document = json.loads(body)
            i = expected.corpus.event_of(document.get("channel_uuid"))
            counts[i] += 1
            check.bad_signatures += not signed(webhook_id, timestamp, signature, body)
            if i is None:  # no leg of this run
                check.wrong += 1
                continue
            check.arrivals.setdefault(i, float(arrival))
            check.wrong += (not (start <= i < stop) or document != expected.document(i)
                            or webhook_id.decode() != document["id"])
    return _finish(check, counts, start, stop)
