"""Server-sent event streams in optio's format, computed from the broadcaster's cache.

Frames are unnamed ``data:`` JSON objects discriminated by ``type`` (``update``, ``log``,
``log-clear``), the first one a full snapshot, so optio's UI reads them as it reads
optio's. taskwarden adds what optio lacks: ``retry:`` first, an ``id:`` on every frame
that is a resume point (the broadcaster's change number), resumption from
``Last-Event-ID`` or ``?lastEventId=`` (a fresh snapshot when the id is too old), a
``: keepalive`` comment when a stream has been idle for ``keepalive`` seconds, and a last
``{"type": "shutdown"}`` frame when the server stops.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterable
from typing import TYPE_CHECKING, Any

from taskwarden.documents import process_document

if TYPE_CHECKING:
    from taskwarden.api.broadcaster import Broadcaster, Change, Subscription
    from taskwarden.api.filters import MetadataPredicate
    from taskwarden.processes import ProcessRecord

__all__ = ["STREAM_HEADERS", "list_stream", "parse_last_event_id", "tree_stream"]

STREAM_HEADERS = {
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",
    "Connection": "keep-alive",
}
RETRY_MS = 3000


def frame(payload: dict[str, Any], event_id: int | None = None) -> str:
    """One SSE frame: an optional ``id:`` line and one ``data:`` line of JSON."""
    data = json.dumps(payload, separators=(",", ":"), default=str)
    prefix = f"id: {event_id}\n" if event_id is not None else ""
    return f"{prefix}data: {data}\n\n"


def parse_last_event_id(header: str | None, query: str | None) -> int | None:
    """The change number a reconnecting client has seen, or None (unknown or malformed:
    the client simply gets a snapshot)."""
    for value in (query, header):
        if value is not None and value.strip().isdigit():
            return int(value.strip())
    return None


def summary(record: ProcessRecord) -> dict[str, Any]:
    """A process for a stream: the document without its log (logs go in ``log`` frames)."""
    doc = process_document(record)
    del doc["log"]
    return doc


KEEPALIVE = "keepalive"
RESYNC = "resync"


async def _changes(subscription: Subscription, keepalive: float) -> AsyncIterator[Change | str]:
    """The live changes of a subscription taken before the snapshot was built (so none is
    missed), with :data:`KEEPALIVE` after ``keepalive`` idle seconds and :data:`RESYNC`
    when the client fell behind and needs a snapshot."""
    try:
        while True:
            try:
                # The queue, not the subscription's iterator: a timeout cancels this get,
                # and cancelling an async generator's step would end the generator.
                change = await asyncio.wait_for(subscription.queue.get(), keepalive)
            except TimeoutError:
                yield KEEPALIVE
                continue
            if change is None:
                return
            if subscription.overflowed:
                subscription.overflowed = False
                yield RESYNC
                continue
            yield change
    finally:
        subscription.close()


async def list_stream(
    feed: Broadcaster,
    predicate: MetadataPredicate | None,
    *,
    last_event_id: int | None = None,
    keepalive: float = 15.0,
) -> AsyncIterator[str]:
    """``GET /api/processes/stream``: every ``update`` frame is the whole filtered list."""

    def rows() -> list[dict[str, Any]]:
        return [
            summary(r)
            for r in sorted(feed.records.values(), key=lambda r: (r.depth, r.order, r.process_id))
            if predicate is None or predicate(r.metadata)
        ]

    def ids() -> set[str]:
        return {
            r.process_id
            for r in feed.records.values()
            if predicate is None or predicate(r.metadata)
        }

    # Subscribe, then build the first frame, with no await in between: no change is lost.
    subscription = feed.subscribe()
    baseline = feed.seq
    up_to_date = last_event_id is not None and feed.since(last_event_id) == []
    first = None if up_to_date else frame({"type": "update", "processes": rows()}, baseline)
    shown = ids()
    yield f"retry: {RETRY_MS}\n\n"
    if first is not None:
        yield first
    async for change in _changes(subscription, keepalive):
        if not isinstance(change, str) and change.seq <= baseline:
            continue
        if change == KEEPALIVE:
            yield ": keepalive\n\n"
            continue
        now = ids()
        if change == RESYNC or (not isinstance(change, str) and change.touches(now | shown)):
            shown = now
            yield frame({"type": "update", "processes": rows()}, feed.seq)
    yield frame({"type": "shutdown"})


async def tree_stream(
    feed: Broadcaster,
    root_id: str,
    max_depth: int | None,
    *,
    last_event_id: int | None = None,
    keepalive: float = 15.0,
) -> AsyncIterator[str]:
    """``GET /api/processes/{id}/tree/stream``: the subtree's rows, then its log.

    ``update`` carries every row of the subtree; ``log`` carries the entries the subtree's
    logs gained, each with ``processId`` and ``processLabel``; ``log-clear`` says a log was
    reset (the client drops what it shows, and the entries that follow rebuild it).
    """

    def members() -> list[ProcessRecord]:
        root = feed.records.get(root_id)
        if root is None:
            return []
        family = [r for r in feed.records.values() if r.root_id == root.root_id]
        children: dict[str | None, list[ProcessRecord]] = {}
        for record in family:
            children.setdefault(record.parent_id, []).append(record)
        found, frontier = [root], [root]
        while frontier:
            following: list[ProcessRecord] = []
            for node in frontier:
                if max_depth is None or node.depth - root.depth < max_depth:
                    following.extend(
                        sorted(
                            children.get(node.process_id, ()),
                            key=lambda r: (r.order, r.process_id),
                        )
                    )
            found.extend(following)
            frontier = following
        return found

    def entries(pairs: Iterable[tuple[ProcessRecord, Iterable[Any]]]) -> list[dict[str, Any]]:
        out = []
        for record, log in pairs:
            for entry in log:
                doc = entry.to_document()
                doc["processId"] = record.process_id
                doc["processLabel"] = record.name
                out.append((entry.timestamp, doc))
        out.sort(key=lambda item: item[0])
        return [doc for _, doc in out]

    def snapshot(seq: int) -> Iterable[str]:
        nodes = members()
        yield frame({"type": "log-clear"})
        yield frame({"type": "update", "processes": [summary(r) for r in nodes]}, seq)
        yield frame({"type": "log", "entries": entries((r, r.log) for r in nodes)}, seq)

    def delta(change: Change, nodes: list[ProcessRecord]) -> Iterable[str]:
        in_tree = {r.process_id for r in nodes}
        touched = [
            p
            for p in change.processes
            if p.process_id in in_tree or (p.previous is not None and p.previous.root_id == root_id)
        ]
        if not touched:
            return
        if any(p.log_cleared for p in touched):
            yield from snapshot(change.seq)
            return
        yield frame({"type": "update", "processes": [summary(r) for r in nodes]}, change.seq)
        gained = entries((p.record, p.new_log) for p in touched if p.record is not None)
        if gained:
            yield frame({"type": "log", "entries": gained}, change.seq)

    # Subscribe, then build the first frames, with no await in between: no change is lost
    # and none is sent twice (live changes up to ``baseline`` are in the first frames).
    subscription = feed.subscribe()
    baseline = feed.seq
    replay = feed.since(last_event_id) if last_event_id is not None else None
    nodes = members()
    if replay is None:
        first = list(snapshot(baseline))
    else:
        first = [text for change in replay for text in delta(change, nodes)]
    yield f"retry: {RETRY_MS}\n\n"
    for text in first:
        yield text
    async for live in _changes(subscription, keepalive):
        if not isinstance(live, str) and live.seq <= baseline:
            continue
        if live == KEEPALIVE:
            yield ": keepalive\n\n"
            continue
        if isinstance(live, str):
            for text in snapshot(feed.seq):
                yield text
            continue
        nodes = members()
        for text in delta(live, nodes):
            yield text
    yield frame({"type": "shutdown"})
