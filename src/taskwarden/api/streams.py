"""Server-sent event streams in optio's format, computed from the broadcaster's cache.

Frames are unnamed ``data:`` JSON objects discriminated by ``type`` (``update``, ``log``,
``log-clear``), the first one a full snapshot, so optio's UI reads them as it reads
optio's. taskwarden adds what optio lacks: ``retry:`` first, an ``id:`` on every frame
that is a resume point (the broadcaster's change number), resumption from
``Last-Event-ID`` or ``?lastEventId=`` (a fresh snapshot when the id is too old), a
``: keepalive`` comment when a stream has been idle for ``keepalive`` seconds, and a last
``{"type": "shutdown"}`` frame when the server stops.

What a stream shows is a *topic*: :class:`ListTopic` (every process), :class:`TreeTopic`
(one process and its descendants, with their logs) or :class:`ChangesTopic` (only what
changed, and the counts by state: for a paged list of any size). A topic turns the feed's
cache and its changes into frames; the streams of optio's routes carry one topic each, and
the multiplexed stream (:mod:`taskwarden.api.multiplex`) carries several in one connection.

A frame that every client gets alike (a :class:`Shared` payload) is encoded once per
change, not once per client.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncGenerator, AsyncIterator, Iterable
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from taskwarden.api.broadcaster import Broadcaster, Change, ProcessChange, Subscription
    from taskwarden.api.filters import MetadataPredicate
    from taskwarden.processes import ProcessRecord

__all__ = [
    "STREAM_HEADERS",
    "ChangesTopic",
    "ListTopic",
    "Shared",
    "Topic",
    "TreeTopic",
    "list_stream",
    "parse_last_event_id",
    "tree_stream",
]

STREAM_HEADERS = {
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",
    "Connection": "keep-alive",
}
RETRY_MS = 3000

Payload = dict[str, Any]
Frames = list[tuple[Payload, int | None]]
"""A topic's frames: each payload with the ``id:`` it carries in a single-topic stream."""
Batch = tuple[int, list[tuple["Topic", Frames]]]
"""The frames of every topic for one change, with the change number they bring a client to."""


class Shared(dict[str, Any]):
    """A payload that every client of a change gets alike: its JSON is encoded once (and
    kept while it is among the last few encoded). Never change one after it is made."""

    __slots__ = ()


_ENCODED: dict[tuple[int, str | None], tuple[Payload, str]] = {}
_ENCODED_KEEP = 32


def _json(payload: Payload, topic: str | None) -> str:
    shared = isinstance(payload, Shared)
    if shared:
        hit = _ENCODED.get((id(payload), topic))
        if hit is not None and hit[0] is payload:
            return hit[1]
    body = payload if topic is None else {"topic": topic, **payload}
    text = json.dumps(body, separators=(",", ":"), default=str)
    if shared:
        if len(_ENCODED) >= _ENCODED_KEEP:
            del _ENCODED[next(iter(_ENCODED))]  # the oldest
        _ENCODED[(id(payload), topic)] = (payload, text)
    return text


def frame(payload: dict[str, Any], event_id: int | None = None, topic: str | None = None) -> str:
    """One SSE frame: an optional ``id:`` line and one ``data:`` line of JSON (with
    ``topic`` first in the object when given, as the multiplexed stream sends it)."""
    prefix = f"id: {event_id}\n" if event_id is not None else ""
    return f"{prefix}data: {_json(payload, topic)}\n\n"


def parse_last_event_id(header: str | None, query: str | None) -> int | None:
    """The change number a reconnecting client has seen, or None (unknown or malformed:
    the client simply gets a snapshot)."""
    for value in (query, header):
        if value is not None and value.strip().isdigit():
            return int(value.strip())
    return None


