"""Worker liveness: heartbeats published on the bus and the registry that judges them.

A worker runs a :class:`HeartbeatPublisher`, which publishes ``system.<worker>.health``
every ``interval`` seconds. A :class:`WorkerRegistry` subscribes to ``system.*.health`` and
tells, per configured worker, whether it is

* ``ok``: a beat was received less than ``stale_after`` seconds ago (default 3 intervals);
* ``stale``: it used to beat and has been silent for ``stale_after`` or longer;
* ``unknown``: never heard from since the registry started.

What the registry guarantees, unlike the system it replaces:

* only configured workers get rows, unless ``admit_unknown=True``; others are counted;
* each beat is counted once (one subscription, ``*`` already covers ``system.bus.health``);
* a malformed beat is dropped and counted; the subscriber never dies of one, and subscribes
  again if the bus ends its subscription;
* liveness uses the time the beat was *received* (by the registry's clock), so a worker
  whose clock runs ahead cannot pin itself at ok; its own timestamp only orders beats, and
  is capped at the receive time when it claims the future;
* a late beat older than the newest accepted one is dropped, never regressing the row;
* transitions (``unknown`` or ``stale`` to ``ok``, ``ok`` to ``stale``) are published as
  ``system.<worker>.state`` events, and every return from stale counts as a flap.

    >>> import asyncio
    >>> from taskwarden.clock import FakeClock
    >>> clock = FakeClock()
    >>> registry = WorkerRegistry(["api", "collector"], interval=30, clock=clock)
    >>> registry.record("api", {"uptime": 12})
    True
    >>> clock.advance(100)
    >>> [(row.name, row.state.value) for row in registry.snapshot()]
    [('api', 'stale'), ('collector', 'unknown')]
"""

from __future__ import annotations

import asyncio
import gc
import inspect
import logging
import math
import threading
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Self

from taskwarden.abc import Bus, BusMessage
from taskwarden.clock import Clock, SystemClock
from taskwarden.errors import BusError, ConfigurationError

__all__ = [
    "DEFAULT_INTERVAL",
    "HeartbeatPublisher",
    "HeartbeatStats",
    "WorkerRegistry",
    "WorkerSpec",
    "WorkerState",
    "WorkerStatus",
    "get_registry",
    "reset_registry_for_tests",
    "set_registry",
]

log = logging.getLogger("taskwarden.heartbeat")

#: Seconds between two beats unless configured otherwise.
DEFAULT_INTERVAL = 30.0
#: A worker is stale after this many intervals of silence, unless configured otherwise.
STALE_INTERVALS = 3
_RESERVED = frozenset({"name", "worker", "ts"})


class WorkerState(StrEnum):
    """How a worker is doing, as far as its heartbeats tell."""

    OK = "ok"
    STALE = "stale"
    UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkerSpec:
    """A worker the registry expects, with its heartbeat interval and staleness window."""

    name: str
    interval: float = DEFAULT_INTERVAL
    #: Silence after which the worker is stale; ``None`` means ``3 * interval``.
    stale_after: float | None = None

    @property
    def window(self) -> float:
        """The effective staleness window in seconds."""
        return self.stale_after if self.stale_after is not None else STALE_INTERVALS * self.interval


@dataclass(slots=True, kw_only=True)
class WorkerStatus:
    """One row of :meth:`WorkerRegistry.snapshot`, a copy made for the caller.

    Not frozen on purpose: frozen dataclasses set each field through
    ``object.__setattr__``, which triples the cost of a 10,000-row snapshot.
    """

    name: str
    state: WorkerState
    #: UTC wall time at which the last accepted beat was received; None if never.
    last_seen: datetime | None
    #: Seconds since the last accepted beat was received; None if never.
    age: float | None
    #: What the worker added to its last beat (uptime, queue depth...), without name and ts.
    payload: Mapping[str, Any]
    #: Beats accepted from this worker.
    beats: int
    #: How many times it came back after being stale.
    flaps: int
    #: Its staleness window in seconds.
    stale_after: float
    #: False for a worker admitted with ``admit_unknown=True`` rather than configured.
    known: bool
    #: Seed 003: the sender's epoch timestamp of the last accepted beat (capped at the
    #: receive time when it claimed the future); None if never.
    last_heartbeat_ts: float | None = None

    @property
    def status(self) -> WorkerState:
        """Seed 003's name for :attr:`state` (``"ok"``, ``"stale"`` or ``"unknown"``,
        equal to those strings)."""
        return self.state

    @property
    def seconds_since(self) -> float | None:
        """Seed 003's name for :attr:`age`: seconds since the last accepted beat was
        received (by the registry's clock, so sender clock skew cannot fake liveness)."""
        return self.age

    @property
    def extra(self) -> Mapping[str, Any]:
        """Seed 003's name for :attr:`payload`: the beat without ``worker``/``name`` and
        ``ts``."""
        return self.payload


