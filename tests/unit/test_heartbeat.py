"""Worker heartbeats: the registry's windows and guards, and the publisher, on a fake clock.

Each test drives time with :class:`FakeClock` and carries beats over an in-process bus, so
nothing sleeps and every window boundary is exact.
"""

from __future__ import annotations

import asyncio
import math
import uuid
from collections.abc import AsyncIterator, Mapping
from typing import Any

import pytest

from taskwarden.abc import BusSubscription
from taskwarden.bus import open_bus
from taskwarden.bus.local import LocalBus
from taskwarden.clock import FakeClock
from taskwarden.errors import ConfigurationError
from taskwarden.heartbeat import (
    HeartbeatPublisher,
    WorkerRegistry,
    WorkerSpec,
    WorkerState,
    get_registry,
    reset_registry_for_tests,
    set_registry,
)

WAIT = 2.0


@pytest.fixture
async def bus() -> AsyncIterator[LocalBus]:
    async with LocalBus() as local:
        yield local


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(1000.0)


def states(registry: WorkerRegistry) -> dict[str, str]:
    return {row.name: row.state.value for row in registry.snapshot()}


async def beat(bus: LocalBus, worker: str, **payload: Any) -> None:
    await bus.publish(f"system.{worker}.health", payload)


async def settle(registry: WorkerRegistry, accepted: int) -> None:
    """Wait until the registry has taken ``accepted`` beats in total (the bus is in-process,
    so a beat is buffered at publish and taken at the subscriber's next turn)."""

    async def until() -> None:
        stats = registry.stats
        # Only yields to the loop (no time passes); bounded by the wait_for below.
        while stats.accepted + stats.malformed + stats.unknown < accepted:  # noqa: ASYNC110
            await asyncio.sleep(0)

    await asyncio.wait_for(until(), WAIT)


async def next_state(subscription: BusSubscription) -> Mapping[str, Any]:
    return (await asyncio.wait_for(anext(subscription), WAIT)).payload


# -- windows -------------------------------------------------------------------------------


def test_a_worker_is_unknown_until_its_first_beat(clock: FakeClock) -> None:
    """Never heard from is ``unknown``, with no last-seen time or age."""
    registry = WorkerRegistry(["api"], clock=clock)
    (row,) = registry.snapshot()
    assert row.state is WorkerState.UNKNOWN
    assert row.last_seen is None and row.age is None and row.beats == 0


def test_a_worker_is_ok_until_three_intervals_of_silence_then_stale(clock: FakeClock) -> None:
    """With a 30 s interval: ok at 89.9 s of silence, stale from exactly 90 s."""
    registry = WorkerRegistry(["api"], interval=30, clock=clock)
    assert registry.record("api", {"uptime": 5})
    clock.advance(89.9)
    assert states(registry) == {"api": "ok"}
    clock.advance(0.1)
    (row,) = registry.snapshot()
    assert row.state is WorkerState.STALE
    assert row.age == pytest.approx(90.0)
    assert row.payload == {"uptime": 5}


def test_each_worker_has_its_own_window(clock: FakeClock) -> None:
    """A WorkerSpec sets a per-worker interval or an explicit stale_after."""
    registry = WorkerRegistry(
        [
            WorkerSpec(name="fast", interval=1),
            WorkerSpec(name="slow", interval=60),
            WorkerSpec(name="custom", interval=60, stale_after=10),
        ],
        clock=clock,
    )
    for name in ("fast", "slow", "custom"):
        registry.record(name, {})
    clock.advance(5)
    assert states(registry) == {"fast": "stale", "slow": "ok", "custom": "ok"}
    clock.advance(5)
    assert states(registry) == {"fast": "stale", "slow": "ok", "custom": "stale"}
    assert [row.stale_after for row in registry.snapshot()] == [3, 180, 10]


def test_snapshot_lists_configured_workers_in_order_then_admitted_ones(
    clock: FakeClock,
) -> None:
    """Configured workers come first, in configuration order, then strangers as first seen."""
    registry = WorkerRegistry(["b", "a"], admit_unknown=True, clock=clock)
    registry.record("zed", {})
    registry.record("a", {})
    registry.record("x", {})
    assert [(row.name, row.known) for row in registry.snapshot()] == [
        ("b", True),
        ("a", True),
        ("zed", False),
        ("x", False),
    ]


