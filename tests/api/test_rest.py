"""The REST API against real stores, with records made by a real engine."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import Request

from taskwarden.abc import Store
from taskwarden.api import create_app
from taskwarden.api.auth import Role
from taskwarden.engine import Engine, ProcessContext
from taskwarden.processes import ProcessState
from taskwarden.stores import open_store
from tests.engine_support import StateLog, started_engine, task
from tests.store_support import postgres_database

__all__ = ["postgres_database"]

S = ProcessState


async def parent(ctx: ProcessContext) -> None:
    ctx.log("info", "parent starts")
    ctx.report_progress(10, "children next")

    async def child(c: ProcessContext) -> None:
        c.log("warning", f"child {c.process_id} works")
        c.report_progress(100, "child done")

    await ctx.run_child(child, "parent.a", "child A")
    await ctx.run_child(child, "parent.b", "child B")
    ctx.log("info", "parent ends")


async def fails(ctx: ProcessContext) -> None:
    ctx.log("error", "about to fail")
    raise RuntimeError("disk full")


RELEASE = "release"


async def waits(ctx: ProcessContext) -> None:
    gate: asyncio.Event = ctx.services[RELEASE]
    ctx.report_progress(50, "waiting for the gate")
    await gate.wait()


TASKS = [
    task("parent", parent, metadata={"team": "data", "tier": 1}),
    task("fails", fails, metadata={"team": "ops", "tier": 2}),
    task("waits", waits, metadata={"team": "data", "tier": 3}),
    task("plain", metadata={"team": "web"}),
]


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'api.db'}"


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'api.db'}"
    else:
        yield request.getfixturevalue("postgres_database")


async def _populate(engine: Engine) -> None:
    states = StateLog(engine)
    await engine.launch("parent")
    await states.wait_for("parent", S.DONE)
    await engine.launch("fails")
    await states.wait_for("fails", S.FAILED)


@pytest.fixture
async def world(store_url: str) -> AsyncIterator[tuple[Engine, httpx.AsyncClient, asyncio.Event]]:
    gate = asyncio.Event()
    # From a URL, the engine opens the store and closes it at shutdown.
    store: Any = store_url
    async with started_engine(*TASKS, store=store, services={RELEASE: gate}) as engine:
        await engine.resync(clean=True)
        await _populate(engine)
        app = create_app(engine.store, engine=engine)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://tw") as client:
            yield engine, client, gate
        gate.set()
        await app.state.taskwarden.feed.close()


async def test_list_is_optio_paginated_and_pages_walk_every_process_once(
    world: tuple[Engine, httpx.AsyncClient, asyncio.Event],
) -> None:
    _, client, _ = world
    first = (await client.get("/api/processes")).json()
    assert set(first) == {"items", "nextCursor", "totalCount"}
    ids = {doc["processId"] for doc in first["items"]}
    assert {"parent", "parent.a", "parent.b", "fails", "waits", "plain"} <= ids
    assert first["totalCount"] == len(first["items"]) == 6
    assert first["nextCursor"] is None
    doc = next(d for d in first["items"] if d["processId"] == "fails")
    assert doc["_id"] == "fails"
    assert doc["status"]["state"] == "failed"
    assert "disk full" in doc["status"]["error"]

    walked: list[str] = []
    cursor: str | None = None
    while True:
        params: dict[str, Any] = {"limit": 2}
        if cursor is not None:
            params["cursor"] = cursor
        page = (await client.get("/api/processes", params=params)).json()
        assert page["totalCount"] == 6
        assert len(page["items"]) <= 2
        walked += [d["processId"] for d in page["items"]]
        cursor = page["nextCursor"]
        if cursor is None:
            break
    assert sorted(walked) == sorted(ids)
    assert len(walked) == len(set(walked))


async def test_list_filters_by_state_root_and_metadata_filter(
    world: tuple[Engine, httpx.AsyncClient, asyncio.Event],
) -> None:
    _, client, _ = world

    async def ids(**params: Any) -> list[str]:
        response = await client.get("/api/processes", params=params)
        assert response.status_code == 200, response.text
        return sorted(d["processId"] for d in response.json()["items"])

    assert await ids(state="failed") == ["fails"]
    assert await ids(rootId="parent") == ["parent", "parent.a", "parent.b"]
    assert await ids(metadataFilter=json.dumps({"team": "data"})) == ["parent", "waits"]
    both = {"AND": [{"metadata.team": {"eq": "data"}}, {"metadata.tier": {"gte": 2}}]}
    assert await ids(metadataFilter=json.dumps(both)) == ["waits"]
    either = {"OR": [{"metadata.team": {"in": ["ops", "web"]}}, {"metadata.tier": {"lt": 2}}]}
    assert await ids(metadataFilter=json.dumps(either)) == ["fails", "parent", "plain"]
    absent = {"NOT": {"metadata.team": {"exists": True}}}
    assert await ids(metadataFilter=json.dumps(absent)) == ["parent.a", "parent.b"]
    # taskwarden's additions, for the dashboard's list: roots only, and a text search.
    assert await ids(rootsOnly="true") == ["fails", "parent", "plain", "waits"]
    assert await ids(search="PARENT.") == ["parent.a", "parent.b"]
    assert await ids(search="ts", rootsOnly="true", state="idle") == ["waits"]
    assert await ids(search="par", metadataFilter=json.dumps(either)) == ["parent"]
    counted = await client.get("/api/processes", params={"search": "parent", "limit": 1})
    assert counted.json()["totalCount"] == 3 and counted.json()["nextCursor"] is not None


async def test_a_page_is_read_from_the_store_a_page_at_a_time(
    world: tuple[Engine, httpx.AsyncClient, asyncio.Event], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without a filter or with plain equalities, the store pages and counts: a page never
    reads every record (it did, and 100,000 records took 4 s a page)."""
    engine, client, _ = world
    store = engine.store
    limits: list[int | None] = []
    real_list = store.list

    async def recording_list(**kwargs: Any) -> Any:
        limits.append(kwargs.get("limit"))
        return await real_list(**kwargs)

    monkeypatch.setattr(store, "list", recording_list)
    plain = json.dumps({"metadata.team": {"eq": "data"}})
    cases: list[dict[str, Any]] = [
        {"limit": 2},
        {"limit": 1, "metadataFilter": plain},
        {"state": "done"},
    ]
    for params in cases:
        walked: list[str] = []
        cursor: str | None = None
        total: set[int] = set()
        while True:
            query = dict(params) if cursor is None else {**params, "cursor": cursor}
            page = (await client.get("/api/processes", params=query)).json()
            walked += [d["processId"] for d in page["items"]]
            total.add(page["totalCount"])
            cursor = page["nextCursor"]
            if cursor is None:
                break
        expected = await real_list(
            metadata={"team": "data"} if "metadataFilter" in params else None,
            state=S.DONE if "state" in params else None,
        )
        assert walked == [r.process_id for r in expected], params
        assert total == {len(expected)}, params
    assert sorted(set(limits), key=str) == [2, 21, 3]  # limit + 1 rows, never all of them