@dataclass(slots=True, kw_only=True)
class HeartbeatStats:
    """Counters of what the registry did with the beats it saw."""

    accepted: int = 0
    #: Beats from names that are not configured (and not admitted).
    unknown: int = 0
    #: Beats whose payload or topic was not a valid heartbeat.
    malformed: int = 0
    #: Late beats older than the newest accepted one of the same worker.
    out_of_order: int = 0
    #: Beats whose timestamp claimed the future and was capped at the receive time.
    future_capped: int = 0
    #: State transitions detected, and returns from stale among them.
    transitions: int = 0
    flaps: int = 0
    #: Times the subscriber subscribed again after losing its subscription.
    restarts: int = 0
    #: Transition events not published (queue overflow or bus failure).
    events_dropped: int = 0


class _Worker:
    """Mutable per-worker state; ``last`` is replaced whole so readers see one beat."""

    __slots__ = ("beats", "flaps", "known", "last", "name", "seen_cache", "state", "window")

    def __init__(self, name: str, window: float, *, known: bool) -> None:
        self.name = name
        self.window = window
        self.known = known
        # (received monotonic, sent epoch, payload) of the newest accepted beat.
        self.last: tuple[float, float, Mapping[str, Any]] | None = None
        self.seen_cache: tuple[float, datetime] | None = None
        self.beats = 0
        self.flaps = 0
        self.state = WorkerState.UNKNOWN


_EMPTY: Mapping[str, Any] = {}


