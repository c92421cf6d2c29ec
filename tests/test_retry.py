"""The pure retry policy: schedule, jitter, Retry-After parsing and clamping."""

from __future__ import annotations

from datetime import UTC, datetime
from email.utils import format_datetime

import pytest

from listener.core.retry import DEFAULT_DELAYS, RetrySchedule, next_delay, parse_retry_after


def mid() -> float:
    return 0.5  # the jitter's centre: no spread


def test_default_schedule_is_standard_webhooks_immediately_then_5s_to_10h() -> None:
    schedule = RetrySchedule()
    assert schedule.max_attempts == 8
    delays = [next_delay(schedule, n, rng=mid) for n in range(1, 9)]
    assert delays == [*DEFAULT_DELAYS, None]
    assert DEFAULT_DELAYS == (5, 300, 1800, 7200, 18000, 36000, 36000)


def test_jitter_spreads_delay_within_the_fraction() -> None:
    schedule = RetrySchedule(delays=(100.0,), jitter=0.1)
    assert next_delay(schedule, 1, rng=lambda: 0.0) == pytest.approx(90.0)
    assert next_delay(schedule, 1, rng=lambda: 0.999999) == pytest.approx(110.0, abs=1e-3)


def test_empty_schedule_allows_a_single_attempt() -> None:
    assert next_delay(RetrySchedule(delays=()), 1, rng=mid) is None


def test_retry_after_longer_than_schedule_is_honoured() -> None:
    schedule = RetrySchedule(delays=(5.0,), jitter=0.0)
    assert next_delay(schedule, 1, retry_after=120.0, rng=mid) == 120.0


def test_retry_after_shorter_than_schedule_never_retries_sooner_than_scheduled() -> None:
    schedule = RetrySchedule(delays=(300.0,), jitter=0.0)
    assert next_delay(schedule, 1, retry_after=1.0, rng=mid) == 300.0


def test_retry_after_is_clamped_to_the_ceiling() -> None:
    schedule = RetrySchedule(delays=(5.0,), jitter=0.0, retry_after_max=600.0)
    assert next_delay(schedule, 1, retry_after=86400.0, rng=mid) == 600.0


def test_retry_after_gives_no_extra_attempt_once_exhausted() -> None:
    assert next_delay(RetrySchedule(delays=(5.0,)), 2, retry_after=1.0, rng=mid) is None


def test_attempts_count_from_one() -> None:
    with pytest.raises(ValueError, match="from 1"):
        next_delay(RetrySchedule(), 0, rng=mid)


@pytest.mark.parametrize("bad", [{"delays": (-1.0,)}, {"jitter": 1.0}, {"retry_after_max": -1.0}])
def test_schedule_rejects_invalid_values(bad: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        RetrySchedule(**bad)  # type: ignore[arg-type]


def test_schedule_is_frozen() -> None:
    with pytest.raises(AttributeError):
        RetrySchedule().jitter = 0.5  # type: ignore[misc]


@pytest.mark.parametrize(("header", "expected"), [
    ("120", 120.0), (" 7 ", 7.0), ("0", 0.0), (None, None), ("", None), ("soon", None), ("-5", None),
    ("1.5", None),
])
def test_retry_after_delta_seconds(header: str | None, expected: float | None) -> None:
    assert parse_retry_after(header, now=1000.0) == expected


def test_retry_after_http_date_is_relative_to_now() -> None:
    now = datetime(2025, 1, 1, 12, 0, 0, tzinfo=UTC).timestamp()
    header = format_datetime(datetime(2025, 1, 1, 12, 2, 0, tzinfo=UTC), usegmt=True)
    assert parse_retry_after(header, now) == 120.0


def test_retry_after_http_date_in_the_past_means_now() -> None:
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=2e9) == 0.0


@pytest.mark.parametrize(("header", "expected"), [
    ("Sun, 06 Nov 1994 08:49:37 GMT", 784111777.0),  # IMF-fixdate
    ("Sunday, 06-Nov-94 08:49:37 GMT", 784111777.0),  # RFC 850
    ("Sun Nov  6 08:49:37 1994", 784111777.0),  # asctime
    ("Sun, 06 Nov 1994 08:49:37 +0200", None),  # not GMT: not an HTTP-date
    ("Sun, 06 Foo 1994 08:49:37 GMT", None),
    ("Sun, 36 Nov 1994 08:49:37 GMT", None),
    ("Sun, 06 Nov 1994 25:49:37 GMT", None),
    ("06 Nov 1994", None),
])
def test_retry_after_accepts_the_http_date_forms_of_rfc_9110(header: str, expected: float | None) -> None:
    assert parse_retry_after(header, now=0.0) == expected
