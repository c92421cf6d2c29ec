"""What a rule can test: one event's facts, by name, and the leg's effective hangup cause.

A ``Subject`` is built once per event; every fact is a small getter over it, so a rule only reads
what it tests. Fact kinds: ``text`` (a string or absent), ``code`` (a SIP code, compared as text
so globs such as ``"4??"`` work) and ``flag`` (true/false). ``var.<name>`` reads any channel
variable and ``header.<name>`` any event header (both ``text``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal

from listener.core.event import HangupEvent
from listener.core.facts import Facts

FactKind = Literal["text", "code", "flag"]


@dataclass(frozen=True, slots=True)
class CauseModel:
    """The data the effective cause is derived from (from rules.toml, overridable)."""

    clearing: frozenset[str]
    known: frozenset[str]
    sip_causes: Mapping[int, str]

    def effective(self, event: HangupEvent, facts: Facts) -> str:
        """The leg's cause; for an unanswered leg FreeSWITCH cleared "normally", the real one.

        The caller's leg of a refused or unanswered bridge ends NORMAL_CLEARING; why the bridge
        failed is in ``originate_disposition`` / ``last_bridge_hangup_cause``, else in the SIP code
        (mapped as mod_sofia does). A callee's ``Reason: Q.850`` header can also turn a 486 into
        NORMAL_CLEARING on the callee's own leg: its SIP code then tells the story.
        """
        raw = facts.hangup_cause
        if facts.answered or (raw and raw not in self.clearing):
            return raw
        for candidate in (event.originate_disposition, event.last_bridge_hangup_cause):
            if candidate and candidate not in self.clearing and candidate in self.known:
                return candidate
        for code in (facts.sip_status, facts.partner_sip_status):
            if code is not None and code in self.sip_causes:
                return self.sip_causes[code]
        return raw


@dataclass(frozen=True, slots=True)
class Subject:
    """One event as the rules see it."""

    event: HangupEvent
    facts: Facts
    cause: str


def _text(value: object) -> str | None:
    return None if value is None else str(value)


def _held(subject: Subject) -> bool:
    """A hold marker on this leg: hold events, a last-hold time or accumulated hold time."""
    event = subject.event
    return bool(
        event.variable("hold_events")
        or (event.header("Caller-Channel-Last-Hold") or "0") != "0"
        or (event.variable("hold_accum_usec") or "0") != "0"
    )


TextGetter = Callable[[Subject], str | None]
FlagGetter = Callable[[Subject], bool]

TEXT_FACTS: dict[str, TextGetter] = {
    "cause": lambda s: s.cause or None,
    "hangup_cause": lambda s: s.facts.hangup_cause or None,
    "leg": lambda s: s.facts.leg,
    "direction": lambda s: s.event.direction,
    "other_type": lambda s: s.event.other_type,
    "hangup_by": lambda s: s.facts.hangup_by,
    "disposition": lambda s: s.facts.hangup_disposition,
    "app": lambda s: s.event.current_application,
    "app_data": lambda s: s.event.variable("current_application_data"),
    "last_app": lambda s: s.event.last_application,
    "transfer": lambda s: s.event.transfer_history,
    "transfer_source": lambda s: s.event.transfer_source,
    "endpoint_disposition": lambda s: s.event.endpoint_disposition,
    "originate_disposition": lambda s: s.event.originate_disposition,
    "last_bridge_cause": lambda s: s.event.last_bridge_hangup_cause,
}

CODE_FACTS: dict[str, TextGetter] = {
    "sip_code": lambda s: _text(s.facts.sip_status),
    "partner_sip_code": lambda s: _text(s.facts.partner_sip_status),
    "invite_failure_code": lambda s: _text(s.event.sip_invite_failure_status),
}

FLAG_FACTS: dict[str, FlagGetter] = {
    "answered": lambda s: s.facts.answered,
    "held": _held,
    "bridged": lambda s: bool(s.event.variable("bridge_epoch") not in (None, "", "0")),
}

#: Fact names that take a table of names: ``var = { cc_cause = "cancel" }``.
TABLE_FACTS = ("var", "header")


def fact_kind(name: str) -> FactKind | None:
    """The kind of a named fact, or None for an unknown name."""
    if name in FLAG_FACTS:
        return "flag"
    if name in CODE_FACTS:
        return "code"
    if name in TEXT_FACTS:
        return "text"
    return None


def text_getter(name: str) -> TextGetter:
    """The getter of a text or code fact."""
    return TEXT_FACTS.get(name) or CODE_FACTS[name]


def variable_getter(name: str) -> TextGetter:
    """A getter for one channel variable."""
    key = "variable_" + name
    return lambda s: s.event.headers.get(key)


def header_getter(name: str) -> TextGetter:
    """A getter for one event header."""
    return lambda s: s.event.headers.get(name)


def fact_names() -> tuple[str, ...]:
    """Every fact a rule may test (for docs and error messages)."""
    return (*TEXT_FACTS, *CODE_FACTS, *FLAG_FACTS, *(f"{t}.<name>" for t in TABLE_FACTS))
