"""Seed 004 (optio-core): its quick start and every example of its document, run against
taskwarden on SQLite and on PostgreSQL.

The example code below is the seed's, with only the import line and the store argument
changed (``await init(store=..., get_task_definitions=get_tasks)`` instead of
``mongo_db=db``). Where an example is a fragment (a task body, a ``TaskInstance``), the
test wraps it in the smallest program that runs it and checks what the seed says happens.
"""

from __future__ import annotations

import asyncio
import sys
import textwrap
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from taskwarden import (
    TaskInstance,
    adhoc_define,
    get_engine,
    get_process,
    init,
    launch,
    launch_and_wait,
    list_processes,
    run,
    shutdown,
)
from taskwarden.clock import FakeClock
from taskwarden.processes import ProcessState
from taskwarden.progress_helpers import (
    average_progress,
    mapped_progress,
    sequential_progress,
)
from taskwarden.registry import OperationRegistry
from tests.store_support import temporary_database

BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


@pytest.fixture(params=BACKENDS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A store URL: a fresh SQLite file, or a freshly created PostgreSQL database."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'myapp.db'}"
        return
    server: str = request.getfixturevalue("postgres_server_url")
    with temporary_database(server, "tw_seed") as url:
        yield url


# -- Quick Start: the whole program, as written, in its own interpreter -----------------

QUICK_START = """
import asyncio
from taskwarden import init, launch_and_wait, get_process, TaskInstance

async def my_task(ctx):
    for i in range(10):
        if not ctx.should_continue():
            return
        ctx.report_progress(i * 10, f"Step {i + 1}/10")
        await asyncio.sleep(1)
    ctx.report_progress(100, "Done")

async def get_tasks(services):
    return [
        TaskInstance(
            execute=my_task,
            process_id="my-task",
            name="My Task",
        ),
    ]

async def main():
    await init(
        store=STORE_URL,
        get_task_definitions=get_tasks,
    )

    await launch_and_wait("my-task")
    proc = await get_process("my-task")
    print(proc["status"]["state"])  # "done"

asyncio.run(main())
"""


@pytest.mark.slow
async def test_quick_start_prints_done(store: str) -> None:
    """The quick start runs unchanged but for import and store, and prints ``done``."""
    source = textwrap.dedent(QUICK_START).replace("STORE_URL", repr(store))
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-W",
        "error",
        "-c",
        source,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, stderr.decode()
    assert stdout.decode().strip() == "done"


# -- the document's examples, in process ----------------------------------------------

items = [{"name": "alpha"}, {"name": "beta"}, {"name": "gamma"}, {"name": "delta"}]
calls: list[tuple[str, Any]] = []


async def phase_one(ctx: Any) -> None:
    calls.append(("phase-1", ctx.params))


async def phase_two(ctx: Any) -> None:
    calls.append(("phase-2", ctx.params))


async def process_item(ctx: Any) -> None:
    if ctx.params["item"]["name"] == "gamma":
        raise ValueError("gamma is broken")
    ctx.report_progress(100, f"processed {ctx.params['item']['name']}")


async def step_one(ctx: Any) -> None:
    ctx.report_progress(100)


async def nightly_cleanup(ctx: Any) -> None:
    calls.append(("nightly", None))


async def one_off_task(ctx: Any) -> None:
    calls.append(("one-off", ctx.process_id))


# Sequential Children (verbatim)
async def sequential_parent_task(ctx: Any) -> None:
    ctx.report_progress(0, "Starting phase 1")
    state = await ctx.run_child(
        execute=phase_one,
        process_id=f"{ctx.process_id}/phase-1",
        name="Phase 1",
        params={"key": "value"},
        survive_failure=False,  # Raise if child fails (default)
        survive_cancel=False,  # Raise if child is cancelled (default)
    )
    # state is "done", "failed", or "cancelled"
    calls.append(("state", state))

    ctx.report_progress(50, "Starting phase 2")
    await ctx.run_child(
        execute=phase_two,
        process_id=f"{ctx.process_id}/phase-2",
        name="Phase 2",
    )
    ctx.report_progress(100, "Complete")


# Parallel Children (verbatim)
async def parallel_parent_task(ctx: Any) -> None:
    async with ctx.parallel_group(
        max_concurrency=5,
        survive_failure=True,  # Continue even if some children fail
        survive_cancel=False,
    ) as group:
        for i, item in enumerate(items):
            await group.spawn(
                execute=process_item,
                process_id=f"{ctx.process_id}/item-{i}",
                name=f"Process {item['name']}",
                params={"item": item},
            )

    # group.results is a list of ChildResult after the group completes
    failed = [r for r in group.results if r.state != "done"]
    ctx.report_progress(100, f"Done, {len(failed)} failures")


# Progress Helpers: mapped_progress (verbatim), plus the other two helpers
async def mapped_parent_task(ctx: Any) -> None:
    # Child's progress maps to 0-25% of parent
    on_progress = mapped_progress(ctx, 0.0, 0.25)
    await ctx.run_child(
        execute=step_one, process_id="step-1", name="Step 1", on_child_progress=on_progress
    )
    calls.append(("mapped", ctx._progress.percent))
    seq = sequential_progress(ctx, 2)
    await ctx.run_child(step_one, "seq-1", "Seq 1", on_child_progress=seq)
    await ctx.run_child(step_one, "seq-2", "Seq 2", on_child_progress=seq)
    calls.append(("sequential", ctx._progress.percent))
    async with ctx.parallel_group(on_child_progress=average_progress(ctx)) as group:
        await group.spawn(step_one, "avg-1", "Avg 1")
        await group.spawn(step_one, "avg-2", "Avg 2")
    calls.append(("average", ctx._progress.percent))


async def get_tasks(services: Any) -> list[TaskInstance]:
    return [
        TaskInstance(execute=sequential_parent_task, process_id="sequential", name="Sequential"),
        TaskInstance(execute=parallel_parent_task, process_id="parallel", name="Parallel"),
        TaskInstance(execute=mapped_parent_task, process_id="mapped", name="Mapped"),
    ]


@pytest.fixture(autouse=True)
def _isolated() -> Iterator[None]:
    calls.clear()
    previous = OperationRegistry._instance
    OperationRegistry.set_instance(OperationRegistry())
    yield
    OperationRegistry.set_instance(previous)


async def test_sequential_children_example(store: str) -> None:
    await init(store=store, get_task_definitions=get_tasks)
    try:
        await launch_and_wait("sequential")
        proc = await get_process("sequential")
        assert proc is not None and proc["status"]["state"] == "done"
        assert proc["progress"] == {"percent": 100.0, "message": "Complete"}
        assert calls == [("phase-1", {"key": "value"}), ("state", "done"), ("phase-2", {})]
        tree = await list_processes(root_id="sequential")
        assert [(p["processId"], p["depth"], p["order"]) for p in tree] == [
            ("sequential", 0, 0),
            ("sequential/phase-1", 1, 0),
            ("sequential/phase-2", 1, 1),
        ]
    finally:
        await shutdown()


async def test_parallel_children_example(store: str) -> None:
    await init(store=store, get_task_definitions=get_tasks)
    try:
        await launch_and_wait("parallel")
        proc = await get_process("parallel")
        assert proc is not None and proc["status"]["state"] == "done"
        assert proc["progress"]["message"] == "Done, 1 failures"
        failed = await list_processes(state="failed", root_id="parallel")
        assert [p["processId"] for p in failed] == ["parallel/item-2"]
        assert failed[0]["status"]["error"] == "ValueError: gamma is broken"
    finally:
        await shutdown()


async def test_progress_helpers_examples(store: str) -> None:
    await init(store=store, get_task_definitions=get_tasks)
    try:
        await launch_and_wait("mapped")
        assert calls == [("mapped", 25.0), ("sequential", 100.0), ("average", 100.0)]
    finally:
        await shutdown()


async def test_adhoc_example(store: str) -> None:
    await init(store=store, get_task_definitions=get_tasks)
    try:
        # the seed's example, verbatim
        proc = await adhoc_define(
            task=TaskInstance(
                execute=one_off_task,
                process_id="one-off-123",
                name="One-off Import",
            ),
            ephemeral=True,  # Auto-delete after completion
        )

        await launch("one-off-123")

        assert proc["adhoc"] is True and proc["status"]["state"] == "idle"
        await asyncio.wait_for(get_engine().wait("one-off-123"), 10)
        assert await get_process("one-off-123") is None
        assert calls == [("one-off", "one-off-123")]
    finally:
        await shutdown()


async def test_scheduling_example_fires_the_nightly_cleanup_at_two(store: str) -> None:
    async def get_scheduled(services: Any) -> list[TaskInstance]:
        return [
            TaskInstance(
                execute=nightly_cleanup,
                process_id="nightly-cleanup",
                name="Nightly Cleanup",
                schedule="0 2 * * *",  # 2:00 AM daily
            )
        ]

    clock = FakeClock(wall_start=datetime(2026, 1, 1, 1, 0, tzinfo=UTC))
    await init(store=store, get_task_definitions=get_scheduled, clock=clock)
    finished = asyncio.Event()
    get_engine().on_change.append(
        lambda record: finished.set() if record.state is ProcessState.DONE else None
    )
    runner = asyncio.create_task(run())
    try:
        await asyncio.wait_for(clock.wait_for_sleepers(1), 5)
        clock.advance(59 * 60)
        await asyncio.wait_for(clock.wait_for_sleepers(1), 5)
        assert calls == []
        clock.advance(60)
        await asyncio.wait_for(finished.wait(), 10)
        assert calls == [("nightly", None)]
        proc = await get_process("nightly-cleanup")
        assert proc is not None and proc["lastCronTick"] == "2026-01-01T02:00:00+00:00"
    finally:
        await shutdown()
        await asyncio.wait_for(runner, 5)