def test_liveness_uses_the_receive_time_not_the_workers_timestamp(clock: FakeClock) -> None:
    """A beat stamped an hour ago but received now is ok: the sender's clock is not trusted."""
    registry = WorkerRegistry(["api"], clock=clock)
    an_hour_ago = clock.wall().timestamp() - 3600
    assert registry.record("api", {"ts": an_hour_ago})
    assert states(registry) == {"api": "ok"}
    assert registry.snapshot()[0].last_seen == clock.wall()


def test_a_future_timestamp_is_capped_and_cannot_pin_a_worker_at_ok(clock: FakeClock) -> None:
    """A beat claiming next year is counted, capped, and the worker still goes stale."""
    registry = WorkerRegistry(["api"], interval=30, clock=clock)
    next_year = clock.wall().timestamp() + 365 * 86400
    assert registry.record("api", {"ts": next_year})
    assert registry.stats.future_capped == 1
    clock.advance(90)
    assert states(registry) == {"api": "stale"}
    # The cap also keeps ordering sane: a correct beat afterwards is accepted.
    assert registry.record("api", {"ts": clock.wall().timestamp()})
    assert states(registry) == {"api": "ok"}


def test_a_late_older_beat_never_regresses_a_newer_one(clock: FakeClock) -> None:
    """A beat older than the newest accepted one is dropped and counted; the row keeps the
    newer payload and receive time."""
    registry = WorkerRegistry(["api"], clock=clock)
    now = clock.wall().timestamp()
    assert registry.record("api", {"ts": now, "queue": 7})
    clock.advance(10)
    assert not registry.record("api", {"ts": now - 5, "queue": 99})
    (row,) = registry.snapshot()
    assert row.payload == {"queue": 7}
    assert row.age == pytest.approx(10)
    assert registry.stats.out_of_order == 1


# -- allowlist and malformed beats ---------------------------------------------------------


def test_beats_from_unconfigured_names_are_dropped_and_counted(clock: FakeClock) -> None:
    """A stranger cannot add a row unless the registry admits unknown workers."""
    registry = WorkerRegistry(["api"], clock=clock)
    assert not registry.record("intruder", {})
    assert [row.name for row in registry.snapshot()] == ["api"]
    assert registry.stats.unknown == 1


def test_admitted_strangers_get_a_window_from_their_announced_interval(
    clock: FakeClock,
) -> None:
    """With ``admit_unknown=True`` a stranger gets a row; its beat's interval sets its window."""
    registry = WorkerRegistry(admit_unknown=True, interval=30, clock=clock)
    assert registry.record("quick", {"interval": 2})
    assert registry.record("plain", {})
    rows = {row.name: row for row in registry.snapshot()}
    assert rows["quick"].stale_after == 6 and not rows["quick"].known
    assert rows["plain"].stale_after == 90


@pytest.mark.parametrize(
    "payload",
    [
        {"ts": "yesterday"},
        {"ts": math.nan},
        {"ts": math.inf},
        {"ts": True},
        {"name": "someone-else"},
        ["not", "a", "mapping"],
    ],
)
def test_malformed_beats_are_dropped_and_counted(clock: FakeClock, payload: Any) -> None:
    """Bad timestamps, a name that contradicts the topic, or a non-object are refused."""
    registry = WorkerRegistry(["api"], clock=clock)
    assert not registry.record("api", payload)
    assert registry.stats.malformed == 1
    assert states(registry) == {"api": "unknown"}


def test_invalid_configuration_is_refused() -> None:
    """Non-positive intervals and names that are not one topic token raise."""
    with pytest.raises(ConfigurationError):
        WorkerRegistry(interval=0)
    with pytest.raises(ConfigurationError):
        WorkerRegistry(["a.b"])
    with pytest.raises(ConfigurationError):
        HeartbeatPublisher(LocalBus(), "a.b")
    with pytest.raises(ConfigurationError):
        HeartbeatPublisher(LocalBus(), "a", interval=0)


# -- on the bus ----------------------------------------------------------------------------


