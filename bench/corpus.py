"""The benchmark's events: the real CHANNEL_HANGUP_COMPLETE captures, each copy with a fresh Unique-ID.

Event ``i`` is capture ``i % len(templates)`` with every occurrence of the capture's Unique-ID
replaced by ``uuid_of(run, i)`` (same length, so the body keeps its shape). The fake FreeSWITCH
writes these frames; the verifier rebuilds the document each one must produce.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

FIXTURES = Path(__file__).resolve().parent.parent / "tests" / "data" / "fixtures"
NODE = "bench"


def uuid_of(run: int, i: int) -> str:
    """The fresh Unique-ID of event ``i`` in run ``run`` (uuid-shaped, 36 characters)."""
    return f"{run & 0xFFFFFFFF:08x}-be00-4000-8000-{i:012x}"


def index_of(unique_id: str) -> int:
    """The event number encoded by ``uuid_of``."""
    return int(unique_id[-12:], 16)


def _split_frames(raw: bytes) -> list[bytes]:
    bodies, pos = [], 0
    while pos < len(raw):
        end = raw.index(b"\n\n", pos)
        head = dict(line.split(": ", 1) for line in raw[pos:end].decode().split("\n"))
        length = int(head.get("Content-Length", "0"))
        bodies.append(raw[end + 2 : end + 2 + length])
        pos = end + 2 + length
    return bodies


def _unique_id(body: bytes) -> str:
    for line in body.split(b"\n"):
        if line.startswith(b"Unique-ID: "):
            return line[len(b"Unique-ID: ") :].decode()
    raise ValueError("a capture without Unique-ID")


@dataclass(frozen=True)
class Template:
    """One captured event, cut at its Unique-ID so a fresh one can be put in cheaply."""

    parts: tuple[bytes, ...]
    unique_id: str
    content_type: bytes = b"text/event-plain"

    def body(self, unique_id: str) -> bytes:
        return unique_id.encode().join(self.parts)

    @cached_property
    def frame_parts(self) -> tuple[bytes, ...]:
        """The wire frame cut at the Unique-ID (a fresh id has the same length: Content-Length holds)."""
        length = len(self.body(self.unique_id))
        head = b"Content-Length: %d\nContent-Type: %s\n\n" % (length, self.content_type)
        return (head + self.parts[0], *self.parts[1:])

    def frame(self, unique_id: str) -> bytes:
        return unique_id.encode().join(self.frame_parts)


def load_templates() -> list[Template]:
    """Every CHANNEL_HANGUP_COMPLETE of every capture, in a fixed order."""
    templates = []
    for path in sorted(FIXTURES.glob("*/hangup_complete.plain.txt")):
        for body in _split_frames(path.read_bytes()):
            if b"Event-Name: CHANNEL_HANGUP_COMPLETE\n" in body:
                uid = _unique_id(body)
                templates.append(Template(tuple(body.split(uid.encode())), uid))
    return templates


def load_json_templates(plain: list[Template]) -> list[Template]:
    """The same events as FreeSWITCH sends them after ``event json`` (same order as ``plain``)."""
    by_uid = {}
    for path in sorted(FIXTURES.glob("*/hangup_complete.json.txt")):
        for body in _split_frames(path.read_bytes()):
            by_uid[json.loads(body)["Unique-ID"]] = body
    return [Template(tuple(by_uid[t.unique_id].split(t.unique_id.encode())), t.unique_id, b"text/event-json")
            for t in plain]


class Corpus:
    """Events ``0..`` of one run, in either format (the same events)."""

    def __init__(self, run: int) -> None:
        self.run = run
        self.templates = load_templates()
        self.json_templates = load_json_templates(self.templates)

    def frame(self, i: int, fmt: str = "plain") -> bytes:
        templates = self.json_templates if fmt == "json" else self.templates
        return templates[i % len(templates)].frame(uuid_of(self.run, i))

    def frames(self, start: int, stop: int, fmt: str = "plain") -> Iterator[bytes]:
        for i in range(start, stop):
            yield self.frame(i, fmt)

    @cached_property
    def mean_size(self) -> float:
        sizes = [len(self.frame(i)) for i in range(len(self.templates))]
        return sum(sizes) / len(sizes)


class Expected:
    """What the daemon must produce for event ``i``: the template's document with the fresh id in it."""

    def __init__(self, corpus: Corpus) -> None:
        from listener.core import document as payload  # noqa: PLC0415 - only the verifier needs the classifier
        from listener.core.classifier import default_classifier  # noqa: PLC0415
        from listener.core.event import HangupEvent  # noqa: PLC0415

        classify = default_classifier().classify
        self._payload = payload
        self._corpus = corpus
        self._texts = []
        for template in corpus.templates:
            event = HangupEvent.from_plain(template.body(template.unique_id))
            self._texts.append(json.dumps(payload.build(event, classify(event), NODE)))

    def document(self, i: int) -> dict[str, Any]:
        template = self._corpus.templates[i % len(self._corpus.templates)]
        fresh = uuid_of(self._corpus.run, i)
        doc: dict[str, Any] = json.loads(self._texts[i % len(self._texts)].replace(template.unique_id, fresh))
        doc["id"] = self.webhook_id(i)
        return doc

    def webhook_id(self, i: int) -> str:
        template = self._corpus.templates[i % len(self._corpus.templates)]
        core = template.body(template.unique_id).split(b"Core-UUID: ", 1)[1].split(b"\n", 1)[0].decode()
        return self._payload.document_id(core, uuid_of(self._corpus.run, i))
