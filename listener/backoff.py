"""The reconnect delay: capped exponential backoff with jitter, one pure function."""

from __future__ import annotations

import random
from collections.abc import Callable


def reconnect_delay(
    attempt: int,
    *,
    initial: float,
    cap: float,
    rand: Callable[[], float] = random.random,
) -> float:
    """Delay before reconnect ``attempt`` (0-based): equal jitter over ``min(cap, initial * 2**attempt)``.

    Half of the ceiling is kept so a flapping node is never hammered, the other half is random so
    several listeners restarted together do not reconnect in lock-step.
    """
    ceiling = min(cap, initial * 2.0 ** min(attempt, 32))
    return ceiling / 2 + rand() * ceiling / 2