async def test_each_beat_on_the_bus_is_counted_once(bus: LocalBus, clock: FakeClock) -> None:
    """``system.bus.health`` is matched by the one ``system.*.health`` subscription only."""
    registry = WorkerRegistry(["bus", "api"], clock=clock)
    await registry.start(bus)
    try:
        await beat(bus, "bus")
        await beat(bus, "api")
        await settle(registry, 2)
        assert {row.name: row.beats for row in registry.snapshot()} == {"bus": 1, "api": 1}
        assert registry.stats.accepted == 2
    finally:
        await registry.stop()


async def test_a_malformed_beat_on_the_bus_does_not_kill_the_subscriber(
    bus: LocalBus, clock: FakeClock
) -> None:
    """After a garbage beat the subscriber keeps going: the next good beat is accepted."""
    registry = WorkerRegistry(["api"], clock=clock)
    await registry.start(bus)
    try:
        await beat(bus, "api", ts="garbage")
        await beat(bus, "api", ts=clock.wall().timestamp())
        await settle(registry, 2)
        assert registry.stats.malformed == 1
        assert states(registry) == {"api": "ok"}
        assert registry.running
    finally:
        await registry.stop()


async def test_the_subscriber_subscribes_again_when_the_bus_drops_it(
    bus: LocalBus, clock: FakeClock
) -> None:
    """If the bus ends the subscription, the registry re-subscribes and keeps counting."""
    registry = WorkerRegistry(["api"], clock=clock)
    await registry.start(bus)
    try:
        assert bus.drop_subscriptions() == 1
        await asyncio.wait_for(registry.wait_subscribed(2), WAIT)
        assert registry.stats.restarts == 1
        await beat(bus, "api")
        await settle(registry, 1)
        assert states(registry) == {"api": "ok"}
    finally:
        await registry.stop()


async def test_transitions_are_published_and_returns_from_stale_count_as_flaps(
    bus: LocalBus, clock: FakeClock
) -> None:
    """unknown→ok, ok→stale and stale→ok each publish ``system.<worker>.state``; each
    return from stale is a flap."""
    registry = WorkerRegistry(["api"], interval=30, clock=clock)
    async with bus.subscribe("system.*.state") as changes:
        await registry.start(bus)
        try:
            await beat(bus, "api")
            event = await next_state(changes)
            assert (event["name"], event["previous"], event["state"]) == ("api", "unknown", "ok")

            await asyncio.wait_for(clock.wait_for_sleepers(1), WAIT)
            clock.advance(90)
            event = await next_state(changes)
            assert (event["previous"], event["state"]) == ("ok", "stale")
            assert event["age"] == pytest.approx(90)

            await beat(bus, "api")
            event = await next_state(changes)
            assert (event["previous"], event["state"], event["flaps"]) == ("stale", "ok", 1)

            assert registry.snapshot()[0].flaps == 1
            assert registry.stats.flaps == 1
            assert registry.stats.transitions == 3
        finally:
            await registry.stop()


async def test_a_steady_worker_never_goes_stale(bus: LocalBus, clock: FakeClock) -> None:
    """Beats every interval keep the worker ok across many windows, with no transitions."""
    registry = WorkerRegistry(["api"], interval=30, clock=clock)
    await registry.start(bus)
    try:
        for count in range(1, 11):
            await beat(bus, "api")
            await settle(registry, count)
            clock.advance(30)
            await asyncio.sleep(0)
        assert states(registry) == {"api": "ok"}
        assert registry.stats.transitions == 1  # unknown -> ok only
    finally:
        await registry.stop()


def test_expire_marks_silent_workers_stale_without_a_running_registry(clock: FakeClock) -> None:
    """``expire`` moves ok workers past their window to stale, and only those."""
    registry = WorkerRegistry(["a", "b"], interval=10, clock=clock)
    registry.record("a", {})
    clock.advance(20)
    registry.record("b", {})
    clock.advance(10)
    assert registry.expire() == 1
    assert registry.expire() == 0
    assert registry.stats.transitions == 3


# -- publisher -----------------------------------------------------------------------------


