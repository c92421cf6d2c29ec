"""The delivery loop's clock: epoch seconds that move only as the monotonic clock does.

Retry times, due-ness and the circuit's probes are read from this clock, never from the wall
clock itself, so a wall-clock step (NTP correcting a bad boot clock, an operator, a resumed VM)
neither stalls nor hurries a pending retry while the process runs. The outbox stores times as
epoch seconds (``next_at`` must mean something after a restart and is shown by ``outbox list``):
this clock reads the wall clock's value at the anchor, advanced by the monotonic clock since, so
it stays within the steps made since the anchor of the wall clock's reading.

Invariants: readings never go back (the monotonic clock does not); everything that compares or
stores a time against the outbox's ``next_at`` reads the same ``SteadyClock`` instance (the writer
stamping new rows and the delivery loops), so a step since the start moves none of them apart.
Only what is shown to the outside as "now" (a signature's timestamp) reads the wall clock.
Pure: both clocks are the caller's.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

Clock = Callable[[], float]
"""A source of seconds: ``time.time`` (epoch, may step), ``time.monotonic`` (never steps), a fake."""


@dataclass(frozen=True, slots=True)
class SteadyClock:
    """Epoch seconds that no wall-clock step moves: ``anchor_wall + (monotonic() - anchor_mono)``."""

    monotonic: Clock
    anchor_wall: float
    anchor_mono: float

    @classmethod
    def anchored(cls, wall: Clock, monotonic: Clock) -> SteadyClock:
        """A clock that reads ``wall``'s time now and then advances with ``monotonic``."""
        return cls(monotonic, wall(), monotonic())

    def __call__(self) -> float:
        return self.anchor_wall + (self.monotonic() - self.anchor_mono)
