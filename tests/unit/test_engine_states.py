"""The engine drives the seed's state machine through compare-and-set store transitions."""

from __future__ import annotations

import asyncio

import pytest

from taskwarden.engine import Engine, ProcessContext
from taskwarden.errors import InvalidTransition, LaunchBlocked, ProcessNotFound
from taskwarden.model import OperationStatus
from taskwarden.processes import ProcessState
from taskwarden.registry import OperationRegistry
from taskwarden.stores.memory import MemoryStore
from tests.engine_support import StateLog, definitions, started_engine, task

S = ProcessState


async def test_launch_and_wait_runs_to_done_through_scheduled_and_running() -> None:
    async with started_engine(task("p")) as engine:
        log = StateLog(engine)
        await engine.launch_and_wait("p")
        record = await engine.get_process("p")
        assert record is not None
        assert log.states("p") == [S.SCHEDULED, S.RUNNING, S.DONE]
        assert record.state is S.DONE
        assert record.run_number == 1
        assert record.running_since is not None and record.done_at is not None
        assert record.duration is not None and record.duration >= 0
        assert record["status"]["state"] == "done"


async def test_a_raising_task_ends_failed_with_its_error_and_traceback_in_history() -> None:
    async def boom(ctx: ProcessContext) -> None:
        raise ValueError("bad input")

    async with started_engine(task("p", boom)) as engine:
        await engine.launch_and_wait("p")
        record = await engine.get_process("p")
        assert record is not None and record.state is S.FAILED
        assert record.error == "ValueError: bad input"
        assert record.failed_at is not None
        [run] = await engine.store.query_history(process_id="p")
        assert run.status is OperationStatus.FAILED
        assert run.traceback is not None and "bad input" in run.traceback
        assert run.run_number == 1


async def test_relaunch_from_an_end_state_resets_the_run_fields_and_counts_runs() -> None:
    async def talk(ctx: ProcessContext) -> None:
        ctx.report_progress(50, "half")

    async with started_engine(task("p", talk)) as engine:
        await engine.launch_and_wait("p")
        await engine.launch_and_wait("p")
        record = await engine.get_process("p")
        assert record is not None
        assert record.run_number == 2
        assert [entry.message for entry in record.log] == ["half"]
        runs = await engine.store.query_history(process_id="p")
        assert [run.run_number for run in runs] == [2, 1]


async def test_launch_refusals_are_typed() -> None:
    release = asyncio.Event()

    async def wait(ctx: ProcessContext) -> None:
        await release.wait()

    async with started_engine(task("p", wait)) as engine:
        log = StateLog(engine)
        with pytest.raises(ProcessNotFound) as not_found:
            await engine.launch("nope")
        assert not_found.value.reason == "not-found"
        await engine.launch("p")
        await log.wait_for("p", S.RUNNING)
        with pytest.raises(InvalidTransition) as busy:
            await engine.launch("p")
        assert busy.value.reason == "invalid-state"
        release.set()
        await log.wait_for("p", S.DONE)
        engine.block_launches()
        with pytest.raises(LaunchBlocked) as blocked:
            await engine.launch("p")
        assert blocked.value.reason == "launch-blocked"
        engine.unblock_launches()
        await engine.launch_and_wait("p")


async def test_dismiss_resets_to_idle_clears_run_fields_and_deletes_descendants() -> None:
    async def parent(ctx: ProcessContext) -> None:
        ctx.report_progress(10, "working")
        await ctx.run_child(lambda c: asyncio.sleep(0), "p/child", "child")

    async with started_engine(task("p", parent)) as engine:
        await engine.launch_and_wait("p")
        assert await engine.get_process("p/child") is not None
        await engine.dismiss("p")
        record = await engine.get_process("p")
        assert record is not None and record.state is S.IDLE
        assert record.done_at is None and record.running_since is None
        assert record.progress_percent is None and record.log == ()
        assert await engine.get_process("p/child") is None
        with pytest.raises(InvalidTransition):
            await engine.dismiss("p")
        with pytest.raises(ProcessNotFound):
            await engine.dismiss("missing")


