"""The process engine: definitions, launch, cancel, dismiss, children, cron, shutdown.

Every state change is a compare-and-set :meth:`~taskwarden.abc.Store.transition`, so two
callers, or two engines sharing one store, can never both launch or both finish one process.
Each run executes inside a :class:`~taskwarden.scope.Cancelable` of kind ``"process"``:
the registry lists it, cancelling it is cooperative first and forced after the grace
period, and its children run in nested scopes.
"""

from __future__ import annotations

import asyncio
import contextvars
import dataclasses
import inspect
import logging
import signal
import socket
import threading
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from taskwarden.abc import Store
from taskwarden.clock import Clock, SystemClock
from taskwarden.engine.children import ChildResult, ProgressFanIn
from taskwarden.engine.context import ProcessContext
from taskwarden.engine.cron import CronSchedule, CronScheduler
from taskwarden.engine.definitions import (
    TaskInstance,
    definition_fields,
    new_record,
    validate_definition,
)
from taskwarden.engine.progress import (
    DEFAULT_MAX_LOG,
    DEFAULT_MAX_MESSAGES,
    ProgressBuffer,
    flush_interval_from_env,
)
from taskwarden.errors import (
    ChildProcessCancelled,
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
    END_STATES,
    LAUNCHABLE_STATES,
    ProcessRecord,
    ProcessState,
)
from taskwarden.registry import OperationRegistry
from taskwarden.scope import Cancelable

__all__ = ["ChangeCallback", "Engine", "EngineState", "GetTaskDefinitions"]

logger = logging.getLogger("taskwarden.engine")

S = ProcessState

GetTaskDefinitions = Callable[..., Awaitable[list[TaskInstance]]]
"""``async def get_tasks(services, metadata_filter=None) -> list[TaskInstance]``."""

ChangeCallback = Callable[[ProcessRecord], Any]
"""Called with the new record after each committed state change (may return an awaitable)."""

_STATUS = {
    S.DONE: OperationStatus.COMPLETED,
    S.FAILED: OperationStatus.FAILED,
    S.CANCELLED: OperationStatus.CANCELLED,
}

_RESET_FIELDS: dict[str, Any] = {
    "error": None,
    "running_since": None,
    "done_at": None,
    "duration": None,
    "failed_at": None,
    "stopped_at": None,
    "progress_percent": None,
    "progress_message": None,
    "log": (),
}


class EngineState(StrEnum):
    """Where an engine is in its life."""

    CREATED = "created"
    STARTED = "started"
    STOPPING = "stopping"
    STOPPED = "stopped"


@dataclass(slots=True, eq=False)
class _Run:
    """One run of one process in this engine."""

    process_id: str
    definition: TaskInstance
    record: ProcessRecord
    parent: _Run | None = None
    listener: Callable[[str, float | None, str | None], None] | None = None
    task: asyncio.Task[None] | None = None
    scope: Cancelable | None = None
    progress: ProgressBuffer | None = None
    done: asyncio.Event = field(default_factory=asyncio.Event)
    started: bool = False
    finished: bool = False
    abandoned: bool = False
    waiting_for_slot: bool = False
    cancel_requested: bool = False
    cancel_message: str = ""
    ephemeral: bool = False
    final_state: ProcessState | None = None
    error: str | None = None


