"""The clocks: the real one, and the fake one that only moves when a test says so."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest

from taskwarden.clock import Clock, FakeClock, SystemClock


def test_both_clocks_satisfy_the_clock_protocol() -> None:
    """SystemClock and FakeClock are usable wherever a Clock is expected."""
    assert isinstance(SystemClock(), Clock)
    assert isinstance(FakeClock(), Clock)


async def test_system_clock_is_monotonic_and_its_wall_time_is_aware_utc() -> None:
    """``now`` never goes back; ``wall`` is timezone-aware UTC; ``sleep(0)`` just yields."""
    clock = SystemClock()
    first = clock.now()
    await clock.sleep(0)
    assert clock.now() >= first
    assert clock.wall().utcoffset() == timedelta(0)


def test_fake_clock_stands_still_until_advanced() -> None:
    """Time only moves by ``advance``, and wall time moves with it."""
    start = datetime(2030, 5, 1, 12, 0, tzinfo=UTC)
    clock = FakeClock(100.0, wall_start=start)
    assert clock.now() == 100.0 and clock.wall() == start
    clock.advance(2.5)
    assert clock.now() == 102.5
    assert clock.wall() == start + timedelta(seconds=2.5)


def test_fake_clock_refuses_to_go_backwards_or_start_naive() -> None:
    """A negative advance and a naive wall start are errors."""
    with pytest.raises(ValueError, match="backwards"):
        FakeClock().advance(-1)
    with pytest.raises(ValueError, match="timezone-aware"):
        FakeClock(wall_start=datetime(2030, 1, 1))


async def test_fake_sleep_wakes_exactly_when_its_deadline_is_reached() -> None:
    """A 5 s sleeper stays parked after 4.9 s and wakes once 5 s have been advanced."""
    clock = FakeClock()
    task = asyncio.create_task(clock.sleep(5))
    await asyncio.wait_for(clock.wait_for_sleepers(1), 1)
    clock.advance(4.9)
    await asyncio.sleep(0)
    assert not task.done()
    clock.advance(0.1)
    await asyncio.wait_for(task, 1)
    assert clock.sleepers == 0


async def test_fake_sleepers_due_together_wake_in_the_order_they_slept() -> None:
    """Sleepers with equal deadlines wake first-in first-out; earlier deadlines first."""
    clock = FakeClock()
    woke: list[str] = []

    async def sleeper(name: str, seconds: float) -> None:
        await clock.sleep(seconds)
        woke.append(name)

    tasks = [
        asyncio.create_task(sleeper(name, seconds))
        for name, seconds in [("a", 3), ("b", 1), ("c", 3)]
    ]
    await asyncio.wait_for(clock.wait_for_sleepers(3), 1)
    clock.advance(10)
    await asyncio.wait_for(asyncio.gather(*tasks), 1)
    assert woke == ["b", "a", "c"]


async def test_a_cancelled_fake_sleeper_does_not_disturb_the_others() -> None:
    """Cancelling a sleeper removes it from the count; advancing still wakes the rest."""
    clock = FakeClock()
    doomed = asyncio.create_task(clock.sleep(1))
    survivor = asyncio.create_task(clock.sleep(1))
    await asyncio.wait_for(clock.wait_for_sleepers(2), 1)
    doomed.cancel()
    with pytest.raises(asyncio.CancelledError):
        await doomed
    assert clock.sleepers == 1
    clock.advance(1)
    await asyncio.wait_for(survivor, 1)


async def test_a_non_positive_fake_sleep_returns_without_advancing() -> None:
    """``sleep(0)`` and negative sleeps only yield to the loop."""
    clock = FakeClock()
    await asyncio.wait_for(clock.sleep(0), 1)
    await asyncio.wait_for(clock.sleep(-3), 1)
    assert clock.now() == 0.0
