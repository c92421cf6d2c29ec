"""The ESL reconnect schedule: fast after losing a healthy connection, capped backoff otherwise."""

from __future__ import annotations

from listener.core.retry import FAST_CAP_S, FAST_WINDOW_S, HEALTHY_AFTER_S, Reconnect, next_reconnect

INITIAL, CAP = 0.5, 30.0


def delays(state: Reconnect, times: list[float], rand: float = 1.0) -> list[float]:
    """The delays of successive attempts made at ``times`` (monotonic), from ``state``."""
    out = []
    for now in times:
        delay, state = next_reconnect(state, now, initial=INITIAL, cap=CAP, rand=lambda: rand)
        out.append(delay)
    return out


def test_losing_a_healthy_connection_reconnects_at_once_then_at_most_2s_apart() -> None:
    state = Reconnect().lost(connected_for=HEALTHY_AFTER_S, now=1000.0)
    got = delays(state, [1000.0 + n for n in range(8)])
    assert got == [0.0, 0.5, 1.0, 2.0, 2.0, 2.0, 2.0, 2.0]
    assert max(got) == FAST_CAP_S


def test_the_fast_window_keeps_jitter() -> None:
    state = Reconnect().lost(connected_for=600.0, now=0.0)
    assert delays(state, [0.0, 1.0, 2.0, 3.0], rand=0.0) == [0.0, 0.25, 0.5, 1.0]  # equal jitter: half kept


def test_after_the_fast_window_the_long_cap_applies_again() -> None:
    state = Reconnect().lost(connected_for=120.0, now=0.0)
    within = delays(state, [n * 2.0 for n in range(30)])  # 30 attempts, all within the minute
    assert max(within) == FAST_CAP_S
    assert delays(Reconnect(30, state.fast_until), [FAST_WINDOW_S]) == [CAP]  # the window has ended


def test_a_connection_shorter_than_a_minute_keeps_the_usual_backoff() -> None:
    state = Reconnect().lost(connected_for=HEALTHY_AFTER_S - 0.1, now=0.0)
    assert state.fast_until is None
    assert delays(state, [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7]) == [0.5, 1, 2, 4, 8, 16, 30, 30]


def test_a_node_never_reached_keeps_the_usual_backoff() -> None:
    assert delays(Reconnect(), [0.0, 1.0, 2.0]) == [0.5, 1.0, 2.0]


def test_a_backoff_max_below_2s_caps_the_fast_window_too() -> None:
    state = Reconnect().lost(connected_for=61.0, now=0.0)
    got = []
    for now in (0.0, 1.0, 2.0, 3.0):
        delay, state = next_reconnect(state, now, initial=0.5, cap=0.8, rand=lambda: 1.0)
        got.append(delay)
    assert got == [0.0, 0.5, 0.8, 0.8]
