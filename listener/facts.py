"""The derived facts of one hangup: which leg, who hung up, which SIP codes were seen.

These are the "facts behind" a classification: the classifier's rules test them and the payload
reports them. Pure functions of a ``HangupEvent``.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from typing import Literal

from listener.event import HangupEvent
from listener.spec import read_data

Leg = Literal["a", "b"]
HangupBy = Literal["caller", "callee", "system", "unknown"]

@cache
def system_causes() -> frozenset[str]:
    """Causes FreeSWITCH itself produces (API, timers, media): ``[lists] system_causes`` in rules.toml."""
    return frozenset(read_data("rules.toml")["lists"]["system_causes"])


def leg_of(event: HangupEvent) -> Leg:
    """``b`` for a channel originated by another channel (a bridge or originate target), else ``a``."""
    if event.variable("originator") or event.variable("originating_leg_uuid"):
        return "b"
    if event.direction == "outbound" and event.other_type == "originator":
        return "b"
    return "a"


def sip_status_of(event: HangupEvent) -> int | None:
    """The final SIP code seen on this leg: its own term status, else its INVITE failure status."""
    return (
        event.sip_term_status
        or event.proto_specific_hangup_cause
        or event.sip_invite_failure_status
    )


def hangup_by_of(event: HangupEvent, leg: Leg) -> HangupBy:
    """Who ended this leg, from ``sip_hangup_disposition``: ``recv_*`` is the far end of this leg."""
    disposition = event.sip_hangup_disposition or ""
    if event.hangup_cause in system_causes():
        return "system"
    if disposition.startswith("recv_"):
        return "caller" if leg == "a" else "callee"
    if disposition.startswith("send_"):
        # We sent the BYE/CANCEL/refusal because of what happened on the partner leg, if there was one.
        partner_seen = bool(
            event.last_bridge_proto_specific_hangup_cause
            or event.sip_invite_failure_status
            or event.other_leg_unique_id
        )
        if not partner_seen:
            return "system"
        return "callee" if leg == "a" else "caller"
    return "unknown"


@dataclass(frozen=True, slots=True)
class Facts:
    """What the event says about how this leg ended, normalised."""

    leg: Leg
    hangup_by: HangupBy
    hangup_cause: str
    sip_status: int | None
    partner_sip_status: int | None
    hangup_disposition: str | None
    answered: bool

    @classmethod
    def of(cls, event: HangupEvent) -> Facts:
        """Derive the facts of one event."""
        leg = leg_of(event)
        return cls(
            leg=leg,
            hangup_by=hangup_by_of(event, leg),
            hangup_cause=event.hangup_cause,
            sip_status=sip_status_of(event),
            partner_sip_status=event.last_bridge_proto_specific_hangup_cause,
            hangup_disposition=event.sip_hangup_disposition,
            answered=event.answered,
        )
