"""The ``changes`` topic: a paged list's live view, whatever the number of processes."""

from __future__ import annotations

import json
from typing import Any

import pytest

from taskwarden.api import Broadcaster
from taskwarden.api.filters import parse_filter
from taskwarden.api.multiplex import multiplexed_stream, parse_topics
from taskwarden.api.streams import ChangesTopic, list_stream
from taskwarden.processes import ProcessRecord, ProcessState
from taskwarden.stores.memory import MemoryStore
from tests.api.stream_support import (
    data,
    feed,
    frames_of,
    ids_of,
    next_change,
    store,
    take,
    topics_and_types,
)

__all__ = ["feed", "store"]  # fixtures

S = ProcessState


def counts_of(text: str) -> dict[str, int]:
    frame = data(text)
    assert frame["type"] == "counts", frame
    counts: dict[str, int] = frame["counts"]
    return {state: n for state, n in counts.items() if n}


async def test_snapshot_is_a_reset_and_the_counts_then_only_changed_rows(
    feed: Broadcaster, store: MemoryStore
) -> None:
    stream = multiplexed_stream(feed, parse_topics(["changes"], feed), keepalive=0.05)
    assert (await take(stream)).startswith("retry: ")
    snapshot = await take(stream)
    assert topics_and_types(snapshot) == [("changes", "reset"), ("changes", "counts")]
    assert ids_of(snapshot) == [None, 0]
    counted = data(frames_of(snapshot)[1])
    assert counted["total"] == 3 and counts_of(frames_of(snapshot)[1]) == {"idle": 3}

    await store.transition("other", [S.IDLE], S.SCHEDULED)
    feed.notify("other")
    change = await take(stream)
    assert topics_and_types(change) == [("changes", "changed"), ("changes", "counts")]
    changed = data(frames_of(change)[0])
    assert [row["processId"] for row in changed["processes"]] == ["other"]  # not the list
    assert changed["processes"][0]["status"]["state"] == "scheduled"
    assert "log" not in changed["processes"][0]
    assert changed["removed"] == []
    assert counts_of(frames_of(change)[1]) == {"idle": 2, "scheduled": 1}

    await store.update_progress("other", 30, "a third")
    feed.notify("other")
    progress = await take(stream)  # the counts did not move: no counts frame
    assert topics_and_types(progress) == [("changes", "changed")]
    assert ids_of(progress) == [2]

    await store.delete("other")
    feed.notify("other")
    gone = await take(stream)
    assert data(frames_of(gone)[0])["removed"] == ["other"]
    assert data(frames_of(gone)[0])["processes"] == []
    assert data(frames_of(gone)[1])["total"] == 2


async def test_a_filter_keeps_the_rows_it_matches_and_the_counts_stay_whole(
    feed: Broadcaster, store: MemoryStore
) -> None:
    topic = ChangesTopic(feed, parse_filter('{"team": "a"}'))
    await store.transition("other", [S.IDLE], S.SCHEDULED)  # team b: not shown, but counted
    feed.notify("other")
    first = await next_change(feed.subscribe())
    frames = topic.apply(first)
    assert [payload["type"] for payload, _ in frames] == ["counts"]
    await store.transition("root", [S.IDLE], S.SCHEDULED)
    feed.notify("root")
    second = await next_change(feed.subscribe())
    frames = topic.apply(second)
    assert [payload["type"] for payload, _ in frames] == ["changed", "counts"]
    assert [row["processId"] for row in frames[0][0]["processes"]] == ["root"]


async def test_resume_sends_what_the_missed_changes_touched_once_each(
    feed: Broadcaster, store: MemoryStore
) -> None:
    watcher = feed.subscribe()
    await store.update_progress("root", 10, "seen")
    feed.notify("root")
    await next_change(watcher)  # seq 1: the client saw it
    for step in (20, 30):  # seq 2 and 3: missed
        await store.update_progress("root", step, f"missed {step}")
        feed.notify("root")
        await next_change(watcher)
    await store.transition("root.kid", [S.IDLE], S.SCHEDULED)
    feed.notify("root.kid")
    await next_change(watcher)  # seq 4

    resumed = multiplexed_stream(feed, parse_topics(["changes"], feed), last_event_id=1)
    await take(resumed)
    replay = await take(resumed)
    assert topics_and_types(replay) == [("changes", "changed"), ("changes", "counts")]
    rows = data(frames_of(replay)[0])["processes"]
    assert sorted(row["processId"] for row in rows) == ["root", "root.kid"]
    root = next(row for row in rows if row["processId"] == "root")
    assert root["progress"]["message"] == "missed 30"  # the newest, once
    assert ids_of(replay)[-1] == 4

    too_old = multiplexed_stream(feed, parse_topics(["changes"], feed), last_event_id=-5)
    await take(too_old)
    assert topics_and_types(await take(too_old))[0] == ("changes", "reset")


async def test_a_frame_every_client_gets_alike_is_encoded_once(
    feed: Broadcaster, store: MemoryStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """100 clients of the list and of the changes topics cost one encoding per change
    each, not one per client (the fan-out dominated the event latency at 100 clients)."""
    lists = [list_stream(feed, None, keepalive=5) for _ in range(100)]
    changes = [
        multiplexed_stream(feed, parse_topics(["changes"], feed), keepalive=5) for _ in range(100)
    ]
    for stream in lists + changes:
        await take(stream)  # retry:
        await take(stream)  # the snapshot
    encoded: list[Any] = []
    real = json.dumps

    def counting(value: Any, **kwargs: Any) -> str:
        encoded.append(value)
        return real(value, **kwargs)

    monkeypatch.setattr(json, "dumps", counting)  # the streams module calls json.dumps
    await store.transition("other", [S.IDLE], S.SCHEDULED)
    feed.notify("other")
    list_frames = [data(await take(stream)) for stream in lists]
    change_chunks = [await take(stream) for stream in changes]
    assert all(
        [row["processId"] for row in frame["processes"]] == ["other", "root", "root.kid"]
        for frame in list_frames
    )
    assert all(
        data(frames_of(chunk)[0])["processes"][0]["processId"] == "other" for chunk in change_chunks
    )
    # One list, one changed frame and one counts frame, whatever the number of clients.
    assert len(encoded) == 3


def test_the_changes_topic_is_known_to_the_multiplexed_stream() -> None:
    feed = Broadcaster(MemoryStore(), poll_interval=None)
    assert [t.name for t in parse_topics(["changes", "processes", "changes"], feed)] == [
        "changes",
        "processes",
    ]


async def test_counts_follow_creations_transitions_and_deletions(
    feed: Broadcaster, store: MemoryStore
) -> None:
    assert feed.counts[S.IDLE] == 3
    watcher = feed.subscribe()
    await store.create(ProcessRecord(process_id="new", name="New"))
    await store.transition("root", [S.IDLE], S.SCHEDULED)
    await store.delete("other")
    for process_id in ("new", "root", "other"):
        feed.notify(process_id)
    await next_change(watcher)
    assert {state: n for state, n in feed.counts.items() if n} == {S.IDLE: 2, S.SCHEDULED: 1}
