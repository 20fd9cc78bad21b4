"""Group and bulk cancel: the store-only core (``taskwarden.worker.client``) and the API
routes over it, on a real SQLite file and a real PostgreSQL database, with real workers
running process trees. Waits are bounded polls of the store."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from taskwarden.abc import Store
from taskwarden.api import create_app
from taskwarden.engine import ProcessContext, TaskInstance
from taskwarden.errors import ConfigurationError, NotCancellable, ProcessNotFound
from taskwarden.processes import ProcessRecord, ProcessState
from taskwarden.registry import OperationRegistry
from taskwarden.stores import open_store
from taskwarden.worker import Worker, launch
from taskwarden.worker.client import cancel_group, cancel_matching, count_matching
from tests.engine_support import definitions, task
from tests.store_support import postgres_database  # noqa: F401 (a fixture, found by name)

S = ProcessState
TREE = ["tree", "tree/a", "tree/b", "tree/a/x"]
"""A running tree in store order (depth, order, id)."""


async def leaf(ctx: ProcessContext) -> None:
    ctx.report_progress(10, "waiting")
    await ctx.wait_cancelled()


async def branch(ctx: ProcessContext) -> None:
    await ctx.run_child(leaf, f"{ctx.process_id}/x", "leaf x")


async def tree(ctx: ProcessContext) -> None:
    async with ctx.parallel_group(max_concurrency=2) as group:
        await group.spawn(branch, f"{ctx.process_id}/a", "branch a")
        await group.spawn(leaf, f"{ctx.process_id}/b", "leaf b")


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, str]]:
    """``(url, prefix)`` of a fresh namespace on a SQLite file or a PostgreSQL database."""
    prefix = f"t{uuid.uuid4().hex[:12]}"
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'bulk.db'}", prefix
    else:
        yield request.getfixturevalue("postgres_database"), prefix


@pytest.fixture
async def client(store_url: tuple[str, str]) -> AsyncIterator[Store]:
    """The store as a process without definitions sees it."""
    url, prefix = store_url
    async with open_store(url, prefix=prefix) as store:
        yield store


def slow_worker(store_url: tuple[str, str], *tasks: TaskInstance, **options: Any) -> Worker:
    """A worker that learns of a cancel only when told: no bus, no NOTIFY, a renewal
    every 10 s (the tests call ``renew_once()`` when they want it to look)."""
    url, prefix = store_url
    settings: dict[str, Any] = {
        "lease_seconds": 30.0,
        "renew_interval": 10.0,
        "reaper_interval": 10.0,
        "poll_interval": 0.02,
        "cancel_grace": 0.5,
        "progress_flush_interval": 0.0,
        "listen_notify": False,
        **options,
    }
    return Worker(
        url,
        prefix=prefix,
        get_task_definitions=definitions(*tasks),
        registry=OperationRegistry(),
        **settings,
    )


async def eventually(probe: Callable[[], Awaitable[bool]], timeout: float = 10.0) -> None:  # noqa: ASYNC109
    async with asyncio.timeout(timeout):
        while not await probe():  # noqa: ASYNC110 - another task writes the store
            await asyncio.sleep(0.02)


def states_are(
    store: Store, ids: list[str], *states: ProcessState
) -> Callable[[], Awaitable[bool]]:
    async def probe() -> bool:
        records = [await store.get(pid) for pid in ids]
        return all(r is not None and r.state in states for r in records)

    return probe


async def put(
    store: Store,
    process_id: str,
    state: ProcessState = S.SCHEDULED,
    parent: ProcessRecord | None = None,
    order: int = 0,
    **fields: Any,
) -> ProcessRecord:
    """A record made directly in the store (what no worker serves)."""
    return await store.create(
        ProcessRecord(
            process_id=process_id,
            name=process_id,
            state=state,
            parent_id=None if parent is None else parent.process_id,
            root_id="" if parent is None else parent.root_id,
            depth=0 if parent is None else parent.depth + 1,
            order=order,
            **fields,
        )
    )


# ---------------------------------------------------------------- the core: cancel_group
async def test_a_group_cancel_of_a_running_tree_records_the_root_and_all_of_it_ends_cancelled(
    store_url: tuple[str, str], client: Store
) -> None:
    """The root's cancel is recorded (with the reason in its log) and covers the tree: the
    descendants are not written one by one, and when the worker looks, every process of
    the tree ends cancelled, the root too (not failed by a child cancelled first)."""
    async with slow_worker(store_url, task("tree", tree)) as w:
        await launch(client, "tree")
        await eventually(states_are(client, TREE, S.RUNNING))
        changed = await cancel_group(client, "tree", reason="bad input", requested_by="tests")
        assert [(r.process_id, r.state) for r in changed] == [("tree", S.CANCEL_REQUESTED)]
        assert await states_are(client, TREE[1:], S.RUNNING)()
        await w.renew_once()  # the renewal shows the request: no bus, no NOTIFY
        await eventually(states_are(client, TREE, S.CANCELLED))
    root = await client.get("tree")
    assert root is not None and root.error is None
    assert "cancel requested: bad input (by tests)" in [e.message for e in root.log]


async def test_a_group_cancel_writes_the_top_most_cancellable_processes_only(
    client: Store,
) -> None:
    """Under a root defined cancellable=False, each highest cancellable descendant gets
    the cancel (a scheduled one straight to cancelled); what is below one of them, below a
    cancel already under way, ended, or outside the group is left alone."""
    root = await put(client, "r", S.RUNNING, cancellable=False)
    c1 = await put(client, "r/c1", S.RUNNING, parent=root)
    await put(client, "r/c1/g", S.RUNNING, parent=c1)
    c2 = await put(client, "r/c2", S.RUNNING, parent=root, order=1, cancellable=False)
    await put(client, "r/c2/g", S.RUNNING, parent=c2)
    await put(client, "r/c2/q", S.SCHEDULED, parent=c2, order=1)
    c3 = await put(client, "r/c3", S.CANCEL_REQUESTED, parent=root, order=2)
    await put(client, "r/c3/g", S.RUNNING, parent=c3)
    await put(client, "r/c4", S.DONE, parent=root, order=3)
    await put(client, "other", S.RUNNING)
    changed = await cancel_group(client, "r")
    assert [(r.process_id, r.state) for r in changed] == [
        ("r/c1", S.CANCEL_REQUESTED),
        ("r/c2/g", S.CANCEL_REQUESTED),
        ("r/c2/q", S.CANCELLED),
    ]
    for process_id, state in [
        ("r", S.RUNNING),
        ("r/c1/g", S.RUNNING),
        ("r/c2", S.RUNNING),
        ("r/c3/g", S.RUNNING),
        ("r/c4", S.DONE),
        ("other", S.RUNNING),
    ]:
        record = await client.get(process_id)
        assert record is not None and record.state is state, process_id
    # From inside a tree: that subtree's top only; its parent and siblings stay.
    s = await put(client, "s", S.RUNNING)
    sa = await put(client, "s/a", S.RUNNING, parent=s)
    await put(client, "s/a/x", S.RUNNING, parent=sa)
    await put(client, "s/b", S.RUNNING, parent=s, order=1)
    assert [r.process_id for r in await cancel_group(client, "s/a")] == ["s/a"]
    assert await states_are(client, ["s", "s/b", "s/a/x"], S.RUNNING)()


async def test_a_group_cancel_refuses_when_nothing_in_it_can_be_cancelled(client: Store) -> None:
    """An unknown id is ProcessNotFound; a group with nothing active, or whose process is
    already being cancelled, is NotCancellable with the process's own reason; a scheduled
    process alone is cancelled at once."""
    with pytest.raises(ProcessNotFound):
        await cancel_group(client, "ghost")
    over = await put(client, "over", S.DONE)
    await put(client, "over/child", S.FAILED, parent=over)
    with pytest.raises(NotCancellable, match="is done"):
        await cancel_group(client, "over")
    going = await put(client, "going", S.CANCEL_REQUESTED)
    await put(client, "going/child", S.RUNNING, parent=going)
    with pytest.raises(NotCancellable, match="is cancel_requested"):
        await cancel_group(client, "going")
    child = await client.get("going/child")
    assert child is not None and child.state is S.RUNNING
    await put(client, "queued")
    [cancelled] = await cancel_group(client, "queued")
    assert cancelled.state is S.CANCELLED and cancelled.stopped_at is not None


# ---------------------------------------------------------------- the core: cancel_matching
async def test_cancel_matching_pages_through_every_match_and_touches_nothing_else(
    client: Store,
) -> None:
    """230 matches (more than two pages of the store's list) are all cancelled; records
    that do not match every filter, or are not cancellable, are left as they were."""
    for n in range(230):
        await put(client, f"big-{n:03d}", metadata={"batch": "big"})
    await put(client, "other", metadata={"batch": "small"})
    await put(client, "big-over", S.DONE, metadata={"batch": "big"})
    await put(client, "big-locked", metadata={"batch": "big"}, cancellable=False)
    assert await count_matching(client, metadata={"batch": "big"}) == 231
    assert await count_matching(client, metadata={"batch": "big"}, state="running") == 0
    result = await cancel_matching(
        client, metadata={"batch": "big"}, reason="rollback", requested_by="tests"
    )
    assert result.matched == 231 and len(result.cancelled) == 230
    assert result.cancelled == sorted(result.cancelled)  # store order
    [refusal] = result.refused
    assert refusal.to_document() == {
        "processId": "big-locked",
        "reason": "not-cancellable",
        "message": "process 'big-locked' is defined with cancellable=False",
    }
    assert len(await client.list(state=[S.CANCELLED])) == 230
    for process_id, state in [("other", S.SCHEDULED), ("big-over", S.DONE)]:
        record = await client.get(process_id)
        assert record is not None and record.state is state


async def test_cancel_matching_takes_a_limit_a_root_and_a_predicate(client: Store) -> None:
    root = await put(client, "job", S.RUNNING, metadata={"tier": 3})
    await put(client, "job/part", S.RUNNING, parent=root, metadata={"tier": 1})
    for n in range(4):
        await put(client, f"q{n}", metadata={"tier": n})
    high = await cancel_matching(client, predicate=lambda m: m.get("tier", 0) >= 2, limit=2)
    assert high.matched == 2 and high.cancelled == ["job", "q2"] and high.refused == []
    locked = await put(client, "locked", S.RUNNING, cancellable=False)
    await put(client, "locked/part", S.RUNNING, parent=locked)
    tree = await cancel_matching(client, root_id="locked", state=["running", "scheduled"])
    assert tree.matched == 2 and tree.cancelled == ["locked/part"]
    assert [r.process_id for r in tree.refused] == ["locked"]
    left = await client.list(state=[S.SCHEDULED])
    assert [r.process_id for r in left] == ["q0", "q1", "q3"]


async def test_cancel_matching_refuses_bad_filters_before_changing_anything(
    client: Store,
) -> None:
    await put(client, "queued")
    cases: list[tuple[dict[str, Any], str]] = [
        ({}, "needs a filter"),
        ({"state": "done"}, "matches nothing to cancel"),
        ({"state": ["running", "sideways"]}, "unknown state"),
        ({"state": "scheduled", "limit": 0}, "limit must be 1 or more"),
    ]
    for bad, message in cases:
        with pytest.raises(ConfigurationError, match=message):
            await cancel_matching(client, **bad)
    with pytest.raises(ConfigurationError, match="needs a filter"):
        await count_matching(client)
    record = await client.get("queued")
    assert record is not None and record.state is S.SCHEDULED


async def test_a_bulk_cancel_of_running_trees_writes_the_roots_and_counts_their_trees(
    store_url: tuple[str, str], client: Store
) -> None:
    """Every running member of three trees matches; only the roots are written (the rest
    stop with them), all twelve count as cancelled and none as refused; the worker then
    ends every tree cancelled, roots included."""
    trees = [task(f"t{n}", tree) for n in range(3)]
    async with slow_worker(store_url, *trees) as w:
        members = [f"t{n}{suffix}" for n in range(3) for suffix in ("", "/a", "/b", "/a/x")]
        for n in range(3):
            await launch(client, f"t{n}")
        await eventually(states_are(client, members, S.RUNNING))
        assert await count_matching(client, state="running") == 12
        result = await cancel_matching(client, state="running")
        assert result.refused == [] and result.matched == 12
        # Store order: by depth, then sibling order, then id.
        assert result.cancelled == [
            *("t0", "t1", "t2"),
            *("t0/a", "t1/a", "t2/a", "t0/b", "t1/b", "t2/b"),
            *("t0/a/x", "t1/a/x", "t2/a/x"),
        ]
        roots = [m for m in members if "/" not in m]
        assert await states_are(client, roots, S.CANCEL_REQUESTED)()
        assert await states_are(client, [m for m in members if "/" in m], S.RUNNING)()
        await w.renew_once()
        await eventually(states_are(client, members, S.CANCELLED))


async def test_a_bulk_cancel_leaves_a_match_whose_parent_is_being_cancelled(
    client: Store,
) -> None:
    """A running child of a process already being cancelled stops with it: refused,
    with a message that says so, and not written."""
    going = await put(client, "going", S.CANCEL_REQUESTED)
    await put(client, "going/child", S.RUNNING, parent=going)
    result = await cancel_matching(client, state="running")
    assert result.to_document() == {
        "matched": 1,
        "cancelled": [],
        "refused": [
            {
                "processId": "going/child",
                "reason": "not-cancellable",
                "message": "process 'going/child' stops with its parent 'going', which is "
                "cancel_requested already",
            }
        ],
    }
    child = await client.get("going/child")
    assert child is not None and child.state is S.RUNNING


# ---------------------------------------------------------------- the API routes
async def _api(store: Store, **options: Any) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(store, poll_interval=0.05, **options)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://tw") as http:
        yield http
    await app.state.taskwarden.feed.close()


@pytest.fixture
async def api(client: Store) -> AsyncIterator[httpx.AsyncClient]:
    """The API of a server without an engine (a client of the store)."""
    async for http in _api(client):
        yield http


async def test_bulk_cancel_needs_a_filter_and_an_explicit_confirmation(
    client: Store, api: httpx.AsyncClient
) -> None:
    """No filter, a bad filter or no confirm=true: a 400 that says why, nothing changed;
    without confirm the answer names how many would be cancelled."""
    for n in range(3):
        await put(client, f"n{n}", metadata={"team": "data"})
    await put(client, "w", metadata={"team": "web"})
    url = "/api/processes/cancel"
    for params, message in [
        ({}, "needs a filter"),
        ({"confirm": "true"}, "needs a filter"),
        ({"state": "done", "confirm": "true"}, "matches nothing to cancel"),
        ({"state": "bogus", "confirm": "true"}, "unknown state"),
        ({"metadataFilter": "{not json", "confirm": "true"}, "not valid JSON"),
        ({"metadata.team": "data", "confirm": "true"}, "Legacy"),
        ({"state": "scheduled", "confirm": "maybe"}, "confirm"),
        ({"state": "scheduled", "confirm": "true", "limit": "0"}, "limit"),
    ]:
        answer = await api.post(url, params=params)
        assert answer.status_code == 400, (params, answer.text)
        assert message in answer.json()["message"], (params, answer.json())
    unconfirmed = await api.post(url, params={"metadataFilter": json.dumps({"team": "data"})})
    assert unconfirmed.status_code == 400
    body = unconfirmed.json()
    assert body["reason"] == "confirmation-needed" and body["matched"] == 3
    assert "matches 3 cancellable processes" in body["message"]
    assert "confirm=true" in body["message"]
    assert len(await client.list(state=[S.SCHEDULED])) == 4


async def test_bulk_cancel_with_confirm_cancels_what_the_filters_match(
    client: Store, api: httpx.AsyncClient
) -> None:
    """``state`` (repeated or a comma list), ``rootId``, ``metadataFilter``'s predicates,
    ``reason`` and ``limit``; the answer is ``{matched, cancelled, refused}``."""
    for n in range(4):
        await put(client, f"n{n}", metadata={"tier": n})
    await put(client, "locked", metadata={"tier": 9}, cancellable=False)
    predicate = json.dumps({"metadata.tier": {"gte": 2}})
    answer = await api.post(
        "/api/processes/cancel",
        params={"metadataFilter": predicate, "confirm": "true", "state": "scheduled,running"},
    )
    assert answer.status_code == 200, answer.text
    assert answer.json() == {
        "matched": 3,
        "cancelled": ["n2", "n3"],
        "refused": [
            {
                "processId": "locked",
                "reason": "not-cancellable",
                "message": "process 'locked' is defined with cancellable=False",
            }
        ],
    }
    root = await put(client, "root", S.RUNNING, cancellable=False)
    await put(client, "root/c", S.RUNNING, parent=root)
    limited = await api.post(
        "/api/processes/cancel",
        params=[("rootId", "root"), ("state", "running"), ("confirm", "true"), ("limit", "1")],
    )
    assert limited.json()["matched"] == 1 and limited.json()["cancelled"] == []
    assert [r["processId"] for r in limited.json()["refused"]] == ["root"]
    with_reason = await api.post(
        "/api/processes/cancel",
        params={"rootId": "root", "confirm": "true", "reason": "tidy up"},
    )
    assert with_reason.json()["matched"] == 2
    assert with_reason.json()["cancelled"] == ["root/c"]
    part = await client.get("root/c")
    assert part is not None and part.state is S.CANCEL_REQUESTED
    assert "cancel requested: tidy up (by api)" in [e.message for e in part.log]


async def test_bulk_cancel_is_not_taken_for_a_process_named_cancel(
    client: Store, api: httpx.AsyncClient
) -> None:
    """``/processes/cancel`` is the bulk route; a process called ``cancel`` is still read
    at ``/processes/cancel`` and cancelled at ``/processes/cancel/cancel``."""
    missing = await api.get("/api/processes/cancel")
    assert missing.status_code == 404 and missing.json() == {"message": "Process not found"}
    await put(client, "cancel")
    assert (await api.get("/api/processes/cancel")).json()["processId"] == "cancel"
    assert (await api.post("/api/processes/cancel")).status_code == 400  # the bulk route
    one = await api.post("/api/processes/cancel/cancel")
    assert one.status_code == 200 and one.json()["status"]["state"] == "cancelled"


async def test_group_cancel_over_the_api_reaches_every_run_of_the_tree(
    store_url: tuple[str, str], client: Store, api: httpx.AsyncClient
) -> None:
    """``?group=true`` answers the root's document; the worker ends the whole tree
    cancelled. An unknown id is optio's 404, a group with nothing to cancel a 409."""
    async with slow_worker(store_url, task("tree", tree)) as w:
        await launch(client, "tree")
        await eventually(states_are(client, TREE, S.RUNNING))
        answer = await api.post("/api/processes/tree/cancel", params={"group": "true"})
        assert answer.status_code == 200, answer.text
        assert answer.json()["processId"] == "tree"
        assert answer.json()["status"]["state"] == "cancel_requested"
        await w.renew_once()
        await eventually(states_are(client, TREE, S.CANCELLED))
    again = await api.post("/api/processes/tree/cancel", params={"group": "true"})
    assert again.status_code == 409 and again.json()["reason"] == "not-cancellable"
    ghost = await api.post("/api/processes/ghost/cancel", params={"group": "true"})
    assert ghost.status_code == 404
    assert ghost.json() == {"reason": "not-found", "message": "Process not found"}


async def test_a_server_hosting_the_engine_stops_its_group_and_bulk_runs_at_once(
    store_url: tuple[str, str], client: Store
) -> None:
    """With ``engine=`` the server starts the cancel of the runs its engine holds right
    after the store write, without waiting for a renewal (10 s away here)."""
    async with slow_worker(store_url, task("tree", tree), task("t2", tree)) as w:
        async for http in _api(client, engine=w.engine):
            await launch(client, "tree")
            await eventually(states_are(client, TREE, S.RUNNING))
            grouped = await http.post("/api/processes/tree/cancel", params={"group": "true"})
            assert grouped.status_code == 200
            await eventually(states_are(client, TREE, S.CANCELLED), timeout=5)
            await launch(client, "t2")
            second = ["t2", "t2/a", "t2/b", "t2/a/x"]
            await eventually(states_are(client, second, S.RUNNING))
            bulk = await http.post(
                "/api/processes/cancel", params={"rootId": "t2", "confirm": "true"}
            )
            assert sorted(bulk.json()["cancelled"]) == sorted(second)
            await eventually(states_are(client, second, S.CANCELLED), timeout=5)


async def test_bulk_and_group_cancel_need_the_operator_role(client: Store) -> None:
    await put(client, "queued")
    tokens = {"op": "operator", "view": "viewer"}
    async for http in _api(client, tokens=tokens):
        routes = [
            ("/api/processes/cancel", {"state": "scheduled", "confirm": "true"}),
            ("/api/processes/queued/cancel", {"group": "true"}),
        ]
        for url, params in routes:
            assert (await http.post(url, params=params)).status_code == 401
            viewer = {"Authorization": "Bearer view"}
            assert (await http.post(url, params=params, headers=viewer)).status_code == 403
        record = await client.get("queued")
        assert record is not None and record.state is S.SCHEDULED
        operator = {"Authorization": "Bearer op"}
        done = await http.post("/api/processes/cancel", params=routes[0][1], headers=operator)
        assert done.status_code == 200 and done.json()["cancelled"] == ["queued"]
