"""The process engine: definitions, launch, cancel, dismiss, children, cron, shutdown.

Every state change is a compare-and-set :meth:`~taskwarden.abc.Store.transition`, so two
callers, or two engines sharing one store, can never both launch or both finish one process.
Each run executes inside a :class:`~taskwarden.scope.Cancelable` of kind ``"process"``:
the registry lists it, cancelling it is cooperative first and forced after the grace
period, and its children run in nested scopes.
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
import logging
import os
import signal
import threading
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime
from enum import StrEnum
from typing import Any

from taskwarden.abc import Store
from taskwarden.clock import Clock, SystemClock
from taskwarden.engine.claims import ClaimMixin
from taskwarden.engine.cron import CronSchedule, CronScheduler
from taskwarden.engine.definitions import (
    TaskInstance,
    definition_fields,
    new_record,
)
from taskwarden.engine.engine_base import ChangeCallback
from taskwarden.engine.progress import (
    DEFAULT_MAX_LOG,
    DEFAULT_MAX_MESSAGES,
    flush_interval_from_env,
)
from taskwarden.engine.recovery import HOST, RecoveryMixin
from taskwarden.engine.run_state import _INACTIVE, _RESET_FIELDS, _quiet_get, _Run, _shielded
from taskwarden.errors import (
    ConfigurationError,
    InvalidDefinition,
    InvalidTransition,
    LaunchBlocked,
    NotCancellable,
    ProcessNotFound,
)
from taskwarden.model import CancelationReason, OperationStatus, RunRecord
from taskwarden.processes import (
    ACTIVE_STATES,
    CANCELLABLE_STATES,
    DISMISSABLE_STATES,
    LAUNCHABLE_STATES,
    ProcessRecord,
    ProcessState,
)
from taskwarden.registry import OperationRegistry

__all__ = ["ChangeCallback", "Engine", "EngineState", "GetTaskDefinitions"]

logger = logging.getLogger("taskwarden.engine")

_RESYNC_READ = 1000
"""Records a resync reads per query."""

S = ProcessState

GetTaskDefinitions = Callable[..., Awaitable[list[TaskInstance]]]
"""``async def get_tasks(services, metadata_filter=None) -> list[TaskInstance]``."""


class EngineState(StrEnum):
    """Where an engine is in its life."""

    CREATED = "created"
    STARTED = "started"
    STOPPING = "stopping"
    STOPPED = "stopped"


class Engine(ClaimMixin, RecoveryMixin):
    """The process manager of seed 004 on a pluggable :class:`~taskwarden.abc.Store`.

    Args:
        store: a :class:`~taskwarden.abc.Store`, or a store URL (``sqlite:///app.db``,
            ``postgresql://...``, ``memory://``); an engine closes a store it opened from
            a URL on shutdown.
        prefix: the table prefix of a store opened from a URL.
        services: passed to every task as ``ctx.services``.
        get_task_definitions: ``async (services, metadata_filter) -> list[TaskInstance]``
            (a one-argument ``(services)`` function works too); called on init and resync.
        engine_id: who owns the runs of this engine in the store; by default
            ``<host>:<pid>:<n>``, unique per engine. Engines sharing a store need distinct
            ids. On start, an engine resolves what was left active by its own id, by no
            owner, by an expired lease, or by a default-id engine of this host whose OS
            process is gone (so a restarted application resolves its predecessor's runs,
            and several worker processes on one store leave each other's runs alone).
        registry: the :class:`~taskwarden.registry.OperationRegistry` runs join (default:
            the process-wide one).
        clock: time for cron, progress flushing and timestamps (a ``FakeClock`` in tests).
        max_concurrency: at most this many root runs execute at once (None: unlimited);
            launched processes beyond it wait in ``scheduled``.
        cancel_grace: seconds between the cooperative cancel and forcing the run's task.
        abandon_after: seconds after the forced cancel before a run that keeps going is
            recorded failed (abandoned).
        shutdown_timeout: seconds :meth:`shutdown` waits for runs to stop.
        progress_flush_interval: seconds between progress writes of one process (default
            from ``TASKWARDEN_PROGRESS_FLUSH_INTERVAL_MS``, else 0.1).
        max_log: log entries kept per process.
        max_messages_per_flush: info entries kept per flush interval before coalescing.
        lease_seconds: in a fleet, the lease each run's record carries (a
            :class:`~taskwarden.worker.Worker` sets it and renews it); None, the default,
            holds runs without expiry, as a lone engine does.
    """

    def __init__(
        self,
        store: Store | str,
        *,
        prefix: str = "taskwarden",
        services: dict[str, Any] | None = None,
        get_task_definitions: GetTaskDefinitions | None = None,
        engine_id: str | None = None,
        registry: OperationRegistry | None = None,
        clock: Clock | None = None,
        max_concurrency: int | None = None,
        cancel_grace: float = 5.0,
        abandon_after: float = 1.0,
        shutdown_timeout: float = 5.0,
        progress_flush_interval: float | None = None,
        max_log: int = DEFAULT_MAX_LOG,
        max_messages_per_flush: int = DEFAULT_MAX_MESSAGES,
        lease_seconds: float | None = None,
    ) -> None:
        if max_concurrency is not None and max_concurrency < 1:
            raise ConfigurationError(f"max_concurrency must be >= 1 or None, got {max_concurrency}")
        for label, value in (
            ("cancel_grace", cancel_grace),
            ("abandon_after", abandon_after),
            ("shutdown_timeout", shutdown_timeout),
        ):
            if not value >= 0:
                raise ConfigurationError(f"{label} must be a number of seconds >= 0, got {value!r}")
        self._store_url: str | None = None
        if isinstance(store, str):
            self._store_url = store
            from taskwarden.stores import open_store

            store = open_store(store, prefix=prefix)
        self.store: Store = store
        self.prefix = prefix
        self.services: dict[str, Any] = services if services is not None else {}
        self.get_task_definitions = get_task_definitions
        self.engine_id = engine_id or f"{HOST}:{os.getpid()}:{next(_engine_numbers)}"
        self.lease_seconds = lease_seconds
        self.renew_interval: float | None = None
        """In a fleet, the renewal interval of the worker's leases (set by the
        :class:`~taskwarden.worker.Worker`): definitions whose ``lease_seconds`` is under
        3 times it are refused."""
        self.prune_undefined = True
        """Whether :meth:`resync` deletes records that no definition here declares (the
        seed's behaviour); a fleet's workers may serve different processes, so a
        :class:`~taskwarden.worker.Worker` turns it off."""
        self.registry = registry if registry is not None else OperationRegistry.get_instance()
        self.clock: Clock = clock or SystemClock()
        self.cancel_grace = cancel_grace
        self.abandon_after = abandon_after
        self.shutdown_timeout = shutdown_timeout
        self.progress_flush_interval = (
            flush_interval_from_env()
            if progress_flush_interval is None
            else progress_flush_interval
        )
        self.max_log = max_log
        self.max_messages_per_flush = max_messages_per_flush
        self.on_change: list[ChangeCallback] = []
        """Callbacks called with the record after every committed state change."""
        self.on_progress: list[Callable[[str], Any]] = []
        """Callbacks called with the process id after each progress and log flush."""
        self.on_slot_freed: list[Callable[[], None]] = []
        """Callbacks called when a root run gives its concurrency slot back (a worker
        claims again then)."""
        self.state = EngineState.CREATED
        self._definitions: dict[str, TaskInstance] = {}
        self._schedules: dict[str, CronSchedule] = {}
        self._runs: dict[str, _Run] = {}
        self._aux: set[asyncio.Task[Any]] = set()
        self._retry_waits: set[asyncio.Task[None]] = set()
        self._start_waiters: dict[str, asyncio.Event] = {}
        self._max_concurrency = max_concurrency or None
        self._active_roots = 0
        self._pending: deque[_Run] = deque()
        # A run's start can be queued behind its launch before the launch's answer is back.
        self._in_order_store = store.executes_in_order
        self._blocked = False
        self._cron = CronScheduler(self.clock, lambda: self._schedules, self._fire_cron)
        self._cron_task: asyncio.Task[None] | None = None
        self.running = asyncio.Event()
        """Set while :meth:`run` is active (the scheduler fires only then)."""
        self._stop = asyncio.Event()
        self._stopped = asyncio.Event()
        self._shutdown_task: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------ life cycle
    async def init(self) -> None:
        """Open the store, load the definitions, and resolve what a stopped engine left.

        Processes left active by a stopped engine (this ``engine_id``, no owner, an expired
        lease, or a default-id engine of this host whose OS process is gone) are recorded
        failed with an error saying the engine stopped; resumable ones are launched again.
        """
        if self.state is not EngineState.CREATED:
            raise ConfigurationError("init() was called already on this engine")
        await self.store.open()
        await self.resync()
        relaunch = await self._reconcile()
        self.state = EngineState.STARTED
        await self._rearm_retries()
        for process_id in relaunch:
            try:
                await self.launch(process_id)
            except Exception:
                logger.exception("relaunching resumable process %r failed", process_id)

    async def run(self, *, handle_signals: bool = True) -> None:
        """Run the cron scheduler and block until :meth:`shutdown`.

        In the main thread, SIGTERM and SIGINT trigger a graceful shutdown (unless
        ``handle_signals`` is False: a host such as a worker handles them itself).
        """
        self._require_started()
        loop = asyncio.get_running_loop()
        installed: list[int] = []
        if handle_signals and threading.current_thread() is threading.main_thread():
            for signum in (int(signal.SIGTERM), int(signal.SIGINT)):
                try:
                    loop.add_signal_handler(signum, self._on_signal, signum)
                except (NotImplementedError, RuntimeError):
                    continue
                installed.append(signum)
        self._cron_task = loop.create_task(self._cron.run(), name="taskwarden-cron")
        self._cron_task.add_done_callback(self._log_task_failure)
        self.running.set()
        try:
            await self._stop.wait()
            if self._shutdown_task is not None:
                await self._shutdown_task
            await self._stopped.wait()
        finally:
            self.running.clear()
            for signum in installed:
                loop.remove_signal_handler(signum)
            await self._stop_cron()

    def _on_signal(self, signum: int) -> None:
        logger.info("received %s: shutting down", signal.Signals(signum).name)
        if self._shutdown_task is None:
            self._shutdown_task = asyncio.get_running_loop().create_task(self.shutdown())
        self._stop.set()

    async def shutdown(self, timeout: float | None = None) -> None:  # noqa: ASYNC109
        """Stop intake and the scheduler, cancel the runs, and leave every record terminal.

        Runs get the cooperative cancel at once, a forced cancel when ``timeout`` (default
        ``shutdown_timeout``) is nearly spent, and whatever still runs at the deadline is
        recorded failed as abandoned. Progress is flushed. A store opened from a URL is
        closed.
        """
        if self.state in (EngineState.STOPPING, EngineState.STOPPED):
            await self._stopped.wait()
            return
        self.state = EngineState.STOPPING
        self._stop.set()
        deadline = self.shutdown_timeout if timeout is None else timeout
        try:
            await self._stop_cron()
            await self._cancel_retry_waits()
            runs = list(self._runs.values())
            for run in runs:
                await self._cancel_run(run, "the engine is shutting down")
            force_window = min(1.0, deadline / 2)
            await self._wait_runs(runs, deadline - force_window)
            left = [run for run in runs if not run.ended]
            for run in left:
                if run.task is not None and not run.finishing:
                    run.task.cancel("taskwarden: engine shutting down")
            await self._wait_runs(left, force_window)
            # Children started while their parents wound down are in _runs, not in `runs`.
            for run in [*left, *self._runs.values()]:
                if not run.ended:
                    await self._abandon(run, "it did not stop before the engine shut down")
            if self._aux:
                await asyncio.wait(list(self._aux), timeout=force_window)
        finally:
            if self._store_url is not None:
                await self.store.close()
            self.state = EngineState.STOPPED
            self._stopped.set()

    async def _wait_runs(self, runs: list[_Run], seconds: float) -> None:
        waits = [asyncio.ensure_future(run.done.wait()) for run in runs if not run.ended]
        if not waits:
            return
        try:
            await asyncio.wait(waits, timeout=max(0.0, seconds))
        finally:
            for waiter in waits:
                waiter.cancel()

    async def _stop_cron(self) -> None:
        task = self._cron_task
        self._cron_task = None
        if task is not None and not task.done():
            task.cancel()
            await asyncio.wait({task})

    def _require_started(self) -> None:
        if self.state is EngineState.CREATED:
            raise ConfigurationError("the engine is not initialized: await init() first")

    # ------------------------------------------------------------------ definitions
    async def _load_definitions(
        self, metadata_filter: Mapping[str, Any] | None
    ) -> list[TaskInstance]:
        if self.get_task_definitions is None:
            return []
        getter = self.get_task_definitions
        try:
            positional = [
                p
                for p in inspect.signature(getter).parameters.values()
                if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL)
            ]
        except (TypeError, ValueError):
            positional = []
        if len(positional) >= 2 or any(p.kind is p.VAR_POSITIONAL for p in positional):
            tasks = await getter(self.services, metadata_filter)
        else:
            tasks = await getter(self.services)
        seen: set[str] = set()
        for task in tasks:
            self._validate(task)
            if task.process_id in seen:
                raise InvalidDefinition(
                    f"process {task.process_id!r} is defined twice: process ids must be unique"
                )
            seen.add(task.process_id)
        return list(tasks)

    async def resync(
        self, clean: bool = False, metadata_filter: Mapping[str, Any] | None = None
    ) -> None:
        """Re-read the definitions and bring the store in line with them.

        New definitions create idle records; changed ones update the definition fields only
        (never the runtime state); removed ones are deleted unless active (and unless
        :attr:`prune_undefined` is False). Ad-hoc processes
        survive unless ``clean=True``, which first deletes every record that is not active.
        With ``metadata_filter`` only the definitions (and records) with that metadata are
        regenerated.
        """
        tasks = await self._load_definitions(metadata_filter)
        wanted = dict(metadata_filter or {})

        def in_scope(metadata: Mapping[str, Any]) -> bool:
            return all(metadata.get(k) == v for k, v in wanted.items())

        tasks = [task for task in tasks if in_scope(task.metadata)]
        if clean:
            for record in await self.store.list(parent_id=None, metadata=wanted or None):
                if record.parent_id is None and record.state not in ACTIVE_STATES:
                    await self.store.delete(
                        record.process_id, only_if_states=_INACTIVE, descendants=True
                    )
                    self._definitions.pop(record.process_id, None)
        now = self.clock.wall()
        new_ids = {task.process_id for task in tasks}
        current: dict[str, ProcessRecord] = {}
        ids = list(new_ids)
        for start in range(0, len(ids), _RESYNC_READ):  # a few reads, not one per process
            current.update(await self.store.get_many(ids[start : start + _RESYNC_READ]))
        for task in tasks:
            existing = current.get(task.process_id)
            if existing is None:
                try:
                    await self.store.create(new_record(task, now=now))
                    continue
                except InvalidDefinition:
                    # Another engine (a worker starting beside this one) created it first.
                    existing = await self.store.get(task.process_id)
                    if existing is None:
                        raise
            if existing is not None:
                fields = definition_fields(task)
                fields["adhoc"] = False
                changed = {k: v for k, v in fields.items() if getattr(existing, k) != v}
                if changed:
                    await self.store.update_definition(task.process_id, **changed)
        for record in await self.store.list(metadata=wanted or None):
            if not self.prune_undefined:
                break
            if record.parent_id is not None or record.process_id in new_ids or record.adhoc:
                continue
            deleted = await self.store.delete(
                record.process_id, only_if_states=_INACTIVE, descendants=True
            )
            if deleted:
                self._definitions.pop(record.process_id, None)
                self._schedules.pop(record.process_id, None)
        for process_id, definition in list(self._definitions.items()):
            if in_scope(definition.metadata) and process_id not in new_ids:
                stored = await self.store.get(process_id)
                if stored is None or not stored.adhoc:
                    self._definitions.pop(process_id, None)
                    self._schedules.pop(process_id, None)
        for task in tasks:
            self._definitions[task.process_id] = task
            self._set_schedule(task)
        self._cron.changed()

    def _set_schedule(self, task: TaskInstance) -> None:
        if task.schedule is None:
            self._schedules.pop(task.process_id, None)
        else:
            self._schedules[task.process_id] = CronSchedule.parse(
                task.process_id, task.schedule, task.schedule_tz
            )

    # ------------------------------------------------------------------ queries
    async def get_process(self, process_id: str) -> ProcessRecord | None:
        """The record of a process (``record["status"]["state"]`` reads like the seed's
        document; :meth:`~ProcessRecord.to_document` gives the JSON shape), or None."""
        return await self.store.get(process_id)

    async def list_processes(
        self,
        state: str | ProcessState | None = None,
        root_id: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        limit: int | None = None,
        cursor: str | None = None,
    ) -> list[ProcessRecord]:
        """Processes matching every filter, sorted by depth, order, then id; page with
        ``limit`` and ``cursor`` (the ``cursor`` of the last record of the previous page)."""
        states = None if state is None else ProcessState(state)
        return await self.store.list(
            state=states, root_id=root_id, metadata=metadata, limit=limit, cursor=cursor
        )

    async def query_history(
        self,
        process_id: str | None = None,
        *,
        status: OperationStatus | None = None,
        since: datetime | None = None,
        limit: int | None = None,
    ) -> list[RunRecord]:
        """Recorded runs (newest first) from the store: they outlive restarts and deleted
        records. Each has ``process_id``, ``run_number``, times, status, error, traceback."""
        return await self.store.query_history(
            process_id=process_id, status=status, since=since, limit=limit
        )

    # ------------------------------------------------------------------ launch
    def block_launches(self) -> None:
        """Refuse launches (``LaunchBlocked``) and skip cron fires until unblocked."""
        self._blocked = True

    def unblock_launches(self) -> None:
        """Accept launches again."""
        self._blocked = False

    @property
    def launches_blocked(self) -> bool:
        """True while launches are blocked."""
        return self._blocked

    async def launch(self, process_id: str) -> None:
        """Schedule a run and return at once; the run executes in a background task.

        Raises:
            LaunchBlocked: launches are blocked or the engine is shutting down.
            ProcessNotFound: no such process, or no definition of it in this engine.
            InvalidTransition: it is not launchable (idle, done, failed or cancelled).
        """
        await self._launch(process_id)

    async def launch_and_wait(self, process_id: str) -> None:
        """Launch and return once the run reached a terminal state (for a task with
        ``retries``, once its last attempt ended)."""
        run = await self._launch(process_id)
        await run.done.wait()
        if run.final_state is S.SCHEDULED:
            await self._wait_for_retries(process_id)

    async def wait(self, process_id: str) -> None:
        """Wait until this engine's current run of ``process_id`` has ended (including the
        ephemeral deletion); return at once when it runs nothing by that id."""
        run = self._runs.get(process_id)
        if run is not None:
            await run.done.wait()

    async def _launch(self, process_id: str) -> _Run:
        self._require_started()
        if self._blocked or self.state is not EngineState.STARTED:
            raise LaunchBlocked(process_id)
        definition = self._definitions.get(process_id)
        if definition is None:
            if await self.store.get(process_id) is None:
                raise ProcessNotFound(process_id)
            raise ProcessNotFound(
                process_id,
                f"process {process_id!r} has no definition in this engine: child processes "
                "run through their parent, others need a definition (resync or adhoc_define)",
            )
        if (
            self._in_order_store
            and process_id not in self._runs
            and (self._max_concurrency is None or self._active_roots < self._max_concurrency)
        ):
            return await self._launch_and_start(process_id, definition)
        try:
            # One compare-and-set, no read first: the store says if it is not launchable.
            scheduled = await self.store.transition(
                process_id,
                LAUNCHABLE_STATES,
                S.SCHEDULED,
                **self._hold(definition),
                **_RESET_FIELDS,
            )
            if scheduled.run_number > 0:
                # It ran before: the previous run's children make way for this run's.
                await self.store.delete_descendants(process_id, only_if_states={S.SCHEDULED})
        except asyncio.CancelledError:
            await _shielded(self._abort_unstarted(process_id))
            raise
        # Registered before anyone hears of it, so a cancel right after finds the run.
        run = self._start_run(scheduled, definition)
        self._notify(scheduled)
        return run

    # ------------------------------------------------------------------ cancel
    async def cancel(self, process_id: str) -> None:
        """Cancel a scheduled (straight to cancelled) or running process.

        A running one goes ``cancel_requested`` then ``cancelling``; its cooperative flag is
        set and its children are cancelled; after ``cancel_grace`` seconds its task is
        cancelled for real. A run that ignores even that is recorded failed (abandoned).
        A run in another engine is only marked ``cancel_requested`` here.

        Raises:
            ProcessNotFound: no such process.
            NotCancellable: defined ``cancellable=False``, or not scheduled nor running.
        """
        self._require_started()
        run = self._runs.get(process_id)
        definition = self._definitions.get(process_id)
        if run is not None and run.scope is not None and definition is not None:
            # This engine runs it: try the compare-and-set first, read only if refused.
            if not definition.cancellable:
                raise NotCancellable(
                    process_id, f"process {process_id!r} is defined with cancellable=False"
                )
            try:
                requested = await self.store.transition(process_id, {S.RUNNING}, S.CANCEL_REQUESTED)
            except InvalidTransition:
                pass  # not running any more (or not yet): decide from the record below
            else:
                self._notify(requested)
                self._stop_local_run(run, "cancelled on request")
                await self._ack_cancel(process_id, requested=True)
                return
        record = await self.store.get(process_id)
        if record is None:
            raise ProcessNotFound(process_id)
        if not record.cancellable:
            raise NotCancellable(
                process_id, f"process {process_id!r} is defined with cancellable=False"
            )
        run = self._runs.get(process_id)  # may have changed while awaiting
        for _ in range(5):
            if record.state not in CANCELLABLE_STATES:
                raise NotCancellable(
                    process_id,
                    f"process {process_id!r} is {record.state}: only scheduled or running "
                    "processes can be cancelled",
                )
            try:
                await self._cancel_record(record, run, "cancelled on request")
                return
            except InvalidTransition:
                fresh = await self.store.get(process_id)
                if fresh is None:
                    raise ProcessNotFound(process_id) from None
                record = fresh
        raise NotCancellable(process_id, f"process {process_id!r} kept changing state; retry")

    async def _cancel_record(self, record: ProcessRecord, run: _Run | None, message: str) -> None:
        process_id = record.process_id
        if record.state is S.SCHEDULED:
            cancelled = await self.store.transition(
                process_id, {S.SCHEDULED}, S.CANCELLED, stopped_at=self.clock.wall()
            )
            self._notify(cancelled)
            if run is not None:
                run.cancel_requested = True
                run.final_state = S.CANCELLED
            await self._after_terminal(cancelled, run)
            if run is not None:
                self._drop_waiting(run)
            return
        requested = await self.store.transition(process_id, {S.RUNNING}, S.CANCEL_REQUESTED)
        self._notify(requested)
        if run is None:
            return
        self._stop_local_run(run, message)
        await self._ack_cancel(process_id, requested=True)

    def _stop_local_run(self, run: _Run, message: str) -> None:
        # The record says cancel_requested: the run may stop before the acknowledgement
        # (its own end acknowledges too), so a cancel reaches the task after one write.
        run.cancel_requested = True
        run.cancel_message = message
        if run.scope is not None:
            run.scope.cancel_sync(CancelationReason.MANUAL, message)

    async def cancel_local(self, process_id: str, message: str = "cancelled on request") -> bool:
        """Stop this engine's run of a process whose cancel another engine recorded.

        Another engine sharing the store can only mark a run it does not own
        ``cancel_requested``; the owner calls this (remote control does, on a broadcast) to
        acknowledge the request and run the cancel ladder at once. Returns False when this
        engine does not run the process.
        """
        run = self._runs.get(process_id)
        if run is None:
            return False
        # The ladder starts before any round trip; the record follows: the request is
        # acknowledged (``cancelling``), or recorded here when nobody recorded one.
        self._stop_local_run(run, message)
        record = await _quiet_get(self.store, process_id)
        if record is not None and record.state is S.CANCEL_REQUESTED:
            await self._ack_cancel(process_id, requested=True)
            return True
        await self._cancel_run(run, message)
        return True

    async def _cancel_run(self, run: _Run, message: str) -> None:
        """Cancel a local run whatever its definition says (used by shutdown)."""
        record = await _quiet_get(self.store, run.process_id)
        if record is None or record.state not in CANCELLABLE_STATES:
            if run.scope is not None:
                run.cancel_requested = True
                run.scope.cancel_sync(CancelationReason.MANUAL, message)
            return
        try:
            await self._cancel_record(record, run, message)
        except (InvalidTransition, ProcessNotFound):
            if run.scope is not None:
                run.scope.cancel_sync(CancelationReason.MANUAL, message)

    async def cancel_group(self, metadata: Mapping[str, Any]) -> list[str]:
        """Cancel every cancellable, scheduled or running process whose metadata matches;
        return the ids cancelled (others are skipped, not refused)."""
        cancelled: list[str] = []
        for record in await self.store.list(state=CANCELLABLE_STATES, metadata=metadata):
            if not record.cancellable:
                continue
            try:
                await self.cancel(record.process_id)
            except (NotCancellable, ProcessNotFound):
                continue
            cancelled.append(record.process_id)
        return cancelled

    async def cancel_group_and_wait(self, metadata: Mapping[str, Any]) -> list[str]:
        """:meth:`cancel_group`, then wait until the local runs among them ended."""
        cancelled = await self.cancel_group(metadata)
        runs = [run for pid in cancelled if (run := self._runs.get(pid)) is not None]
        for run in runs:
            await run.done.wait()
        return cancelled

    # ------------------------------------------------------------------ dismiss, ad hoc
    async def dismiss(self, process_id: str) -> None:
        """Reset a done, failed or cancelled process to idle: clear the run's fields
        (times, error, progress, log) and delete its descendants.

        Raises:
            ProcessNotFound: no such process.
            InvalidTransition: it is not in a dismissable state.
        """
        self._require_started()
        record = await self.store.get(process_id)
        if record is None:
            raise ProcessNotFound(process_id)
        if record.state not in DISMISSABLE_STATES:
            raise InvalidTransition(process_id, record.state, S.IDLE)
        idle = await self.store.transition(process_id, DISMISSABLE_STATES, S.IDLE, **_RESET_FIELDS)
        await self.store.delete_descendants(process_id, only_if_states={S.IDLE})
        self._notify(idle)

    async def adhoc_define(
        self, task: TaskInstance, parent_id: str | None = None, ephemeral: bool = False
    ) -> ProcessRecord:
        """Create an idle ad-hoc process (optionally under ``parent_id``) and return it.

        An ephemeral one is deleted once it reaches a terminal state.

        Raises:
            InvalidDefinition: the definition is invalid or the id is taken.
            ProcessNotFound: ``parent_id`` names no process.
        """
        self._require_started()
        self._validate(task)
        parent = None
        order = 0
        if parent_id is not None:
            parent = await self.store.get(parent_id)
            if parent is None:
                raise ProcessNotFound(parent_id)
            order = len(await self.store.children(parent_id))
        record = new_record(
            task, now=self.clock.wall(), adhoc=True, ephemeral=ephemeral, parent=parent, order=order
        )
        created = await self.store.create(record)
        self._definitions[task.process_id] = task
        self._set_schedule(task)
        self._cron.changed()
        return created

    async def adhoc_delete(self, process_id: str) -> None:
        """Delete an ad-hoc process and its descendants, and forget its definition.

        Raises:
            ProcessNotFound: no such process.
            InvalidDefinition: it is not ad hoc (remove it from the definitions instead).
            InvalidTransition: it is active (cancel it first).
        """
        self._require_started()
        record = await self.store.get(process_id)
        if record is None:
            raise ProcessNotFound(process_id)
        if not record.adhoc:
            raise InvalidDefinition(
                f"process {process_id!r} is not ad hoc: remove it from the task definitions "
                "and resync"
            )
        if not await self.store.delete(process_id, only_if_states=_INACTIVE, descendants=True):
            current = await self.store.get(process_id)
            if current is not None:
                raise InvalidTransition(
                    process_id,
                    current.state,
                    "deleted",
                    f"process {process_id!r} is {current.state}: cancel it before deleting it",
                )
        self._definitions.pop(process_id, None)
        self._schedules.pop(process_id, None)
        self._cron.changed()

    # ------------------------------------------------------------------ cron
    async def _fire_cron(self, process_id: str, tick: datetime) -> None:
        if self._blocked or self.state is not EngineState.STARTED:
            logger.info("cron tick of %r at %s skipped: launches are blocked", process_id, tick)
            return
        try:
            won = await self.store.mark_cron_tick(process_id, tick)
        except ProcessNotFound:
            return
        if not won:
            return
        try:
            await self.launch(process_id)
        except (InvalidTransition, LaunchBlocked, ProcessNotFound) as exc:
            logger.warning("cron tick of %r at %s not launched: %s", process_id, tick, exc)

    def active_runs(self) -> list[str]:
        """The ids of the processes this engine is running or about to run."""
        return list(self._runs)

    def __repr__(self) -> str:
        return f"<Engine {self.engine_id!r} {self.state} runs={len(self._runs)}>"


_engine_numbers = itertools.count()