@pytest.mark.parametrize(
    ("params", "says"),
    [
        ({"limit": 0}, "limit"),
        ({"limit": 101}, "limit"),
        ({"limit": "many"}, "limit"),
        ({"cursor": "not-a-cursor"}, "cursor"),
        ({"state": "sleeping"}, "state"),
        ({"metadataFilter": "{not json"}, "not valid JSON"),
        ({"metadataFilter": json.dumps({"metadata.team": {"like": "d%"}})}, "unknown operator"),
        ({"metadataFilter": json.dumps({"AND": {}})}, "non-empty list"),
        ({"metadata.team": "data"}, "Legacy 'metadata.*'"),
    ],
)
async def test_bad_list_input_is_a_400_that_says_what_is_wrong(
    world: tuple[Engine, httpx.AsyncClient, asyncio.Event], params: dict[str, Any], says: str
) -> None:
    _, client, _ = world
    response = await client.get("/api/processes", params=params)
    assert response.status_code == 400
    assert says in response.json()["message"]


async def test_get_by_id_and_optio_404(
    world: tuple[Engine, httpx.AsyncClient, asyncio.Event],
) -> None:
    _, client, _ = world
    doc = (await client.get("/api/processes/parent")).json()
    assert doc["processId"] == "parent"
    assert doc["status"]["state"] == "done"
    assert doc["progress"] == {"percent": 10.0, "message": "children next"}
    missing = await client.get("/api/processes/nope")
    assert missing.status_code == 404
    assert missing.json() == {"message": "Process not found"}