async def test_get_process_document_has_the_seed_schema() -> None:
    async with started_engine(task("p", metadata={"customer": "2"})) as engine:
        await engine.launch_and_wait("p")
        record = await engine.get_process("p")
        assert record is not None
        doc = record.to_document()
        for key in (
            "processId", "name", "description", "params", "metadata", "parentId", "rootId",
            "depth", "order", "cancellable", "adhoc", "ephemeral", "special", "warning",
            "status", "progress", "log", "createdAt",
        ):  # fmt: skip
            assert key in doc
        assert set(doc["status"]) >= {
            "state", "error", "runningSince", "doneAt", "duration", "failedAt", "stoppedAt"
        }  # fmt: skip
        assert record["metadata"] == {"customer": "2"}
        assert await engine.get_process("missing") is None


async def test_list_processes_filters_by_state_metadata_root_and_pages() -> None:
    tasks = [task(f"p{i}", metadata={"group": "a" if i % 2 else "b"}) for i in range(6)]
    async with started_engine(*tasks) as engine:
        await engine.launch_and_wait("p1")
        assert [r.process_id for r in await engine.list_processes(state="done")] == ["p1"]
        assert [r.process_id for r in await engine.list_processes(metadata={"group": "a"})] == [
            "p1",
            "p3",
            "p5",
        ]
        assert [r.process_id for r in await engine.list_processes(root_id="p2")] == ["p2"]
        first = await engine.list_processes(limit=4)
        rest = await engine.list_processes(limit=4, cursor=first[-1].cursor)
        assert [r.process_id for r in first + rest] == [f"p{i}" for i in range(6)]


async def test_max_concurrency_keeps_extra_launches_scheduled() -> None:
    running = 0
    peak = 0
    release = asyncio.Event()

    async def work(ctx: ProcessContext) -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await release.wait()
        running -= 1

    tasks = [task(f"p{i}", work) for i in range(5)]
    async with started_engine(*tasks, max_concurrency=2) as engine:
        log = StateLog(engine)
        for i in range(5):
            await engine.launch(f"p{i}")
        await log.wait_for("p1", S.RUNNING)
        for _ in range(20):
            await asyncio.sleep(0)
        states = [r.state for r in await engine.list_processes()]
        assert states.count(S.RUNNING) == 2 and states.count(S.SCHEDULED) == 3
        release.set()
        for i in range(5):
            await log.wait_for(f"p{i}", S.DONE)
        assert peak == 2


async def test_on_change_callbacks_run_after_each_committed_change_and_errors_are_contained(
    caplog: pytest.LogCaptureFixture,
) -> None:
    seen: list[ProcessState] = []

    def broken(record: object) -> None:
        raise RuntimeError("subscriber bug")

    async def async_seen(record: object) -> None:
        seen.append(getattr(record, "state"))  # noqa: B009

    async with started_engine(task("p")) as engine:
        engine.on_change.extend([broken, async_seen])
        await engine.launch_and_wait("p")
        for _ in range(5):
            await asyncio.sleep(0)
    assert seen == [S.SCHEDULED, S.RUNNING, S.DONE]
    assert "subscriber bug" in caplog.text


@pytest.mark.parametrize("trial", range(30))
async def test_two_engines_on_one_store_never_both_run_a_process(trial: int) -> None:
    """The launch race: both engines launch at once; exactly one run happens."""
    store = MemoryStore()
    runs: list[str] = []

    async def count(ctx: ProcessContext) -> None:
        runs.append(ctx.process_id)
        await asyncio.sleep(0)

    engines = [
        Engine(
            store,
            get_task_definitions=definitions(task("p", count)),
            engine_id=f"engine-{i}",
            registry=OperationRegistry(),
        )
        for i in range(2)
    ]
    for engine in engines:
        await engine.init()
    outcomes = await asyncio.gather(
        *(engine.launch_and_wait("p") for engine in engines), return_exceptions=True
    )
    assert sum(1 for o in outcomes if o is None) == 1
    assert sum(1 for o in outcomes if isinstance(o, InvalidTransition)) == 1
    assert runs == ["p"]
    record = await store.get("p")
    assert record is not None and record.state is S.DONE and record.run_number == 1
    for engine in engines:
        await engine.shutdown()
