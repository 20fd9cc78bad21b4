"""The engine's hot path: what a run costs in tasks, garbage and store writes."""

from __future__ import annotations

import asyncio
import gc

import pytest

from taskwarden.engine import ProcessContext
from taskwarden.errors import InvalidTransition
from taskwarden.processes import ProcessState
from taskwarden.stores.memory import MemoryStore
from tests.engine_support import CountingStore, StateLog, started_engine, task

S = ProcessState


def _process_tasks() -> list[asyncio.Task[object]]:
    return [t for t in asyncio.all_tasks() if t.get_name().startswith("taskwarden-process:")]


async def test_launches_beyond_max_concurrency_wait_without_a_task_each() -> None:
    release = asyncio.Event()

    async def hold(ctx: ProcessContext) -> None:
        await release.wait()

    tasks = [task(f"p{i}", hold) for i in range(50)]
    async with started_engine(*tasks, max_concurrency=3) as engine:
        log = StateLog(engine)
        for i in range(50):
            await engine.launch(f"p{i}")
        await log.wait_for("p2", S.RUNNING)
        assert len(_process_tasks()) == 3
        assert len(engine.active_runs()) == 50
        release.set()
        for i in range(50):
            await log.wait_for(f"p{i}", S.DONE)
        assert [pid for pid, state in log.changes if state is S.RUNNING] == [
            f"p{i}" for i in range(50)
        ]  # slots go to the waiting runs oldest first


async def test_a_cancelled_waiting_run_never_starts_and_frees_no_slot_twice() -> None:
    release = asyncio.Event()

    async def hold(ctx: ProcessContext) -> None:
        await release.wait()

    tasks = [task(f"p{i}", hold) for i in range(4)]
    async with started_engine(*tasks, max_concurrency=1) as engine:
        log = StateLog(engine)
        for i in range(4):
            await engine.launch(f"p{i}")
        await log.wait_for("p0", S.RUNNING)
        await engine.cancel("p1")
        await engine.wait("p1")
        release.set()
        for pid in ("p0", "p2", "p3"):
            await log.wait_for(pid, S.DONE)
            await engine.wait(pid)
        assert log.states("p1") == [S.SCHEDULED, S.CANCELLED]
        assert engine.active_runs() == []


async def test_a_finished_run_leaves_no_reference_cycle_behind() -> None:
    async with started_engine(task("p")) as engine:
        await engine.launch_and_wait("p")  # warm up imports and caches
        await engine.store.transition("p", {S.DONE}, S.IDLE)
        for _ in range(5):
            await asyncio.sleep(0)
        gc.collect()
        gc.disable()
        try:
            await engine.launch_and_wait("p")
            for _ in range(5):
                await asyncio.sleep(0)
            assert gc.collect() == 0
        finally:
            gc.enable()


async def test_finished_runs_are_not_kept_alive_by_the_operations_history() -> None:
    # The registry keeps finished scopes in its history; their cancel callbacks referred
    # back to the run, so every finished run stayed in memory as long as its scope did.
    from taskwarden.engine.run_state import _Run

    pid = "kept-alive-probe"  # earlier tests' engines may still hold runs of their own
    async with started_engine(task(pid)) as engine:
        for _ in range(20):
            await engine.launch_and_wait(pid)
            await engine.store.transition(pid, {S.DONE}, S.IDLE)
        for _ in range(5):
            await asyncio.sleep(0)
        gc.collect()
        alive = [o for o in gc.get_objects() if isinstance(o, _Run) and o.process_id == pid]
        assert alive == []


async def test_the_final_progress_rides_on_the_terminal_transition() -> None:
    store = CountingStore()

    async def reporter(ctx: ProcessContext) -> None:
        ctx.report_progress(0)
        await asyncio.sleep(0)  # the first report is written at once
        for i in range(1000):
            ctx.report_progress(i / 10)

    async with started_engine(
        task("p", reporter), store=store, progress_flush_interval=3600
    ) as engine:
        await engine.launch_and_wait("p")
        record = await engine.get_process("p")
        assert record is not None and record.state is S.DONE
        assert record.progress_percent == 99.9
        assert store.progress_writes["p"] == 1  # the first report only


async def test_final_log_entries_are_still_written_before_the_end() -> None:
    store = CountingStore()

    async def reporter(ctx: ProcessContext) -> None:
        ctx.report_progress(50, "half way")

    async with started_engine(
        task("p", reporter), store=store, progress_flush_interval=3600
    ) as engine:
        await engine.launch_and_wait("p")
        record = await engine.get_process("p")
        assert record is not None and record.state is S.DONE
        assert record.progress_percent == 50 and record.progress_message == "half way"
        assert [entry.message for entry in record.log] == ["half way"]