async def test_tree_nests_children_in_order_and_honours_max_depth(
    world: tuple[Engine, httpx.AsyncClient, asyncio.Event],
) -> None:
    _, client, _ = world
    tree = (await client.get("/api/processes/parent/tree")).json()
    assert [c["processId"] for c in tree["children"]] == ["parent.a", "parent.b"]
    assert tree["children"][0]["children"] == []
    assert tree["children"][0]["name"] == "child A"
    shallow = (await client.get("/api/processes/parent/tree", params={"maxDepth": 0})).json()
    assert shallow["children"] == []
    bad = await client.get("/api/processes/parent/tree", params={"maxDepth": -1})
    assert bad.status_code == 400
    assert "maxDepth" in bad.json()["message"]
    assert (await client.get("/api/processes/nope/tree")).status_code == 404


async def test_log_and_merged_tree_log_are_paginated_by_offset(
    world: tuple[Engine, httpx.AsyncClient, asyncio.Event],
) -> None:
    _, client, _ = world
    log = (await client.get("/api/processes/parent/log")).json()
    # Progress messages are log entries too (the seed's behaviour).
    expected = ["parent starts", "children next", "parent ends"]
    assert [e["message"] for e in log["items"]] == expected
    assert log["nextCursor"] is None and log["totalCount"] == 3
    merged = (await client.get("/api/processes/parent/tree/log")).json()
    messages = [(e["processId"], e["message"]) for e in merged["items"]]
    assert messages == [
        ("parent", "parent starts"),
        ("parent", "children next"),
        ("parent.a", "child parent.a works"),
        ("parent.a", "child done"),
        ("parent.b", "child parent.b works"),
        ("parent.b", "child done"),
        ("parent", "parent ends"),
    ]
    assert merged["items"][2]["processLabel"] == "child A"
    assert merged["items"][2]["level"] == "warning"
    page = (await client.get("/api/processes/parent/tree/log", params={"limit": 4})).json()
    assert len(page["items"]) == 4 and page["nextCursor"] == "4" and page["totalCount"] == 7
    rest = (
        await client.get("/api/processes/parent/tree/log", params={"limit": 4, "cursor": "4"})
    ).json()
    assert [e["message"] for e in rest["items"]] == [
        "child parent.b works",
        "child done",
        "parent ends",
    ]
    assert rest["nextCursor"] is None
    bad = await client.get("/api/processes/parent/log", params={"cursor": "x"})
    assert bad.status_code == 400 and "cursor" in bad.json()["message"]


async def test_commands_answer_with_the_process_or_optio_refusals(
    world: tuple[Engine, httpx.AsyncClient, asyncio.Event],
) -> None:
    engine, client, _ = world
    states = StateLog(engine)
    launched = await client.post("/api/processes/waits/launch")
    assert launched.status_code == 200
    assert launched.json()["status"]["state"] in ("scheduled", "running")
    await states.wait_for("waits", S.RUNNING)

    again = await client.post("/api/processes/waits/launch")
    assert again.status_code == 409
    assert again.json() == {
        "reason": "not-launchable",
        "message": "Process is not in a launchable state",
    }
    not_running = await client.post("/api/processes/plain/cancel")
    assert not_running.status_code == 409
    assert not_running.json()["reason"] == "not-cancellable"
    idle = await client.post("/api/processes/plain/dismiss")
    assert idle.status_code == 409
    assert idle.json()["reason"] == "not-dismissable"
    for verb in ("launch", "cancel", "dismiss"):
        missing = await client.post(f"/api/processes/nope/{verb}")
        assert missing.status_code == 404
        assert missing.json() == {"reason": "not-found", "message": "Process not found"}

    cancelled = await client.post("/api/processes/waits/cancel")
    assert cancelled.status_code == 200
    await states.wait_for("waits", S.CANCELLED)
    dismissed = await client.post("/api/processes/waits/dismiss")
    assert dismissed.status_code == 200
    assert dismissed.json()["status"]["state"] == "idle"

    resync = await client.post("/api/processes/resync", json={"clean": False})
    assert resync.status_code == 202
    assert resync.json() == {"message": "Resync requested"}
    bad = await client.post("/api/processes/resync", json={"clean": "yes"})
    assert bad.status_code == 400