def _error_text(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class Engine:
    """The process manager of seed 004 on a pluggable :class:`~taskwarden.abc.Store`.

    Args:
        store: a :class:`~taskwarden.abc.Store`, or a store URL (``sqlite:///app.db``,
            ``postgresql://...``, ``memory://``); an engine closes a store it opened from
            a URL on shutdown.
        prefix: the table prefix of a store opened from a URL.
        services: passed to every task as ``ctx.services``.
        get_task_definitions: ``async (services, metadata_filter) -> list[TaskInstance]``
            (a one-argument ``(services)`` function works too); called on init and resync.
        engine_id: who owns the runs of this engine in the store. Engines sharing one store
            need distinct ids; a restarted engine with the same id resolves what it left.
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
        self.engine_id = engine_id or f"{socket.gethostname()}/{prefix}"
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
        self.state = EngineState.CREATED
        self._definitions: dict[str, TaskInstance] = {}
        self._schedules: dict[str, CronSchedule] = {}
        self._runs: dict[str, _Run] = {}
        self._aux: set[asyncio.Task[Any]] = set()
        self._semaphore = asyncio.Semaphore(max_concurrency) if max_concurrency else None
        self._blocked = False
        self._cron = CronScheduler(self.clock, lambda: self._schedules, self._fire_cron)
        self._cron_task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()
        self._stopped = asyncio.Event()
        self._shutdown_task: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------ life cycle
    async def init(self) -> None:
        """Open the store, load the definitions, and resolve what a stopped engine left.

        Processes left active by an engine with this ``engine_id`` (or with no owner, or
        an expired lease) are recorded failed with an error saying the engine stopped;
        resumable ones are launched again.
        """
        if self.state is not EngineState.CREATED:
            raise ConfigurationError("init() was called already on this engine")
        await self.store.open()
        await self.resync()
        relaunch = await self._reconcile()
        self.state = EngineState.STARTED
        for process_id in relaunch:
            try:
                await self.launch(process_id)
            except Exception:
                logger.exception("relaunching resumable process %r failed", process_id)

    async def run(self) -> None:
        """Run the cron scheduler and block until :meth:`shutdown`.

        In the main thread, SIGTERM and SIGINT trigger a graceful shutdown.
        """
        self._require_started()
        loop = asyncio.get_running_loop()
        installed: list[int] = []
        if threading.current_thread() is threading.main_thread():
            for signum in (int(signal.SIGTERM), int(signal.SIGINT)):
                try:
                    loop.add_signal_handler(signum, self._on_signal, signum)
                except (NotImplementedError, RuntimeError):
                    continue
                installed.append(signum)
        self._cron_task = loop.create_task(self._cron.run(), name="taskwarden-cron")
        self._cron_task.add_done_callback(self._log_task_failure)
        try:
            await self._stop.wait()
            if self._shutdown_task is not None:
                await self._shutdown_task
            await self._stopped.wait()
        finally:
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
            runs = list(self._runs.values())
            for run in runs:
                await self._cancel_run(run, "the engine is shutting down", force_scheduled=True)
            force_window = min(1.0, deadline / 2)
            await self._wait_runs(runs, deadline - force_window)
            left = [run for run in runs if not run.done.is_set()]
            for run in left:
                if run.task is not None:
                    run.task.cancel("taskwarden: engine shutting down")
            await self._wait_runs(left, force_window)
            for run in left:
                if not run.done.is_set():
                    await self._abandon(run, "it did not stop before the engine shut down")
            if self._aux:
                await asyncio.wait(list(self._aux), timeout=force_window)
        finally:
            if self._store_url is not None:
                await self.store.close()
            self.state = EngineState.STOPPED
            self._stopped.set()

    async def _wait_runs(self, runs: list[_Run], seconds: float) -> None:
        waits = [asyncio.ensure_future(run.done.wait()) for run in runs if not run.done.is_set()]
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
            validate_definition(task)
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
        (never the runtime state); removed ones are deleted unless active. Ad-hoc processes
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
        for task in tasks:
            existing = await self.store.get(task.process_id)
            if existing is None:
                await self.store.create(new_record(task, now=now))
            else:
                fields = definition_fields(task)
                fields["adhoc"] = False
                changed = {k: v for k, v in fields.items() if getattr(existing, k) != v}
                if changed:
                    await self.store.update_definition(task.process_id, **changed)
        for record in await self.store.list(metadata=wanted or None):
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

    async def _reconcile(self) -> list[str]:
        """Record failed what a stopped engine left active; return resumable ids to relaunch."""
        now = self.clock.wall()
        relaunch: list[str] = []
        for record in await self.store.list(state=ACTIVE_STATES):
            owner = record.lease_owner
            expired = record.lease_expires_at is not None and record.lease_expires_at <= now
            if owner is not None and owner != self.engine_id and not expired:
                continue  # another live engine runs it
            message = (
                f"the engine that ran it ({owner or 'unknown'}) stopped before the run ended; "
                "it was recorded failed when the engine started again"
            )
            try:
                failed = await self.store.transition(
                    record.process_id,
                    {record.state},
                    S.FAILED,
                    error=message,
                    failed_at=now,
                    duration=_seconds(record.running_since, now),
                )
            except (InvalidTransition, ProcessNotFound):
                continue
            self._notify(failed)
            if record.running_since is not None:
                await self._record_history(
                    failed,
                    started_at=record.running_since,
                    ended_at=now,
                    status=OperationStatus.FAILED,
                    error=message,
                )
            if failed.resumable and failed.parent_id is None:
                relaunch.append(failed.process_id)
        return relaunch

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
        """Launch and return once the run reached a terminal state."""
        run = await self._launch(process_id)
        await run.done.wait()

    async def _launch(self, process_id: str) -> _Run:
        self._require_started()
        if self._blocked or self.state is not EngineState.STARTED:
            raise LaunchBlocked(process_id)
        record = await self.store.get(process_id)
        if record is None:
            raise ProcessNotFound(process_id)
        definition = self._definitions.get(process_id)
        if definition is None:
            raise ProcessNotFound(
                process_id,
                f"process {process_id!r} has no definition in this engine: child processes "
                "run through their parent, others need a definition (resync or adhoc_define)",
            )
        if record.state not in LAUNCHABLE_STATES:
            raise InvalidTransition(process_id, record.state, S.SCHEDULED)
        scheduled = await self.store.transition(
            process_id,
            LAUNCHABLE_STATES,
            S.SCHEDULED,
            lease_owner=self.engine_id,
            **_RESET_FIELDS,
        )
        self._notify(scheduled)
        if record.state is not S.IDLE:
            await self.store.delete_descendants(process_id)
        return self._start_run(scheduled, definition)

    def _start_run(
        self,
        record: ProcessRecord,
        definition: TaskInstance,
        parent: _Run | None = None,
        listener: Callable[[str, float | None, str | None], None] | None = None,
    ) -> _Run:
        run = _Run(
            process_id=record.process_id,
            definition=definition,
            record=record,
            parent=parent,
            listener=listener,
            ephemeral=record.ephemeral,
        )
        self._runs[record.process_id] = run
        loop = asyncio.get_running_loop()
        # A root run must not become a child of whatever scope the caller of launch() is in.
        context = contextvars.copy_context() if parent is not None else contextvars.Context()
        run.task = loop.create_task(
            self._execute(run), name=f"taskwarden-process:{record.process_id}", context=context
        )
        run.task.add_done_callback(lambda task: self._run_task_done(run, task))
        return run

    def _run_task_done(self, run: _Run, task: asyncio.Task[None]) -> None:
        # Also covers a task cancelled before its coroutine ever started.
        self._log_task_failure(task)
        run.finished = True
        if self._runs.get(run.process_id) is run:
            del self._runs[run.process_id]
        run.done.set()

    # ------------------------------------------------------------------ running
    async def _execute(self, run: _Run) -> None:
        semaphore = self._semaphore if run.parent is None else None
        try:
            if semaphore is not None:
                run.waiting_for_slot = True
                await semaphore.acquire()
                run.waiting_for_slot = False
            try:
                await self._execute_run(run)
            finally:
                if semaphore is not None:
                    semaphore.release()
        finally:
            run.finished = True
            if run.final_state is None and not run.abandoned:
                current = await _quiet_get(self.store, run.process_id)
                run.final_state = current.state if current is not None else S.CANCELLED
            if self._runs.get(run.process_id) is run:
                del self._runs[run.process_id]
            run.done.set()

    async def _execute_run(self, run: _Run) -> None:
        process_id = run.process_id
        now = self.clock.wall()
        try:
            record = await self.store.transition(
                process_id, {S.SCHEDULED}, S.RUNNING, running_since=now
            )
        except (InvalidTransition, ProcessNotFound):
            return  # cancelled or removed before it started
        run.record = record
        run.started = True
        self._notify(record)
        if run.listener is not None:
            run.listener("running", None, None)
        scope = Cancelable(
            name=process_id,
            kind="process",
            operation_id=None,
            metadata={"process_id": process_id, "run_number": record.run_number},
            grace_period=self.cancel_grace,
            registry=self.registry,
            on_cancel=[lambda _scope: self._arm_abandon(run)],
        )
        progress = ProgressBuffer(
            self.store,
            process_id,
            clock=self.clock,
            interval=self.progress_flush_interval,
            max_log=self.max_log,
            max_messages=self.max_messages_per_flush,
            operation=scope.context,
        )
        run.progress = progress
        ctx = ProcessContext(self, run, scope, progress, run.listener)
        error: BaseException | None = None
        try:
            async with scope:
                run.scope = scope
                if run.cancel_requested:
                    scope.cancel_sync(CancelationReason.MANUAL, run.cancel_message)
                await run.definition.execute(ctx)
        except asyncio.CancelledError:
            # Cancelled from outside the run's own ladder (shutdown, a parent group):
            # record the end, then let the cancellation go on.
            await asyncio.shield(self._finish(run, scope, None, cancelled=True))
            raise
        except Exception as exc:
            error = exc
        await asyncio.shield(self._finish(run, scope, error, cancelled=False))

    async def _finish(
        self, run: _Run, scope: Cancelable, error: BaseException | None, *, cancelled: bool
    ) -> None:
        process_id = run.process_id
        if run.progress is not None:
            try:
                await run.progress.close()
            except Exception:
                logger.exception("final progress flush of %r failed", process_id)
        if run.abandoned:
            return
        cancelled = cancelled or scope.is_cancelled or run.cancel_requested
        now = self.clock.wall()
        duration = _seconds(run.record.running_since, now)
        if error is None:
            target = S.CANCELLED if cancelled else S.DONE
        elif cancelled and isinstance(error, ChildProcessCancelled):
            target = S.CANCELLED
        else:
            target = S.FAILED
        error_text = None if error is None else _error_text(error)
        record = await self._end_record(run, target, cancelled, now, duration, error_text)
        if record is None:
            return
        run.final_state = record.state
        run.error = record.error
        if run.listener is not None:
            run.listener(str(record.state), run.progress.percent if run.progress else None, None)
        await self._record_history(
            record,
            started_at=run.record.running_since or now,
            ended_at=now,
            status=_STATUS[record.state],
            error=record.error,
            traceback=scope.context.traceback,
            operation_id=scope.context.id,
            cancel_reason=scope.context.cancel_reason,
            cancel_message=scope.context.cancel_message or None,
        )
        await self._after_terminal(record, run)

    async def _end_record(
        self,
        run: _Run,
        target: ProcessState,
        cancelled: bool,
        now: datetime,
        duration: float | None,
        error: str | None,
    ) -> ProcessRecord | None:
        process_id = run.process_id
        for _ in range(3):
            if cancelled:
                await self._ack_cancel(process_id)
                expected: set[ProcessState] = {S.CANCELLING}
            else:
                expected = {S.RUNNING}
            fields: dict[str, Any] = {"duration": duration}
            if target is S.DONE:
                fields["done_at"] = now
            elif target is S.FAILED:
                fields.update(failed_at=now, error=error)
            else:
                fields["stopped_at"] = now
            try:
                record = await self.store.transition(process_id, expected, target, **fields)
            except InvalidTransition as exc:
                if not cancelled and exc.current in (S.CANCEL_REQUESTED, S.CANCELLING):
                    # A cancel arrived while the run was ending: end it as cancelled.
                    cancelled = True
                    if target is S.DONE:
                        target = S.CANCELLED
                    continue
                logger.warning("run of %r could not be recorded %s: %s", process_id, target, exc)
                return None
            except ProcessNotFound:
                logger.warning("process %r was deleted while it ran", process_id)
                return None
            self._notify(record)
            return record
        return None

    async def _ack_cancel(self, process_id: str) -> None:
        for expected, target in (
            (S.RUNNING, S.CANCEL_REQUESTED),
            (S.CANCEL_REQUESTED, S.CANCELLING),
        ):
            try:
                record = await self.store.transition(process_id, {expected}, target)
            except (InvalidTransition, ProcessNotFound):
                continue
            self._notify(record)

    async def _after_terminal(self, record: ProcessRecord, run: _Run | None) -> None:
        if record.ephemeral or (run is not None and run.ephemeral):
            await self.store.delete(record.process_id, only_if_states=END_STATES, descendants=True)
            if record.adhoc:
                self._definitions.pop(record.process_id, None)
                self._schedules.pop(record.process_id, None)

    async def _record_history(
        self,
        record: ProcessRecord,
        *,
        started_at: datetime,
        ended_at: datetime,
        status: OperationStatus,
        error: str | None,
        traceback: str | None = None,
        operation_id: str | None = None,
        cancel_reason: CancelationReason | None = None,
        cancel_message: str | None = None,
    ) -> None:
        run = RunRecord(
            index=None,
            operation_id=operation_id or f"{record.process_id}#{record.run_number}",
            name=record.process_id,
            kind="process",
            status=status,
            started_at=started_at,
            ended_at=ended_at,
            duration=_seconds(started_at, ended_at),
            error=error,
            traceback=traceback,
            cancel_reason=cancel_reason,
            cancel_message=cancel_message,
            parent_id=record.parent_id,
            metadata=dict(record.metadata),
            process_id=record.process_id,
            run_number=record.run_number,
        )
        try:
            await self.store.record_run(run)
        except Exception:
            logger.exception("recording the run of %r in the history failed", record.process_id)

    async def _mark_ephemeral(self, run: _Run) -> None:
        run.ephemeral = True
        record = await self.store.update_definition(run.process_id, ephemeral=True)
        run.record = dataclasses.replace(run.record, ephemeral=record.ephemeral)

    # ------------------------------------------------------------------ children
    async def _run_child(
        self, parent: ProcessContext, task: TaskInstance, fan: ProgressFanIn | None
    ) -> ChildResult:
        validate_definition(task)
        parent_run = parent._run
        existing = await self.store.get(task.process_id)
        if existing is not None:
            if existing.state in ACTIVE_STATES:
                raise InvalidDefinition(
                    f"child process id {task.process_id!r} is in use by an active process: "
                    "give each child a unique id"
                )
            await self.store.delete(task.process_id, descendants=True)
        record = new_record(
            task, now=self.clock.wall(), parent=parent_run.record, order=parent._next_order()
        )
        await self.store.create(record)
        scheduled = await self.store.transition(
            task.process_id, {S.IDLE}, S.SCHEDULED, lease_owner=self.engine_id
        )
        self._notify(scheduled)
        listener = fan.listener(task.process_id, task.name) if fan is not None else None
        if listener is not None:
            listener("scheduled", None, None)
        run = self._start_run(scheduled, task, parent=parent_run, listener=listener)
        assert run.task is not None
        try:
            await run.done.wait()
        except asyncio.CancelledError:
            run.task.cancel()
            await asyncio.wait({run.task}, timeout=self.cancel_grace + self.abandon_after)
            raise
        state = run.final_state or S.CANCELLED
        return ChildResult(process_id=task.process_id, state=str(state), error=run.error)

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
        record = await self.store.get(process_id)
        if record is None:
            raise ProcessNotFound(process_id)
        if not record.cancellable:
            raise NotCancellable(
                process_id, f"process {process_id!r} is defined with cancellable=False"
            )
        run = self._runs.get(process_id)
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
                if run.waiting_for_slot and run.task is not None:
                    run.task.cancel()
            await self._after_terminal(cancelled, run)
            return
        requested = await self.store.transition(process_id, {S.RUNNING}, S.CANCEL_REQUESTED)
        self._notify(requested)
        if run is None:
            return
        run.cancel_requested = True
        run.cancel_message = message
        await self._ack_cancel(process_id)
        if run.scope is not None:
            run.scope.cancel_sync(CancelationReason.MANUAL, message)

    async def _cancel_run(self, run: _Run, message: str, *, force_scheduled: bool = False) -> None:
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

    def _arm_abandon(self, run: _Run) -> None:
        loop = asyncio.get_running_loop()
        loop.call_later(self.cancel_grace + self.abandon_after, self._check_abandon, run)

    def _check_abandon(self, run: _Run) -> None:
        if run.finished or run.abandoned or run.done.is_set():
            return
        self._spawn(self._abandon(run, "it ignored its cancellation and kept running"))

    async def _abandon(self, run: _Run, why: str) -> None:
        if run.abandoned or run.done.is_set():
            return
        run.abandoned = True
        process_id = run.process_id
        if run.scope is not None:
            run.scope.context.metadata["abandoned"] = True
        if run.progress is not None:
            try:
                await run.progress.close()
            except Exception:
                logger.exception("progress flush of abandoned %r failed", process_id)
        now = self.clock.wall()
        message = (
            f"abandoned: {why} (still running {self.cancel_grace + self.abandon_after:g}s after "
            "the cancel); its task may still be executing in the background"
        )
        try:
            record = await self.store.transition(
                process_id,
                {S.SCHEDULED, S.RUNNING, S.CANCEL_REQUESTED, S.CANCELLING},
                S.FAILED,
                error=message,
                failed_at=now,
                duration=_seconds(run.record.running_since, now),
            )
        except (InvalidTransition, ProcessNotFound):
            record = None
        if record is not None:
            self._notify(record)
            run.final_state = S.FAILED
            run.error = message
            logger.error("process %r %s", process_id, message)
            await self._record_history(
                record,
                started_at=run.record.running_since or now,
                ended_at=now,
                status=OperationStatus.FAILED,
                error=message,
                operation_id=run.scope.context.id if run.scope is not None else None,
            )
        if self._runs.get(process_id) is run:
            del self._runs[process_id]
        run.done.set()

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
        await self.store.delete_descendants(process_id)
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
        validate_definition(task)
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

    # ------------------------------------------------------------------ plumbing
    def _notify(self, record: ProcessRecord) -> None:
        for callback in list(self.on_change):
            try:
                outcome = callback(record)
            except Exception:
                logger.exception("on_change callback %r failed", callback)
                continue
            if inspect.isawaitable(outcome):
                self._spawn(_await(outcome))

    def _spawn(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._aux.add(task)
        task.add_done_callback(self._aux_done)

    def _aux_done(self, task: asyncio.Task[Any]) -> None:
        self._aux.discard(task)
        self._log_task_failure(task)

    @staticmethod
    def _log_task_failure(task: asyncio.Task[Any]) -> None:
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            logger.error("engine task %s failed", task.get_name(), exc_info=exc)

    def active_runs(self) -> list[str]:
        """The ids of the processes this engine is running or about to run."""
        return list(self._runs)

    def __repr__(self) -> str:
        return f"<Engine {self.engine_id!r} {self.state} runs={len(self._runs)}>"


_INACTIVE: frozenset[ProcessState] = frozenset(set(ProcessState) - ACTIVE_STATES)


def _seconds(start: datetime | None, end: datetime) -> float | None:
    if start is None:
        return None
    return max(0.0, (end - start).total_seconds())


async def _await(awaitable: Awaitable[Any]) -> None:
    await awaitable


async def _quiet_get(store: Store, process_id: str) -> ProcessRecord | None:
    try:
        return await store.get(process_id)
    except Exception:
        logger.exception("reading process %r failed", process_id)
        return None
