"""A clock a test moves by hand (wall or monotonic, as the code under test reads it)."""

from __future__ import annotations


class StepClock:
    """Reads ``now``; the test sets or advances it."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now
