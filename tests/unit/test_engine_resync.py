"""Resync and ad-hoc processes: definitions become records; runtime state is never touched;
ad-hoc processes survive a resync unless clean; ephemeral ones vanish once terminal."""

from __future__ import annotations

import asyncio
from collections.abc import Collection
from pathlib import Path
from typing import Any

import pytest

from taskwarden.engine import Engine, ProcessContext, TaskInstance
from taskwarden.errors import InvalidDefinition, InvalidTransition, ProcessNotFound
from taskwarden.processes import ProcessRecord, ProcessState
from taskwarden.registry import OperationRegistry
from taskwarden.stores.memory import MemoryStore
from taskwarden.stores.sqlite import SQLiteStore
from tests.engine_support import StateLog, started_engine, task

S = ProcessState


async def test_resync_creates_updates_and_deletes_by_the_definitions() -> None:
    release = asyncio.Event()

    async def hold(ctx: ProcessContext) -> None:
        await release.wait()

    async with started_engine(task("keep"), task("gone"), task("busy", hold)) as engine:
        getter: Any = engine.get_task_definitions
        log = StateLog(engine)
        await engine.launch_and_wait("keep")
        await engine.launch("busy")
        await log.wait_for("busy", S.RUNNING)
        getter.current[:] = [
            task("keep", metadata={"v": 2}, description="new text"),
            task("new"),
        ]
        await engine.resync()
        keep = await engine.get_process("keep")
        assert keep is not None and keep.state is S.DONE and keep.run_number == 1
        assert keep.metadata == {"v": 2} and keep.description == "new text"
        assert await engine.get_process("gone") is None
        assert await engine.get_process("new") is not None
        busy = await engine.get_process("busy")
        assert busy is not None and busy.state is S.RUNNING  # active: not deleted
        release.set()
        await log.wait_for("busy", S.DONE)
        await engine.resync()
        assert await engine.get_process("busy") is None


async def test_resync_keeps_adhoc_processes_unless_clean() -> None:
    async with started_engine(task("defined")) as engine:
        await engine.adhoc_define(task("one-off"))
        await engine.resync()
        assert await engine.get_process("one-off") is not None
        await engine.launch_and_wait("one-off")
        await engine.resync(clean=True)
        assert await engine.get_process("one-off") is None
        defined = await engine.get_process("defined")
        assert defined is not None and defined.state is S.IDLE
        with pytest.raises(ProcessNotFound):
            await engine.launch("one-off")


async def test_resync_with_a_metadata_filter_touches_only_matching_definitions() -> None:
    calls: list[Any] = []
    tasks = [task("a", metadata={"customer": "1"}), task("b", metadata={"customer": "2"})]

    async def get_tasks(services: dict[str, Any], metadata_filter: Any) -> list[TaskInstance]:
        calls.append(metadata_filter)
        return list(tasks)

    engine = Engine(MemoryStore(), get_task_definitions=get_tasks, registry=OperationRegistry())
    await engine.init()
    tasks[:] = [tasks[1]]
    await engine.resync(metadata_filter={"customer": "2"})
    assert calls == [None, {"customer": "2"}]
    assert await engine.get_process("a") is not None  # outside the filter: untouched
    await engine.resync(metadata_filter={"customer": "1"})
    assert await engine.get_process("a") is None
    await engine.shutdown()


async def test_a_one_argument_task_generator_works_as_in_the_seed_quick_start() -> None:
    async def get_tasks(services: dict[str, Any]) -> list[TaskInstance]:
        assert services == {"db": "x"}
        return [task("p")]

    engine = Engine(
        MemoryStore(),
        services={"db": "x"},
        get_task_definitions=get_tasks,
        registry=OperationRegistry(),
    )
    await engine.init()
    await engine.launch_and_wait("p")
    await engine.shutdown()


