"""The change feed and the SSE streams: one read per change, whatever the clients."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import uvicorn

from taskwarden.api import Broadcaster, create_app
from taskwarden.api.filters import parse_filter
from taskwarden.api.multiplex import multiplexed_stream, parse_topics
from taskwarden.api.streams import Topic, list_stream, tree_stream
from taskwarden.bus.local import LocalBus
from taskwarden.engine import ProcessContext
from taskwarden.processes import ProcessRecord, ProcessState
from taskwarden.stores import open_store
from taskwarden.stores.memory import MemoryStore
from tests.api.stream_support import (
    data,
    entry,
    event_id,
    feed,
    frames_of,
    ids_of,
    next_change,
    store,
    take,
    topics_and_types,
)
from tests.engine_support import StateLog, started_engine, task

__all__ = ["feed", "store"]  # fixtures

S = ProcessState


# ------------------------------------------------------------------ the feed
async def test_a_burst_of_notifications_is_one_change_and_one_read(
    feed: Broadcaster, store: MemoryStore
) -> None:
    subscription = feed.subscribe()
    reads = feed.store_reads
    for percent in range(1000):
        await store.update_progress("root", percent / 10, f"step {percent}")
        feed.notify("root")
    change = await next_change(subscription)
    assert change.seq == 1
    assert [p.process_id for p in change.processes] == ["root"]
    record = change.processes[0].record
    assert record is not None and record.progress_percent == 99.9
    assert feed.store_reads == reads + 1
    assert subscription.queue.empty()


async def test_store_reads_do_not_grow_with_the_number_of_clients(
    feed: Broadcaster, store: MemoryStore
) -> None:
    subscriptions = [feed.subscribe() for _ in range(50)]
    reads = feed.store_reads
    await store.update_progress("other", 40, "forty")
    feed.notify("other")
    changes = [await next_change(s) for s in subscriptions]
    assert {c.seq for c in changes} == {1}
    assert feed.store_reads == reads + 1
    assert feed.subscribers == 50


async def test_a_client_that_falls_behind_is_told_to_resync_not_waited_for(
    feed: Broadcaster, store: MemoryStore
) -> None:
    slow = feed.subscribe()
    fast = feed.subscribe()
    for step in range(12):  # queue_size is 8
        await store.update_progress("root", step, None)
        feed.notify("root")
        await next_change(fast)
    assert slow.overflowed
    assert slow.queue.qsize() <= 8
    assert feed.seq == 12


async def test_since_replays_retained_changes_and_refuses_old_ones(
    feed: Broadcaster, store: MemoryStore
) -> None:
    watcher = feed.subscribe()
    for step in range(6):  # retain is 4
        await store.update_progress("root", step, None)
        feed.notify("root")
        await next_change(watcher)
    assert feed.since(6) == []
    replay = feed.since(3)
    assert replay is not None and [c.seq for c in replay] == [4, 5, 6]
    assert feed.since(1) is None
    assert feed.since(99) is None


async def test_log_deltas_and_a_reset_log(feed: Broadcaster, store: MemoryStore) -> None:
    watcher = feed.subscribe()
    await store.update_progress("root", None, None, [entry("one", 1), entry("two", 2)])
    feed.notify("root")
    first = (await next_change(watcher)).processes[0]
    assert [e.message for e in first.new_log] == ["one", "two"] and not first.log_cleared
    await store.update_progress("root", None, None, [entry("three", 3)])
    feed.notify("root")
    second = (await next_change(watcher)).processes[0]
    assert [e.message for e in second.new_log] == ["three"]
    await store.transition("root", [S.IDLE], S.SCHEDULED)
    await store.transition("root", [S.SCHEDULED], S.RUNNING, log=(entry("fresh", 9),))
    feed.notify("root")
    third = (await next_change(watcher)).processes[0]
    assert third.log_cleared and [e.message for e in third.new_log] == ["fresh"]


async def test_a_deleted_process_is_a_change_without_record(
    feed: Broadcaster, store: MemoryStore
) -> None:
    watcher = feed.subscribe()
    await store.delete("other")
    feed.notify("other")
    change = (await next_change(watcher)).processes[0]
    assert change.record is None and change.previous is not None
    assert "other" not in feed.records


async def test_bus_events_of_other_workers_feed_it(store: MemoryStore) -> None:
    async with LocalBus() as bus:
        broadcaster = Broadcaster(store, bus=bus, coalesce=0.01)
        await broadcaster.start()
        try:
            watcher = broadcaster.subscribe()
            await store.update_progress("other", 70, "from another worker")
            await bus.publish("taskwarden.process.progress", {"process_id": "other"})
            change = await next_change(watcher)
            record = change.processes[0].record
            assert record is not None and record.progress_message == "from another worker"
        finally:
            await broadcaster.close()


async def test_without_a_bus_one_poll_per_interval_sees_other_writers(
    store: MemoryStore,
) -> None:
    broadcaster = Broadcaster(store, poll_interval=0.01, coalesce=0.0)
    await broadcaster.start()
    try:
        watchers = [broadcaster.subscribe() for _ in range(5)]
        await store.update_progress("root", 5, "written elsewhere")
        changes = [await next_change(w) for w in watchers]
        record = changes[0].processes[0].record
        assert record is not None and record.progress_message == "written elsewhere"
    finally:
        await broadcaster.close()


async def test_coalescing_is_per_process_a_busy_one_never_delays_a_quiet_one(
    feed: Broadcaster, store: MemoryStore
) -> None:
    feed.coalesce = 0.5
    watcher = feed.subscribe()
    loop = asyncio.get_running_loop()
    await store.update_progress("root", 1, "first")
    started = loop.time()
    feed.notify("root")
    await next_change(watcher)
    first = loop.time()
    assert first - started < feed.coalesce  # a change after a quiet spell goes out at once
    await store.update_progress("root", 2, "second")
    feed.notify("root")  # inside root's window: it waits
    await store.update_progress("other", 3, "third")
    feed.notify("other")  # other was quiet: it goes out at once, alone
    quiet = await next_change(watcher)
    assert loop.time() - first < feed.coalesce
    assert [p.process_id for p in quiet.processes] == ["other"]
    await store.update_progress("root", 4, "fourth")
    feed.notify("root")
    await store.update_progress("other", 5, "fifth")
    feed.notify("other")  # now inside its own window too
    busy = await next_change(watcher)
    assert loop.time() - first >= feed.coalesce  # root at most once per window
    assert busy.processes[0].process_id == "root"
    root = busy.processes[0].record
    assert root is not None and root.progress_message == "fourth"  # the newest, once
    messages = {p.process_id: p.record.progress_message for p in busy.processes if p.record}
    if "other" not in messages:  # its window ends a moment after root's
        late = await next_change(watcher)
        messages.update(
            (p.process_id, p.record.progress_message) for p in late.processes if p.record
        )
    assert messages == {"root": "fourth", "other": "fifth"}
    assert watcher.queue.empty()


async def test_without_a_bus_the_poll_reads_only_what_changed_and_sees_deletions(
    tmp_path: Any,
) -> None:
    url = f"sqlite:///{tmp_path / 'feed.db'}"
    async with open_store(url) as mine, open_store(url) as theirs:
        for i in range(50):
            await theirs.create(ProcessRecord(process_id=f"p{i}", name=f"P{i}"))
        calls: list[str] = []
        for verb in ("list", "changed_since", "count", "get_many"):
            real = getattr(mine, verb)

            def counted(*args: Any, _real: Any = real, _verb: str = verb, **kwargs: Any) -> Any:
                calls.append(_verb)
                return _real(*args, **kwargs)

            setattr(mine, verb, counted)
        broadcaster = Broadcaster(mine, poll_interval=0.02, coalesce=0.0)
        await broadcaster.start()
        try:
            watcher = broadcaster.subscribe()
            await theirs.update_progress("p7", 70, "written by another process")
            change = await next_change(watcher)
            record = change.processes[0].record
            assert record is not None and record.progress_message == "written by another process"
            await theirs.delete("p8")
            gone = await next_change(watcher)
            assert [(p.process_id, p.record) for p in gone.processes] == [("p8", None)]
            assert "p8" not in broadcaster.records and len(broadcaster.records) == 49
            # One full read at the start and one after the deletion; the ticks read changes.
            assert calls.count("list") == 2
            assert calls.count("changed_since") >= 2 and calls.count("count") >= 1
        finally:
            await broadcaster.close()


async def test_an_engines_changes_and_progress_flushes_reach_it_without_store_reads() -> None:
    release = asyncio.Event()

    async def chatty(ctx: ProcessContext) -> None:
        for step in range(200):
            ctx.report_progress(step / 2, f"step {step}")
            await asyncio.sleep(0)
        await release.wait()

    async with started_engine(task("chatty", chatty)) as engine:
        broadcaster = Broadcaster(engine.store, engine=engine, poll_interval=None, coalesce=0.01)
        await broadcaster.start()
        try:
            watcher = broadcaster.subscribe()
            states = StateLog(engine)
            await engine.launch("chatty")
            await states.wait_for("chatty", S.RUNNING)
            seen: list[str] = []
            async with asyncio.timeout(5):
                while not seen or seen[-1] != "step 199":
                    change = await next_change(watcher)
                    seen.extend(
                        p.record.progress_message
                        for p in change.processes
                        if p.record is not None and p.record.progress_message
                    )
            assert len(seen) < 200  # coalesced: far fewer changes than reports
            release.set()
            await states.wait_for("chatty", S.DONE)
        finally:
            await broadcaster.close()


# ------------------------------------------------------------------ the streams
async def test_list_stream_starts_with_retry_and_a_snapshot_then_filtered_updates(
    feed: Broadcaster, store: MemoryStore
) -> None:
    stream = list_stream(feed, parse_filter('{"team": "a"}'), keepalive=0.05)
    assert (await take(stream)).startswith("retry: ")
    snapshot = await take(stream)
    assert event_id(snapshot) == 0
    first = data(snapshot)
    assert first["type"] == "update"
    assert [p["processId"] for p in first["processes"]] == ["root"]
    assert "log" not in first["processes"][0]

    await store.update_progress("other", 1, "not ours")  # filtered out: no frame
    feed.notify("other")
    assert (await take(stream)) == ": keepalive\n\n"
    await store.update_progress("root", 30, "ours")
    feed.notify("root")
    frame = await take(stream)
    assert event_id(frame) == 2
    assert data(frame)["processes"][0]["progress"] == {"percent": 30.0, "message": "ours"}
    await feed.close()
    assert data(await take(stream)) == {"type": "shutdown"}
    with pytest.raises(StopAsyncIteration):
        await take(stream)


async def test_list_stream_resumed_at_the_current_id_skips_the_snapshot(
    feed: Broadcaster, store: MemoryStore
) -> None:
    watcher = feed.subscribe()
    await store.update_progress("root", 1, None)
    feed.notify("root")
    await next_change(watcher)
    stream = list_stream(feed, None, last_event_id=1, keepalive=0.05)
    assert (await take(stream)).startswith("retry: ")
    assert (await take(stream)) == ": keepalive\n\n"
    stale = list_stream(feed, None, last_event_id=0, keepalive=0.05)
    await take(stale)
    assert data(await take(stale))["type"] == "update"


async def test_tree_stream_sends_rows_then_log_then_deltas_and_clears(
    feed: Broadcaster, store: MemoryStore
) -> None:
    await store.update_progress("root", None, None, [entry("root says", 1)])
    await store.update_progress("root.kid", None, None, [entry("kid says", 2)])
    feed.notify("root")
    feed.notify("root.kid")
    await next_change(feed.subscribe())

    stream = tree_stream(feed, "root", None, keepalive=0.05)
    await take(stream)  # retry
    assert data(await take(stream)) == {"type": "log-clear"}
    rows = data(await take(stream))
    assert rows["type"] == "update"
    assert [p["processId"] for p in rows["processes"]] == ["root", "root.kid"]
    log = data(await take(stream))
    assert log["type"] == "log"
    assert [(e["processId"], e["message"], e["processLabel"]) for e in log["entries"]] == [
        ("root", "root says", "Root"),
        ("root.kid", "kid says", "Kid"),
    ]

    await store.update_progress("root.kid", 50, None, [entry("kid again", 3)])
    feed.notify("root.kid")
    update = data(await take(stream))
    assert update["type"] == "update"
    kid = next(p for p in update["processes"] if p["processId"] == "root.kid")
    assert kid["progress"]["percent"] == 50.0
    gained = data(await take(stream))
    assert [e["message"] for e in gained["entries"]] == ["kid again"]

    await store.update_progress("other", 1, None, [entry("elsewhere", 4)])
    feed.notify("other")
    assert (await take(stream)) == ": keepalive\n\n"

    await store.transition("root", [S.IDLE], S.SCHEDULED)
    await store.transition("root", [S.SCHEDULED], S.RUNNING, log=(entry("new run", 5),))
    feed.notify("root")
    assert data(await take(stream)) == {"type": "log-clear"}
    assert data(await take(stream))["type"] == "update"
    rebuilt = data(await take(stream))
    assert [e["message"] for e in rebuilt["entries"]] == ["kid says", "kid again", "new run"]


async def test_tree_stream_resumes_from_a_retained_id_and_snapshots_an_old_one(
    feed: Broadcaster, store: MemoryStore
) -> None:
    watcher = feed.subscribe()
    await store.update_progress("root", None, None, [entry("before", 1)])
    feed.notify("root")
    await next_change(watcher)  # seq 1: the client saw this
    await store.update_progress("root", None, None, [entry("missed", 2)])
    feed.notify("root")
    await next_change(watcher)  # seq 2: the client was away

    resumed = tree_stream(feed, "root", None, last_event_id=1, keepalive=0.05)
    await take(resumed)
    assert data(await take(resumed))["type"] == "update"
    replay = await take(resumed)
    assert event_id(replay) == 2
    assert [e["message"] for e in data(replay)["entries"]] == ["missed"]

    for step in range(5):  # retain is 4: seq 1 falls out
        await store.update_progress("root", step, None)
        feed.notify("root")
        await next_change(watcher)
    fresh = tree_stream(feed, "root", None, last_event_id=1, keepalive=0.05)
    await take(fresh)
    assert data(await take(fresh)) == {"type": "log-clear"}


# ------------------------------------------------------------------ over HTTP
class CountingStore(MemoryStore):
    """A memory store that counts the reads made of it, whoever makes them."""

    def __init__(self) -> None:
        super().__init__()
        self.reads: dict[str, int] = {"get": 0, "list": 0}

    async def get(self, process_id: str) -> ProcessRecord | None:
        self.reads["get"] += 1
        return await super().get(process_id)

    async def list(self, *args: Any, **kwargs: Any) -> list[ProcessRecord]:
        self.reads["list"] += 1
        return await super().list(*args, **kwargs)


class SSEClient:
    """Frames of one streamed response, split on blank lines, each read within a bound."""

    def __init__(self, response: httpx.Response) -> None:
        self.chunks = response.aiter_text()
        self.buffer = ""

    async def next(self) -> str:
        async with asyncio.timeout(5):
            while "\n\n" not in self.buffer:
                self.buffer += await anext(self.chunks)
        text, self.buffer = self.buffer.split("\n\n", 1)
        return text

    async def next_data(self) -> list[str]:
        """The frames of the next change: every frame up to the one with an ``id:``."""
        out = []
        while True:
            text = await self.next()
            if text.startswith((":", "retry:")):
                continue
            out.append(text)
            if event_id(text) is not None:
                return out


@contextlib.asynccontextmanager
async def serving(app: Any) -> AsyncIterator[str]:
    """``app`` on a real uvicorn on a free loopback port (streams need one: the ASGI
    transport buffers whole responses); yields the base URL."""
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    task_ = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        async with asyncio.timeout(10):
            while not server.started:  # noqa: ASYNC110 - uvicorn offers no event
                await asyncio.sleep(0.01)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        await app.state.taskwarden.feed.close()
        server.should_exit = True
        await task_


async def test_over_http_streams_carry_sse_headers_and_live_frames() -> None:
    release = asyncio.Event()

    async def waits(ctx: ProcessContext) -> None:
        ctx.log("info", "started")
        await release.wait()

    async with started_engine(task("waits", waits)) as engine:
        app = create_app(engine.store, engine=engine, coalesce=0.01, keepalive=1.0)
        try:
            async with (
                asyncio.timeout(10),
                serving(app) as base,
                httpx.AsyncClient(base_url=base, timeout=10) as client,
                client.stream("GET", "/api/processes/stream") as response,
            ):
                assert response.headers["content-type"].startswith("text/event-stream")
                assert response.headers["cache-control"] == "no-cache"
                assert response.headers["x-accel-buffering"] == "no"
                assert "content-encoding" not in response.headers
                sse = SSEClient(response)
                assert (await sse.next()).startswith("retry: 3000")
                snapshot = data(await sse.next())
                assert snapshot["processes"][0]["status"]["state"] == "idle"
                launched = await client.post("/api/processes/waits/launch")
                assert launched.status_code == 200
                while True:
                    text = await sse.next()
                    if text.startswith(":"):
                        continue
                    rows = data(text)["processes"]
                    if rows[0]["status"]["state"] == "running":
                        break
        finally:
            release.set()


# ------------------------------------------------------------------ the multiplexed stream
async def test_multiplexed_stream_snapshots_every_topic_then_sends_frames_named_by_topic(
    feed: Broadcaster, store: MemoryStore
) -> None:
    await store.update_progress("root.kid", None, None, [entry("kid says", 1)])
    feed.notify("root.kid")
    await next_change(feed.subscribe())  # seq 1

    topics = parse_topics(["processes", "tree:root", "processes"], feed)
    assert [t.name for t in topics] == ["processes", "tree:root"]
    stream = multiplexed_stream(feed, topics, keepalive=0.05)
    assert (await take(stream)) == "retry: 3000\n\n"
    snapshot = await take(stream)
    assert topics_and_types(snapshot) == [
        ("processes", "update"),
        ("tree:root", "log-clear"),
        ("tree:root", "update"),
        ("tree:root", "log"),
    ]
    assert ids_of(snapshot) == [None, None, None, 1]  # the id closes the whole snapshot
    listed, _, rows, log = (data(text) for text in frames_of(snapshot))
    assert [p["processId"] for p in listed["processes"]] == ["other", "root", "root.kid"]
    assert [p["processId"] for p in rows["processes"]] == ["root", "root.kid"]
    assert [e["message"] for e in log["entries"]] == ["kid says"]

    await store.update_progress("root.kid", 60, None, [entry("kid again", 2)])
    feed.notify("root.kid")
    change = await take(stream)
    assert topics_and_types(change) == [
        ("processes", "update"),
        ("tree:root", "update"),
        ("tree:root", "log"),
    ]
    assert ids_of(change) == [None, None, 2]
    assert [e["message"] for e in data(frames_of(change)[2])["entries"]] == ["kid again"]

    await store.update_progress("other", 10, "outside the tree")
    feed.notify("other")
    outside = await take(stream)
    assert topics_and_types(outside) == [("processes", "update")]
    assert ids_of(outside) == [3]

    assert (await take(stream)) == ": keepalive\n\n"
    await feed.close()
    assert data(await take(stream)) == {"type": "shutdown"}
    with pytest.raises(StopAsyncIteration):
        await take(stream)


async def test_multiplexed_stream_resumes_every_topic_from_the_last_event_id(
    feed: Broadcaster, store: MemoryStore
) -> None:
    watcher = feed.subscribe()
    await store.update_progress("root", None, None, [entry("seen", 1)])
    feed.notify("root")
    await next_change(watcher)  # seq 1: the client saw this
    await store.update_progress("root", 20, None, [entry("missed", 2)])
    feed.notify("root")
    await next_change(watcher)  # seq 2: the client was away

    def topics() -> list[Topic]:
        return parse_topics(["processes", "tree:root"], feed)

    resumed = multiplexed_stream(feed, topics(), last_event_id=1, keepalive=0.05)
    await take(resumed)
    replay = await take(resumed)
    assert topics_and_types(replay) == [
        ("processes", "update"),
        ("tree:root", "update"),
        ("tree:root", "log"),
    ]
    assert ids_of(replay)[-1] == 2
    assert [e["message"] for e in data(frames_of(replay)[2])["entries"]] == ["missed"]

    current = multiplexed_stream(feed, topics(), last_event_id=2, keepalive=0.05)
    await take(current)
    assert (await take(current)) == ": keepalive\n\n"  # up to date: nothing to send

    for step in range(5):  # retain is 4: seq 1 falls out
        await store.update_progress("root", step, None)
        feed.notify("root")
        await next_change(watcher)
    too_old = multiplexed_stream(feed, topics(), last_event_id=1, keepalive=0.05)
    await take(too_old)
    fresh = await take(too_old)
    assert topics_and_types(fresh)[:2] == [("processes", "update"), ("tree:root", "log-clear")]
    assert ids_of(fresh)[-1] == 7


async def test_a_multiplexed_client_that_falls_behind_gets_one_snapshot_and_no_repeats(
    feed: Broadcaster, store: MemoryStore
) -> None:
    stream = multiplexed_stream(feed, parse_topics(["processes", "tree:root"], feed))
    await take(stream)
    await take(stream)  # the snapshot; the stream then reads nothing for a while
    watcher = feed.subscribe()
    for step in range(12):  # queue_size is 8
        await store.update_progress("root", step, None, [entry(f"step {step}", step)])
        feed.notify("root")
        await next_change(watcher)
    resync = await take(stream)
    assert topics_and_types(resync)[:2] == [("processes", "update"), ("tree:root", "log-clear")]
    assert ids_of(resync)[-1] == 12
    log = data(frames_of(resync)[-1])
    assert [e["message"] for e in log["entries"]] == [f"step {n}" for n in range(12)]
    # The changes the snapshot already holds are not sent again.
    await store.update_progress("root", 99, None, [entry("after", 20)])
    feed.notify("root")
    after = await take(stream)
    assert ids_of(after)[-1] == 13
    assert [e["message"] for e in data(frames_of(after)[-1])["entries"]] == ["after"]


def test_topics_must_be_known_and_few() -> None:
    from taskwarden.errors import ConfigurationError

    feed = Broadcaster(MemoryStore(), poll_interval=None)
    with pytest.raises(ConfigurationError, match="'trees:x' is unknown"):
        parse_topics(["processes", "trees:x"], feed)
    with pytest.raises(ConfigurationError, match="no topic"):
        parse_topics([], feed)
    with pytest.raises(ConfigurationError, match="'tree:' is unknown"):
        parse_topics(["tree:"], feed)
    with pytest.raises(ConfigurationError, match="16 at most"):
        parse_topics([f"tree:p{n}" for n in range(17)], feed)
    assert parse_topics(["tree:a:b,c"], feed)[0].name == "tree:a:b,c"


async def test_over_http_n_multiplexed_clients_cost_the_store_what_one_does() -> None:
    store = CountingStore()
    async with store:
        await store.create(ProcessRecord(process_id="root", name="Root"))
        await store.create(
            ProcessRecord(process_id="root.kid", name="Kid", parent_id="root", root_id="root")
        )
        app = create_app(store, poll_interval=3600, coalesce=0.01, keepalive=0.2)
        feed: Broadcaster = app.state.taskwarden.feed
        async with serving(app) as base, httpx.AsyncClient(base_url=base, timeout=10) as client:
            refused = await client.get("/api/stream", params={"topic": "nope"})
            assert refused.status_code == 400 and "'nope' is unknown" in refused.json()["message"]
            query = {"topic": ["processes", "tree:root"]}
            async with contextlib.AsyncExitStack() as streams:
                responses = [
                    await streams.enter_async_context(
                        client.stream("GET", "/api/stream", params=query)
                    )
                    for _ in range(10)
                ]
                headers = responses[0].headers
                assert headers["content-type"].startswith("text/event-stream")
                assert headers["cache-control"] == "no-cache"
                assert headers["x-accel-buffering"] == "no"
                assert "content-encoding" not in headers
                clients = [SSEClient(response) for response in responses]
                assert (await clients[0].next()) == "retry: 3000"
                for sse in clients:
                    snapshot = await sse.next_data()
                    assert [data(t).get("topic") for t in snapshot] == ["processes"] + [
                        "tree:root"
                    ] * 3
                reads = dict(store.reads)
                assert reads == {"get": 0, "list": 1}  # the feed's start; no client read

                await store.update_progress("root.kid", 40, "forty")
                feed.notify("root.kid")
                for sse in clients:
                    frames = await sse.next_data()
                    rows = data(frames[-1])["processes"]
                    assert data(frames[-1])["topic"] == "tree:root"
                    assert rows[1]["progress"] == {"percent": 40.0, "message": "forty"}
                assert store.reads == {"get": 1, "list": 1}  # one read for ten clients
                assert feed.subscribers == 10

            # The Last-Event-ID header (a browser's reconnect) wins over a stale query id.
            async with client.stream(
                "GET",
                "/api/stream",
                params={"topic": "processes", "lastEventId": "0"},
                headers={"Last-Event-ID": str(feed.seq)},
            ) as response:
                sse = SSEClient(response)
                assert (await sse.next()) == "retry: 3000"
                assert (await sse.next()) == ": keepalive"