async def test_the_publisher_beats_every_interval_with_name_ts_uptime_and_extras(
    bus: LocalBus, clock: FakeClock
) -> None:
    """A beat at start, then one per interval; extras (sync or async) are merged in."""

    async def extra() -> Mapping[str, Any]:
        return {"queue_depth": 3, "name": "cannot-override"}

    publisher = HeartbeatPublisher(bus, "worker-1", interval=10, extra=extra, clock=clock)
    async with bus.subscribe("system.worker-1.health") as beats:
        async with publisher:
            first = (await asyncio.wait_for(anext(beats), WAIT)).payload
            await asyncio.wait_for(clock.wait_for_sleepers(1), WAIT)
            clock.advance(10)
            second = (await asyncio.wait_for(anext(beats), WAIT)).payload
    assert first["name"] == "worker-1" and first["queue_depth"] == 3
    assert first["uptime"] == 0 and second["uptime"] == 10
    assert second["ts"] - first["ts"] == pytest.approx(10)
    assert first["interval"] == 10
    assert publisher.sent == 2


async def test_a_failing_extra_still_sends_the_beat(bus: LocalBus, clock: FakeClock) -> None:
    """If ``extra()`` raises, the beat goes out without extras and the failure is counted."""

    def broken() -> Mapping[str, Any]:
        raise RuntimeError("metrics unavailable")

    publisher = HeartbeatPublisher(bus, "w", extra=broken, clock=clock)
    async with bus.subscribe("system.w.health") as beats:
        await publisher.beat()
        payload = (await asyncio.wait_for(anext(beats), WAIT)).payload
    assert payload["name"] == "w"
    assert publisher.failures == 1 and publisher.sent == 1


async def test_publisher_and_registry_agree_end_to_end(bus: LocalBus, clock: FakeClock) -> None:
    """A publishing worker shows ok with its extras; once it stops, stale after 3 intervals."""
    registry = WorkerRegistry(["worker-1"], interval=10, clock=clock)
    await registry.start(bus)
    publisher = HeartbeatPublisher(
        bus, "worker-1", interval=10, extra=lambda: {"active": 2}, clock=clock
    )
    try:
        await publisher.start()
        await settle(registry, 1)
        (row,) = registry.snapshot()
        assert row.state is WorkerState.OK
        assert row.payload["active"] == 2 and row.payload["uptime"] == 0
        await publisher.stop()
        clock.advance(30)
        assert states(registry) == {"worker-1": "stale"}
    finally:
        await publisher.stop()
        await registry.stop()


def test_status_returns_one_row_or_none(clock: FakeClock) -> None:
    """``status(name)`` is the worker's snapshot row; None for a name without a row."""
    registry = WorkerRegistry(["api", "db"], clock=clock)
    registry.record("db", {"lag": 1})
    row = registry.status("db")
    assert row is not None and row.state is WorkerState.OK and row.payload == {"lag": 1}
    assert registry.status("nobody") is None


@pytest.mark.redis
async def test_heartbeats_cross_a_real_redis_bus(redis_server_url: str) -> None:
    """A publisher on one RedisBus and a registry on another: the worker shows ok, and its
    transition event arrives over Redis."""
    url = f"{redis_server_url}?prefix=hb{uuid.uuid4().hex[:10]}"
    async with open_bus(url) as worker_bus, open_bus(url) as api_bus:
        registry = WorkerRegistry(["worker-1"], interval=60)
        async with api_bus.subscribe("system.*.state") as changes:
            await registry.start(api_bus)
            try:
                async with HeartbeatPublisher(worker_bus, "worker-1", interval=60):
                    event = await next_state(changes)
                assert (event["name"], event["state"]) == ("worker-1", "ok")
                assert states(registry) == {"worker-1": "ok"}
                assert registry.stats.accepted == 1
            finally:
                await registry.stop()


# -- module singleton ----------------------------------------------------------------------


def test_get_registry_is_a_resettable_singleton() -> None:
    """``get_registry`` returns one instance until reset; ``set_registry`` installs one."""
    reset_registry_for_tests()
    try:
        first = get_registry()
        assert get_registry() is first
        configured = WorkerRegistry(["api"])
        set_registry(configured)
        assert get_registry() is configured
        reset_registry_for_tests()
        assert get_registry() is not configured
    finally:
        reset_registry_for_tests()
