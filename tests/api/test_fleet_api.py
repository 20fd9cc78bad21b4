"""The API of a server without definitions in front of a worker: a launch and a cancel
reach the worker through the store, and ``/api/workers`` shows it."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx

from taskwarden.abc import Store
from taskwarden.api import create_app
from taskwarden.engine import ProcessContext
from taskwarden.processes import ProcessState
from taskwarden.registry import OperationRegistry
from taskwarden.stores import open_store
from taskwarden.worker import Worker
from tests.engine_support import definitions, task

S = ProcessState


async def test_a_definitionless_server_steers_a_worker_and_lists_it(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'api.db'}"
    stopped = asyncio.Event()

    async def long(ctx: ProcessContext) -> None:
        try:
            await ctx.wait_cancelled()
        finally:
            stopped.set()

    worker = Worker(
        url,
        get_task_definitions=definitions(task("long", long)),
        name="w-api",
        registry=OperationRegistry(),
        lease_seconds=0.6,
        renew_interval=0.2,
        poll_interval=0.02,
        cancel_grace=0.5,
    )
    async with worker, open_store(url) as store:
        app = create_app(store, poll_interval=0.05)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://tw") as client:
            launched = await client.post("/api/processes/long/launch")
            assert launched.status_code == 200, launched.text
            await _until(store, "long", S.RUNNING)
            listed = (await client.get("/api/workers")).json()["items"]
            assert [w["name"] for w in listed] == ["w-api"]
            assert listed[0]["status"] == "ok" and listed[0]["processIds"] == ["long"]
            assert listed[0]["incarnation"] == worker.incarnation
            stale = (await client.get("/api/workers", params={"staleAfter": 1e-6})).json()
            assert stale["items"][0]["status"] == "stale"
            bad = await client.get("/api/workers", params={"staleAfter": -1})
            assert bad.status_code == 400
            cancelled = await client.post("/api/processes/long/cancel")
            assert cancelled.status_code == 200
            assert cancelled.json()["status"]["state"] == "cancel_requested"
            async with asyncio.timeout(10):
                await stopped.wait()
            await _until(store, "long", S.CANCELLED)


async def _until(store: Store, process_id: str, state: ProcessState) -> None:
    async with asyncio.timeout(10):
        while True:
            record = await store.get(process_id)
            if record is not None and record.state is state:
                return
            await asyncio.sleep(0.02)
