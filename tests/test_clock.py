"""The steady clock: epoch seconds anchored once to the wall clock, advanced only by the monotonic one."""

from __future__ import annotations

import dataclasses

import pytest

from listener.core.clock import SteadyClock


class Clocks:
    """A wall clock that steps when told, and a monotonic clock that only advances."""

    def __init__(self) -> None:
        self.wall_now = 1_800_000_000.0
        self.mono_now = 12_345.0

    def wall(self) -> float:
        return self.wall_now

    def mono(self) -> float:
        return self.mono_now

    def advance(self, seconds: float) -> None:
        self.wall_now += seconds
        self.mono_now += seconds


def test_it_reads_the_wall_clock_at_the_anchor_and_then_advances_with_the_monotonic_clock() -> None:
    clocks = Clocks()
    clock = SteadyClock.anchored(clocks.wall, clocks.mono)
    assert clock() == 1_800_000_000.0
    clocks.advance(5.5)
    assert clock() == 1_800_000_005.5


@pytest.mark.parametrize("step", [-3600.0, 3600.0])
def test_a_wall_clock_step_moves_none_of_its_readings(step: float) -> None:
    clocks = Clocks()
    clock = SteadyClock.anchored(clocks.wall, clocks.mono)
    due = clock() + 5.0  # a retry stored for 5 s from now
    clocks.wall_now += step  # NTP, an operator, a resumed VM
    assert clock() < due
    clocks.advance(5.0)
    assert clock() == due  # due after 5 s, neither an hour late nor an hour early
    assert clocks.wall() == due + step  # the wall clock itself did step (what is signed reads it)


def test_it_is_a_frozen_value() -> None:
    clocks = Clocks()
    clock = SteadyClock.anchored(clocks.wall, clocks.mono)
    with pytest.raises(dataclasses.FrozenInstanceError):
        clock.anchor_wall = 0.0  # type: ignore[misc]
