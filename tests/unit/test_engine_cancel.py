"""Cancelling processes: the seed's states, the cooperative flag, the forced cancel, and
runs that ignore both (recorded failed as abandoned)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from taskwarden.engine import ProcessContext
from taskwarden.errors import NotCancellable, ProcessNotFound
from taskwarden.model import OperationStatus
from taskwarden.processes import END_STATES, ProcessRecord, ProcessState
from taskwarden.stores.memory import MemoryStore
from tests.engine_support import StateLog, started_engine, task

S = ProcessState


async def test_cancelling_a_scheduled_process_goes_straight_to_cancelled() -> None:
    release = asyncio.Event()

    async def hold(ctx: ProcessContext) -> None:
        await release.wait()

    async with started_engine(task("a", hold), task("b"), max_concurrency=1) as engine:
        log = StateLog(engine)
        await engine.launch("a")
        await log.wait_for("a", S.RUNNING)
        await engine.launch("b")
        await engine.cancel("b")
        assert log.states("b") == [S.SCHEDULED, S.CANCELLED]
        record = await engine.get_process("b")
        assert record is not None and record.stopped_at is not None
        release.set()
        await log.wait_for("a", S.DONE)
        assert log.states("b") == [S.SCHEDULED, S.CANCELLED]


async def test_cancelled_scheduled_process_releases_launch_and_wait() -> None:
    release = asyncio.Event()

    async def hold(ctx: ProcessContext) -> None:
        await release.wait()

    async with started_engine(task("a", hold), task("b"), max_concurrency=1) as engine:
        log = StateLog(engine)
        await engine.launch("a")
        await log.wait_for("a", S.RUNNING)
        waiter = asyncio.create_task(engine.launch_and_wait("b"))
        await log.wait_for("b", S.SCHEDULED)
        await engine.cancel("b")
        await asyncio.wait_for(waiter, 2)
        release.set()


async def test_cooperative_cancel_goes_through_cancel_requested_and_cancelling() -> None:
    started = asyncio.Event()

    async def polite(ctx: ProcessContext) -> None:
        started.set()
        while ctx.should_continue():  # noqa: ASYNC110 - the cooperative loop under test
            await asyncio.sleep(0)

    async with started_engine(task("p", polite), cancel_grace=5.0) as engine:
        log = StateLog(engine)
        await engine.launch("p")
        await asyncio.wait_for(started.wait(), 2)
        await engine.cancel("p")
        await log.wait_for("p", S.CANCELLED)
        assert log.states("p") == [
            S.SCHEDULED,
            S.RUNNING,
            S.CANCEL_REQUESTED,
            S.CANCELLING,
            S.CANCELLED,
        ]
        [run] = await engine.store.query_history(process_id="p")
        assert run.status is OperationStatus.CANCELLED


async def test_a_task_that_never_checks_the_flag_is_forced_after_the_grace_period() -> None:
    started = asyncio.Event()

    async def deaf(ctx: ProcessContext) -> None:
        started.set()
        await asyncio.Event().wait()

    async with started_engine(task("p", deaf), cancel_grace=0.05) as engine:
        log = StateLog(engine)
        await engine.launch("p")
        await asyncio.wait_for(started.wait(), 2)
        await engine.cancel("p")
        await log.wait_for("p", S.CANCELLED, timeout=2)


async def test_a_run_that_swallows_the_forced_cancel_is_recorded_failed_as_abandoned() -> None:
    started = asyncio.Event()
    release = asyncio.Event()
    swallowed = asyncio.Event()

    async def stubborn(ctx: ProcessContext) -> None:
        started.set()
        while not release.is_set():
            try:
                await release.wait()
            except asyncio.CancelledError:
                swallowed.set()

    async with started_engine(task("p", stubborn), cancel_grace=0.02, abandon_after=0.05) as engine:
        log = StateLog(engine)
        await engine.launch("p")
        await asyncio.wait_for(started.wait(), 2)
        await engine.cancel("p")
        await log.wait_for("p", S.FAILED, timeout=3)
        assert swallowed.is_set()
        record = await engine.get_process("p")
        assert record is not None and record.error is not None
        assert record.error.startswith("abandoned")
        [live] = engine.registry.get_operations_by_name("p")
        assert live.metadata["abandoned"] is True
        [run] = await engine.store.query_history(process_id="p")
        assert run.status is OperationStatus.FAILED
        release.set()
        await wait_gone(engine, "p")
        record = await engine.get_process("p")
        assert record is not None and record.state is S.FAILED  # the late end changes nothing


async def wait_gone(engine: object, name: str) -> None:
    registry = getattr(engine, "registry")  # noqa: B009
    async with asyncio.timeout(2):
        while registry.get_operations_by_name(name):  # noqa: ASYNC110
            await asyncio.sleep(0)


async def test_cancel_refusals_are_typed() -> None:
    async with started_engine(task("locked", cancellable=False), task("idle")) as engine:
        with pytest.raises(NotCancellable) as locked:
            await engine.cancel("locked")
        assert locked.value.reason == "not-cancellable"
        with pytest.raises(NotCancellable):
            await engine.cancel("idle")
        with pytest.raises(ProcessNotFound):
            await engine.cancel("missing")


async def test_cancel_group_cancels_matching_cancellable_processes_only() -> None:
    async def forever(ctx: ProcessContext) -> None:
        await ctx.wait_cancelled()

    tasks = [
        task("a1", forever, metadata={"customer": "1"}),
        task("a2", forever, metadata={"customer": "1"}),
        task("b1", forever, metadata={"customer": "2"}),
    ]
    async with started_engine(*tasks) as engine:
        log = StateLog(engine)
        for t in tasks:
            await engine.launch(t.process_id)
        for t in tasks:
            await log.wait_for(t.process_id, S.RUNNING)
        cancelled = await engine.cancel_group_and_wait({"customer": "1"})
        assert sorted(cancelled) == ["a1", "a2"]
        states = {r.process_id: r.state for r in await engine.list_processes()}
        assert states == {"a1": S.CANCELLED, "a2": S.CANCELLED, "b1": S.RUNNING}


async def test_a_cancelled_process_can_be_relaunched() -> None:
    async def forever(ctx: ProcessContext) -> None:
        await ctx.wait_cancelled()

    async with started_engine(task("p", forever)) as engine:
        log = StateLog(engine)
        await engine.launch("p")
        await log.wait_for("p", S.RUNNING)
        await engine.cancel("p")
        await log.wait_for("p", S.CANCELLED)
        await engine.launch("p")
        await log.wait_for("p", S.RUNNING, count=2)
        record = await engine.get_process("p")
        assert record is not None and record.run_number == 2


class _ReplyLostStore(MemoryStore):
    """Commits a transition into ``scheduled``, then never answers (until released)."""

    # Later calls overtake the held one, so this store does not run calls in order.
    executes_in_order = False

    def __init__(self) -> None:
        super().__init__()
        self.hold = False
        self.committed = asyncio.Event()

    async def transition(self, *args: Any, **kwargs: Any) -> ProcessRecord:
        record = await super().transition(*args, **kwargs)
        if self.hold and record.state is S.SCHEDULED:
            self.committed.set()
            await asyncio.Event().wait()
        return record


async def test_a_launch_cancelled_after_its_write_never_leaves_a_stuck_scheduled_record() -> None:
    store = _ReplyLostStore()
    async with started_engine(task("p"), store=store) as engine:
        store.hold = True
        launching = asyncio.create_task(engine.launch("p"))
        await asyncio.wait_for(store.committed.wait(), 2)
        store.hold = False
        launching.cancel()
        await asyncio.wait({launching})
        record = await engine.get_process("p")
        assert record is not None and record.state is S.CANCELLED
        await engine.launch_and_wait("p")  # and it can be launched again


async def test_a_launch_cancelled_after_its_write_on_an_in_order_store_still_ends() -> None:
    """On a store that runs calls in order the start is already queued behind the launch:
    the committed launch runs to its end, and nothing is left scheduled."""
    store = _ReplyLostStore()
    store.executes_in_order = True  # type: ignore[misc]
    async with started_engine(task("p"), store=store) as engine:
        store.hold = True
        launching = asyncio.create_task(engine.launch("p"))
        await asyncio.wait_for(store.committed.wait(), 2)
        store.hold = False
        launching.cancel()
        await asyncio.wait({launching})
        done = asyncio.Event()
        engine.on_change.append(lambda r: done.set() if r.state in END_STATES else None)
        record = await engine.get_process("p")
        if record is not None and record.state not in END_STATES:
            await asyncio.wait_for(done.wait(), 5)
        record = await engine.get_process("p")
        assert record is not None and record.state in {S.DONE, S.CANCELLED}


async def test_a_cancel_recorded_elsewhere_stops_the_local_run_before_the_record_is_read() -> None:
    """``cancel_local`` (what a worker calls on a cancel notification) starts the ladder
    first: the run is cancelled when the engine reads the record to acknowledge the
    request, and the request is acknowledged (``cancelling``, then ``cancelled``)."""
    contexts: list[ProcessContext] = []
    started = asyncio.Event()

    async def waits(ctx: ProcessContext) -> None:
        contexts.append(ctx)
        started.set()
        await ctx.wait_cancelled()

    class Watching(MemoryStore):
        """Notes, at each read, whether the run still goes on."""

        goes_on_at_read: list[bool] = []

        async def get(self, process_id: str) -> ProcessRecord | None:
            if contexts:
                self.goes_on_at_read.append(contexts[0].should_continue())
            return await super().get(process_id)

    store = Watching()
    async with started_engine(task("p", waits), store=store, cancel_grace=5.0) as engine:
        log = StateLog(engine)
        await engine.launch("p")
        await asyncio.wait_for(started.wait(), 2)
        await store.transition("p", {S.RUNNING}, S.CANCEL_REQUESTED)  # recorded elsewhere
        store.goes_on_at_read.clear()
        assert await engine.cancel_local("p")
        await log.wait_for("p", S.CANCELLED)
        assert S.CANCELLING in log.states("p")
    assert store.goes_on_at_read[:1] == [False]