class Topic(Protocol):
    """What a stream shows, as frames computed from the feed's cache (never the store).

    A topic is one client's: it may remember what it sent. Every method is synchronous,
    so a stream builds its first frames right after subscribing, with no change between.
    """

    @property
    def name(self) -> str:
        """The topic as a multiplexed stream's client names it (``processes``, ``tree:ID``)."""
        ...

    def snapshot(self, seq: int) -> Frames:
        """Frames that replace whatever the client shows by the state as of ``seq``."""
        ...

    def resume(self, replay: list[Change] | None, seq: int) -> Frames:
        """The first frames for a client that has seen the changes up to some id:
        ``replay`` is what it missed (None when unknown or too old, ``[]`` when it is up
        to date); ``seq`` is the feed's current change number."""
        ...

    def apply(self, change: Change) -> Frames:
        """The frames of a live change (none when the change does not touch the topic)."""
        ...


class ListTopic:
    """Every process, filtered by metadata: each ``update`` frame is the whole list."""

    name = "processes"

    def __init__(self, feed: Broadcaster, predicate: MetadataPredicate | None) -> None:
        self.feed = feed
        self.predicate = predicate
        self._shown: set[str] = set()

    def _rows(self) -> list[dict[str, Any]]:
        records = sorted(self.feed.records.values(), key=lambda r: (r.depth, r.order, r.process_id))
        summary = self.feed.summary
        return [summary(r) for r in records if self.predicate is None or self.predicate(r.metadata)]

    def _update(self, seq: int) -> Payload:
        if self.predicate is not None:
            return {"type": "update", "processes": self._rows()}
        # Unfiltered, every client's list is the same: build and encode it once.
        return self.feed.memo("list", seq, lambda: Shared(type="update", processes=self._rows()))

    def _ids(self) -> set[str]:
        return {
            r.process_id
            for r in self.feed.records.values()
            if self.predicate is None or self.predicate(r.metadata)
        }

    def snapshot(self, seq: int) -> Frames:
        """One ``update`` with the whole filtered list."""
        self._shown = self._ids()
        return [(self._update(seq), seq)]

    def resume(self, replay: list[Change] | None, seq: int) -> Frames:
        """Nothing when the client is up to date, else the whole list (every frame is)."""
        if replay != []:
            return self.snapshot(seq)
        self._shown = self._ids()
        return []

    def apply(self, change: Change) -> Frames:
        """The whole list again when the change touched a process shown or now to show."""
        now = self._ids()
        if not change.touches(now | self._shown):
            return []
        self._shown = now
        return [(self._update(self.feed.seq), self.feed.seq)]