async def test_duplicate_process_ids_are_refused() -> None:
    engine = Engine(
        MemoryStore(),
        get_task_definitions=lambda services, f=None: _async([task("p"), task("p")]),
        registry=OperationRegistry(),
    )
    with pytest.raises(InvalidDefinition, match="'p'"):
        await engine.init()


async def _async(value: list[TaskInstance]) -> list[TaskInstance]:
    return value


async def test_adhoc_define_creates_an_idle_adhoc_record_under_an_optional_parent() -> None:
    async with started_engine(task("root")) as engine:
        record = await engine.adhoc_define(task("one-off"))
        assert record.adhoc and record.state is S.IDLE and not record.ephemeral
        child = await engine.adhoc_define(task("under"), parent_id="root")
        assert (child.parent_id, child.root_id, child.depth) == ("root", "root", 1)
        with pytest.raises(InvalidDefinition):
            await engine.adhoc_define(task("one-off"))
        with pytest.raises(ProcessNotFound):
            await engine.adhoc_define(task("x"), parent_id="missing")
        await engine.launch_and_wait("one-off")
        done = await engine.get_process("one-off")
        assert done is not None and done.state is S.DONE


async def test_an_ephemeral_process_is_deleted_once_terminal() -> None:
    async with started_engine() as engine:
        await engine.adhoc_define(task("temp"), ephemeral=True)
        await engine.launch_and_wait("temp")
        assert await engine.get_process("temp") is None
        runs = await engine.store.query_history(process_id="temp")
        assert len(runs) == 1  # the history outlives the record


async def test_mark_ephemeral_deletes_the_process_after_this_run() -> None:
    async def once(ctx: ProcessContext) -> None:
        await ctx.mark_ephemeral()

    async with started_engine() as engine:
        await engine.adhoc_define(task("temp", once))
        await engine.launch_and_wait("temp")
        assert await engine.get_process("temp") is None


async def test_adhoc_delete_refuses_definitions_and_active_processes() -> None:
    release = asyncio.Event()

    async def hold(ctx: ProcessContext) -> None:
        await release.wait()

    async with started_engine(task("defined")) as engine:
        log = StateLog(engine)
        await engine.adhoc_define(task("busy", hold))
        await engine.adhoc_define(task("idle"))
        await engine.adhoc_define(task("idle/child"), parent_id="idle")
        with pytest.raises(InvalidDefinition):
            await engine.adhoc_delete("defined")
        with pytest.raises(ProcessNotFound):
            await engine.adhoc_delete("missing")
        await engine.launch("busy")
        await log.wait_for("busy", S.RUNNING)
        with pytest.raises(InvalidTransition):
            await engine.adhoc_delete("busy")
        await engine.adhoc_delete("idle")
        assert await engine.get_process("idle") is None
        assert await engine.get_process("idle/child") is None
        release.set()
        await log.wait_for("busy", S.DONE)


async def test_a_resync_reads_the_stored_records_a_thousand_at_a_time(tmp_path: Path) -> None:
    """Starting a worker with thousands of definitions reads their records in a few
    queries, not one per process (2,500 definitions: 3 reads)."""

    class Counting(SQLiteStore):
        def __init__(self, path: str) -> None:
            super().__init__(path)
            self.calls = {"get": 0, "get_many": 0}

        async def get(self, process_id: str) -> ProcessRecord | None:
            self.calls["get"] += 1
            return await super().get(process_id)

        async def get_many(self, process_ids: Collection[str]) -> dict[str, ProcessRecord]:
            self.calls["get_many"] += 1
            return await super().get_many(process_ids)

    store = Counting(str(tmp_path / "resync.db"))
    tasks = [task(f"p{i}", description="first") for i in range(2500)]
    async with started_engine(*tasks, store=store) as engine:
        getter: Any = engine.get_task_definitions
        getter.current[:] = [task(f"p{i}", description="second") for i in range(2500)]
        store.calls.update(get=0, get_many=0)
        await engine.resync()
        assert store.calls == {"get": 0, "get_many": 3}
        changed = await engine.get_process("p2499")
        assert changed is not None and changed.description == "second"