class WorkerRegistry:
    """Aggregates ``system.<worker>.health`` beats into ok / stale / unknown per worker.

    ``known`` lists the expected workers, as names or :class:`WorkerSpec` (per-worker
    interval and window); ``interval`` and ``stale_after`` are the defaults for plain names
    and admitted strangers. ``admit_unknown=True`` gives rows to any name (with the window
    from the beat's own ``interval`` field, when it has a sane one). Time comes from
    ``clock``. Ingest (:meth:`record`) and :meth:`snapshot` are O(1) per beat and O(workers);
    stale detection costs O(transitions), as ok workers are kept in receive order.
    """

    def __init__(
        self,
        known: Iterable[str | WorkerSpec] = (),
        *,
        interval: float = DEFAULT_INTERVAL,
        stale_after: float | None = None,
        admit_unknown: bool = False,
        clock: Clock | None = None,
        topic_prefix: str = "system",
        future_tolerance: float = 1.0,
        max_buffer: int = 10_000,
        max_pending_events: int = 1000,
    ) -> None:
        if interval <= 0 or (stale_after is not None and stale_after <= 0):
            raise ConfigurationError("interval and stale_after must be positive seconds")
        self.clock: Clock = clock if clock is not None else SystemClock()
        self.admit_unknown = admit_unknown
        self.topic_prefix = topic_prefix
        self.stats = HeartbeatStats()
        self._default = WorkerSpec(name="*", interval=interval, stale_after=stale_after)
        self._future_tolerance = future_tolerance
        self._max_buffer = max_buffer
        self._workers: dict[str, _Worker] = {}
        # Workers currently ok, per window, least recently heard first.
        self._live: dict[float, OrderedDict[str, _Worker]] = {}
        self._events: deque[dict[str, Any]] = deque(maxlen=max_pending_events)
        self._events_ready = asyncio.Event()
        self._subscribed = asyncio.Condition()
        self._subscriptions = 0
        self._task: asyncio.Task[None] | None = None
        self._bus: Bus | None = None
        self._stopping = False
        self._sync_wall()
        for item in known:
            spec = (
                item
                if isinstance(item, WorkerSpec)
                else WorkerSpec(name=item, interval=interval, stale_after=stale_after)
            )
            if not spec.name or "." in spec.name:
                raise ConfigurationError(f"invalid worker name {spec.name!r}: one topic token")
            self._workers[spec.name] = _Worker(spec.name, spec.window, known=True)

    def _sync_wall(self) -> None:
        """Map the clock's monotonic seconds to wall epoch seconds (cheap per beat)."""
        self._wall_offset = self.clock.wall().timestamp() - self.clock.now()

    # -- ingest ----------------------------------------------------------------------------

    def record(
        self,
        worker: str,
        ts: float | Mapping[str, Any] | None,
        payload: Mapping[str, Any] | None = None,
        *,
        received_at: float | None = None,
    ) -> bool:
        """Take one beat of ``worker`` in seed 003's form; return whether it was accepted.

        ``record("collector", time.time(), {"uptime": 12})``: ``ts`` is the sender's epoch
        seconds and ``payload`` what the worker added to its beat (None for nothing). The
        older taskwarden form ``record(name, payload)`` (the whole beat, ``ts`` inside it)
        is accepted too. ``received_at`` is as in :meth:`ingest`.
        """
        if ts is None or isinstance(ts, Mapping):
            return self.ingest(worker, ts if ts is not None else {}, received_at)
        if payload is not None and not isinstance(payload, Mapping):
            self.stats.malformed += 1
            return False
        beat = dict(payload) if payload else {}
        beat["ts"] = ts
        return self.ingest(worker, beat, received_at)

    def ingest(
        self, name: str, payload: Mapping[str, Any], received_at: float | None = None
    ) -> bool:
        """Take one beat of worker ``name`` as it came off the bus; return whether it was
        accepted.

        ``received_at`` is the receive time in the registry clock's monotonic seconds
        (default: now): liveness is measured from it, never from the sender's clock.
        Dropped beats are counted in :attr:`stats` (and :attr:`counters`): unknown names,
        malformed payloads (``ts`` not a finite number, ``name`` not matching), and beats
        older than the newest accepted one.
        """
        stats = self.stats
        worker = self._workers.get(name)
        if worker is None:
            if not self.admit_unknown:
                stats.unknown += 1
                return False
            if not name or "." in name or "*" in name or ">" in name:
                stats.malformed += 1
                return False
        if not isinstance(payload, Mapping):
            stats.malformed += 1
            return False
        claimed = payload.get("name", name)
        ts = payload.get("ts")
        if claimed != name or (
            ts is not None
            and (isinstance(ts, bool) or not isinstance(ts, int | float) or not math.isfinite(ts))
        ):
            stats.malformed += 1
            return False
        now = self.clock.now() if received_at is None else received_at
        received_epoch = now + self._wall_offset
        if ts is None:
            sent = received_epoch
        elif ts > received_epoch + self._future_tolerance:
            stats.future_capped += 1
            sent = received_epoch
        else:
            sent = float(ts)
        if worker is None:
            worker = _Worker(name, self._window_for_stranger(payload), known=False)
            self._workers[name] = worker
        elif worker.last is not None and sent < worker.last[1]:
            stats.out_of_order += 1
            return False
        extra = {k: v for k, v in payload.items() if k not in _RESERVED}
        worker.last = (now, sent, extra)
        worker.beats += 1
        stats.accepted += 1
        live = self._live.get(worker.window)
        if live is None:
            live = self._live[worker.window] = OrderedDict()
        if worker.state is WorkerState.OK:
            live.move_to_end(name)
        else:
            live[name] = worker
            self._transition(worker, WorkerState.OK, now)
        return True

    def _window_for_stranger(self, payload: Mapping[str, Any]) -> float:
        interval = payload.get("interval")
        if (
            self._default.stale_after is None
            and isinstance(interval, int | float)
            and not isinstance(interval, bool)
            and 0 < interval <= 86_400
        ):
            return STALE_INTERVALS * float(interval)
        return self._default.window

    def _transition(self, worker: _Worker, state: WorkerState, now: float) -> None:
        previous = worker.state
        worker.state = state
        self.stats.transitions += 1
        if previous is WorkerState.STALE and state is WorkerState.OK:
            worker.flaps += 1
            self.stats.flaps += 1
        if self._task is None:
            return
        if len(self._events) == self._events.maxlen:
            self.stats.events_dropped += 1
        last = worker.last
        self._events.append(
            {
                "name": worker.name,
                "state": state.value,
                "previous": previous.value,
                "at": now + self._wall_offset,
                "age": None if last is None else now - last[0],
                "flaps": worker.flaps,
            }
        )
        self._events_ready.set()

    def expire(self, now: float | None = None) -> int:
        """Mark ok workers silent for their window as stale; return how many changed.

        The running registry calls this on its own; call it directly when driving the
        registry without :meth:`start`.
        """
        now = self.clock.now() if now is None else now
        changed = 0
        for live in self._live.values():
            while live:
                worker = next(iter(live.values()))
                last = worker.last
                if last is not None and now - last[0] < worker.window:
                    break
                live.popitem(last=False)
                self._transition(worker, WorkerState.STALE, now)
                changed += 1
        return changed

    def _next_expiry(self) -> float | None:
        deadlines = [
            next(iter(live.values())).last[0] + window  # type: ignore[index]
            for window, live in self._live.items()
            if live
        ]
        return min(deadlines) if deadlines else None

    # -- reading ---------------------------------------------------------------------------

    def snapshot(self) -> list[WorkerStatus]:
        """Every configured worker (in configured order), then admitted ones (first seen).

        States are computed from the receive times at the moment of the call, so they are
        exact even between expiry sweeps. Payloads are shared, not copied: do not mutate.
        """
        # Ten thousand new rows would trigger several collections that walk the whole heap
        # (tripling the cost); nothing here makes reference cycles, so pause the collector.
        collecting = gc.isenabled()
        gc.disable()
        try:
            return self._rows(list(self._workers.values()))
        finally:
            if collecting:
                gc.enable()

    def _rows(self, workers: list[_Worker]) -> list[WorkerStatus]:
        now = self.clock.now()
        offset = self._wall_offset
        ok, stale, unknown = WorkerState.OK, WorkerState.STALE, WorkerState.UNKNOWN
        rows: list[WorkerStatus] = []
        append = rows.append
        for worker in workers:
            last = worker.last
            if last is None:
                append(
                    WorkerStatus(
                        name=worker.name,
                        state=unknown,
                        last_seen=None,
                        age=None,
                        payload=_EMPTY,
                        beats=0,
                        flaps=worker.flaps,
                        stale_after=worker.window,
                        known=worker.known,
                    )
                )
                continue
            received = last[0]
            cache = worker.seen_cache
            if cache is None or cache[0] != received:
                cache = worker.seen_cache = (
                    received,
                    datetime.fromtimestamp(received + offset, UTC),
                )
            age = now - received
            append(
                WorkerStatus(
                    name=worker.name,
                    state=ok if age < worker.window else stale,
                    last_seen=cache[1],
                    age=age if age > 0 else 0.0,
                    payload=last[2],
                    beats=worker.beats,
                    flaps=worker.flaps,
                    stale_after=worker.window,
                    known=worker.known,
                    last_heartbeat_ts=last[1],
                )
            )
        return rows

    @property
    def counters(self) -> dict[str, int]:
        """What was done with the beats seen so far: ``accepted``, and the drops by cause
        (``malformed``, ``unknown``, ``future_capped``, ``out_of_order``). A fresh dict;
        :attr:`stats` holds every counter, live."""
        stats = self.stats
        return {
            "accepted": stats.accepted,
            "malformed": stats.malformed,
            "unknown": stats.unknown,
            "future_capped": stats.future_capped,
            "out_of_order": stats.out_of_order,
        }

    def status(self, name: str) -> WorkerStatus | None:
        """The row of one worker, or None if it has none."""
        worker = self._workers.get(name)
        return None if worker is None else self._rows([worker])[0]

    # -- running on a bus ------------------------------------------------------------------

    @property
    def running(self) -> bool:
        """True between :meth:`start` and :meth:`stop`."""
        return self._task is not None and not self._task.done()

    async def start(self, bus: Bus | None, *, ready_timeout: float = 30.0) -> None:
        """Subscribe to ``<prefix>.*.health`` on ``bus`` and start the expiry sweeper.

        Returns once the subscription is active; raises ``BusError`` (and stops) if that
        takes longer than ``ready_timeout`` real seconds. Idempotent; with ``bus=None`` it
        does nothing (every worker stays unknown unless :meth:`record` is called).
        """
        if self.running or bus is None:
            return
        self._bus = bus
        self._stopping = False
        self._sync_wall()
        started = self._subscriptions
        self._task = asyncio.create_task(self._run(bus), name="taskwarden-worker-registry")
        waiter = asyncio.create_task(self.wait_subscribed(started + 1))
        done, _ = await asyncio.wait(
            {self._task, waiter}, timeout=ready_timeout, return_when=asyncio.FIRST_COMPLETED
        )
        if waiter not in done:
            waiter.cancel()
            await self.stop()
            raise BusError(
                f"the worker registry could not subscribe to heartbeats within "
                f"{ready_timeout:g}s: is the bus open and its server reachable?"
            )

    async def stop(self) -> None:
        """Stop subscribing, sweeping and publishing transitions. Idempotent."""
        task, self._task = self._task, None
        self._stopping = True
        if task is None:
            return
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise
        except Exception:
            log.exception("the worker registry failed")
        self._events.clear()

    async def __aenter__(self) -> Self:
        """Nothing to start without a bus: use ``await start(bus)`` for that."""
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        """Stop the registry."""
        await self.stop()

    async def wait_subscribed(self, count: int = 1) -> None:
        """Wait until the subscriber has subscribed ``count`` times in total (restarts too)."""
        async with self._subscribed:
            await self._subscribed.wait_for(lambda: self._subscriptions >= count)

    async def _run(self, bus: Bus) -> None:
        async with asyncio.TaskGroup() as group:
            group.create_task(self._subscriber(bus), name="taskwarden-heartbeat-subscriber")
            group.create_task(self._sweeper(), name="taskwarden-heartbeat-sweeper")
            group.create_task(self._announcer(bus), name="taskwarden-heartbeat-announcer")

    async def _subscriber(self, bus: Bus) -> None:
        """Consume beats forever; subscribe again whenever the subscription ends."""
        pattern = f"{self.topic_prefix}.*.health"
        failures = 0
        while True:
            try:
                async with bus.subscribe(pattern, max_buffer=self._max_buffer) as subscription:
                    async with self._subscribed:
                        self._subscriptions += 1
                        self._subscribed.notify_all()
                    async for message in subscription:
                        failures = 0
                        self._on_message(message)
            except BusError as exc:
                failures += 1
                log.warning("heartbeat subscription failed (%s); subscribing again", exc)
            if self._stopping:
                return
            self.stats.restarts += 1
            log.warning("heartbeat subscription ended; subscribing again")
            # At once the first time; back off while the bus keeps refusing.
            if failures:
                await self.clock.sleep(min(30.0, 0.5 * 2 ** min(failures, 6)))

    def _on_message(self, message: BusMessage) -> None:
        try:
            tokens = message.topic.split(".")
            if len(tokens) != 3:
                self.stats.malformed += 1
                return
            self.ingest(tokens[1], message.payload)
        except Exception:
            # A beat must never kill the subscriber: count it and move on.
            self.stats.malformed += 1
            log.exception("dropping a heartbeat that could not be processed")

    async def _sweeper(self) -> None:
        while True:
            now = self.clock.now()
            self.expire(now)
            self._sync_wall()
            deadline = self._next_expiry()
            delay = self._default.interval if deadline is None else deadline - now
            await self.clock.sleep(max(0.001, min(delay, self._default.interval)))

    async def _announcer(self, bus: Bus) -> None:
        while True:
            await self._events_ready.wait()
            self._events_ready.clear()
            while self._events:
                event = self._events.popleft()
                try:
                    await bus.publish(f"{self.topic_prefix}.{event['name']}.state", event)
                except BusError as exc:
                    self.stats.events_dropped += 1
                    log.warning("could not publish a worker state change: %s", exc)


