"""The benchmark's events: the real captures, call by call, each copy of a call with fresh ids on all legs.

A call is one capture folder: every CHANNEL_HANGUP_COMPLETE of
``tests/data/fixtures/<scenario>/hangup_complete.plain.txt``, its legs in capture order. Copy ``k``
of call ``c`` puts ``uuid_of(run, k, c, slot)`` in place of every id of the call: each leg's
Unique-ID (slots ``0..legs-1``), then every other uuid its bodies carry (the SIP Call-ID, the
transferor in ``transfer_history``, a callcenter member, ...), wherever it appears in any of the
call's bodies: headers and values, URL-encoded or not (a uuid has no character to encode). The
same original gets the same fresh id on every leg, so the legs of a copy still name each other
(``Other-Leg-Unique-ID``, ``originator``, ``originated_legs``, ``signal_bond``, ``uuid_br:<uuid>``,
``Channel-Call-UUID``, ...) and no other copy. Fresh ids have the original's length, so every
``Content-Length`` holds. ``Core-UUID`` is kept: it is the node's, and a new one would tell the
daemon that FreeSWITCH restarted.

Events are numbered from 0: copy 0's calls in capture-folder order, each call's legs in capture
order, then copy 1, and so on. A count of events that would end inside a call is rounded up to
the call's last leg (``Corpus.whole``): the fake FreeSWITCH writes whole calls only.
"""

from __future__ import annotations

import bisect
import json
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

FIXTURES = Path(__file__).resolve().parent.parent / "tests" / "data" / "fixtures"
NODE = "bench"
#: A uuid as FreeSWITCH writes one (lower case); the 8 hex digits before the first dash pin its start.
UUID = re.compile(rb"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}(?![0-9a-f])")


def uuid_of(run: int, copy: int, call: int, slot: int) -> str:
    """The fresh id of ``slot`` (a leg, then the call's other ids) of ``call`` in copy ``copy`` (36 long)."""
    return f"{run & 0xFFFFFFFF:08x}-{call:04x}-4{slot:03x}-be00-{copy:012x}"


def index_of(fresh: str) -> tuple[int, int, int]:
    """The (copy, call, slot) encoded by ``uuid_of``."""
    return int(fresh[24:], 16), int(fresh[9:13], 16), int(fresh[15:18], 16)


@dataclass(frozen=True)
class Cut:
    """Bytes cut at every occurrence of some ids: ``fill`` puts the id of each cut's slot back in."""

    pieces: tuple[bytes, ...]
    """Text, an id (replaced by ``fill``), text, ..., text."""
    slots: tuple[int, ...]
    """For each id in ``pieces``, its index in the ids it was cut at."""

    @classmethod
    def of(cls, text: bytes, ids: Sequence[bytes]) -> Cut:
        pieces = re.split(b"(" + b"|".join(map(re.escape, ids)) + b")", text)
        return cls(tuple(pieces), tuple(ids.index(found) for found in pieces[1::2]))

    def fill(self, ids: Sequence[bytes]) -> bytes:
        pieces = list(self.pieces)
        pieces[1::2] = [ids[slot] for slot in self.slots]
        return b"".join(pieces)


@dataclass(frozen=True)
class Template:
    """One captured event as the fake FreeSWITCH writes it, cut at its call's ids."""

    body: bytes
    """The captured body, original ids in it."""
    frame: Cut

    @classmethod
    def of(cls, body: bytes, ids: Sequence[bytes], content_type: bytes) -> Template:
        head = b"Content-Length: %d\nContent-Type: %s\n\n" % (len(body), content_type)
        return cls(body, Cut.of(head + body, ids))


@dataclass(frozen=True)
class Call:
    """One capture folder: its legs in both formats and every id its copies replace."""

    name: str
    ids: tuple[str, ...]
    """The legs' Unique-IDs in capture order, then every other uuid of its bodies but Core-UUID."""
    plain: tuple[Template, ...]
    json: tuple[Template, ...]

    @property
    def legs(self) -> int:
        return len(self.plain)


def _split_frames(raw: bytes) -> list[bytes]:
    bodies, pos = [], 0
    while pos < len(raw):
        end = raw.index(b"\n\n", pos)
        head = dict(line.split(": ", 1) for line in raw[pos:end].decode().split("\n"))
        length = int(head.get("Content-Length", "0"))
        bodies.append(raw[end + 2 : end + 2 + length])
        pos = end + 2 + length
    return bodies


def header(body: bytes, name: str) -> str:
    """The value of header ``name`` of a plain body."""
    for line in body.split(b"\n"):
        if line.startswith(name.encode() + b": "):
            return line[len(name) + 2 :].decode()
    raise ValueError(f"a capture without {name}")


def load_call(folder: Path) -> Call:
    """The CHANNEL_HANGUP_COMPLETE events of one capture folder, in both formats, as one call."""
    plain = [body for body in _split_frames((folder / "hangup_complete.plain.txt").read_bytes())
             if b"Event-Name: CHANNEL_HANGUP_COMPLETE\n" in body]
    by_uid = {json.loads(body)["Unique-ID"]: body
              for body in _split_frames((folder / "hangup_complete.json.txt").read_bytes())}
    legs = [header(body, "Unique-ID") for body in plain]
    json_bodies = [by_uid[uid] for uid in legs]
    node = {header(body, "Core-UUID") for body in plain}
    found = [m.group().decode() for body in (*plain, *json_bodies) for m in UUID.finditer(body)]
    ids = tuple(dict.fromkeys(legs + [uid for uid in found if uid not in node]))
    raw = [uid.encode() for uid in ids]
    return Call(folder.name, ids, tuple(Template.of(body, raw, b"text/event-plain") for body in plain),
                tuple(Template.of(body, raw, b"text/event-json") for body in json_bodies))


