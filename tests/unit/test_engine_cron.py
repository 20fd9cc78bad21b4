"""Cron schedules: validated on load, time zones, fired only while run() is active,
exactly once per tick across engines sharing a store (driven by a fake clock)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest

from taskwarden.clock import FakeClock
from taskwarden.engine import CronSchedule, Engine, ProcessContext
from taskwarden.errors import InvalidDefinition
from taskwarden.registry import OperationRegistry
from taskwarden.stores.memory import MemoryStore
from tests.engine_support import definitions, task


@pytest.mark.parametrize(
    "expression",
    ["61 * * * *", "* * * *", "0 0 * * * *", "every day", "", None],
)
def test_a_bad_expression_is_an_invalid_definition_naming_the_process(expression: object) -> None:
    with pytest.raises(InvalidDefinition, match="nightly"):
        CronSchedule.parse("nightly", expression, None)  # type: ignore[arg-type]


def test_an_unknown_time_zone_is_an_invalid_definition() -> None:
    with pytest.raises(InvalidDefinition, match="Mars/Olympus"):
        CronSchedule.parse("nightly", "0 2 * * *", "Mars/Olympus")


def test_fire_times_follow_the_schedule_time_zone() -> None:
    utc = CronSchedule.parse("n", "0 2 * * *", None)
    paris = CronSchedule.parse("n", "0 2 * * *", "Europe/Paris")
    after = datetime(2026, 1, 10, 12, 0, tzinfo=UTC)
    assert utc.next_after(after) == datetime(2026, 1, 11, 2, 0, tzinfo=UTC)
    assert paris.next_after(after) == datetime(2026, 1, 11, 1, 0, tzinfo=UTC)  # CET = UTC+1
    summer = datetime(2026, 7, 10, 12, 0, tzinfo=UTC)
    assert paris.next_after(summer) == datetime(2026, 7, 11, 0, 0, tzinfo=UTC)  # CEST


async def test_init_refuses_a_definition_with_a_bad_schedule() -> None:
    engine = Engine(
        MemoryStore(),
        get_task_definitions=definitions(task("nightly", schedule="0 25 * * *")),
        registry=OperationRegistry(),
    )
    with pytest.raises(InvalidDefinition, match="nightly"):
        await engine.init()


async def _engines(count: int, clock: FakeClock, execute: object) -> list[Engine]:
    store = MemoryStore()
    engines = [
        Engine(
            store,
            get_task_definitions=definitions(task("tick", execute, schedule="* * * * *")),  # type: ignore[arg-type]
            engine_id=f"engine-{i}",
            registry=OperationRegistry(),
            clock=clock,
            progress_flush_interval=0,
        )
        for i in range(count)
    ]
    for engine in engines:
        await engine.init()
    return engines


async def test_each_tick_fires_exactly_once_with_two_engines_on_one_store() -> None:
    clock = FakeClock()
    fired: list[datetime] = []
    ran = asyncio.Event()

    async def execute(ctx: ProcessContext) -> None:
        fired.append(clock.wall())
        ran.set()

    engines = await _engines(2, clock, execute)
    runners = [asyncio.create_task(engine.run()) for engine in engines]
    try:
        for minute in (1, 2, 3):
            await asyncio.wait_for(clock.wait_for_sleepers(2), 2)
            ran.clear()
            clock.advance(60)
            await asyncio.wait_for(ran.wait(), 2)
            for _ in range(20):
                await asyncio.sleep(0)
            assert len(fired) == minute
        record = await engines[0].store.get("tick")
        assert record is not None and record.run_number == 3
        assert record.last_cron_tick == datetime(2026, 1, 1, 0, 3, tzinfo=UTC)
    finally:
        for engine in engines:
            await engine.shutdown(timeout=1)
        await asyncio.wait_for(asyncio.gather(*runners), 2)


async def test_schedules_fire_only_while_run_is_active() -> None:
    clock = FakeClock()
    fired: list[datetime] = []

    async def execute(ctx: ProcessContext) -> None:
        fired.append(clock.wall())

    [engine] = await _engines(1, clock, execute)
    clock.advance(600)
    for _ in range(20):
        await asyncio.sleep(0)
    assert fired == []
    await engine.shutdown()


async def test_a_blocked_engine_skips_cron_ticks() -> None:
    clock = FakeClock()
    fired: list[datetime] = []

    async def execute(ctx: ProcessContext) -> None:
        fired.append(clock.wall())

    [engine] = await _engines(1, clock, execute)
    engine.block_launches()
    runner = asyncio.create_task(engine.run())
    await asyncio.wait_for(clock.wait_for_sleepers(1), 2)
    clock.advance(60)
    await asyncio.wait_for(clock.wait_for_sleepers(1), 2)
    assert fired == []
    await engine.shutdown()
    await asyncio.wait_for(runner, 2)
