"""Child processes: the record tree, survive flags, bounded parallelism, cancel reach,
and the progress helpers."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

import pytest

from taskwarden.engine import (
    ChildProgressInfo,
    ProcessContext,
    average_progress,
    mapped_progress,
    sequential_progress,
)
from taskwarden.errors import (
    ChildProcessCancelled,
    ChildProcessFailed,
    ConfigurationError,
    InvalidDefinition,
)
from taskwarden.processes import ProcessState
from tests.engine_support import StateLog, started_engine, task

S = ProcessState


async def ok(ctx: ProcessContext) -> None:
    ctx.report_progress(100, "ok")


async def fail(ctx: ProcessContext) -> None:
    raise RuntimeError("child broke")


async def test_run_child_builds_the_tree_and_returns_the_child_state() -> None:
    states: list[str] = []

    async def grandchild(ctx: ProcessContext) -> None:
        assert ctx.params == {"x": 1}

    async def child(ctx: ProcessContext) -> None:
        states.append(await ctx.run_child(grandchild, f"{ctx.process_id}/g", "G", params={"x": 1}))

    async def parent(ctx: ProcessContext) -> None:
        states.append(await ctx.run_child(child, "p/a", "A", description="first"))
        states.append(await ctx.run_child(ok, "p/b", "B"))

    async with started_engine(task("p", parent)) as engine:
        await engine.launch_and_wait("p")
        records = {r.process_id: r for r in await engine.list_processes(root_id="p")}
        assert states == ["done", "done", "done"]
        assert {pid: (r.parent_id, r.depth, r.order) for pid, r in records.items()} == {
            "p": (None, 0, 0),
            "p/a": ("p", 1, 0),
            "p/b": ("p", 1, 1),
            "p/a/g": ("p/a", 2, 0),
        }
        assert all(r.root_id == "p" and r.state is S.DONE for r in records.values())
        assert records["p/a"].description == "first"


async def test_a_failed_child_raises_a_typed_runtime_error_unless_survived() -> None:
    caught: list[BaseException] = []
    survived: list[str] = []

    async def strict(ctx: ProcessContext) -> None:
        try:
            await ctx.run_child(fail, "strict/c", "C")
        except ChildProcessFailed as exc:
            caught.append(exc)
            raise

    async def lenient(ctx: ProcessContext) -> None:
        survived.append(await ctx.run_child(fail, "lenient/c", "C", survive_failure=True))

    async with started_engine(task("strict", strict), task("lenient", lenient)) as engine:
        await engine.launch_and_wait("strict")
        await engine.launch_and_wait("lenient")
        [exc] = caught
        assert isinstance(exc, RuntimeError) and isinstance(exc, ChildProcessFailed)
        assert exc.reason == "child-failed"
        strict_rec = await engine.get_process("strict")
        child_rec = await engine.get_process("strict/c")
        assert strict_rec is not None and strict_rec.state is S.FAILED
        assert child_rec is not None and child_rec.error == "RuntimeError: child broke"
        assert survived == ["failed"]
        lenient_rec = await engine.get_process("lenient")
        assert lenient_rec is not None and lenient_rec.state is S.DONE


async def test_a_cancelled_child_raises_child_cancelled_unless_survive_cancel() -> None:
    outcomes: list[object] = []

    async def waits(ctx: ProcessContext) -> None:
        await ctx.wait_cancelled()

    async def parent(ctx: ProcessContext) -> None:
        try:
            outcomes.append(await ctx.run_child(waits, "p/c1", "C1", survive_cancel=True))
            await ctx.run_child(waits, "p/c2", "C2")
        except ChildProcessCancelled as exc:
            outcomes.append(exc.reason)

    async with started_engine(task("p", parent)) as engine:
        log = StateLog(engine)
        await engine.launch("p")
        await log.wait_for("p/c1", S.RUNNING)
        await engine.cancel("p/c1")
        await log.wait_for("p/c2", S.RUNNING)
        await engine.cancel("p/c2")
        await log.wait_for("p", S.DONE)
        assert outcomes == ["cancelled", "child-cancelled"]


async def test_parallel_group_never_exceeds_max_concurrency_and_keeps_spawn_order() -> None:
    running = 0
    peak = 0

    async def item(ctx: ProcessContext) -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        for _ in range(3):
            await asyncio.sleep(0)
        running -= 1
        if ctx.params["i"] == 4:
            raise ValueError("item 4 is bad")

    results: list[tuple[str, str]] = []

    async def parent(ctx: ProcessContext) -> None:
        async with ctx.parallel_group(max_concurrency=3, survive_failure=True) as group:
            for i in range(12):
                await group.spawn(item, f"p/item-{i}", f"Item {i}", params={"i": i})
        results.extend((r.process_id, r.state) for r in group.results)

    async with started_engine(task("p", parent)) as engine:
        await engine.launch_and_wait("p")
        assert peak == 3
        assert [pid for pid, _ in results] == [f"p/item-{i}" for i in range(12)]
        assert [state for _, state in results].count("failed") == 1
        assert dict(results)["p/item-4"] == "failed"
        record = await engine.get_process("p")
        assert record is not None and record.state is S.DONE


async def test_parallel_group_raises_on_exit_when_a_child_failed() -> None:
    raised: list[BaseException] = []

    async def parent(ctx: ProcessContext) -> None:
        try:
            async with ctx.parallel_group() as group:
                await group.spawn(ok, "p/a", "A")
                await group.spawn(fail, "p/b", "B")
        except RuntimeError as exc:
            raised.append(exc)
            raise
        finally:
            assert [r.state for r in group.results] == ["done", "failed"]

    async with started_engine(task("p", parent)) as engine:
        await engine.launch_and_wait("p")
        [exc] = raised
        assert isinstance(exc, ChildProcessFailed)
        record = await engine.get_process("p")
        assert record is not None and record.state is S.FAILED


async def test_parallel_group_rejects_bad_limits_and_spawn_outside_the_block() -> None:
    errors: list[str] = []

    async def parent(ctx: ProcessContext) -> None:
        with pytest.raises(ConfigurationError):
            ctx.parallel_group(max_concurrency=0)
        group = ctx.parallel_group()
        with pytest.raises(ConfigurationError):
            await group.spawn(ok, "p/x", "X")
        errors.append("checked")

    async with started_engine(task("p", parent)) as engine:
        await engine.launch_and_wait("p")
        assert errors == ["checked"]


async def test_cancelling_a_parent_reaches_every_descendant() -> None:
    ready = asyncio.Event()
    started = 0

    async def leaf(ctx: ProcessContext) -> None:
        nonlocal started
        started += 1
        if started == 3:
            ready.set()
        await ctx.wait_cancelled()

    async def middle(ctx: ProcessContext) -> None:
        async with ctx.parallel_group(survive_cancel=False) as group:
            await group.spawn(leaf, f"{ctx.process_id}/l1", "L1")
            await group.spawn(leaf, f"{ctx.process_id}/l2", "L2")

    async def root(ctx: ProcessContext) -> None:
        async with ctx.parallel_group() as group:
            await group.spawn(middle, "r/m", "M")
            await group.spawn(leaf, "r/l", "L")

    async with started_engine(task("r", root), cancel_grace=5.0) as engine:
        log = StateLog(engine)
        await engine.launch("r")
        await asyncio.wait_for(ready.wait(), 2)
        await engine.cancel("r")
        await log.wait_for("r", [S.CANCELLED, S.FAILED])
        states = {r.process_id: r.state for r in await engine.list_processes(root_id="r")}
        assert states == {
            "r": S.CANCELLED,
            "r/m": S.CANCELLED,
            "r/l": S.CANCELLED,
            "r/m/l1": S.CANCELLED,
            "r/m/l2": S.CANCELLED,
        }


async def test_relaunching_a_parent_replaces_the_children_of_the_previous_run() -> None:
    async def parent(ctx: ProcessContext) -> None:
        await ctx.run_child(ok, "p/c", "C")

    async with started_engine(task("p", parent)) as engine:
        await engine.launch_and_wait("p")
        await engine.launch_and_wait("p")
        child = await engine.get_process("p/c")
        assert child is not None and child.state is S.DONE and child.run_number == 1


async def test_a_finished_child_started_again_meanwhile_is_not_deleted() -> None:
    """The previous run's child is deleted only while it is still finished: one that
    another run started between the read and the delete stays, and the child call fails."""
    caught: list[BaseException] = []
    seen: dict[str, Any] = {}

    async def parent(ctx: ProcessContext) -> None:
        if "finished" in seen:  # the second run: another run starts p/c as we read it
            record = dataclasses.replace(seen["finished"], state=S.SCHEDULED)
            await seen["store"].create(record)
        try:
            await ctx.run_child(ok, "p/c", "C")
        except InvalidDefinition as exc:
            caught.append(exc)

    async with started_engine(task("p", parent)) as engine:
        await engine.launch_and_wait("p")
        store = seen["store"] = engine.store
        seen["finished"] = await store.get("p/c")
        assert seen["finished"] is not None and seen["finished"].state is S.DONE
        real_get = store.get

        async def stale(process_id: str) -> Any:
            if process_id == "p/c":
                return seen["finished"]  # what this engine read just before the other start
            return await real_get(process_id)

        store.get = stale  # type: ignore[method-assign]
        await engine.launch_and_wait("p")
        store.get = real_get  # type: ignore[method-assign]
        assert len(caught) == 1 and "started by another run" in str(caught[0])
        child = await store.get("p/c")
        assert child is not None and child.state is S.SCHEDULED  # kept, not deleted


async def test_on_child_progress_receives_infos_and_sequential_progress_fills_slots() -> None:
    seen: list[list[tuple[str, str, float | None]]] = []

    async def half(ctx: ProcessContext) -> None:
        ctx.report_progress(50)

    async def parent(ctx: ProcessContext) -> None:
        helper = sequential_progress(ctx, 2)

        def both(infos: list[ChildProgressInfo]) -> None:
            seen.append([(i.process_id, i.state, i.percent) for i in infos])
            helper(infos)

        await ctx.run_child(half, "p/1", "one", on_child_progress=both)
        assert ctx._progress.percent == 50.0
        await ctx.run_child(half, "p/2", "two", on_child_progress=both)
        assert ctx._progress.percent == 100.0

    async with started_engine(task("p", parent)) as engine:
        await engine.launch_and_wait("p")
        record = await engine.get_process("p")
        assert record is not None and record.state is S.DONE
        assert ("p/1", "running", 50) in seen[2]
        assert seen[-1] == [("p/2", "done", 50)]


class _Recorder:
    def __init__(self) -> None:
        self.values: list[float | None] = []

    def report_progress(self, percent: float | None, message: str | None = None) -> None:
        self.values.append(percent)


def _info(pid: str, state: str, percent: float | None) -> ChildProgressInfo:
    return ChildProgressInfo(process_id=pid, name=pid, state=state, percent=percent)


def test_average_progress_counts_terminal_children_as_complete() -> None:
    ctx = _Recorder()
    callback = average_progress(ctx)  # type: ignore[arg-type]
    callback([_info("a", "running", 50), _info("b", "failed", 10), _info("c", "running", None)])
    assert ctx.values == [50.0]


def test_mapped_progress_maps_a_child_into_a_sub_range() -> None:
    ctx = _Recorder()
    callback = mapped_progress(ctx, 0.25, 0.75)  # type: ignore[arg-type]
    callback([_info("a", "running", 50)])
    callback([_info("a", "done", 50)])
    assert ctx.values == [50.0, 75.0]
    with pytest.raises(ConfigurationError):
        mapped_progress(ctx, 0.8, 0.2)  # type: ignore[arg-type]


def test_sequential_progress_gives_each_child_an_equal_slot() -> None:
    ctx = _Recorder()
    callback = sequential_progress(ctx, 4)  # type: ignore[arg-type]
    callback([_info("a", "running", 100)])
    callback([_info("b", "running", 50)])
    assert ctx.values == [25.0, 37.5]
    with pytest.raises(ConfigurationError):
        sequential_progress(ctx, 0)  # type: ignore[arg-type]


async def test_a_parent_with_a_cancel_request_ends_cancelled_when_its_child_stops_first() -> None:
    """Cancels of a child and of its parent may reach the engine in either order (a
    worker handles the requests it finds at a renewal in no set order). When the child's
    stop reaches the parent before the parent's own request does, the parent's end finds
    ``cancel_requested`` on its record: it is cancelled, not failed."""

    async def waits(ctx: ProcessContext) -> None:
        await ctx.wait_cancelled()

    async def parent(ctx: ProcessContext) -> None:
        await ctx.run_child(waits, "p/c", "C")

    async with started_engine(task("p", parent)) as engine:
        log = StateLog(engine)
        await engine.launch("p")
        await log.wait_for("p/c", S.RUNNING)
        # The parent's request is on record; its notification has not arrived yet.
        await engine.store.transition("p", {S.RUNNING}, S.CANCEL_REQUESTED)
        await engine.cancel("p/c")
        await log.wait_for("p", (S.CANCELLED, S.FAILED))
        record = await engine.get_process("p")
        assert record is not None
        assert record.state is S.CANCELLED, record.error
