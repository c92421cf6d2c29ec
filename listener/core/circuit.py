"""An endpoint's circuit: while it cannot be reached at all, probe it instead of trying every message.

A request that never reached the receiver (refused, unreachable, DNS, connect timeout) says the
endpoint is down, not that the message is bad. Then the circuit opens: the endpoint's messages stay
pending, untouched, and one due message at a time is sent as a probe, after a capped, jittered,
growing delay. Any answer from the receiver closes the circuit and delivery resumes at full speed,
so a backlog drains as soon as the receiver is back instead of waiting for each message's next
scheduled retry. Plain state, no I/O; the clock and randomness are the caller's.
"""

from __future__ import annotations

from collections.abc import Callable

from listener.core.retry import reconnect_delay

UNREACHABLE = frozenset({
    "connection_refused", "connect_timeout", "connect_error", "dns_error", "host_unreachable",
    "network_unreachable",
})
"""Retry reasons of requests that never reached the receiver."""
PROBE_INITIAL_S = 1.0
PROBE_MAX_S = 30.0


class Circuit:
    """Closed (deliver freely) or open (one probe when ``probe_at`` has come)."""

    def __init__(self, rand: Callable[[], float], *, initial: float = PROBE_INITIAL_S,
                 cap: float = PROBE_MAX_S) -> None:
        self._rand = rand
        self._initial = initial
        self._cap = cap
        self.failed_probes = 0
        self.opened_at: float | None = None
        self.probe_at = 0.0

    @property
    def open(self) -> bool:
        return self.opened_at is not None

    def may_probe(self, now: float) -> bool:
        return self.opened_at is not None and now >= self.probe_at

    def next_send_at(self, due: float) -> float:
        """When a row due at ``due`` may be sent: then, but while open not before the probe time."""
        return max(due, self.probe_at) if self.opened_at is not None else due

    def unreachable(self, now: float, *, probe: bool) -> bool:
        """A request could not reach the endpoint; True when this opened the circuit."""
        if self.opened_at is not None and not probe:
            return False  # sent before the circuit opened: already counted
        opening = self.opened_at is None
        if opening:
            self.opened_at, self.failed_probes = now, 0
        else:
            self.failed_probes += 1
        delay = reconnect_delay(self.failed_probes, initial=self._initial, cap=self._cap, rand=self._rand)
        self.probe_at = now + delay
        return opening

    def reached(self) -> float | None:
        """The receiver answered (whatever the status): closed; returns since when it was open."""
        opened, self.opened_at = self.opened_at, None
        return opened
