"""What ``init()`` makes is a worker of the fleet's kind: launches and cancels made by
other processes (the CLI, the API server) reach it, and it keeps a worker record."""

from __future__ import annotations

import asyncio
from pathlib import Path

import taskwarden
from taskwarden.engine import ProcessContext
from taskwarden.processes import ProcessState
from taskwarden.registry import OperationRegistry
from taskwarden.stores import open_store
from taskwarden.worker import cancel, launch
from tests.engine_support import definitions, task
from tests.fleet.test_worker import eventually, state_of

S = ProcessState


async def test_init_claims_launches_and_hears_cancels_from_other_processes(
    tmp_path: Path,
) -> None:
    """A process without definitions launches on the shared SQLite file: the ``init()``
    engine claims and runs it; its cancel reaches the run (at the renewal: no bus); the
    app is in the worker records until :func:`taskwarden.shutdown`."""
    url = f"sqlite:///{tmp_path / 'app.db'}"
    ran: list[str] = []
    stopped = asyncio.Event()

    async def job(ctx: ProcessContext) -> None:
        ran.append(ctx.process_id)

    async def hold(ctx: ProcessContext) -> None:
        try:
            await asyncio.Event().wait()
        finally:
            stopped.set()

    await taskwarden.init(
        store=url,
        get_task_definitions=definitions(task("job", job), task("hold", hold)),
        registry=OperationRegistry(),
        name="the-app",
        poll_interval=0.02,
        lease_seconds=0.6,
        renew_interval=0.2,
        cancel_grace=0.1,
    )
    try:
        async with open_store(url) as client:
            [record] = await client.list_workers()
            assert record.name == "the-app" and record.concurrency is None
            assert record.incarnation == taskwarden.get_engine().engine_id
            await launch(client, "job")
            await eventually(lambda: _is(client, "job", S.DONE))
            assert ran == ["job"]
            await launch(client, "hold")
            await eventually(lambda: _is(client, "hold", S.RUNNING))
            await cancel(client, "hold", reason="not needed")
            await eventually(lambda: _is(client, "hold", S.CANCELLED))
            assert stopped.is_set()
            await taskwarden.shutdown()
            assert await client.list_workers() == []
            assert (await state_of(client, "job")).state is S.DONE
    finally:
        if _running():
            await taskwarden.shutdown()


def _running() -> bool:
    try:
        taskwarden.get_engine()
    except taskwarden.ConfigurationError:
        return False
    return True


async def _is(store: taskwarden.Store, process_id: str, state: ProcessState) -> bool:
    record = await store.get(process_id)
    return record is not None and record.state is state


async def test_shutdown_ends_the_runs_instead_of_handing_them_back(tmp_path: Path) -> None:
    """The seed's ``shutdown()``: a running process is recorded ``cancelled`` (not given
    back to the fleet as a worker's drain does), and ``run()`` returns."""
    url = f"sqlite:///{tmp_path / 'app.db'}"

    async def hold(ctx: ProcessContext) -> None:
        await asyncio.Event().wait()

    await taskwarden.init(
        store=url,
        get_task_definitions=definitions(task("hold", hold)),
        registry=OperationRegistry(),
        shutdown_timeout=0.5,
    )
    running = asyncio.ensure_future(taskwarden.run())
    await taskwarden.launch("hold")
    async with open_store(url) as client:
        await eventually(lambda: _is(client, "hold", S.RUNNING))
        await taskwarden.shutdown()
        async with asyncio.timeout(5):
            await running
        record = await state_of(client, "hold")
        assert record.state is S.CANCELLED and record.lease_owner is None
