"""The product specification's vocabulary: the 8 call statuses and the bye reasons, loaded from data.

``data/spec.toml`` is the only place a status or bye-reason name is spelled; everything else asks a
``Spec`` by name. Users may add bye reasons of their own (``Spec.extended``); the built-in ones are
never redefined.
"""

from __future__ import annotations

import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cache
from importlib import resources
from types import MappingProxyType
from typing import Any

SPEC_FILE = "spec.toml"


@dataclass(frozen=True, slots=True)
class CallStatus:
    """One row of the spec's Call Status table."""

    id: str
    label: str
    definition: str


@dataclass(frozen=True, slots=True)
class ByeReason:
    """One row of the spec's Last Response Code & Bye Reason table (or a user's own)."""

    name: str
    code: int | None
    definition: str
    builtin: bool = True


@dataclass(frozen=True, slots=True)
class Spec:
    """The statuses and bye reasons, each looked up by its exact name."""

    statuses: Mapping[str, CallStatus]
    bye_reasons: Mapping[str, ByeReason]

    def status(self, status_id: str) -> CallStatus:
        return self.statuses[status_id]

    def bye_reason(self, name: str) -> ByeReason:
        return self.bye_reasons[name]

    def extended(self, extra: Iterable[ByeReason]) -> Spec:
        """This spec plus the user's own bye reasons (a clash with a built-in one is ignored here)."""
        merged = dict(self.bye_reasons)
        for reason in extra:
            merged.setdefault(reason.name, reason)
        return Spec(self.statuses, MappingProxyType(merged))


def read_data(name: str) -> dict[str, Any]:
    """Parse one TOML file shipped in ``listener/data``."""
    text = resources.files("listener").joinpath("data", name).read_text(encoding="utf-8")
    return tomllib.loads(text)


def spec_from_data(data: Mapping[str, Any]) -> Spec:
    """Build a ``Spec`` from the parsed ``spec.toml`` tables."""
    statuses = {
        row["id"]: CallStatus(row["id"], row["label"], row["definition"]) for row in data["status"]
    }
    reasons = {
        row["name"]: ByeReason(row["name"], row.get("code"), row["definition"])
        for row in data["bye_reason"]
    }
    return Spec(MappingProxyType(statuses), MappingProxyType(reasons))


@cache
def load_spec() -> Spec:
    """The built-in specification (read once)."""
    return spec_from_data(read_data(SPEC_FILE))
