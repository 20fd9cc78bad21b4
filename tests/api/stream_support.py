"""What the stream tests share: a small store, a feed over it, and readers of SSE text."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from taskwarden.api import Broadcaster
from taskwarden.api.broadcaster import Change
from taskwarden.processes import LogEntry, LogLevel, ProcessRecord
from taskwarden.stores.memory import MemoryStore

T0 = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)


def entry(message: str, seconds: int) -> LogEntry:
    return LogEntry(timestamp=T0 + timedelta(seconds=seconds), level=LogLevel.INFO, message=message)


@pytest.fixture
async def store() -> AsyncIterator[MemoryStore]:
    async with MemoryStore() as opened:
        await opened.create(ProcessRecord(process_id="root", name="Root", metadata={"team": "a"}))
        await opened.create(
            ProcessRecord(
                process_id="root.kid", name="Kid", parent_id="root", root_id="root", depth=1
            )
        )
        await opened.create(ProcessRecord(process_id="other", name="Other", metadata={"team": "b"}))
        yield opened


@pytest.fixture
async def feed(store: MemoryStore) -> AsyncIterator[Broadcaster]:
    broadcaster = Broadcaster(store, poll_interval=None, coalesce=0.01, queue_size=8, retain=4)
    await broadcaster.start()
    try:
        yield broadcaster
    finally:
        await broadcaster.close()


async def next_change(subscription: Any) -> Change:
    async with asyncio.timeout(5):
        change: Change = await anext(aiter(subscription))
        return change


def data(text: str) -> dict[str, Any]:
    lines = [line for line in text.splitlines() if line.startswith("data: ")]
    assert len(lines) == 1, text
    parsed: dict[str, Any] = json.loads(lines[0].removeprefix("data: "))
    return parsed


def event_id(text: str) -> int | None:
    for line in text.splitlines():
        if line.startswith("id: "):
            return int(line.removeprefix("id: "))
    return None


async def take(stream: AsyncIterator[str]) -> str:
    async with asyncio.timeout(5):
        return await anext(stream)


def frames_of(chunk: str) -> list[str]:
    """The SSE frames in a chunk of a stream (a multiplexed change is one chunk)."""
    return [text for text in chunk.split("\n\n") if text]


def topics_and_types(chunk: str) -> list[tuple[str | None, str]]:
    return [(data(text).get("topic"), data(text)["type"]) for text in frames_of(chunk)]


def ids_of(chunk: str) -> list[int | None]:
    return [event_id(text) for text in frames_of(chunk)]
