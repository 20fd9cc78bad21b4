"""Start-up reconciliation, shutdown (every record terminal), run() and signals, the facade."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

import taskwarden.engine as tw
from taskwarden.engine import Engine, EngineState, ProcessContext
from taskwarden.errors import ConfigurationError, LaunchBlocked
from taskwarden.model import OperationStatus
from taskwarden.processes import END_STATES, ProcessRecord, ProcessState
from taskwarden.registry import OperationRegistry
from taskwarden.stores.memory import MemoryStore
from tests.engine_support import StateLog, definitions, started_engine, task

S = ProcessState


async def _left_behind(
    store: MemoryStore, process_id: str, state: ProcessState, **fields: Any
) -> None:
    """Write a record the way a crashed engine would have left it."""
    await store.create(ProcessRecord(process_id=process_id, name=process_id))
    path = {
        S.SCHEDULED: [S.SCHEDULED],
        S.RUNNING: [S.SCHEDULED, S.RUNNING],
        S.CANCELLING: [S.SCHEDULED, S.RUNNING, S.CANCEL_REQUESTED, S.CANCELLING],
    }[state]
    current = S.IDLE
    for step in path:
        extra: dict[str, Any] = fields if step is state else {}
        if step is S.RUNNING:
            extra = {"running_since": datetime(2026, 1, 1, tzinfo=UTC), **extra}
        await store.transition(process_id, {current}, step, **extra)
        current = step


async def test_startup_resolves_what_a_crashed_engine_left_active() -> None:
    store = MemoryStore()
    await store.open()
    past = datetime.now(UTC) - timedelta(minutes=5)
    future = datetime.now(UTC) + timedelta(hours=1)
    await _left_behind(store, "mine-running", S.RUNNING, lease_owner="me")
    await _left_behind(store, "mine-cancelling", S.CANCELLING, lease_owner="me")
    await _left_behind(store, "ownerless", S.SCHEDULED)
    await _left_behind(store, "expired", S.RUNNING, lease_owner="other", lease_expires_at=past)
    await _left_behind(store, "alive", S.RUNNING, lease_owner="other", lease_expires_at=future)
    ran: list[str] = []

    async def resume(ctx: ProcessContext) -> None:
        ran.append(ctx.process_id)

    await _left_behind(store, "resumable", S.RUNNING, lease_owner="me")
    tasks = [
        task(pid) for pid in ("mine-running", "mine-cancelling", "ownerless", "expired", "alive")
    ] + [task("resumable", resume, resumable=True)]
    engine = Engine(
        store,
        get_task_definitions=definitions(*tasks),
        engine_id="me",
        registry=OperationRegistry(),
    )
    log = StateLog(engine)
    await engine.init()
    await log.wait_for("resumable", S.DONE)
    for pid in ("mine-running", "mine-cancelling", "expired"):
        record = await store.get(pid)
        assert record is not None and record.state is S.FAILED, pid
        assert record.error is not None and "engine" in record.error and "stopped" in record.error
    alive = await store.get("alive")
    assert alive is not None and alive.state is S.RUNNING  # another engine still holds it
    # Scheduled without an owner: launched from another process, queued for a worker.
    ownerless = await store.get("ownerless")
    assert ownerless is not None and ownerless.state is S.SCHEDULED
    assert ran == ["resumable"]
    [failed_run] = await store.query_history(process_id="mine-running")
    assert failed_run.status is OperationStatus.FAILED
    await engine.shutdown()


async def test_shutdown_leaves_every_record_terminal() -> None:
    started = asyncio.Event()

    async def polite(ctx: ProcessContext) -> None:
        await ctx.wait_cancelled()

    async def deaf(ctx: ProcessContext) -> None:
        started.set()
        await asyncio.Event().wait()

    release = asyncio.Event()

    async def stubborn(ctx: ProcessContext) -> None:
        while not release.is_set():
            try:
                await release.wait()
            except asyncio.CancelledError:
                continue

    async def parent(ctx: ProcessContext) -> None:
        async with ctx.parallel_group() as group:
            await group.spawn(deaf, "parent/a", "A")
            await group.spawn(polite, "parent/b", "B")

    tasks = [
        task("polite", polite),
        task("stubborn", stubborn),
        task("parent", parent),
        task("locked", polite, cancellable=False),
        task("queued"),
    ]
    engine = Engine(
        MemoryStore(),
        get_task_definitions=definitions(*tasks),
        registry=OperationRegistry(),
        max_concurrency=4,
        cancel_grace=0.05,
    )
    await engine.init()
    log = StateLog(engine)
    try:
        for pid in ("polite", "stubborn", "parent", "locked", "queued"):
            await engine.launch(pid)
        await asyncio.wait_for(started.wait(), 2)
        await log.wait_for("parent/b", S.RUNNING)
        await engine.shutdown(timeout=1.0)
    finally:
        release.set()
    assert engine.state is EngineState.STOPPED
    records = {r.process_id: r for r in await engine.store.list()}
    assert {pid: r.state in END_STATES for pid, r in records.items()} == dict.fromkeys(
        records, True
    )
    assert records["stubborn"].state is S.FAILED and "abandoned" in (
        records["stubborn"].error or ""
    )
    assert records["queued"].state is S.CANCELLED
    assert records["polite"].state is S.CANCELLED
    with pytest.raises(LaunchBlocked):
        await engine.launch("polite")


async def test_run_blocks_until_shutdown_and_sigterm_shuts_down_gracefully() -> None:
    async with started_engine(task("p")) as engine:
        runner = asyncio.create_task(engine.run())
        await asyncio.wait_for(engine.running.wait(), 2)
        os.kill(os.getpid(), signal.SIGTERM)
        await asyncio.wait_for(runner, 5)
        assert engine.state is EngineState.STOPPED


async def test_run_returns_when_shutdown_is_called() -> None:
    async with started_engine(task("p")) as engine:
        runner = asyncio.create_task(engine.run())
        await asyncio.wait_for(engine.running.wait(), 2)
        await engine.shutdown()
        await asyncio.wait_for(runner, 2)


async def test_using_an_engine_before_init_is_a_configuration_error() -> None:
    engine = Engine(MemoryStore(), registry=OperationRegistry())
    with pytest.raises(ConfigurationError):
        await engine.launch("p")
    with pytest.raises(ConfigurationError):
        await engine.run()


async def test_the_facade_drives_a_default_engine() -> None:
    with pytest.raises(ConfigurationError):
        tw.get_engine()
    await tw.init(
        store="memory://",
        get_task_definitions=definitions(task("p")),
        registry=OperationRegistry(),
    )
    await tw.launch_and_wait("p")
    proc = await tw.get_process("p")
    assert proc is not None and proc["status"]["state"] == "done"
    assert [p.process_id for p in await tw.list_processes(state="done")] == ["p"]
    await tw.dismiss("p")
    tw.block_launches()
    with pytest.raises(LaunchBlocked):
        await tw.launch("p")
    tw.unblock_launches()
    await tw.adhoc_define(task("extra"))
    await tw.resync()
    assert await tw.cancel_group({"none": "x"}) == []
    await tw.adhoc_delete("extra")
    await tw.shutdown()
    with pytest.raises(ConfigurationError):
        tw.get_engine()


def test_importing_the_engine_loads_no_driver() -> None:
    code = (
        "import sys, taskwarden.engine; "
        "print([m for m in ('asyncpg', 'sqlite3', 'redis', 'fastapi', 'psycopg') "
        "if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


async def test_default_engine_ids_resolve_a_dead_predecessor_and_spare_live_neighbours() -> None:
    """A restarted application (same host, its old OS process gone) gets its runs resolved;
    a default-id engine still alive on this host (another worker process) keeps its own."""
    exited = await asyncio.create_subprocess_exec(sys.executable, "-c", "pass")
    await exited.wait()
    dead_pid = exited.pid
    host = socket.gethostname()
    store = MemoryStore()
    await store.open()
    await _left_behind(store, "orphan", S.RUNNING, lease_owner=f"{host}:{dead_pid}:0")
    await _left_behind(store, "neighbour", S.RUNNING, lease_owner=f"{host}:{os.getpid()}:999")
    await _left_behind(store, "remote", S.RUNNING, lease_owner="elsewhere:1:0")
    engine = Engine(
        store,
        get_task_definitions=definitions(task("orphan"), task("neighbour"), task("remote")),
        registry=OperationRegistry(),
    )
    assert engine.engine_id.startswith(f"{host}:{os.getpid()}:")
    await engine.init()
    states = {r.process_id: r.state for r in await store.list()}
    assert states == {"orphan": S.FAILED, "neighbour": S.RUNNING, "remote": S.RUNNING}
    await engine.shutdown()