class HeartbeatPublisher:
    """Publishes ``system.<name>.health`` every ``interval`` seconds while running.

    Each beat carries ``name``, ``ts`` (wall epoch seconds), ``uptime`` (seconds since
    :meth:`start`), ``interval``, and whatever ``extra()`` returns (a mapping, or an
    awaitable of one), e.g. active operations or queue depth. A failing ``extra`` or
    publish is logged and counted in :attr:`failures`; the next beat is still sent. Beats
    are scheduled on a fixed grid, so slow publishes do not make the interval drift.
    """

    def __init__(
        self,
        bus: Bus,
        name: str,
        *,
        interval: float = DEFAULT_INTERVAL,
        extra: Callable[[], Mapping[str, Any] | Awaitable[Mapping[str, Any]]] | None = None,
        clock: Clock | None = None,
        topic_prefix: str = "system",
    ) -> None:
        if not name or any(c in name for c in ".*> "):
            raise ConfigurationError(
                f"invalid worker name {name!r}: one topic token, no dots, spaces or wildcards"
            )
        if interval <= 0:
            raise ConfigurationError(f"heartbeat interval must be positive, not {interval}")
        self.bus = bus
        self.name = name
        self.interval = interval
        self.extra = extra
        self.clock: Clock = clock if clock is not None else SystemClock()
        self.topic = f"{topic_prefix}.{name}.health"
        self.sent = 0
        self.failures = 0
        self._started_at = self.clock.now()
        self._task: asyncio.Task[None] | None = None

    async def beat(self) -> None:
        """Publish one heartbeat now."""
        extra: Mapping[str, Any] = {}
        if self.extra is not None:
            try:
                produced = self.extra()
                extra = await produced if inspect.isawaitable(produced) else produced
            except asyncio.CancelledError:
                raise
            except Exception:
                self.failures += 1
                log.exception(
                    "heartbeat extra() of %s failed; sending the beat without it", self.name
                )
        payload = {
            **extra,
            "name": self.name,
            "ts": self.clock.wall().timestamp(),
            "uptime": self.clock.now() - self._started_at,
            "interval": self.interval,
        }
        try:
            await self.bus.publish(self.topic, payload)
        except BusError as exc:
            self.failures += 1
            log.warning("heartbeat of %s not published: %s", self.name, exc)
            return
        self.sent += 1

    async def start(self) -> None:
        """Send the first beat now and keep beating in the background. Idempotent."""
        if self._task is not None and not self._task.done():
            return
        self._started_at = self.clock.now()
        await self.beat()
        self._task = asyncio.create_task(self._run(), name=f"taskwarden-heartbeat:{self.name}")

    async def stop(self) -> None:
        """Stop beating. Idempotent."""
        task, self._task = self._task, None
        if task is None:
            return
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise

    async def __aenter__(self) -> Self:
        """Start beating."""
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        """Stop beating."""
        await self.stop()

    async def _run(self) -> None:
        next_beat = self.clock.now() + self.interval
        while True:
            await self.clock.sleep(next_beat - self.clock.now())
            await self.beat()
            next_beat += self.interval
            now = self.clock.now()
            if next_beat <= now:  # fell behind (suspended process): skip, do not burst
                next_beat = now + self.interval


_registry: WorkerRegistry | None = None
_registry_lock = threading.Lock()


def get_registry() -> WorkerRegistry:
    """The process-wide registry (created empty on first use; see :func:`set_registry`)."""
    global _registry
    with _registry_lock:
        if _registry is None:
            _registry = WorkerRegistry()
        return _registry


def set_registry(registry: WorkerRegistry) -> None:
    """Install ``registry`` (configured with the known workers) as the process-wide one."""
    global _registry
    with _registry_lock:
        _registry = registry


def reset_registry_for_tests() -> None:
    """Forget the process-wide registry, so the next :func:`get_registry` makes a new one."""
    global _registry
    with _registry_lock:
        _registry = None
