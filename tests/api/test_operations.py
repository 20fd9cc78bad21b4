"""The live routes: operations (scopes) here and on workers over the bus, cancel by id,
and the supervised tasks."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from taskwarden.abc import Store
from taskwarden.api import create_app
from taskwarden.bus import open_bus
from taskwarden.engine import Engine, ProcessContext
from taskwarden.model import WorkerRecord
from taskwarden.processes import ProcessState
from taskwarden.registry import OperationRegistry
from taskwarden.stores import open_store
from taskwarden.supervisor import Supervisor
from taskwarden.worker import Worker
from tests.engine_support import definitions, task

S = ProcessState


async def _until(store: Store, process_id: str, state: ProcessState) -> None:
    async with asyncio.timeout(10):
        while True:
            record = await store.get(process_id)
            if record is not None and record.state is state:
                return
            await asyncio.sleep(0.01)


def _find(tree: list[dict[str, Any]], name: str) -> dict[str, Any] | None:
    for node in tree:
        if node["name"] == name:
            return node
        found = _find(node["children"], name)
        if found is not None:
            return found
    return None


async def _long(ctx: ProcessContext) -> None:
    ctx.report_progress(25, "a quarter")
    await ctx.wait_cancelled()


@pytest.fixture
async def engine(tmp_path: Path) -> AsyncIterator[Engine]:
    engine = Engine(
        f"sqlite:///{tmp_path / 'ops.db'}",
        get_task_definitions=definitions(task("long", _long)),
        registry=OperationRegistry(),
        progress_flush_interval=0.0,
        cancel_grace=0.5,
    )
    await engine.init()
    try:
        yield engine
    finally:
        await engine.shutdown(timeout=2)


async def test_the_servers_own_operations_are_listed_and_cancelled_by_id(engine: Engine) -> None:
    app = create_app(engine.store, engine=engine, tokens={"v": "viewer", "o": "operator"})
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://tw") as client:
        await engine.launch("long")
        await _until(engine.store, "long", S.RUNNING)
        viewer = {"Authorization": "Bearer v"}
        listed = await client.get("/api/operations", params={"worker": "local"}, headers=viewer)
        assert listed.status_code == 200, listed.text
        [local] = listed.json()["items"]
        assert local["node"] == "local" and local["ok"] and local["active"] >= 1
        operation = _find(local["operations"], "long")
        assert operation is not None and operation["kind"] == "process"
        assert operation["status"] == "running" and operation["metadata"]["process_id"] == "long"
        refused = await client.post(f"/api/operations/{operation['id']}/cancel", headers=viewer)
        assert refused.status_code == 403
        operator = {"Authorization": "Bearer o"}
        cancelled = await client.post(
            f"/api/operations/{operation['id']}/cancel",
            params={"reason": "stuck on a lock"},
            headers=operator,
        )
        assert cancelled.status_code == 200, cancelled.text
        assert cancelled.json()["cancelMessage"] == "stuck on a lock"
        await _until(engine.store, "long", S.CANCELLED)
        missing = await client.post(f"/api/operations/{operation['id']}/cancel", headers=operator)
        assert missing.status_code == 404 and missing.json()["reason"] == "not-found"


async def test_workers_answer_for_their_operations_over_the_bus(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'fleet.db'}"
    bus = open_bus("memory://")
    worker = Worker(
        url,
        bus=bus,
        get_task_definitions=definitions(task("long", _long)),
        name="w-ops",
        registry=OperationRegistry(),
        poll_interval=0.02,
        progress_flush_interval=0.0,
        cancel_grace=0.5,
    )
    async with bus, worker, open_store(url) as store:
        gone = WorkerRecord(
            incarnation="host:1:gone",
            name="gone",
            host="host",
            pid=1,
            started_at=datetime.now(UTC),
            renewed_at=datetime.now(UTC),
            runs=0,
            concurrency=1,
            process_ids=(),
        )
        await store.put_worker(gone)  # a record whose worker answers nothing
        app = create_app(store, bus=bus, registry=OperationRegistry())
        app.state.taskwarden_live.timeout = 0.3
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://tw") as client:
            await client.post("/api/processes/long/launch")
            await _until(store, "long", S.RUNNING)
            items = (await client.get("/api/operations")).json()["items"]
            by_node = {item["node"]: item for item in items}
            assert set(by_node) == {"local", worker.incarnation, "host:1:gone"}
            assert by_node["local"]["operations"] == []
            assert by_node["host:1:gone"]["ok"] is False and by_node["host:1:gone"]["error"]
            remote = by_node[worker.incarnation]
            assert remote["ok"] and remote["name"] == "w-ops"
            operation = _find(remote["operations"], "long")
            assert operation is not None
            assert operation["progress"] == {"percent": 25.0, "message": "a quarter"}
            unknown = await client.get("/api/operations", params={"worker": "nobody"})
            assert unknown.status_code == 404
            cancelled = await client.post(
                f"/api/operations/{operation['id']}/cancel",
                params={"worker": worker.incarnation, "reason": "from the API"},
            )
            assert cancelled.status_code == 200, cancelled.text
            await _until(store, "long", S.CANCELLED)


async def test_the_supervised_tasks_show_their_health_and_statistics(engine: Engine) -> None:
    supervisor = Supervisor()
    supervisor.record_run("sync-users", 0.25)
    supervisor.record_run("sync-users", 0.5, RuntimeError("the directory timed out"))
    transport = httpx.ASGITransport(app=create_app(engine.store, supervisor=supervisor))
    async with httpx.AsyncClient(transport=transport, base_url="http://tw") as client:
        shown = (await client.get("/api/supervisor")).json()
        assert shown["statistics"]["total_tasks"] == 1
        assert shown["statistics"]["total_errors"] == 1
        [row] = shown["tasks"]
        assert row["name"] == "sync-users" and row["metrics"]["runs"] == 2
        assert row["metrics"]["last_error"] == "RuntimeError: the directory timed out"
        assert isinstance(row["health"]["is_healthy"], bool)
    transport = httpx.ASGITransport(app=create_app(engine.store))
    async with httpx.AsyncClient(transport=transport, base_url="http://tw") as client:
        none = await client.get("/api/supervisor")
        assert none.status_code == 404 and "no supervisor" in none.json()["message"]
