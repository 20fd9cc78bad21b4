"""Seed 003 (DECNET's ``WorkerRegistry``) as its users call it: ``record(worker, ts,
payload)`` and the snapshot row fields ``status``, ``last_heartbeat_ts``, ``seconds_since``
and ``extra``; idempotent ``start``/``stop``; readable drop counters."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import pytest

from taskwarden import WorkerRegistry
from taskwarden.bus.local import LocalBus
from taskwarden.clock import FakeClock


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(1000.0)


@pytest.fixture
async def bus() -> AsyncIterator[LocalBus]:
    async with LocalBus() as local:
        yield local


def test_record_takes_the_seeds_positional_worker_ts_payload(clock: FakeClock) -> None:
    registry = WorkerRegistry(["api", "collector"], clock=clock)
    ts = clock.wall().timestamp()
    registry.record("collector", ts, {"worker": "collector", "ts": ts, "queue": 3})
    rows = {row.name: row for row in registry.snapshot()}
    collector = rows["collector"]
    assert collector.status == "ok"
    assert collector.last_heartbeat_ts == ts
    assert collector.seconds_since == 0.0
    assert collector.extra == {"queue": 3}
    # taskwarden's own names stay beside the seed's.
    assert collector.state == "ok" and collector.age == 0.0 and collector.payload == {"queue": 3}


def test_record_with_a_none_payload_means_no_extra_fields(clock: FakeClock) -> None:
    registry = WorkerRegistry(["collector"], clock=clock)
    assert registry.record("collector", clock.wall().timestamp(), None)
    (row,) = registry.snapshot()
    assert row.status == "ok" and row.extra == {}


def test_record_with_the_real_clock_marks_the_worker_ok() -> None:
    registry = WorkerRegistry(["collector"])
    registry.record("collector", time.time(), {"uptime": 12})
    (row,) = registry.snapshot()
    assert row.status == "ok" and row.extra == {"uptime": 12}
    assert row.seconds_since is not None and 0 <= row.seconds_since < 5


def test_a_worker_never_heard_from_has_the_seeds_unknown_row(clock: FakeClock) -> None:
    registry = WorkerRegistry(["prober"], clock=clock)
    (row,) = registry.snapshot()
    assert row.name == "prober"
    assert row.status == "unknown"
    assert row.last_heartbeat_ts is None
    assert row.seconds_since is None
    assert row.extra == {}


def test_a_silent_worker_turns_stale_after_three_intervals(clock: FakeClock) -> None:
    registry = WorkerRegistry(["sniffer"], interval=30, clock=clock)
    sent = clock.wall().timestamp()
    registry.record("sniffer", sent, {})
    clock.advance(90)
    (row,) = registry.snapshot()
    assert row.status == "stale"
    assert row.seconds_since == 90.0
    assert row.last_heartbeat_ts == sent


def test_drop_counters_are_readable_by_cause(clock: FakeClock) -> None:
    registry = WorkerRegistry(["api"], clock=clock)
    now = clock.wall().timestamp()
    assert not registry.record("intruder", now, {})
    assert not registry.record("api", now, ["not", "a", "mapping"])  # type: ignore[arg-type]
    assert registry.record("api", now + 3600, {})  # claims the future: capped, kept
    assert not registry.record("api", now - 60, {})  # older than the newest accepted
    assert registry.counters == {
        "accepted": 1,
        "malformed": 1,
        "unknown": 1,
        "future_capped": 1,
        "out_of_order": 1,
    }
    (row,) = registry.snapshot()
    assert row.last_heartbeat_ts == now  # the capped future beat counts as received now


async def test_start_without_a_bus_leaves_every_worker_unknown(clock: FakeClock) -> None:
    registry = WorkerRegistry(["api", "bus"], clock=clock)
    await registry.start(None)
    assert [row.status for row in registry.snapshot()] == ["unknown", "unknown"]
    await registry.stop()


async def test_start_twice_subscribes_once_and_stop_twice_is_safe(
    bus: LocalBus, clock: FakeClock
) -> None:
    registry = WorkerRegistry(["api"], clock=clock)
    await registry.start(bus)
    await registry.start(bus)
    try:
        assert bus.drop_subscriptions() == 1
    finally:
        await registry.stop()
        await registry.stop()
    assert not registry.running
