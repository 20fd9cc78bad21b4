"""One change feed per server, fanned out to every connected stream.

The broadcaster keeps every process record in memory, loaded once at start and then kept
true by change events: the engine's own (``Engine.on_change`` and its progress flushes),
the bus's ``<prefix>.process.changed`` / ``<prefix>.process.progress`` from other workers,
and, when there is no bus, one poll of the store per ``poll_interval`` for the writes of
other processes (it reads only the records changed since the last poll, through an index).
Coalescing is per process: a process's change is published at once unless that process
was published less than ``coalesce`` seconds ago, in which case it waits for the end of
its window and goes out with whatever else is due then, as one :class:`Change`. A process
that reports progress 1,000 times a second thus costs a client a few frames a second,
without delaying the change of a quiet process. Changes that arrive within ``gather``
seconds of a flush share the next one (one store read for all). Streams compute their
frames from the cache: the store is read per change, never per client, and a frame that
every client gets alike is built once (:meth:`Broadcaster.memo`).

Every subscriber has a bounded queue. A subscriber that falls behind is not waited for:
its queue is emptied and it is told to resynchronise (:attr:`Subscription.overflowed`), and
the stream sends it a fresh snapshot.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar

from taskwarden.documents import process_document
from taskwarden.errors import StoreError
from taskwarden.processes import ProcessState

if TYPE_CHECKING:
    from taskwarden.abc import Bus, BusMessage, BusSubscription, Store
    from taskwarden.engine import Engine
    from taskwarden.processes import LogEntry, ProcessRecord

__all__ = ["Broadcaster", "Change", "ProcessChange", "Subscription"]

logger = logging.getLogger("taskwarden.api")

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class ProcessChange:
    """What happened to one process in a :class:`Change`.

    ``record`` is None when the process was deleted. ``new_log`` holds the entries its log
    gained; ``log_cleared`` says the log was reset first (a dismiss or a relaunch), so a
    client must drop what it shows before appending ``new_log``.
    """

    process_id: str
    record: ProcessRecord | None
    previous: ProcessRecord | None
    new_log: tuple[LogEntry, ...] = ()
    log_cleared: bool = False


@dataclass(frozen=True, slots=True)
class Change:
    """A batch of process changes published together, numbered by ``seq`` (from 1)."""

    seq: int
    processes: tuple[ProcessChange, ...]

    def touches(self, process_ids: Iterable[str]) -> bool:
        """True when one of the changed processes is in ``process_ids``."""
        wanted = set(process_ids)
        return any(p.process_id in wanted for p in self.processes)


@dataclass(eq=False)
class Subscription:
    """One client's view of the feed: an async iterator of :class:`Change` objects.

    It ends when the broadcaster closes (the stream then sends its final frame).
    ``overflowed`` is set (and the queue emptied) when the client fell behind by more
    than the queue holds; the reader clears it after sending a snapshot.
    """

    queue: asyncio.Queue[Change | None]
    overflowed: bool = False
    _owner: Broadcaster | None = field(default=None, repr=False)

    def __aiter__(self) -> AsyncIterator[Change]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Change]:
        while True:
            item = await self.queue.get()
            if item is None:
                return
            yield item

    def close(self) -> None:
        """Stop receiving changes."""
        if self._owner is not None:
            self._owner._subscribers.discard(self)
            self._owner = None


def _log_delta(
    old: ProcessRecord | None, new: ProcessRecord | None
) -> tuple[tuple[LogEntry, ...], bool]:
    if new is None:
        return (), False
    if old is None or not old.log:
        return new.log, False
    last = old.log[-1]
    for i in range(len(new.log) - 1, -1, -1):
        entry = new.log[i]
        if entry.timestamp == last.timestamp and entry.message == last.message:
            return new.log[i + 1 :], False
    cleared = len(new.log) < len(old.log) or new.run_number != old.run_number
    return new.log, cleared


class Broadcaster:
    """The server's single change feed. Start it once; every stream subscribes to it."""

    def __init__(
        self,
        store: Store,
        *,
        bus: Bus | None = None,
        engine: Engine | None = None,
        prefix: str = "taskwarden",
        poll_interval: float | None = 0.1,
        coalesce: float = 0.25,
        gather: float = 0.01,
        queue_size: int = 64,
        retain: int = 1000,
    ) -> None:
        self.store = store
        self.bus = bus
        self.engine = engine
        self.prefix = prefix
        self.poll_interval = poll_interval if bus is None else None
        self.coalesce = coalesce
        self.gather = gather
        self.queue_size = queue_size
        self.records: dict[str, ProcessRecord] = {}
        """Every process, by id, as of the last published change."""
        self.seq = 0
        """The number of the last published :class:`Change`."""
        self.store_reads = 0
        """Store queries made by the feed (for tests and the metrics: it must not grow
        with the number of clients)."""
        self.overflows = 0
        """How many times a client fell behind and was sent a fresh snapshot."""
        self.listeners: list[Callable[[Change], None]] = []
        """Called with every published change, before the clients get it (the metrics)."""
        self.counts: dict[ProcessState, int] = dict.fromkeys(ProcessState, 0)
        """How many processes are in each state, as of the last published change."""
        self.closing = asyncio.Event()
        self._summaries: dict[str, tuple[ProcessRecord, dict[str, Any]]] = {}
        self._memo: dict[str, tuple[int, Any]] = {}
        self._history: deque[Change] = deque(maxlen=retain)
        self._subscribers: set[Subscription] = set()
        self._dirty: set[str] = set()
        self._pending: dict[str, ProcessRecord] = {}
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._started = False
        self._start_lock = asyncio.Lock()

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        """Load the records and connect the sources; a second call does nothing."""
        async with self._start_lock:
            if self._started:
                return
            self.records = {r.process_id: r for r in await self.store.list()}
            self.store_reads += 1
            self.counts = dict.fromkeys(ProcessState, 0)
            for record in self.records.values():
                self.counts[record.state] += 1
            if self.engine is not None:
                self.engine.on_change.append(self._on_engine_change)
                self.engine.on_progress.append(self.notify)
            self._tasks.append(asyncio.create_task(self._flush_loop(), name="tw-api-feed"))
            if self.bus is not None:
                subscription = self.bus.subscribe(f"{self.prefix}.process.*")
                await subscription.start()
                self._tasks.append(
                    asyncio.create_task(self._follow_bus(subscription), name="tw-api-bus")
                )
            elif self.poll_interval is not None:
                self._tasks.append(asyncio.create_task(self._poll_loop(), name="tw-api-poll"))
            self._started = True

    async def close(self) -> None:
        """Disconnect the sources and end every subscription (streams send a last frame)."""
        self.closing.set()
        if self.engine is not None:
            with contextlib.suppress(ValueError):
                self.engine.on_change.remove(self._on_engine_change)
            with contextlib.suppress(ValueError):
                self.engine.on_progress.remove(self.notify)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        for subscriber in list(self._subscribers):
            self._put(subscriber, None)
        self._subscribers.clear()
        self._started = False

    # ------------------------------------------------------------------ clients
    def subscribe(self) -> Subscription:
        """A new subscription; it receives every change published from now on."""
        subscription = Subscription(asyncio.Queue(self.queue_size + 1), _owner=self)
        if self.closing.is_set():
            subscription.queue.put_nowait(None)
        else:
            self._subscribers.add(subscription)
        return subscription

    @property
    def subscribers(self) -> int:
        """How many streams are connected."""
        return len(self._subscribers)

    def summary(self, record: ProcessRecord) -> dict[str, Any]:
        """``record`` for a stream: its document without the log (logs go in ``log``
        frames). Built once per record version and shared by every stream: do not
        change it."""
        cached = self._summaries.get(record.process_id)
        if cached is not None and cached[0] is record:
            return cached[1]
        doc = process_document(record)
        del doc["log"]
        self._summaries[record.process_id] = (record, doc)
        return doc

    def memo(self, key: str, seq: int, compute: Callable[[], T]) -> T:
        """What ``compute`` gives for change ``seq``, computed once for every stream that
        asks (a frame that does not depend on the client). Only the newest ``seq`` of each
        key is kept."""
        hit = self._memo.get(key)
        if hit is not None and hit[0] == seq:
            value: T = hit[1]
            return value
        value = compute()
        if hit is None or hit[0] < seq:
            self._memo[key] = (seq, value)
        return value

    def since(self, seq: int) -> list[Change] | None:
        """The changes published after ``seq``, or None when some of them are no longer
        retained (the client must take a fresh snapshot)."""
        if seq > self.seq or seq < 0:
            return None
        if seq == self.seq:
            return []
        if not self._history or self._history[0].seq > seq + 1:
            return None
        return [change for change in self._history if change.seq > seq]

    # ------------------------------------------------------------------ sources
    def notify(self, process_id: str) -> None:
        """Say that ``process_id`` changed; the feed reads it at the next flush."""
        # Newer than a record the engine handed over before: read the store instead.
        self._pending.pop(process_id, None)
        self._dirty.add(process_id)
        self._wake.set()

    def _on_engine_change(self, record: ProcessRecord) -> None:
        # The engine hands over the committed record: no store read is needed for it.
        self._pending[record.process_id] = record
        self._dirty.discard(record.process_id)
        self._wake.set()

    async def _follow_bus(self, subscription: BusSubscription) -> None:
        try:
            async for message in subscription:
                self._on_bus_message(message)
        finally:
            await subscription.close()

    def _on_bus_message(self, message: BusMessage) -> None:
        process_id = message.payload.get("process_id")
        if isinstance(process_id, str) and process_id:
            if self.engine is not None and message.payload.get("engine") == getattr(
                self.engine, "engine_id", None
            ):
                return  # our own engine's change, already seen through on_change
            self.notify(process_id)

    async def _poll_loop(self) -> None:
        # Each tick reads the records written since the previous tick began, less an
        # overlap: a write is stamped a little before it commits, and writers' clocks may
        # differ a little (keep hosts in sync, or use a bus). About once a second a count
        # tells whether something was deleted.
        assert self.poll_interval is not None
        overlap = timedelta(seconds=1.0)
        since = datetime.now(UTC) - overlap
        count_every = max(1, round(1.0 / self.poll_interval))
        tick = 0
        while True:
            await asyncio.sleep(self.poll_interval)
            tick += 1
            began = datetime.now(UTC)
            try:
                current = await self.store.changed_since(since)
                self.store_reads += 1
                total = await self.store.count() if tick % count_every == 0 else None
            except StoreError as exc:
                logger.warning("change feed could not poll the store: %s", exc)
                continue
            since = began - overlap
            for record in current:
                self._offer(record)
            if total is not None:
                self.store_reads += 1
                known = self.records.keys() | self._pending.keys()
                if total != len(known):
                    await self._reload()
            if self._pending or self._dirty:
                self._wake.set()

    async def _reload(self) -> None:
        """Read every record: some were deleted (or created unseen) since the last poll."""
        try:
            current = await self.store.list()
        except StoreError as exc:
            logger.warning("change feed could not read the store: %s", exc)
            return
        self.store_reads += 1
        seen = set()
        for record in current:
            seen.add(record.process_id)
            self._offer(record)
        self._dirty.update(self.records.keys() - seen)

    def _offer(self, record: ProcessRecord) -> None:
        """A record read by a poll: publish it unless it is what we have, or older than a
        record waiting to be published, or about to be read again anyway."""
        process_id = record.process_id
        if process_id in self._dirty or self.records.get(process_id) == record:
            return
        waiting = self._pending.get(process_id)
        if waiting is None or waiting.updated_at < record.updated_at:
            self._pending[process_id] = record

    # ------------------------------------------------------------------ publishing
    async def _flush_loop(self) -> None:
        loop = asyncio.get_running_loop()
        sent: dict[str, float] = {}  # process id -> when it was last published
        last_flush = float("-inf")
        while True:
            await self._wake.wait()
            if (gap := last_flush + self.gather - loop.time()) > 0:
                await asyncio.sleep(gap)  # let a burst of events share one store read
            self._wake.clear()
            now = loop.time()
            waiting = self._pending.keys() | self._dirty
            due = {pid: sent.get(pid, float("-inf")) + self.coalesce for pid in waiting}
            ready = {pid for pid, at in due.items() if at <= now}
            if not ready:
                if due:  # every waiting process is inside its window: wait for the first
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wake.wait(), min(due.values()) - now)
                    self._wake.set()
                continue
            last_flush = now
            fresh: dict[str, ProcessRecord | None] = {
                pid: self._pending.pop(pid) for pid in ready if pid in self._pending
            }
            dirty = ready & self._dirty
            self._dirty -= dirty
            if dirty:
                try:
                    found = await self.store.get_many(dirty)
                except StoreError as exc:
                    logger.warning("change feed could not read %d records: %s", len(dirty), exc)
                    self._dirty |= dirty  # read them at the next flush
                    for process_id, record in fresh.items():
                        if record is not None:
                            self._pending.setdefault(process_id, record)
                    continue
                self.store_reads += 1
                fresh.update((process_id, found.get(process_id)) for process_id in dirty)
            for process_id in ready:
                sent[process_id] = now
            if len(sent) > 1000 + 2 * len(ready):  # forget windows that are over
                sent = {pid: at for pid, at in sent.items() if at + self.coalesce > now}
            self._publish(fresh)
            if self._pending or self._dirty:
                self._wake.set()  # the ones still in their window

    def _publish(self, fresh: dict[str, ProcessRecord | None]) -> None:
        changes = []
        for process_id, record in fresh.items():
            previous = self.records.get(process_id)
            if record is None and previous is None:
                continue
            if record is not None and previous == record:
                continue
            new_log, cleared = _log_delta(previous, record)
            changes.append(ProcessChange(process_id, record, previous, new_log, cleared))
            if previous is not None:
                self.counts[previous.state] -= 1
            if record is None:
                del self.records[process_id]
                self._summaries.pop(process_id, None)
            else:
                self.records[process_id] = record
                self.counts[record.state] += 1
        if not changes:
            return
        self.seq += 1
        change = Change(self.seq, tuple(changes))
        self._history.append(change)
        for listener in list(self.listeners):
            try:
                listener(change)
            except Exception:
                logger.exception("change listener %r failed", listener)
        for subscriber in list(self._subscribers):
            self._put(subscriber, change)

    def _put(self, subscriber: Subscription, item: Change | None) -> None:
        if item is not None and subscriber.queue.qsize() >= self.queue_size:
            # Behind by a whole queue: drop what it has not read; it takes a snapshot.
            while not subscriber.queue.empty():
                subscriber.queue.get_nowait()
            subscriber.overflowed = True
            self.overflows += 1
        subscriber.queue.put_nowait(item)
