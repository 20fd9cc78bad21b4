"""A worker process of the fleet: an engine on a shared store that claims, renews and reaps.

Any number of workers share one store (a PostgreSQL database, or one SQLite file on one
host). Each one:

- **claims** ``scheduled`` processes it has definitions for, up to its free slots, when a
  wake-up arrives over the bus and at least every ``poll_interval`` seconds;
- **renews** every lease it holds in one statement each ``renew_interval`` seconds; the
  answer says which runs it lost (it stops them and drops their results: ``lease-lost``)
  and which got a cancel request whose notification it may have missed;
- **stops its runs** when it cannot renew for nearly a lease, before another worker may
  take them over;
- **reaps** expired leases of dead workers every ``reaper_interval`` seconds, resolving
  each run as its task's ``on_worker_lost`` says (``fail``, ``retry`` or ``resume``);
- keeps a **worker record** in the store that the API and the CLI read without a bus;
- **drains** on SIGTERM: stops claiming, lets runs finish within ``drain_timeout``, then
  cancels what is left; a second SIGTERM exits at once and leaves the leases to the reaper.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import signal
import socket
import threading
import time
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from taskwarden.abc import Bus, BusSubscription, Store
from taskwarden.clock import Clock, SystemClock
from taskwarden.engine import Engine
from taskwarden.engine.engine import GetTaskDefinitions
from taskwarden.engine.recovery import owner_process_gone
from taskwarden.errors import ConfigurationError, InvalidTransition, ProcessNotFound
from taskwarden.model import OperationStatus, RunRecord, WorkerRecord
from taskwarden.processes import ACTIVE_STATES, ProcessRecord, ProcessState
from taskwarden.remote_ops import serve_operations
from taskwarden.worker.client import wake_topic
from taskwarden.worker.notify import NotifyListener

__all__ = ["Worker"]

logger = logging.getLogger("taskwarden.worker")

S = ProcessState
HOST = socket.gethostname()

_RELAUNCH_RESET: dict[str, Any] = {
    "error": None,
    "running_since": None,
    "done_at": None,
    "duration": None,
    "failed_at": None,
    "stopped_at": None,
    "lease_owner": None,
    "lease_expires_at": None,
}


class Worker:
    """Runs the processes of one application on a store shared with other workers.

    Args:
        store: a store URL or an open-able :class:`~taskwarden.abc.Store` shared by the
            fleet (closed on stop when given as a URL).
        get_task_definitions: the application's definitions (the engine's signature).
        services: passed to every task as ``ctx.services``.
        bus: a bus (or its URL) for wake-ups, cancels, change events and heartbeats;
            without one, workers on PostgreSQL wake on the store's NOTIFY and workers on
            SQLite poll the store.
        name: a readable name for the worker record (default: ``<host>:<pid>``); the
            incarnation id is new at every start whatever the name.
        concurrency: root runs at once on this worker (children run with their parent);
            None for no limit (what :func:`taskwarden.init` makes by default).
        lease_seconds: how long a lease lasts without renewal (>= 3 x renew_interval).
        renew_interval: seconds between renewals of every lease this worker holds.
        reaper_interval: seconds between sweeps for other workers' expired leases.
        poll_interval: seconds between claims when no wake-up arrives (default 1 s with a
            bus or on PostgreSQL, 0.05 s on SQLite without a bus).
        drain_timeout: seconds a SIGTERM lets running runs finish before cancelling them.
        listen_notify: on PostgreSQL, LISTEN for the store's NOTIFY of launches and cancel
            requests, with or without a bus (default True; False leaves the bus, or without
            one the claim poll and the lease renewal, to find them).
        serve_commands: also take the remote commands of the bus (launch, cancel,
            resync... as :class:`~taskwarden.remote.RemoteControl` serves them; what the
            seed 004 ``init()`` engine does). Workers of a fleet leave that to clients.
        prune_undefined: let the start-up resync delete records this worker does not
            define (False: workers may serve different processes).
        incarnation: who holds this worker's leases; default new at every start. Give
            one only when each start gets its own (an engine's explicit ``engine_id``).
        engine_options: passed to :class:`~taskwarden.engine.Engine` (``cancel_grace``,
            ``progress_flush_interval``, ``registry``...).
    """

    def __init__(
        self,
        store: Store | str,
        *,
        get_task_definitions: GetTaskDefinitions | None = None,
        services: dict[str, Any] | None = None,
        bus: Bus | str | None = None,
        name: str | None = None,
        concurrency: int | None = 10,
        lease_seconds: float = 30.0,
        renew_interval: float = 10.0,
        reaper_interval: float = 15.0,
        poll_interval: float | None = None,
        drain_timeout: float = 25.0,
        listen_notify: bool = True,
        prefix: str = "taskwarden",
        clock: Clock | None = None,
        serve_commands: bool = False,
        prune_undefined: bool = False,
        incarnation: str | None = None,
        **engine_options: Any,
    ) -> None:
        if concurrency is not None and (
            isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1
        ):
            raise ConfigurationError(
                f"concurrency must be an int >= 1 (or None: no limit), got {concurrency!r}"
            )
        for label, value in (
            ("renew_interval", renew_interval),
            ("reaper_interval", reaper_interval),
        ):
            if not value > 0:
                raise ConfigurationError(f"{label} must be a number of seconds > 0, got {value!r}")
        if not lease_seconds >= 3 * renew_interval * (1 - 1e-9):
            raise ConfigurationError(
                f"lease_seconds ({lease_seconds!r}) must be at least 3 x renew_interval "
                f"({renew_interval!r}), so one late renewal does not lose the runs"
            )
        if not drain_timeout >= 0:
            raise ConfigurationError(f"drain_timeout must be seconds >= 0, got {drain_timeout!r}")
        self._store_url: str | None = None
        if isinstance(store, str):
            from taskwarden.stores import open_store

            self._store_url = store
            store = open_store(store, prefix=prefix)
        self.store: Store = store
        self._bus_url: str | None = None
        if isinstance(bus, str):
            from taskwarden.bus import open_bus

            self._bus_url = bus
            bus = open_bus(bus)
        self.bus: Bus | None = bus
        self.prefix = prefix
        self.clock: Clock = clock or SystemClock()
        self.name = name or f"{HOST}:{os.getpid()}"
        self.incarnation = incarnation or f"{HOST}:{os.getpid()}:{secrets.randbelow(10**12)}"
        """Who holds this worker's leases: new at every start (``<host>:<pid>:<random>``)."""
        self.concurrency = concurrency
        self.lease_seconds = lease_seconds
        self.renew_interval = renew_interval
        self.reaper_interval = reaper_interval
        if poll_interval is None:
            polls_fast = bus is None and type(self.store).__name__ == "SQLiteStore"
            poll_interval = 0.05 if polls_fast else 1.0
        self.poll_interval = poll_interval
        self.drain_timeout = drain_timeout
        self.listen_notify = listen_notify
        self.serve_commands = serve_commands
        self.engine = Engine(
            self.store,
            prefix=prefix,
            services=services,
            get_task_definitions=get_task_definitions,
            engine_id=self.incarnation,
            clock=self.clock,
            max_concurrency=concurrency,
            lease_seconds=lease_seconds,
            **engine_options,
        )
        # Workers may serve different processes: one must not delete another's records.
        self.engine.prune_undefined = prune_undefined
        self.engine.renew_interval = renew_interval  # (definitions' leases are checked)
        self.started_at: datetime | None = None
        self.claimed = 0
        """Runs this worker claimed since it started."""
        self.reaped = 0
        """Other workers' runs this worker resolved after their leases expired."""
        self._wake = asyncio.Event()
        self._claiming = True
        self._tasks: list[asyncio.Task[None]] = []
        self._remote: Any = None
        self._wake_watch: BusSubscription | None = None
        self._notify: NotifyListener | None = None
        self._ops_topics: list[str] = []
        self._cancels: set[asyncio.Task[Any]] = set()
        self._last_renewal = time.monotonic()
        self._stop_requested = asyncio.Event()
        self.ready = asyncio.Event()
        """Set once :meth:`start` has finished: the worker claims from then on."""
        self._stopped = False
        self.stopped = asyncio.Event()
        """Set once :meth:`stop` (or an exit at once) has finished."""
        self._signals = 0

    @property
    def remote(self) -> Any:
        """The :class:`~taskwarden.remote.RemoteControl` of this worker's engine while it
        runs with a bus (None otherwise)."""
        return self._remote

    def __repr__(self) -> str:
        return f"Worker(name={self.name!r}, incarnation={self.incarnation!r})"

    # ------------------------------------------------------------------ life cycle
    async def start(self) -> None:
        """Open the store (and bus), load the definitions, record the worker and begin
        claiming, renewing and reaping."""
        if self._bus_url is not None and self.bus is not None:
            await self.bus.open()
        await self.engine.init()
        self.started_at = self.clock.wall()
        await self._put_record()
        try:
            await self._resolve_gone_from_this_host()
        except Exception:  # the reaper resolves them later: starting matters more
            logger.exception("resolving the runs of this host's exited workers failed")
        self._last_renewal = time.monotonic()  # nothing is held yet: the clock starts here
        loop = asyncio.get_running_loop()
        self.engine.on_slot_freed.append(self._wake.set)
        if self.bus is not None:
            from taskwarden.remote import RemoteControl

            self._remote = RemoteControl(
                self.engine, self.bus, prefix=self.prefix, serve_commands=self.serve_commands
            )
            await self._remote.start()
            self._wake_watch = self.bus.subscribe(wake_topic(self.prefix), max_buffer=100)
            await self._wake_watch.start()
            self._tasks.append(loop.create_task(self._watch_wakes(self._wake_watch)))
            # Its live operations (the API's /api/operations), answered under its incarnation.
            self._ops_topics = await serve_operations(
                self.bus, self.engine.registry, node=self.incarnation, prefix=self.prefix
            )
        # On PostgreSQL also with a bus: the NOTIFY leaves at the writer's commit, before
        # the bus message it sends once the write has returned (launch -> running p50
        # 3.4 -> 2.9 ms). A wake or cancel told twice is acted on once.
        await self._listen_for_notify()
        self._tasks += [
            loop.create_task(self.engine.run(handle_signals=False), name="taskwarden-cron"),
            loop.create_task(self._claim_loop(), name="taskwarden-claim"),
            loop.create_task(self._renew_loop(), name="taskwarden-renew"),
            loop.create_task(self._reap_loop(), name="taskwarden-reap"),
        ]
        self.ready.set()
        logger.info(
            "worker %s (%s) serves %d processes with %d slots",
            self.name,
            self.incarnation,
            len(self.engine.served_process_ids),
            self.concurrency,
        )

    async def run(self) -> None:
        """Start, then work until SIGTERM / SIGINT (in the main thread) or :meth:`stop`.

        The first signal drains (see :meth:`stop`); a second one exits at once, leaving
        this worker's leases to expire and be reaped by the others.
        """
        await self.start()
        loop = asyncio.get_running_loop()
        installed: list[int] = []
        if threading.current_thread() is threading.main_thread():
            for signum in (int(signal.SIGTERM), int(signal.SIGINT)):
                with contextlib.suppress(NotImplementedError, RuntimeError):
                    loop.add_signal_handler(signum, self._on_signal, signum)
                    installed.append(signum)
        try:
            await self._stop_requested.wait()
            if self._signals > 1:
                await self._abort()
            else:
                stopping = asyncio.ensure_future(self.stop())
                while not stopping.done():
                    await asyncio.wait({stopping}, timeout=0.1)
                    if self._signals > 1:
                        stopping.cancel()
                        await self._abort()
                        break
        finally:
            for signum in installed:
                loop.remove_signal_handler(signum)

    def _on_signal(self, signum: int) -> None:
        self._signals += 1
        logger.info(
            "received %s: %s",
            signal.Signals(signum).name,
            "draining" if self._signals == 1 else "exiting now",
        )
        self._stop_requested.set()

    def request_stop(self) -> None:
        """Ask :meth:`run` to drain and return (what SIGTERM does)."""
        self._signals = max(self._signals, 1)
        self._stop_requested.set()

    async def stop(self, drain_timeout: float | None = None, *, hand_back: bool = True) -> None:
        """Drain: stop claiming, let runs finish within ``drain_timeout`` (default: the
        worker's), hand what is left back to the fleet (stopped, and ``scheduled`` again
        without an owner for another worker), remove the worker record, and close what
        the worker opened. With ``hand_back=False`` nothing is waited for or handed back:
        the engine's shutdown cancels the runs and records them ended (what the seed 004
        ``shutdown()`` does). Safe to call twice."""
        if self._stopped:
            await self.stopped.wait()
            return
        self._stopped = True
        self._stop_requested.set()
        try:
            await self._stop(drain_timeout, hand_back)
        finally:
            self.stopped.set()

    async def _stop(self, drain_timeout: float | None, hand_back: bool) -> None:
        self._claiming = False
        self._wake.set()
        deadline = self.drain_timeout if drain_timeout is None else drain_timeout
        runs = self.engine.active_runs() if hand_back else []
        if runs:
            logger.info("draining %d runs for up to %.1f s", len(runs), deadline)
            waits = [asyncio.ensure_future(self.engine.wait(pid)) for pid in runs]
            await asyncio.wait(waits, timeout=deadline)
            for waiter in waits:
                waiter.cancel()
            await self._hand_back()
        await self._stop_tasks()
        await self.engine.shutdown()
        try:
            await self.store.remove_worker(self.incarnation)
        except Exception as exc:  # the record goes stale instead: say why, keep stopping
            logger.warning("removing the worker record failed: %s", exc)
        await self._close()

    async def _hand_back(self) -> None:
        """At the drain deadline: stop what still runs and give it back to the fleet (the
        engine's shutdown then ends only what ignored even that)."""
        handed = await self.engine.hand_back(
            "handed back: the worker is shutting down (drain deadline passed)"
        )
        if not handed:
            return
        logger.info("handing %d runs back to the fleet", len(handed))
        waits = [asyncio.ensure_future(self.engine.wait(pid)) for pid in handed]
        await asyncio.wait(waits, timeout=self.engine.cancel_grace + 1.0)
        for waiter in waits:
            waiter.cancel()
        if self.bus is not None:
            with contextlib.suppress(Exception):
                await self.bus.publish(wake_topic(self.prefix), {"process_id": handed[0]})

    async def _abort(self) -> None:
        """Exit at once: no drain, the leases stay for the reaper of another worker."""
        self._stopped = True
        await self._stop_tasks()
        tasks = []
        for process_id in self.engine.held_runs:
            # Like a killed process: nothing more reaches the store from these runs.
            self.engine.lose_run(process_id, "lease-lost: the worker exits at once")
        for run in list(self.engine._runs.values()):
            if run.task is not None:
                run.task.cancel()
                tasks.append(run.task)
        if tasks:
            await asyncio.wait(tasks, timeout=1.0)
        await self._close()
        self.stopped.set()

    async def _stop_tasks(self) -> None:
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)
        if self._remote is not None:
            await self._remote.stop()
            self._remote = None
        if self._wake_watch is not None:
            await self._wake_watch.close()
            self._wake_watch = None
        if self._notify is not None:
            await self._notify.close()
            self._notify = None
        topics, self._ops_topics = self._ops_topics, []
        for topic in topics:
            if self.bus is not None:
                with contextlib.suppress(Exception):
                    await self.bus.unserve(topic)

    async def _close(self) -> None:
        if self._store_url is not None:
            await self.store.close()
        if self._bus_url is not None and self.bus is not None:
            await self.bus.close()

    async def __aenter__(self) -> Worker:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    # ------------------------------------------------------------------ claiming
    async def _listen_for_notify(self) -> None:
        """On PostgreSQL: wake on the store's NOTIFY (see worker/notify)."""
        dsn = getattr(self.store, "dsn", None)
        if not self.listen_notify or type(self.store).__name__ != "PostgresStore":
            return
        if not isinstance(dsn, str):
            return
        self._notify = NotifyListener(
            dsn,
            self.prefix,
            on_wake=self._wake.set,
            on_cancel=self._cancel_notified,
            name=f"taskwarden-worker-{self.name}",
        )
        await self._notify.start()

    def _cancel_notified(self, process_id: str) -> None:
        if process_id not in self.engine.held_runs:
            return  # another worker runs it
        task = asyncio.get_running_loop().create_task(
            self.engine.cancel_local(process_id, "cancelled on request")
        )
        self._cancels.add(task)
        task.add_done_callback(self._cancels.discard)

    async def _watch_wakes(self, subscription: BusSubscription) -> None:
        async for _ in subscription:
            self._wake.set()

    async def _claim_loop(self) -> None:
        while self._claiming:
            # Cleared before the claim: a wake-up (a launch, a freed slot) that arrives
            # while the claim is in flight must start the next claim, not wait for a poll.
            self._wake.clear()
            try:
                claimed = await self.claim_once()
            except Exception:
                logger.exception("claiming failed; retrying in %.1f s", self.poll_interval)
                claimed = 0
            if claimed and self._has_free_slot():
                continue  # a full batch: there may be more waiting
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.poll_interval):
                    await self._wake.wait()

    def _has_free_slot(self) -> bool:
        free = self.engine.free_slots
        return free is None or free > 0

    async def claim_once(self) -> int:
        """Claim and start up to the free slots' worth of waiting launches; return how many."""
        free = self.engine.free_slots
        batch = 100
        if self.concurrency is not None and not self.store.executes_in_order:
            # At most half the slots per claim on a pooled store: the next claim is in
            # flight while the last one's runs record their ends (two statements overlap
            # on two connections), not claim -> run -> end -> claim in lock step. A store
            # that runs calls one at a time (SQLite) gains nothing, and pays more claims.
            batch = max(1, min(100, -(-self.concurrency // 2)))
        limit = batch if free is None else min(free, batch)
        served = self.engine.served_process_ids
        if limit <= 0 or not served or not self._claiming or self._trusted_for() <= 0:
            return 0  # (no claims while renewals fail: what it took would be lost at once)
        # The claim starts what it takes (``running`` in the same write): a run costs one
        # write less, and a worker that dies before the run's task begins is a lost worker
        # like any other (its on_worker_lost policy applies).
        records = await self.store.claim(
            self.incarnation, self.lease_seconds, limit, process_ids=served, start=True
        )
        started = 0
        for record in records:
            if await self.engine.start_claimed(record):
                started += 1
        self.claimed += started
        return started

    # ------------------------------------------------------------------ renewing
    async def _renew_loop(self) -> None:
        while True:
            await asyncio.sleep(self.renew_interval)
            # A renewal that hangs (the store retrying a dead connection) must not keep the
            # runs past the point where this worker can still trust their leases.
            leases = self.engine.held_leases()
            trusted_for = self._trusted_for(min(leases.values(), default=self.lease_seconds))
            try:
                # Past trust (the runs were stopped already) a renewal is how to recover.
                async with asyncio.timeout(trusted_for if trusted_for > 0 else self.lease_seconds):
                    await self.renew_once()
            except Exception as exc:
                silent = time.monotonic() - self._last_renewal
                reason = exc if str(exc) else type(exc).__name__
                for process_id, lease in leases.items():
                    # Stop each run before its lease can run out and another worker take
                    # it over (a task's own lease may be longer or shorter than the worker's).
                    if silent >= lease - self.renew_interval:
                        self.engine.lose_run(
                            process_id,
                            f"lease-lost: no renewal for {silent:.1f} s ({reason})",
                        )
                logger.warning("renewing the leases failed: %r", exc)

    def _trusted_for(self, lease: float | None = None) -> float:
        """Seconds this worker may still trust a lease of ``lease`` seconds (its own by
        default) renewed at its last renewal, on its own monotonic clock."""
        lease = self.lease_seconds if lease is None else lease
        return self._last_renewal + lease - self.renew_interval - time.monotonic()

    async def renew_once(self) -> None:
        """Renew every lease this worker holds; stop the runs it lost, start the cancel of
        the ones with a request it may have missed, and refresh the worker record."""
        mine = set(self.engine.held_runs)
        renewing_since = time.monotonic()
        held = dict(await self.store.renew_held(self.incarnation, self.lease_seconds))
        self._last_renewal = renewing_since
        for process_id, held_state in held.items():
            if held_state is not S.SCHEDULED and process_id not in mine:
                # The store says this worker runs it, but it does not (any more): a run it
                # stopped when it could not renew. Resolve it as the others would have.
                await self._resolve_orphan(process_id)
        for process_id in mine:
            state = held.get(process_id)
            if state is None:
                if self.engine.is_running_locally(process_id):
                    self.engine.lose_run(
                        process_id,
                        "lease-lost: another worker's reaper resolved this run after its "
                        "lease expired",
                    )
            elif state is S.CANCEL_REQUESTED:
                await self.engine.cancel_local(process_id, "cancelled on request")
        await self._put_record()

    async def _resolve_orphan(self, process_id: str) -> None:
        if process_id in self.engine.held_runs:
            return  # it started meanwhile
        record = await self.store.get(process_id)
        if record is None or record.lease_owner != self.incarnation:
            return
        if record.state in (S.RUNNING, S.CANCEL_REQUESTED, S.CANCELLING):
            await self._resolve_lost(record)

    async def _put_record(self) -> None:
        now = self.clock.wall()
        await self.store.put_worker(
            WorkerRecord(
                incarnation=self.incarnation,
                name=self.name,
                host=HOST,
                pid=os.getpid(),
                started_at=self.started_at or now,
                renewed_at=now,
                runs=len(self.engine.active_runs()),
                concurrency=self.concurrency,
                process_ids=tuple(sorted(self.engine.served_process_ids)),
            )
        )

    # ------------------------------------------------------------------ reaping
    async def _reap_loop(self) -> None:
        while True:
            await asyncio.sleep(self.reaper_interval)
            try:
                await self.reap_once()
            except Exception:
                logger.exception("reaping expired leases failed")

    async def reap_once(self) -> int:
        """Resolve every run whose lease expired (its worker is presumed dead) by its
        policy; return how many were resolved by this call."""
        resolved = 0
        for record in await self.store.expired_leases():
            if record.lease_owner == self.incarnation:
                continue  # ours: the renewal loop decides
            if record.state is S.SCHEDULED and record.parent_id is None:
                continue  # a claimed launch never started: claim() takes it over
            if await self._resolve_lost(record):
                resolved += 1
        self.reaped += resolved
        return resolved

    async def _resolve_gone_from_this_host(self) -> int:
        """Resolve at once, by their policies, the runs of this host's workers whose OS
        process has exited (a worker restarted after a crash need not wait for the
        leases to expire); return how many. Leases of other hosts wait for the reaper."""
        resolved = 0
        for record in await self.store.list(state=ACTIVE_STATES):
            owner = record.lease_owner
            if owner is None or owner == self.incarnation or not owner_process_gone(owner):
                continue
            if record.state is S.SCHEDULED and record.parent_id is None:
                continue  # never started: claim() takes it over once its lease expires
            if await self._resolve_lost(record, gone=True):
                resolved += 1
        self.reaped += resolved
        return resolved

    async def _resolve_lost(self, record: ProcessRecord, *, gone: bool = False) -> bool:
        now = self.clock.wall()
        owner = record.lease_owner
        expired = record.lease_expires_at
        when = expired.isoformat(timespec="seconds") if expired is not None else "?"
        policy = record.on_worker_lost if record.parent_id is None else "fail"
        budget_left = record.lost_count < record.lost_retries
        again = policy in ("retry", "resume") and budget_left
        if gone:
            error = f"worker-lost: its worker {owner} exited (its process is gone from {HOST})"
        else:
            error = f"worker-lost: its worker {owner} stopped renewing the lease (expired {when})"
        if policy in ("retry", "resume") and not budget_left:
            error += f"; not launched again: {record.lost_count} relaunches already"
        elif again:
            error += "; launched again"
        history = None
        if record.running_since is not None:
            history = RunRecord(
                index=None,
                operation_id=f"{record.process_id}#{record.run_number}",
                name=record.process_id,
                kind="process",
                status=OperationStatus.FAILED,
                started_at=record.running_since,
                ended_at=now,
                duration=max(0.0, (now - record.running_since).total_seconds()),
                error=error,
                parent_id=record.parent_id,
                metadata=dict(record.metadata),
                process_id=record.process_id,
                run_number=record.run_number,
            )
        duration = (
            None
            if record.running_since is None
            else max(0.0, (now - record.running_since).total_seconds())
        )
        try:
            failed = await self.store.transition(
                record.process_id,
                {record.state},
                S.FAILED,
                expected_owner=owner,
                run=history,
                error=error,
                failed_at=now,
                duration=duration,
            )
        except (InvalidTransition, ProcessNotFound):
            return False  # another reaper, the owner or a cancel got there first
        logger.warning("process %r: %s", record.process_id, error)
        self.engine._notify(failed)
        if again:
            fields = dict(_RELAUNCH_RESET)
            if policy == "retry":  # a fresh attempt; "resume" keeps what the run saved
                fields.update(progress_percent=None, progress_message=None, log=())
            try:
                relaunched = await self.store.transition(
                    record.process_id,
                    {S.FAILED},
                    S.SCHEDULED,
                    lost_count=record.lost_count + 1,
                    **fields,
                )
            except (InvalidTransition, ProcessNotFound):
                return True
            await self.store.delete_descendants(record.process_id, only_if_states={S.SCHEDULED})
            self.engine._notify(relaunched)
            self._wake.set()
            if self.bus is not None:
                with contextlib.suppress(Exception):
                    await self.bus.publish(
                        wake_topic(self.prefix), {"process_id": record.process_id}
                    )
        return True

    # ------------------------------------------------------------------ reading
    def snapshot(self) -> Mapping[str, Any]:
        """What this worker is doing, for logs and tests."""
        return {
            "name": self.name,
            "incarnation": self.incarnation,
            "runs": self.engine.active_runs(),
            "claimed": self.claimed,
            "reaped": self.reaped,
        }