class TreeTopic:
    """One process and its descendants down to ``max_depth`` levels, with their logs.

    ``update`` carries every row of the subtree; ``log`` carries the entries the subtree's
    logs gained, each with ``processId`` and ``processLabel``; ``log-clear`` says a log was
    reset (the client drops what it shows, and the entries that follow rebuild it).
    """

    def __init__(self, feed: Broadcaster, root_id: str, max_depth: int | None) -> None:
        self.feed = feed
        self.root_id = root_id
        self.max_depth = max_depth

    @property
    def name(self) -> str:
        """``tree:<process id>``."""
        return f"tree:{self.root_id}"

    def _members(self) -> list[ProcessRecord]:
        root = self.feed.records.get(self.root_id)
        if root is None:
            return []
        family = [r for r in self.feed.records.values() if r.root_id == root.root_id]
        children: dict[str | None, list[ProcessRecord]] = {}
        for record in family:
            children.setdefault(record.parent_id, []).append(record)
        found, frontier = [root], [root]
        while frontier:
            following: list[ProcessRecord] = []
            for node in frontier:
                if self.max_depth is None or node.depth - root.depth < self.max_depth:
                    following.extend(
                        sorted(
                            children.get(node.process_id, ()),
                            key=lambda r: (r.order, r.process_id),
                        )
                    )
            found.extend(following)
            frontier = following
        return found

    @staticmethod
    def _entries(pairs: Iterable[tuple[ProcessRecord, Iterable[Any]]]) -> list[dict[str, Any]]:
        out = []
        for record, log in pairs:
            for entry in log:
                doc = entry.to_document()
                doc["processId"] = record.process_id
                doc["processLabel"] = record.name
                out.append((entry.timestamp, doc))
        out.sort(key=lambda item: item[0])
        return [doc for _, doc in out]

    def _snapshot(self, seq: int, nodes: list[ProcessRecord]) -> Frames:
        return [
            ({"type": "log-clear"}, None),
            ({"type": "update", "processes": [self.feed.summary(r) for r in nodes]}, seq),
            ({"type": "log", "entries": self._entries((r, r.log) for r in nodes)}, seq),
        ]

    def _delta(self, change: Change, nodes: list[ProcessRecord]) -> Frames:
        in_tree = {r.process_id for r in nodes}
        touched = [
            p
            for p in change.processes
            if p.process_id in in_tree
            or (p.previous is not None and p.previous.root_id == self.root_id)
        ]
        if not touched:
            return []
        if any(p.log_cleared for p in touched):
            return self._snapshot(change.seq, nodes)
        rows = [self.feed.summary(r) for r in nodes]
        out: Frames = [({"type": "update", "processes": rows}, change.seq)]
        gained = self._entries((p.record, p.new_log) for p in touched if p.record is not None)
        if gained:
            out.append(({"type": "log", "entries": gained}, change.seq))
        return out

    def snapshot(self, seq: int) -> Frames:
        """``log-clear``, the subtree's rows, then its whole merged log."""
        return self._snapshot(seq, self._members())

    def resume(self, replay: list[Change] | None, seq: int) -> Frames:
        """The frames of the missed changes, or a snapshot when they are not retained."""
        nodes = self._members()
        if replay is None:
            return self._snapshot(seq, nodes)
        return [item for change in replay for item in self._delta(change, nodes)]

    def apply(self, change: Change) -> Frames:
        """The subtree's rows and the entries it gained, when the change touched it."""
        return self._delta(change, self._members())


class ChangesTopic:
    """What a paged list needs, for any number of processes: the counts by state, and the
    rows of the processes that changed (never the whole list).

    Frames: ``{"type": "counts", "counts": {state: n}, "total": n}`` (every process,
    whatever the filter) first and whenever the counts move; ``{"type": "changed",
    "processes": [rows], "removed": [ids]}`` for each change that touches a process the
    filter keeps (a row as in ``update`` frames; ``removed`` lists deleted ids). A
    snapshot starts with ``{"type": "reset"}``: the client re-reads the page it shows
    (``GET /api/processes``), since it may have missed changes.
    """

    name = "changes"

    def __init__(self, feed: Broadcaster, predicate: MetadataPredicate | None) -> None:
        self.feed = feed
        self.predicate = predicate
        self._counts: Payload | None = None

    def _counts_frame(self, seq: int) -> Frames:
        counts = self.feed.memo("counts", seq, self._count)
        if self._counts is not None and self._counts["counts"] == counts["counts"]:
            return []
        self._counts = counts
        return [(counts, seq)]

    def _count(self) -> Shared:
        counts = {state.value: n for state, n in self.feed.counts.items()}
        return Shared(type="counts", counts=counts, total=len(self.feed.records))

    def _keeps(self, p: ProcessChange) -> bool:
        if self.predicate is None:
            return True
        return any(r is not None and self.predicate(r.metadata) for r in (p.record, p.previous))

    def _changed(self, changes: list[Change]) -> Payload | None:
        latest: dict[str, ProcessChange] = {}
        for change in changes:
            for p in change.processes:
                if self._keeps(p):
                    latest[p.process_id] = p
        if not latest:
            return None
        rows = [self.feed.summary(p.record) for p in latest.values() if p.record is not None]
        removed = [p.process_id for p in latest.values() if p.record is None]
        return Shared(type="changed", processes=rows, removed=removed)

    def snapshot(self, seq: int) -> Frames:
        """``reset``, then the counts."""
        self._counts = None
        return [({"type": "reset"}, None), *self._counts_frame(seq)]

    def resume(self, replay: list[Change] | None, seq: int) -> Frames:
        """The rows the missed changes touched, and the counts; a snapshot when they are
        not retained."""
        if replay is None:
            return self.snapshot(seq)
        changed = self._changed(replay)
        return ([(changed, seq)] if changed is not None else []) + self._counts_frame(seq)

    def apply(self, change: Change) -> Frames:
        """The change's rows (when the filter keeps one), then the counts if they moved."""
        if self.predicate is None:
            changed = self.feed.memo("changed", change.seq, lambda: self._changed([change]))
        else:
            changed = self._changed([change])
        out: Frames = [(changed, change.seq)] if changed is not None else []
        return out + self._counts_frame(change.seq)


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


