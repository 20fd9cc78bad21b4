"""``GET /api/stream``: several topics in one server-sent event stream.

Browsers allow about six HTTP/1.1 connections per origin, and each ``EventSource`` holds
one for as long as it is open, so a page that opens a stream per widget soon has requests
waiting for a free connection. The dashboard therefore opens one stream, which carries
every topic it shows: ``?topic=processes&topic=tree:ingest``.

The topics are in the URL, and a page that wants others opens a new stream (closing the
old one first), instead of a long-lived stream whose subscriptions are changed by
``POST``s keyed by a stream id. The URL alone says what a stream carries, so a browser's
automatic reconnect (which repeats the URL and sends ``Last-Event-ID``) gets the right
topics from any server, after a restart too; the server keeps no state per stream id to
expire, authorise and keep in order with the frames. A topic change costs one fresh
snapshot, which is what every list ``update`` is anyway.

Frames are unnamed ``data:`` JSON objects as in optio's streams, each with the ``topic``
it belongs to (``{"topic": "tree:ingest", "type": "log", "entries": [...]}``), plus the
stream's own ``{"type": "shutdown"}``. The frames of one change, over every topic, are
sent together, and only the last of them carries the ``id:``: a connection lost in the
middle of a change resumes before it, so no topic misses that change's frames.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterable
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import StreamingResponse

from taskwarden.api.filters import parse_filter
from taskwarden.api.streams import (
    RETRY_MS,
    STREAM_HEADERS,
    Batch,
    ChangesTopic,
    ListTopic,
    Topic,
    TreeTopic,
    frame,
    live_frames,
)
from taskwarden.errors import ConfigurationError

if TYPE_CHECKING:
    from taskwarden.api.broadcaster import Broadcaster
    from taskwarden.api.filters import MetadataPredicate
    from taskwarden.api.routes import Service

__all__ = ["MAX_TOPICS", "multiplexed_stream", "parse_topics", "stream_router"]

MAX_TOPICS = 16
"""The most topics one stream may carry (each costs the server work on every change)."""

stream_router = APIRouter(prefix="/api")


def parse_topics(
    names: Iterable[str],
    feed: Broadcaster,
    *,
    predicate: MetadataPredicate | None = None,
    max_depth: int | None = None,
) -> list[Topic]:
    """The topics named ``processes``, ``changes`` or ``tree:<process id>``, in order,
    without repeats.

    Raises:
        ConfigurationError: no topic, an unknown one, or more than :data:`MAX_TOPICS`.
    """
    topics: dict[str, Topic] = {}
    for name in names:
        if name in topics:
            continue
        if name == ListTopic.name:
            topics[name] = ListTopic(feed, predicate)
        elif name == ChangesTopic.name:
            topics[name] = ChangesTopic(feed, predicate)
        elif name.startswith("tree:") and len(name) > len("tree:"):
            topics[name] = TreeTopic(feed, name.removeprefix("tree:"), max_depth)
        else:
            raise ConfigurationError(
                f"topic {name!r} is unknown: pass topic=processes, topic=changes or "
                "topic=tree:<process id>"
            )
    if not topics:
        raise ConfigurationError(
            "no topic: pass topic=processes, topic=changes and/or topic=tree:<process id>"
        )
    if len(topics) > MAX_TOPICS:
        raise ConfigurationError(f"{len(topics)} topics: one stream carries {MAX_TOPICS} at most")
    return list(topics.values())


def _batch_text(batch: Batch) -> str:
    seq, per_topic = batch
    payloads: list[tuple[dict[str, Any], str]] = [
        (payload, topic.name) for topic, frames in per_topic for payload, _ in frames
    ]
    if not payloads:
        return ""
    *head, (last, last_topic) = payloads
    text = "".join(frame(payload, topic=name) for payload, name in head)
    return text + frame(last, seq, topic=last_topic)


async def multiplexed_stream(
    feed: Broadcaster,
    topics: Iterable[Topic],
    *,
    last_event_id: int | None = None,
    keepalive: float = 15.0,
) -> AsyncIterator[str]:
    """The frames of every topic in one stream: ``retry:``, a snapshot (or the replay
    since ``last_event_id``) of each topic, then each change's frames, keepalives, and
    ``{"type": "shutdown"}`` when the feed closes."""
    async with contextlib.aclosing(
        live_frames(feed, topics, last_event_id=last_event_id, keepalive=keepalive)
    ) as batches:
        first = await anext(batches)  # subscribed, and the snapshot taken, as the response starts
        yield f"retry: {RETRY_MS}\n\n"
        batch: Batch | None = first
        while True:
            if batch is None:
                yield ": keepalive\n\n"
            elif text := _batch_text(batch):
                yield text
            try:
                batch = await anext(batches)
            except StopAsyncIteration:
                break
    yield frame({"type": "shutdown"})


def _last_event_id(header: str | None, query: str | None) -> int | None:
    # The header first: a browser's automatic reconnect repeats the URL (with the id the
    # page passed when it opened the stream) and sends the newest id in the header.
    for value in (header, query):
        if value is not None and value.strip().isdigit():
            return int(value.strip())
    return None


@stream_router.get("/stream", summary="Several topics in one live stream (SSE)")
async def stream(
    request: Request,
    topic: Annotated[
        list[str],
        Query(description="processes, changes, or tree:<process id>; repeat for several"),
    ],
    metadata_filter: Annotated[
        str | None, Query(alias="metadataFilter", description="filters the processes topic")
    ] = None,
    max_depth: Annotated[
        int | None, Query(ge=0, alias="maxDepth", description="levels below, for tree topics")
    ] = None,
    last_event_id: Annotated[str | None, Query(alias="lastEventId")] = None,
) -> StreamingResponse:
    """Frames of optio's streams, each with its ``topic``; one connection per page."""
    service: Service = request.app.state.taskwarden
    topics = parse_topics(
        topic, service.feed, predicate=parse_filter(metadata_filter), max_depth=max_depth
    )
    await service.feed.start()
    seen = _last_event_id(request.headers.get("last-event-id"), last_event_id)
    return StreamingResponse(
        multiplexed_stream(service.feed, topics, last_event_id=seen, keepalive=service.keepalive),
        media_type="text/event-stream",
        headers=STREAM_HEADERS,
    )