async def test_history_lists_runs_with_errors_and_shows_one(
    world: tuple[Engine, httpx.AsyncClient, asyncio.Event],
) -> None:
    _, client, _ = world
    failed = (await client.get("/api/history", params={"status": "failed"})).json()["items"]
    # The PostgreSQL database is shared by this module's tests: earlier runs are there too.
    assert failed and {run["processId"] for run in failed} == {"fails"}
    run = failed[0]  # newest first
    assert "disk full" in run["error"]
    assert "RuntimeError" in run["traceback"]
    assert run["status"] == "failed" and run["runNumber"] == 1
    one = await client.get(f"/api/history/{run['index']}")
    assert one.json() == run
    of_parent = (await client.get("/api/history", params={"processId": "parent"})).json()
    assert of_parent["items"] and {r["status"] for r in of_parent["items"]} == {"completed"}
    future = (await client.get("/api/history", params={"since": "2999-01-01"})).json()
    assert future["items"] == []
    assert (await client.get("/api/history/999999")).status_code == 404
    bad = await client.get("/api/history", params={"since": "yesterday"})
    assert bad.status_code == 400 and "ISO-8601" in bad.json()["message"]
    assert (await client.get("/api/history", params={"status": "lost"})).status_code == 400


async def test_history_pages_by_cursor_and_until(
    world: tuple[Engine, httpx.AsyncClient, asyncio.Event],
) -> None:
    engine, client, _ = world
    for _ in range(3):
        await engine.launch_and_wait("plain")
    everything = (await client.get("/api/history", params={"limit": 1000})).json()
    assert everything["nextCursor"] is None
    walked: list[int] = []
    params: dict[str, Any] = {"limit": 2}
    while True:
        page = (await client.get("/api/history", params=params)).json()
        walked += [run["index"] for run in page["items"]]
        if page["nextCursor"] is None:
            break
        params["cursor"] = page["nextCursor"]
    assert walked == [run["index"] for run in everything["items"]]
    assert len(walked) >= 5  # parent and its two children, fails, plain x3
    newest = everything["items"][0]
    before = (await client.get("/api/history", params={"until": newest["startedAt"]})).json()
    assert newest["index"] not in [run["index"] for run in before["items"]]
    assert all(run["startedAt"] < newest["startedAt"] for run in before["items"])
    bad = await client.get("/api/history", params={"cursor": "abc"})
    assert bad.status_code == 400 and "nextCursor" in bad.json()["message"]


async def test_commands_without_engine_go_through_the_store_for_the_workers(
    sqlite_url: str,
) -> None:
    """A server with no engine queues a launch for the fleet (``scheduled``, no owner),
    cancels and dismisses through the store, refuses with optio's reasons, and refuses
    resync (which needs definitions) with ``no-engine``."""
    store: Store = open_store(sqlite_url)
    async with store:
        url: Any = sqlite_url
        async with started_engine(*TASKS, store=url) as engine:
            await engine.resync(clean=True)
        app = create_app(store)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://tw") as client:
            response = await client.post("/api/processes/plain/launch")
            assert response.status_code == 200, response.text
            queued = await store.get("plain")
            assert queued is not None and queued.state is S.SCHEDULED
            assert queued.lease_owner is None
            again = await client.post("/api/processes/plain/launch")
            assert again.status_code == 409 and again.json()["reason"] == "not-launchable"
            busy = await client.post("/api/processes/plain/dismiss")
            assert busy.status_code == 409 and busy.json()["reason"] == "not-dismissable"
            cancelled = await client.post("/api/processes/plain/cancel")
            assert cancelled.status_code == 200, cancelled.text
            assert (await store.get("plain")).state is S.CANCELLED  # type: ignore[union-attr]
            refused = await client.post("/api/processes/plain/cancel")
            assert refused.status_code == 409 and refused.json()["reason"] == "not-cancellable"
            dismissed = await client.post("/api/processes/plain/dismiss")
            assert dismissed.status_code == 200
            assert (await store.get("plain")).state is S.IDLE  # type: ignore[union-attr]
            missing = await client.post("/api/processes/ghost/launch")
            assert missing.status_code == 404 and missing.json()["reason"] == "not-found"
            resync = await client.post("/api/processes/resync")
            assert resync.status_code == 503 and resync.json()["reason"] == "no-engine"
            listed = (await client.get("/api/processes")).json()
            assert listed["totalCount"] == 4


