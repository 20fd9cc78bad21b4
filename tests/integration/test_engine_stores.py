"""The engine on the persistent stores: SQLite (one file) and PostgreSQL (a fresh database).

Each engine opens its own store instance on the same URL, as separate OS processes would.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest

from taskwarden.engine import Engine, ProcessContext, TaskInstance
from taskwarden.model import OperationStatus
from taskwarden.processes import END_STATES, ProcessRecord, ProcessState
from taskwarden.registry import OperationRegistry
from taskwarden.stores import open_store
from tests.engine_support import StateLog, definitions, task
from tests.store_support import postgres_database  # noqa: F401 (a fixture, found by name)

S = ProcessState

BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


@pytest.fixture(params=BACKENDS)
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, str]:
    """``(url, prefix)``: a SQLite file, or the module's PostgreSQL database with a fresh
    table prefix per test."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'engine.db'}", "taskwarden"
    url: str = request.getfixturevalue("postgres_database")
    return url, f"t{uuid.uuid4().hex[:8]}"


def _engine(
    store_url: tuple[str, str], *tasks: TaskInstance, engine_id: str = "e1", **options: object
) -> Engine:
    url, prefix = store_url
    return Engine(
        url,
        prefix=prefix,
        get_task_definitions=definitions(*tasks),
        engine_id=engine_id,
        registry=OperationRegistry(),
        cancel_grace=0.05,
        **options,  # type: ignore[arg-type]
    )


async def test_two_engines_on_one_database_never_both_run_a_process(
    store_url: tuple[str, str],
) -> None:
    """The launch race over many trials: exactly one run each time."""
    runs: list[str] = []
    gate = asyncio.Event()

    async def count(ctx: ProcessContext) -> None:
        runs.append(ctx.process_id)
        await gate.wait()  # the run outlasts both launch attempts

    ids = [f"race-{i}" for i in range(25)]
    tasks = [task(pid, count) for pid in ids]
    engines = [_engine(store_url, *tasks, engine_id=f"e{i}") for i in range(2)]
    for engine in engines:
        await engine.init()
    try:
        logs = [StateLog(engine) for engine in engines]
        for pid in ids:
            gate.clear()
            outcomes = await asyncio.gather(
                *(engine.launch(pid) for engine in engines), return_exceptions=True
            )
            assert sorted(type(o).__name__ for o in outcomes) == ["InvalidTransition", "NoneType"]
            winner = outcomes.index(None)
            await logs[winner].wait_for(pid, S.RUNNING)
            gate.set()
            await logs[winner].wait_for(pid, S.DONE)
        assert sorted(runs) == sorted(ids)
        for pid in ids:
            record = await engines[0].get_process(pid)
            assert record is not None and record.state is S.DONE and record.run_number == 1
    finally:
        for engine in engines:
            await engine.shutdown()


async def test_children_progress_and_cancel_on_the_store(store_url: tuple[str, str]) -> None:
    async def item(ctx: ProcessContext) -> None:
        for i in range(100):
            ctx.report_progress(i, f"step {i}")
        ctx.log("warning", "item warning", {"i": ctx.params["i"]})

    async def parent(ctx: ProcessContext) -> None:
        async with ctx.parallel_group(max_concurrency=2) as group:
            for i in range(4):
                await group.spawn(item, f"parent/{i}", f"Item {i}", params={"i": i})
        await ctx.run_child(item, "parent/last", "Last", params={"i": 9})
        ctx.report_progress(100, "all done")

    async def forever(ctx: ProcessContext) -> None:
        await ctx.wait_cancelled()

    engine = _engine(store_url, task("parent", parent), task("forever", forever))
    await engine.init()
    try:
        log = StateLog(engine)
        await engine.launch_and_wait("parent")
        tree = await engine.list_processes(root_id="parent")
        assert [r.process_id for r in tree] == [
            "parent",
            "parent/0",
            "parent/1",
            "parent/2",
            "parent/3",
            "parent/last",
        ]
        assert all(r.state is S.DONE for r in tree)
        child = tree[1]
        assert child.progress_percent == 99 and child.log[-1].message == "item warning"
        assert child.log[-1].data == {"i": 0}
        await engine.launch("forever")
        await log.wait_for("forever", S.RUNNING)
        await engine.cancel("forever")
        await log.wait_for("forever", S.CANCELLED)
        assert log.states("forever")[-3:] == [S.CANCEL_REQUESTED, S.CANCELLING, S.CANCELLED]
    finally:
        await engine.shutdown()


async def test_history_and_records_survive_reopening_the_store(store_url: tuple[str, str]) -> None:
    async def boom(ctx: ProcessContext) -> None:
        raise KeyError("missing")

    tasks = [task("p"), task("bad", boom)]
    first = _engine(store_url, *tasks)
    await first.init()
    await first.launch_and_wait("p")
    await first.launch_and_wait("p")
    await first.launch_and_wait("bad")
    await first.shutdown()

    second = _engine(store_url, *tasks)
    await second.init()
    try:
        record = await second.get_process("p")
        assert record is not None and record.state is S.DONE and record.run_number == 2
        runs = await second.query_history("p")
        assert [(r.run_number, r.status) for r in runs] == [
            (2, OperationStatus.COMPLETED),
            (1, OperationStatus.COMPLETED),
        ]
        [bad] = await second.store.query_history(process_id="bad")
        assert bad.status is OperationStatus.FAILED and bad.error == "KeyError: 'missing'"
        assert bad.traceback is not None and "boom" in bad.traceback
    finally:
        await second.shutdown()


async def test_a_restarted_engine_resolves_what_it_left_running(store_url: tuple[str, str]) -> None:
    url, prefix = store_url
    store = open_store(url, prefix=prefix)
    async with store:
        await store.create(ProcessRecord(process_id="crashed", name="crashed"))
        await store.transition("crashed", {S.IDLE}, S.SCHEDULED, lease_owner="e1")
        await store.transition("crashed", {S.SCHEDULED}, S.RUNNING, running_since=datetime.now(UTC))
    engine = _engine(store_url, task("crashed"))
    await engine.init()
    try:
        record = await engine.get_process("crashed")
        assert record is not None and record.state is S.FAILED
        assert record.error is not None and "stopped" in record.error
        [run] = await engine.store.query_history(process_id="crashed")
        assert run.status is OperationStatus.FAILED
        await engine.launch_and_wait("crashed")  # and it can run again
    finally:
        await engine.shutdown()


async def test_shutdown_leaves_every_record_terminal_on_the_store(
    store_url: tuple[str, str],
) -> None:
    async def forever(ctx: ProcessContext) -> None:
        await asyncio.Event().wait()

    tasks = [task(f"p{i}", forever) for i in range(5)]
    engine = _engine(store_url, *tasks, max_concurrency=3)
    await engine.init()
    log = StateLog(engine)
    for t in tasks:
        await engine.launch(t.process_id)
    await log.wait_for("p2", S.RUNNING)
    await engine.shutdown(timeout=2)
    reopened = _engine(store_url, *tasks)
    await reopened.init()
    try:
        records = await reopened.list_processes()
        assert len(records) == 5 and all(r.state in END_STATES for r in records)
        assert {r.state for r in records} == {S.CANCELLED}
    finally:
        await reopened.shutdown()