class AnswerLostStore(MemoryStore):
    """Commits a run's end, then never answers: the caller's await is left hanging."""

    def __init__(self) -> None:
        super().__init__()
        self.committed = asyncio.Event()

    async def transition(  # type: ignore[override]
        self, process_id: str, expected: object, to_state: ProcessState, /, **kwargs: object
    ) -> object:
        record = await super().transition(process_id, expected, to_state, **kwargs)  # type: ignore[arg-type]
        if to_state is S.DONE and not self.committed.is_set():
            self.committed.set()
            await asyncio.Event().wait()
        return record


async def test_a_run_cancelled_from_outside_while_ending_still_records_its_end_once() -> None:
    store = AnswerLostStore()
    async with started_engine(task("p"), store=store) as engine:
        log = StateLog(engine)
        await engine.launch("p")
        await asyncio.wait_for(store.committed.wait(), 2)
        [run_task] = _process_tasks()
        run_task.cancel()  # not the engine's doing: someone cancels the task by hand
        await asyncio.wait({run_task}, timeout=2)
        assert log.states("p") == [S.SCHEDULED, S.RUNNING, S.DONE]
        history = await engine.query_history("p")
        assert [run.status for run in history] == ["completed"]
        assert engine.active_runs() == []


class SlowLaunchStore(MemoryStore):
    """Lets other calls overtake a launch's write: a store that runs calls concurrently."""

    async def transition(  # type: ignore[override]
        self, process_id: str, expected: object, to_state: ProcessState, /, **kwargs: object
    ) -> object:
        if to_state is S.SCHEDULED:
            for _ in range(5):
                await asyncio.sleep(0)
        return await super().transition(process_id, expected, to_state, **kwargs)  # type: ignore[arg-type]


async def test_a_start_queued_behind_its_launch_still_runs_when_it_overtook_the_launch() -> None:
    runs = 0

    async def count(ctx: ProcessContext) -> None:
        nonlocal runs
        runs += 1

    async with started_engine(task("p", count), store=SlowLaunchStore()) as engine:
        engine._in_order_store = True  # pretend, so the start is queued behind the launch
        log = StateLog(engine)
        await asyncio.wait_for(engine.launch_and_wait("p"), 5)
        assert log.states("p") == [S.SCHEDULED, S.RUNNING, S.DONE]
        assert runs == 1


async def test_a_refused_launch_runs_nothing_even_with_its_start_queued_behind() -> None:
    release = asyncio.Event()
    runs = 0

    async def hold(ctx: ProcessContext) -> None:
        nonlocal runs
        runs += 1
        await release.wait()

    async with started_engine(task("p", hold)) as engine:
        assert engine._in_order_store  # the memory store runs calls in order
        log = StateLog(engine)
        await engine.launch("p")
        await log.wait_for("p", S.RUNNING)
        engine._runs.clear()  # as if another engine ran it: this one's launch is refused
        with pytest.raises(InvalidTransition):
            await engine.launch("p")
        for _ in range(10):
            await asyncio.sleep(0)
        assert runs == 1
        release.set()
        await log.wait_for("p", S.DONE)


class SpyStore(MemoryStore):
    """A memory store that records the verbs called on it, in order."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []

    async def get(self, process_id: str) -> object:  # type: ignore[override]
        self.calls.append("get")
        return await super().get(process_id)

    async def transition(self, *args: object, **kwargs: object) -> object:  # type: ignore[override]
        self.calls.append(f"transition->{args[2]}")
        return await super().transition(*args, **kwargs)  # type: ignore[arg-type]


async def test_cancelling_a_local_run_reaches_its_task_after_one_write() -> None:
    """No read before the compare-and-set: the first store call is the cancel itself."""
    seen_cancel = asyncio.Event()
    calls_when_cancelled: list[str] = []
    store = SpyStore()

    async def waits(ctx: ProcessContext) -> None:
        await ctx.wait_cancelled()
        calls_when_cancelled.extend(store.calls)
        seen_cancel.set()

    async with started_engine(task("w", waits), store=store) as engine:
        log = StateLog(engine)
        await engine.launch("w")
        await log.wait_for("w", S.RUNNING)
        store.calls.clear()
        await engine.cancel("w")
        await asyncio.wait_for(seen_cancel.wait(), 5)
        await log.wait_for("w", S.CANCELLED)
    assert calls_when_cancelled[0] == "transition->cancel_requested"
    assert "get" not in calls_when_cancelled