async def test_auth_matrix_of_two_roles(sqlite_url: str) -> None:
    store: Store = open_store(sqlite_url)
    async with store:
        tokens = {"look": "viewer", "steer": "operator"}
        app = create_app(store, tokens=tokens)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://tw") as client:

            def auth(token: str | None) -> dict[str, str]:
                return {} if token is None else {"Authorization": f"Bearer {token}"}

            no_read = await client.get("/api/processes", headers=auth(None))
            assert no_read.status_code == 401 and no_read.json() == {"message": "Unauthorized"}
            no_write = await client.post("/api/processes/resync", headers=auth(None))
            assert no_write.status_code == 401
            wrong = await client.get("/api/processes", headers=auth("guess"))
            assert wrong.status_code == 401
            viewer_write = await client.post("/api/processes/resync", headers=auth("look"))
            assert viewer_write.status_code == 403
            assert viewer_write.json() == {"message": "Forbidden"}
            assert (await client.get("/api/processes", headers=auth("look"))).status_code == 200
            assert (await client.get("/api/processes", headers=auth("steer"))).status_code == 200
            operator_write = await client.post("/api/processes/resync", headers=auth("steer"))
            assert operator_write.json()["reason"] == "no-engine"  # allowed, then refused
            # The dashboard's session cookie: the same roles, from POST /api/session.
            client.cookies.set("taskwarden_token", "steer")  # the old JS-set cookie is gone
            assert (await client.get("/api/processes")).status_code == 401
            client.cookies.clear()
            signed_in = await client.post("/api/session", json={"token": "look"})
            assert signed_in.json()["role"] == "viewer"
            assert (await client.get("/api/processes")).status_code == 200
            assert (await client.post("/api/processes/resync")).status_code == 403
            await client.post("/api/session", json={"token": "steer"})
            by_cookie = await client.post("/api/processes/resync")
            assert by_cookie.json()["reason"] == "no-engine"
            await client.delete("/api/session")
            assert (await client.get("/api/processes")).status_code == 401

        async def check(request: Request) -> Role | None:
            return "viewer" if request.headers.get("x-user") == "ann" else None

        app = create_app(store, authenticate=check)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://tw") as client:
            assert (await client.get("/api/processes")).status_code == 401
            ok = await client.get("/api/processes", headers={"x-user": "ann"})
            assert ok.status_code == 200
            refused = await client.post("/api/processes/resync", headers={"x-user": "ann"})
            assert refused.status_code == 403


def test_conflicting_or_unknown_auth_settings_are_refused() -> None:
    from taskwarden.errors import ConfigurationError
    from taskwarden.stores.memory import MemoryStore

    with pytest.raises(ConfigurationError, match="either tokens= or authenticate="):
        create_app(MemoryStore(), tokens={"a": "viewer"}, authenticate=lambda r: "viewer")
    with pytest.raises(ConfigurationError, match="'admin' is not"):
        create_app(MemoryStore(), tokens={"a": "admin"})


async def test_openapi_documents_the_optio_routes(sqlite_url: str) -> None:
    store: Store = open_store(sqlite_url)
    async with store:
        app = create_app(store)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://tw") as client:
            paths = (await client.get("/openapi.json")).json()["paths"]
    for path in (
        "/api/processes",
        "/api/processes/{process_id}",
        "/api/processes/{process_id}/tree",
        "/api/processes/{process_id}/log",
        "/api/processes/{process_id}/tree/log",
        "/api/processes/{process_id}/launch",
        "/api/processes/{process_id}/cancel",
        "/api/processes/{process_id}/dismiss",
        "/api/processes/resync",
        "/api/processes/stream",
        "/api/processes/{process_id}/tree/stream",
        "/api/history",
    ):
        assert path in paths, path
