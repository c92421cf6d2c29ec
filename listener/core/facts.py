"""The derived facts of one hangup: which leg, who hung up, which SIP codes were seen.

These are the "facts behind" a classification: the classifier's rules test them and the payload
reports them. Pure functions of a ``HangupEvent``, except ``hangup_by``: the rule book's
``[[hangup_by]]`` table decides it (``listener.core.attribution``), and the classifier fills it in.
"""

from __future__ import annotations

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
    hangup_by_rule: str = ""
    """The id of the ``[[hangup_by]]`` rule that decided ``hangup_by`` (empty until one did)."""

    @classmethod
    def of(cls, event: HangupEvent) -> Facts:
        """Derive the facts of one event (each header read once: this runs for every event)."""
        partner = event.last_bridge_proto_specific_hangup_cause
        invite_failure = event.sip_invite_failure_status
        return cls(
            leg=leg_of(event),
            hangup_by="unknown",
            hangup_cause=event.hangup_cause,
            # the final SIP code seen on this leg: its own term status, else its INVITE failure status
            sip_status=event.sip_term_status or event.proto_specific_hangup_cause or invite_failure,
            partner_sip_status=partner,
            hangup_disposition=event.sip_hangup_disposition,
            answered=event.answered,
        )
