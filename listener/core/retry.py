"""The pure retry policies: webhook retries (a frozen schedule, one backoff function) and ESL reconnects.

The first attempt is immediate. Attempt numbers count from 1; ``delays[n - 1]`` is the wait
after the n-th failed attempt, so a schedule of k delays allows k + 1 attempts; after the last
one fails the schedule is exhausted and the message is kept as dead.
Nothing here reads a clock or a global random generator: both are passed in.
"""

from __future__ import annotations

import calendar
import re
from collections.abc import Callable
from dataclasses import dataclass

# Standard Webhooks / Svix: immediately, then 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h later (~27.6 h).
DEFAULT_DELAYS: tuple[float, ...] = (5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 36000.0)
DEFAULT_JITTER = 0.1
DEFAULT_RETRY_AFTER_MAX = 3600.0

Random = Callable[[], float]
"""A source of floats in [0, 1), e.g. ``random.Random(seed).random``."""


@dataclass(frozen=True, slots=True)
class RetrySchedule:
    """When to try again: the delays between attempts, a +/- jitter fraction, the ``Retry-After`` ceiling."""

    delays: tuple[float, ...] = DEFAULT_DELAYS
    jitter: float = DEFAULT_JITTER
    retry_after_max: float = DEFAULT_RETRY_AFTER_MAX

    def __post_init__(self) -> None:
        if any(d < 0 for d in self.delays):
            raise ValueError("delays must be >= 0")
        if not 0 <= self.jitter < 1:
            raise ValueError("jitter must be in [0, 1)")
        if self.retry_after_max < 0:
            raise ValueError("retry_after_max must be >= 0")

    @property
    def max_attempts(self) -> int:
        return len(self.delays) + 1


def jittered(delay: float, jitter: float, rng: Random) -> float:
    """``delay`` spread uniformly over +/- ``jitter`` of itself (0 stays 0: "immediately")."""
    return delay * (1.0 + jitter * (2.0 * rng() - 1.0))


def next_delay(
    schedule: RetrySchedule, attempts: int, *, retry_after: float | None = None, rng: Random
) -> float | None:
    """Seconds to wait after the ``attempts``-th failed attempt, or None when the schedule is exhausted.

    A ``Retry-After`` is honoured (never retry sooner than asked) but clamped to
    ``retry_after_max`` so a receiver cannot park a message for days; it cannot give extra
    attempts either. Connect and read failures take the same schedule: they differ in logs only.
    """
    if attempts < 1:
        raise ValueError("attempts counts from 1")
    if attempts >= schedule.max_attempts:
        return None
    delay = jittered(schedule.delays[attempts - 1], schedule.jitter, rng)
    if retry_after is not None:
        delay = max(delay, clamp_retry_after(retry_after, schedule.retry_after_max))
    return delay


def clamp_retry_after(seconds: float, ceiling: float) -> float:
    """A ``Retry-After`` wait forced into [0, ceiling]."""
    return min(max(seconds, 0.0), ceiling)


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait from a ``Retry-After`` header: delta-seconds or an HTTP-date; None if unusable."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    when = http_date(value)
    return None if when is None else max(when - now, 0.0)


_MONTHS = {name: number for number, name in enumerate(calendar.month_abbr) if name}
_HTTP_DATES = (
    re.compile(r"[A-Za-z]{3}, (\d{2}) ([A-Za-z]{3}) (\d{4}) (\d{2}):(\d{2}):(\d{2}) GMT"),  # IMF-fixdate
    re.compile(r"[A-Za-z]{6,9}, (\d{2})-([A-Za-z]{3})-(\d{2}) (\d{2}):(\d{2}):(\d{2}) GMT"),  # RFC 850
)
_ASCTIME = re.compile(r"[A-Za-z]{3} ([A-Za-z]{3}) ([ \d]\d) (\d{2}):(\d{2}):(\d{2}) (\d{4})")


def http_date(value: str) -> float | None:
    """The epoch seconds of an RFC 9110 HTTP-date (IMF-fixdate, RFC 850 or asctime, all GMT); else None.

    Written out rather than taken from ``email.utils``, which imports ``socket`` (the core does not).
    """
    fields: tuple[str, ...] | None = None
    for number, pattern in enumerate(_HTTP_DATES):
        if match := pattern.fullmatch(value):
            day, month, year, hour, minute, second = match.groups()
            if number == 1:  # RFC 850's two-digit year: the nearest century, as RFC 9110 asks
                year = str(2000 + int(year) if int(year) < 70 else 1900 + int(year))
            fields = (year, month, day, hour, minute, second)
    if match := _ASCTIME.fullmatch(value):
        month, day, hour, minute, second, year = match.groups()
        fields = (year, month, day.strip(), hour, minute, second)
    if fields is None or fields[1].title() not in _MONTHS:
        return None
    year, month, day, hour, minute, second = fields
    parts = (int(year), _MONTHS[month.title()], int(day), int(hour), int(minute), int(second))
    if not (1 <= parts[2] <= 31 and parts[3] < 24 and parts[4] < 60 and parts[5] < 61):
        return None
    return float(calendar.timegm((*parts, 0, 0, 0)))


def reconnect_delay(attempt: int, *, initial: float, cap: float, rand: Random) -> float:
    """Delay before reconnect ``attempt`` (0-based): equal jitter over ``min(cap, initial * 2**attempt)``.

    Half of the ceiling is kept so a flapping node is never hammered, the other half is random so
    several listeners restarted together do not reconnect in lock-step.
    """
    ceiling = min(cap, initial * 2.0 ** min(attempt, 32))
    return ceiling / 2 + rand() * ceiling / 2


HEALTHY_AFTER_S = 60.0
"""A connection up this long was healthy: losing it opens the fast window (a FreeSWITCH restart)."""
FAST_WINDOW_S = 60.0
"""How long after losing a healthy connection reconnects stay fast."""
FAST_CAP_S = 2.0
"""The reconnect delay cap inside the fast window (``backoff_max`` if that is smaller)."""


@dataclass(frozen=True, slots=True)
class Reconnect:
    """Where one node is in its reconnect schedule: an immutable value, each step returns a new one.

    ``attempt`` counts the attempts since the last connection (0: the next is the first);
    ``fast_until`` is the monotonic end of the fast window, None outside one.
    """

    attempt: int = 0
    fast_until: float | None = None

    def lost(self, connected_for: float, now: float) -> Reconnect:
        """The schedule after losing, at ``now``, a connection that had been up ``connected_for`` s."""
        return Reconnect(0, now + FAST_WINDOW_S if connected_for >= HEALTHY_AFTER_S else None)

    def fast(self, now: float) -> bool:
        """Inside the fast window that losing a healthy connection opened."""
        return self.fast_until is not None and now < self.fast_until


def next_reconnect(state: Reconnect, now: float, *, initial: float, cap: float, rand: Random
                   ) -> tuple[float, Reconnect]:
    """The delay before the next attempt, and the schedule after it.

    Within ``FAST_WINDOW_S`` of losing a connection that had been up ``HEALTHY_AFTER_S``: at once,
    then the usual doubling capped at ``FAST_CAP_S`` (FreeSWITCH restarts in seconds). Otherwise,
    and after the window, ``reconnect_delay``: a node unreachable for longer backs off to ``cap``.
    """
    if state.fast(now):
        delay = 0.0 if state.attempt == 0 else reconnect_delay(
            state.attempt - 1, initial=initial, cap=min(cap, FAST_CAP_S), rand=rand)
    else:
        delay = reconnect_delay(state.attempt, initial=initial, cap=cap, rand=rand)
    return delay, Reconnect(state.attempt + 1, state.fast_until)