def load_calls() -> list[Call]:
    """Every capture folder with a hangup, in a fixed order (by name)."""
    return [load_call(path.parent) for path in sorted(FIXTURES.glob("*/hangup_complete.plain.txt"))]


class Corpus:
    """Events ``0..`` of one run, in either format (the same events): copies of every call, call by call."""

    def __init__(self, run: int) -> None:
        self.run = run
        self.calls = load_calls()
        self.starts = [0]
        for call in self.calls:
            self.starts.append(self.starts[-1] + call.legs)
        self.legs_per_copy = self.starts[-1]
        self._places = [(c, leg) for c, call in enumerate(self.calls) for leg in range(call.legs)]
        self._fresh: tuple[tuple[int, int], list[bytes]] = ((-1, -1), [])

    def place(self, i: int) -> tuple[int, int, int]:
        """Event ``i``'s (copy, call, leg)."""
        copy, offset = divmod(i, self.legs_per_copy)
        return (copy, *self._places[offset])

    def event(self, copy: int, call: int, leg: int) -> int:
        """The number of the event of leg ``leg`` of ``call`` in copy ``copy``."""
        return copy * self.legs_per_copy + self.starts[call] + leg

    def ids(self, copy: int, call: int) -> list[str]:
        """Every fresh id of one copy of a call, slot by slot (legs first)."""
        return [uuid_of(self.run, copy, call, slot) for slot in range(len(self.calls[call].ids))]

    def leg_ids(self, copy: int, call: int) -> list[str]:
        """The fresh Unique-IDs of one copy of a call, in capture order."""
        return self.ids(copy, call)[: self.calls[call].legs]

    def _fresh_ids(self, copy: int, call: int) -> list[bytes]:
        """``ids`` as bytes, the last call's kept: events come call by call."""
        if self._fresh[0] != (copy, call):
            self._fresh = ((copy, call), [fresh.encode() for fresh in self.ids(copy, call)])
        return self._fresh[1]

    def frame(self, i: int, fmt: str = "plain") -> bytes:
        copy, call, leg = self.place(i)
        templates = self.calls[call].json if fmt == "json" else self.calls[call].plain
        return templates[leg].frame.fill(self._fresh_ids(copy, call))

    def frames(self, start: int, stop: int, fmt: str = "plain") -> Iterator[bytes]:
        for i in range(start, stop):
            yield self.frame(i, fmt)

    def whole(self, count: int) -> int:
        """The smallest count of events from 0, at least ``count``, that ends with a call's last leg."""
        copy, offset = divmod(count, self.legs_per_copy)
        return copy * self.legs_per_copy + self.starts[bisect.bisect_left(self.starts, offset)]

    def calls_within(self, start: int, stop: int) -> set[tuple[int, int]]:
        """The (copy, call) of every call whose legs are all among events ``start..stop``."""
        return {(copy, c) for copy in range(start // self.legs_per_copy, stop // self.legs_per_copy + 1)
                for c, call in enumerate(self.calls)
                if start <= self.event(copy, c, 0) and self.event(copy, c, call.legs) <= stop}

    def event_of(self, fresh: object) -> int | None:
        """The event whose leg has the fresh Unique-ID ``fresh``; None if that is no leg's id in this run."""
        place = self.slot_of(fresh)
        if place is None or place[2] >= self.calls[place[1]].legs:
            return None
        return self.event(*place)

    def slot_of(self, fresh: object) -> tuple[int, int, int] | None:
        """``index_of(fresh)`` if ``fresh`` is an id ``uuid_of`` made for this run's calls, else None."""
        if not (isinstance(fresh, str) and len(fresh) == 36 and fresh[18:24] == "-be00-"
                and fresh.startswith(f"{self.run & 0xFFFFFFFF:08x}-")):
            return None
        copy, call, slot = index_of(fresh)
        return (copy, call, slot) if call < len(self.calls) and slot < len(self.calls[call].ids) else None

    @cached_property
    def mean_size(self) -> float:
        sizes = [len(self.frame(i)) for i in range(self.legs_per_copy)]
        return sum(sizes) / len(sizes)


class Expected:
    """What the daemon must produce for event ``i``: its capture's document, the copy's fresh ids in it."""

    def __init__(self, corpus: Corpus) -> None:
        from listener.core import document as payload  # noqa: PLC0415 - only the verifier needs the classifier
        from listener.core.classifier import default_classifier  # noqa: PLC0415
        from listener.core.event import HangupEvent  # noqa: PLC0415

        classify = default_classifier().classify
        self._payload = payload
        self.corpus = corpus
        self._documents: list[list[Cut]] = []
        self._nodes: list[list[str]] = []  # each leg's Core-UUID: kept in every copy
        for call in corpus.calls:
            ids = [uid.encode() for uid in call.ids]
            events = [HangupEvent.from_plain(template.body) for template in call.plain]
            texts = [json.dumps(payload.build(event, classify(event), NODE)).encode() for event in events]
            self._documents.append([Cut.of(text, ids) for text in texts])
            self._nodes.append([event.core_uuid for event in events])

    def document(self, i: int) -> dict[str, Any]:
        copy, call, leg = self.corpus.place(i)
        fresh = [uid.encode() for uid in self.corpus.ids(copy, call)]
        doc: dict[str, Any] = json.loads(self._documents[call][leg].fill(fresh))
        doc["id"] = self.webhook_id(i)
        return doc

    def webhook_id(self, i: int) -> str:
        copy, call, leg = self.corpus.place(i)
        return self._payload.document_id(self._nodes[call][leg], uuid_of(self.corpus.run, copy, call, leg))
