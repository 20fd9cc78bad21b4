"""Buffered progress: validated percents, bounded write rate, final flush, coalesced logs."""

from __future__ import annotations

import asyncio

import pytest

from taskwarden.clock import FakeClock
from taskwarden.engine import ProcessContext
from taskwarden.engine.progress import ProgressBuffer, flush_interval_from_env
from taskwarden.errors import ConfigurationError
from taskwarden.processes import LogLevel, ProcessRecord, ProcessState
from tests.engine_support import CountingStore, StateLog, started_engine, task


async def _store_with(process_id: str) -> CountingStore:
    store = CountingStore()
    await store.open()
    await store.create(ProcessRecord(process_id=process_id, name=process_id))
    return store


async def _settle() -> None:
    for _ in range(10):
        await asyncio.sleep(0)


async def test_many_reports_cause_at_most_one_write_per_flush_interval() -> None:
    clock = FakeClock()
    store = await _store_with("p")
    buffer = ProgressBuffer(store, "p", clock=clock, interval=0.1)
    for i in range(10_000):
        buffer.report(i / 100, None)
    await clock.wait_for_sleepers(1)
    assert store.progress_writes["p"] == 1
    for i in range(10_000):
        buffer.report(i / 200, None)
    await _settle()
    assert store.progress_writes["p"] == 1  # the interval has not passed yet
    clock.advance(0.1)
    await clock.wait_for_sleepers(1)
    assert store.progress_writes["p"] == 2
    record = await store.get("p")
    assert record is not None and record.progress_percent == 9999 / 200
    clock.advance(0.1)
    await _settle()
    assert store.progress_writes["p"] == 2  # nothing new, nothing written
    await buffer.close()


async def test_close_writes_the_final_progress_even_inside_the_interval() -> None:
    clock = FakeClock()
    store = await _store_with("p")
    buffer = ProgressBuffer(store, "p", clock=clock, interval=60)
    buffer.report(10, "first")
    await clock.wait_for_sleepers(1)
    buffer.report(99, "last")
    await buffer.close()
    record = await store.get("p")
    assert record is not None
    assert (record.progress_percent, record.progress_message) == (99, "last")
    assert [e.message for e in record.log] == ["first", "last"]


async def test_bursts_of_messages_coalesce_but_warnings_and_errors_are_kept() -> None:
    clock = FakeClock()
    store = await _store_with("p")
    buffer = ProgressBuffer(store, "p", clock=clock, interval=60, max_messages=5)
    for i in range(100):
        buffer.report(None, f"step {i}")
        if i % 10 == 0:
            buffer.log(LogLevel.WARNING, f"warn {i}")
    buffer.log(LogLevel.ERROR, "fatal-ish")
    await buffer.close()
    record = await store.get("p")
    assert record is not None
    messages = [e.message for e in record.log]
    assert messages[:7] == [
        "step 0",
        "warn 0",
        "step 1",
        "step 2",
        "step 3",
        "step 4",
        "(95 messages dropped)",
    ]
    assert [m for m in messages if m.startswith("warn")] == [f"warn {i}" for i in range(0, 100, 10)]
    assert messages[-1] == "fatal-ish"
    assert record.progress_message == "step 99"


async def test_the_log_keeps_only_the_newest_max_log_entries() -> None:
    clock = FakeClock()
    store = await _store_with("p")
    buffer = ProgressBuffer(store, "p", clock=clock, interval=60, max_log=10)
    for i in range(50):
        buffer.log(LogLevel.WARNING, f"w{i}")
    await buffer.close()
    record = await store.get("p")
    assert record is not None
    assert [e.message for e in record.log] == [f"w{i}" for i in range(40, 50)]


@pytest.mark.parametrize("bad", [-1, 100.5, float("nan"), "50", True])
async def test_report_progress_rejects_percents_outside_0_to_100(bad: object) -> None:
    raised: list[BaseException] = []

    async def report(ctx: ProcessContext) -> None:
        try:
            ctx.report_progress(bad)  # type: ignore[arg-type]
        except ValueError as exc:
            raised.append(exc)
        ctx.report_progress(None)
        ctx.report_progress(0)
        ctx.report_progress(100.0)

    async with started_engine(task("p", report)) as engine:
        await engine.launch_and_wait("p")
        assert len(raised) == 1
        record = await engine.get_process("p")
        assert record is not None and record.state is ProcessState.DONE


async def test_a_run_flushes_its_last_progress_when_it_ends() -> None:
    store = CountingStore()

    async def chatty(ctx: ProcessContext) -> None:
        for i in range(1000):
            ctx.report_progress(i / 10, f"item {i}")
        ctx.log("error", "one bad item", {"item": 7})

    async with started_engine(
        task("p", chatty), store=store, progress_flush_interval=3600, max_messages_per_flush=3
    ) as engine:
        await engine.launch_and_wait("p")
        record = await engine.get_process("p")
        assert record is not None
        assert record.progress_percent == 99.9 and record.progress_message == "item 999"
        assert [e.message for e in record.log] == [
            "item 0",
            "item 1",
            "item 2",
            "(997 messages dropped)",
            "one bad item",
        ]
        assert record.log[4].data == {"item": 7} and record.log[4].level is LogLevel.ERROR
        assert store.progress_writes["p"] <= 2


async def test_progress_is_visible_while_running() -> None:
    reported = asyncio.Event()
    release = asyncio.Event()

    async def slow(ctx: ProcessContext) -> None:
        ctx.report_progress(42, "working")
        reported.set()
        await release.wait()

    async with started_engine(task("p", slow), progress_flush_interval=0.0) as engine:
        log = StateLog(engine)
        await engine.launch("p")
        await asyncio.wait_for(reported.wait(), 2)
        async with asyncio.timeout(2):
            while True:
                record = await engine.get_process("p")
                assert record is not None
                if record.progress_percent == 42:
                    break
                await asyncio.sleep(0)
        [live] = engine.registry.get_operations_by_name("p")
        assert live.progress_percent == 42 and live.progress_message == "working"
        release.set()
        await log.wait_for("p", ProcessState.DONE)


def test_flush_interval_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TASKWARDEN_PROGRESS_FLUSH_INTERVAL_MS", raising=False)
    assert flush_interval_from_env() == 0.1
    monkeypatch.setenv("TASKWARDEN_PROGRESS_FLUSH_INTERVAL_MS", "250")
    assert flush_interval_from_env() == 0.25
    monkeypatch.setenv("TASKWARDEN_PROGRESS_FLUSH_INTERVAL_MS", "soon")
    with pytest.raises(ConfigurationError):
        flush_interval_from_env()
