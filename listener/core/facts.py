"""The derived facts of one hangup: which leg, who hung up, which SIP codes were seen.

These are the "facts behind" a classification: the classifier's rules test them and the payload
reports them. Pure functions of a ``HangupEvent``.
"""

from __future__ import annotations

from collections.abc import Set
from dataclasses import dataclass
from typing import Literal

from listener.core.event import HangupEvent

Leg = Literal["a", "b"]
HangupBy = Literal["caller", "callee", "system", "unknown"]


def leg_of(event: HangupEvent) -> Leg:
    """``b`` for a channel originated by another channel (a bridge or originate target), else ``a``."""
    if event.variable("originator") or event.variable("originating_leg_uuid"):
        return "b"
    if event.direction == "outbound" and event.other_type == "originator":
        return "b"
    return "a"


def hangup_by_of(cause: str, disposition: str | None, leg: Leg, partner_seen: bool,
                 system_causes: Set[str]) -> HangupBy:
    """Who ended this leg, from ``sip_hangup_disposition``: ``recv_*`` is the far end of this leg.

    ``partner_seen``: the event shows a partner leg (its SIP code, an INVITE failure, its uuid).
    ``system_causes``: the causes FreeSWITCH itself produces (API, timers, media), the rule book's
    ``[lists] system_causes`` (the built-in list, or the one a configuration gives).
    """
    if cause in system_causes:
        return "system"
    disposition = disposition or ""
    if disposition.startswith("recv_"):
        return "caller" if leg == "a" else "callee"
    if disposition.startswith("send_"):
        # We sent the BYE/CANCEL/refusal because of what happened on the partner leg, if there was one.
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
    def of(cls, event: HangupEvent, system_causes: Set[str]) -> Facts:
        """Derive the facts of one event (each header read once: this runs for every event)."""
        leg = leg_of(event)
        cause = event.hangup_cause
        disposition = event.sip_hangup_disposition
        partner = event.last_bridge_proto_specific_hangup_cause
        invite_failure = event.sip_invite_failure_status
        partner_seen = bool(partner or invite_failure or event.other_leg_unique_id)
        return cls(
            leg=leg,
            hangup_by=hangup_by_of(cause, disposition, leg, partner_seen, system_causes),
            hangup_cause=cause,
            # the final SIP code seen on this leg: its own term status, else its INVITE failure status
            sip_status=event.sip_term_status or event.proto_specific_hangup_cause or invite_failure,
            partner_sip_status=partner,
            hangup_disposition=disposition,
            answered=event.answered,
        )
