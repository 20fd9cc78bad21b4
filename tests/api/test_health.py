"""Health checks and the Prometheus metrics of the service."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from taskwarden.api import create_app
from taskwarden.bus.local import LocalBus
from taskwarden.engine import ProcessContext
from taskwarden.processes import ProcessState
from taskwarden.stores import open_store
from tests.engine_support import StateLog, started_engine, task

S = ProcessState


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


async def boom(ctx: ProcessContext) -> None:
    raise ValueError("no")


async def test_metrics_count_runs_by_outcome_and_processes_by_state(tmp_path: Path) -> None:
    url: Any = f"sqlite:///{tmp_path / 'm.db'}"
    async with started_engine(task("ok"), task("boom", boom), store=url) as engine:
        app = create_app(engine.store, engine=engine, coalesce=0.0, tokens={"t": "viewer"})
        feed = app.state.taskwarden.feed
        await feed.start()
        watcher = feed.subscribe()
        states = StateLog(engine)
        await engine.launch("ok")
        await states.wait_for("ok", S.DONE)
        await engine.launch("boom")
        await states.wait_for("boom", S.FAILED)
        async with asyncio.timeout(5):
            async for _ in watcher:  # until the feed has seen both ends
                if feed.records["ok"].state is S.DONE and feed.records["boom"].state is S.FAILED:
                    break
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://tw") as client:
            assert (await client.get("/metrics")).status_code == 401
            response = await client.get("/metrics", headers={"Authorization": "Bearer t"})
        await feed.close()
    assert response.headers["content-type"].startswith("text/plain")
    assert "# HELP taskwarden_processes" in response.text
    assert "# TYPE taskwarden_runs_finished_total counter" in response.text
    found = samples(response.text)
    assert found[("taskwarden_processes", (("state", "done"),))] == 1
    assert found[("taskwarden_processes", (("state", "failed"),))] == 1
    assert found[("taskwarden_processes", (("state", "running"),))] == 0
    assert found[("taskwarden_runs_started_total", ())] == 2
    assert found[("taskwarden_runs_finished_total", (("outcome", "done"),))] == 1
    assert found[("taskwarden_runs_finished_total", (("outcome", "failed"),))] == 1
    assert found[("taskwarden_run_duration_seconds_count", (("outcome", "done"),))] == 1
    assert found[("taskwarden_build_info", (("version", "0.1.0"),))] == 1
    assert ("taskwarden_sse_clients", ()) in found


async def test_healthz_is_open_and_readyz_checks_store_feed_and_bus(tmp_path: Path) -> None:
    store = open_store(f"sqlite:///{tmp_path / 'h.db'}")
    async with LocalBus() as bus:
        await store.open()
        app = create_app(store, bus=bus, tokens={"t": "operator"})
        await app.state.taskwarden.feed.start()
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://tw") as client:
            assert (await client.get("/healthz")).json() == {"status": "ok"}
            ready = await client.get("/readyz")
            assert ready.status_code == 200
            assert ready.json() == {
                "status": "ok",
                "checks": {"store": "ok", "feed": "ok", "bus": "ok"},
            }
            await store.close()
            down = await client.get("/readyz")
            assert down.status_code == 503
            body = down.json()
            assert body["status"] == "unavailable"
            assert body["checks"]["store"].startswith("failed")
            await app.state.taskwarden.feed.close()
            assert (await client.get("/readyz")).json()["checks"]["feed"] == "closed"


def test_metrics_count_the_runs_inside_a_coalesced_change() -> None:
    """A change may carry several steps of a process at once: idle to done (started and
    finished within one window), or done to done again (a whole new run)."""
    from taskwarden.api.broadcaster import Broadcaster, Change, ProcessChange
    from taskwarden.api.health import Metrics
    from taskwarden.processes import ProcessRecord
    from taskwarden.stores.memory import MemoryStore

    metrics = Metrics(Broadcaster(MemoryStore(), poll_interval=None))
    idle = ProcessRecord(process_id="p", name="P")
    done = ProcessRecord(process_id="p", name="P", state=S.DONE, run_number=1, duration=0.5)
    again = ProcessRecord(process_id="p", name="P", state=S.DONE, run_number=2, duration=0.2)
    failed = ProcessRecord(process_id="q", name="Q", state=S.FAILED, run_number=3)
    progress = ProcessRecord(process_id="p", name="P", state=S.DONE, run_number=2)
    metrics.observe(
        Change(
            1,
            (
                ProcessChange("p", done, idle),
                ProcessChange("q", failed, ProcessRecord(process_id="q", name="Q", run_number=1)),
            ),
        )
    )
    metrics.observe(Change(2, (ProcessChange("p", again, done),)))
    metrics.observe(Change(3, (ProcessChange("p", progress, again),)))  # no new run
    found = samples(metrics.exposition().decode())
    assert found[("taskwarden_runs_started_total", ())] == 4  # 1 + 2 (q ran twice) + 1
    assert found[("taskwarden_runs_finished_total", (("outcome", "done"),))] == 2
    assert found[("taskwarden_runs_finished_total", (("outcome", "failed"),))] == 1