async def live_frames(
    feed: Broadcaster,
    topics: Iterable[Topic],
    *,
    last_event_id: int | None,
    keepalive: float,
) -> AsyncGenerator[Batch | None, None]:
    """The frames of ``topics`` in batches, each with the change number it brings the
    client to: first the snapshot or the replay, then one batch per live change or
    resynchronisation. None is a keepalive. It ends when the feed closes.

    Changes already covered by a snapshot are skipped, so a log entry is never sent twice.
    """
    chosen = list(topics)
    # Subscribe, then build the first frames, with no await in between: no change is lost
    # and none is sent twice (live changes up to ``baseline`` are in the first frames).
    subscription = feed.subscribe()
    baseline = feed.seq
    replay = feed.since(last_event_id) if last_event_id is not None else None
    yield baseline, [(topic, topic.resume(replay, baseline)) for topic in chosen]
    async for live in _changes(subscription, keepalive):
        if live == KEEPALIVE:
            yield None
        elif live == RESYNC:
            baseline = feed.seq
            yield baseline, [(topic, topic.snapshot(baseline)) for topic in chosen]
        elif not isinstance(live, str) and live.seq > baseline:
            yield live.seq, [(topic, topic.apply(live)) for topic in chosen]


async def topic_stream(
    feed: Broadcaster,
    topic: Topic,
    *,
    last_event_id: int | None = None,
    keepalive: float = 15.0,
) -> AsyncIterator[str]:
    """One topic as optio's stream: each frame with its own ``id:``."""
    async with contextlib.aclosing(
        live_frames(feed, [topic], last_event_id=last_event_id, keepalive=keepalive)
    ) as batches:
        first = await anext(batches)  # subscribed, and the snapshot taken, as the response starts
        yield f"retry: {RETRY_MS}\n\n"
        batch: Batch | None = first
        while True:
            if batch is None:
                yield ": keepalive\n\n"
            else:
                for _, frames in batch[1]:
                    for payload, event_id in frames:
                        yield frame(payload, event_id)
            try:
                batch = await anext(batches)
            except StopAsyncIteration:
                break
    yield frame({"type": "shutdown"})


def list_stream(
    feed: Broadcaster,
    predicate: MetadataPredicate | None,
    *,
    last_event_id: int | None = None,
    keepalive: float = 15.0,
) -> AsyncIterator[str]:
    """``GET /api/processes/stream``: every ``update`` frame is the whole filtered list."""
    return topic_stream(
        feed, ListTopic(feed, predicate), last_event_id=last_event_id, keepalive=keepalive
    )


def tree_stream(
    feed: Broadcaster,
    root_id: str,
    max_depth: int | None,
    *,
    last_event_id: int | None = None,
    keepalive: float = 15.0,
) -> AsyncIterator[str]:
    """``GET /api/processes/{id}/tree/stream``: the subtree's rows, then its log
    (see :class:`TreeTopic`)."""
    return topic_stream(
        feed,
        TreeTopic(feed, root_id, max_depth),
        last_event_id=last_event_id,
        keepalive=keepalive,
    )
