"""How the engine executes a run: scope, progress, final state, history, abandonment.

:class:`RunMixin` is the part of :class:`~taskwarden.engine.engine.Engine` that carries one
run from ``scheduled`` to its terminal state. Kept apart from the engine's public verbs so
each module stays readable.
"""

from __future__ import annotations

import asyncio
import contextvars
import dataclasses
import functools
import logging
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any

from taskwarden.engine.children import ChildResult, ProgressFanIn
from taskwarden.engine.context import ProcessContext
from taskwarden.engine.definitions import TaskInstance, new_record
from taskwarden.engine.engine_base import EngineBase
from taskwarden.engine.progress import ProgressBuffer
from taskwarden.engine.retries import RetryPlan, plan_retry
from taskwarden.engine.run_state import (
    _ACK_FROM_REQUESTED,
    _ACK_FROM_RUNNING,
    _INACTIVE,
    _NOT_STARTED,
    _RESET_FIELDS,
    _RETRY_WAIT,
    _STATUS,
    _error_text,
    _quiet_get,
    _Run,
    _run_record,
    _seconds,
    _shielded,
)
from taskwarden.errors import (
    ChildProcessCancelled,
    InvalidDefinition,
    InvalidTransition,
    LeaseLost,
    ProcessNotFound,
)
from taskwarden.model import CancelationReason, OperationStatus, RunRecord
from taskwarden.processes import (
    ACTIVE_STATES,
    END_STATES,
    LAUNCHABLE_STATES,
    LogLevel,
    ProcessRecord,
    ProcessState,
)
from taskwarden.scope import Cancelable

if TYPE_CHECKING:
    pass

__all__ = ["RunMixin"]

logger = logging.getLogger("taskwarden.engine")

S = ProcessState


class RunMixin(EngineBase):
    """Executes runs for the engine (see the module docstring)."""

    def _start_run(
        self,
        record: ProcessRecord,
        definition: TaskInstance,
        parent: _Run | None = None,
        listener: Callable[[str, float | None, str | None], None] | None = None,
        launch: asyncio.Future[ProcessRecord | None] | None = None,
        process_id: str | None = None,
        claimed_running: bool = False,
    ) -> _Run:
        if process_id is None:
            process_id = record.process_id
        run = _Run(
            process_id=process_id,
            definition=definition,
            record=record,
            parent=parent,
            listener=listener,
            ephemeral=record.ephemeral,
            launch=launch,
            claimed_running=claimed_running,
        )
        self._runs[process_id] = run
        if self._start_waiters:
            started = self._start_waiters.pop(process_id, None)
            if started is not None:
                started.set()
        if parent is None and self._max_concurrency is not None:
            # A run whose claim started it says ``running`` already: it does not wait (it
            # was claimed for a free slot that an in-process launch may have taken since).
            if self._active_roots >= self._max_concurrency and not claimed_running:
                # No task until a slot frees: a backlog costs a queue entry, not a task.
                run.waiting_for_slot = True
                # Its record is read again only once it starts: a backlog of waiting runs
                # should not hold thousands of records (collector work).
                run.record = _NOT_STARTED
                self._pending.append(run)
                return run
            self._active_roots += 1
            run.holds_slot = True
        self._create_task(run)
        return run

    async def _launch_and_start(self, process_id: str, definition: TaskInstance) -> _Run:
        """Launch with a free slot on a store that runs calls in order: the run's task is
        created first, so its start is queued right behind this launch (one round trip to
        the store instead of two). The run decides by its own start's outcome; see
        ``_start_with_launch``."""
        launch: asyncio.Future[ProcessRecord | None] = asyncio.get_running_loop().create_future()
        run = self._start_run(_NOT_STARTED, definition, launch=launch, process_id=process_id)
        try:
            scheduled = await self.store.transition(
                process_id,
                LAUNCHABLE_STATES,
                S.SCHEDULED,
                **self._hold(definition),
                **_RESET_FIELDS,
            )
            if scheduled.run_number > 0:
                # It ran before: the previous run's children make way for this run's.
                await self.store.delete_descendants(process_id)
        except BaseException:
            if not launch.done():
                launch.set_result(None)
            raise
        self._notify(scheduled)
        if not launch.done():
            launch.set_result(scheduled)
        return run

    def _create_task(self, run: _Run) -> None:
        # A root run must not become a child of whatever scope the caller of launch() is in.
        context = contextvars.copy_context() if run.parent is not None else contextvars.Context()
        task = asyncio.get_running_loop().create_task(
            self._execute(run), name=f"taskwarden-process:{run.process_id}", context=context
        )
        run.task = task
        task.add_done_callback(functools.partial(self._run_task_done, run))

    def _run_task_done(self, run: _Run, task: asyncio.Task[None]) -> None:
        # Also covers a task cancelled before its coroutine ever started.
        self._log_task_failure(task)
        run.finished = True
        if self._runs.get(run.process_id) is run:
            del self._runs[run.process_id]
        run.set_done()
        # The scope's on_cancel callback and the progress buffer's lease-lost callback refer
        # back to the run: without these cycles its objects are freed now, not by a later
        # full garbage collection.
        run.scope = None
        if run.progress is not None:
            run.progress.detach()
        if run.holds_slot:
            run.holds_slot = False
            self._active_roots -= 1
            self._start_pending()
            for callback in self.on_slot_freed:
                callback()

    def _start_pending(self) -> None:
        """Give free slots to the runs waiting for one, oldest first (O(1) each)."""
        pending = self._pending
        limit = self._max_concurrency
        assert limit is not None
        while pending and self._active_roots < limit:
            run = pending.popleft()
            if not run.waiting_for_slot:
                continue  # it ended while it waited (cancelled)
            run.waiting_for_slot = False
            self._active_roots += 1
            run.holds_slot = True
            self._create_task(run)

    def _drop_waiting(self, run: _Run) -> None:
        """End a run that never got a slot (it was cancelled while it waited)."""
        if not run.waiting_for_slot:
            return
        run.waiting_for_slot = False  # _start_pending skips it when it comes up
        run.finished = True
        if self._runs.get(run.process_id) is run:
            del self._runs[run.process_id]
        run.set_done()

    # ------------------------------------------------------------------ running
    async def _execute(self, run: _Run) -> None:
        try:
            await self._execute_run(run)
        finally:
            run.finished = True
            if run.final_state is None and not run.abandoned:
                current = await _quiet_get(self.store, run.process_id)
                run.final_state = current.state if current is not None else S.CANCELLED
            if self._runs.get(run.process_id) is run:
                del self._runs[run.process_id]
            run.set_done()

    async def _execute_run(self, run: _Run) -> None:
        process_id = run.process_id
        now = self.clock.wall()
        if run.launch is not None:
            started = await self._start_with_launch(run, run.launch, now)
            if started is None:
                return
            record = started
            run.ephemeral = run.ephemeral or record.ephemeral
        elif run.claimed_running:
            record = run.record  # the claim wrote the start
        else:
            start: dict[str, Any] = {"running_since": now}
            if run.definition.retries is not None:
                # A retry that was due: it runs now, and the last attempt's error is history.
                start.update(next_attempt_at=None, error=None)
            if run.take_lease:
                start.update(self._hold(run.definition))
            try:
                record = await self.store.transition(process_id, {S.SCHEDULED}, S.RUNNING, **start)
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
            timeout=run.definition.timeout,
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
            on_flush=self._notify_progress,
            # In a fleet every progress and log write is fenced by the lease, like the end.
            owner=self.engine_id if self.lease_seconds is not None else None,
            on_lease_lost=functools.partial(self._lose, run),
        )
        run.progress = progress
        ctx = ProcessContext(self, run, scope, progress, run.listener)
        error: BaseException | None = None
        try:
            async with scope:
                run.scope = scope
                if run.hand_back:
                    scope.cancel_sync(CancelationReason.SIGNAL, "handed back")
                if run.cancel_requested:
                    scope.cancel_sync(CancelationReason.MANUAL, run.cancel_message)
                await run.definition.execute(ctx)
        except asyncio.CancelledError:
            # Cancelled from outside the run's own ladder (shutdown, a parent group):
            # record the end, then let the cancellation go on.
            await _shielded(self._finish(run, scope, None, cancelled=True))
            raise
        except Exception as exc:
            error = exc
        # Recorded in this task, not a shielded one (a task per run is measurable): the
        # engine does not cancel a finishing run, and _finish resumes where a cancel from
        # outside interrupted it.
        run.finishing = True
        try:
            await self._finish(run, scope, error, cancelled=False)
        except asyncio.CancelledError:
            await _shielded(self._finish(run, scope, error, cancelled=False))
            raise

    async def _start_with_launch(
        self, run: _Run, launch: asyncio.Future[ProcessRecord | None], now: datetime
    ) -> ProcessRecord | None:
        """Start a run whose launch is still being written: the start is queued right
        behind the launch, so an in-order store commits both in one go. The start expects
        this engine's lease, so it cannot take over a process another engine scheduled."""
        process_id = run.process_id
        started: ProcessRecord | None
        try:
            started = await self.store.transition(
                process_id,
                {S.SCHEDULED},
                S.RUNNING,
                expected_owner=self.engine_id,
                running_since=now,
            )
        except (InvalidTransition, ProcessNotFound):
            started = None
        # The launch announces ``scheduled`` before this run may announce ``running``.
        scheduled = launch.result() if launch.done() else await asyncio.shield(launch)
        if started is not None:
            return started  # (also when the launch's caller went away after its write)
        if scheduled is None:
            return None  # the launch was refused: nothing to run
        try:  # the start overtook the launch after all: start the usual way
            return await self.store.transition(
                process_id, {S.SCHEDULED}, S.RUNNING, running_since=self.clock.wall()
            )
        except (InvalidTransition, ProcessNotFound):
            return None  # cancelled or removed before it started

    async def _finish(
        self, run: _Run, scope: Cancelable, error: BaseException | None, *, cancelled: bool
    ) -> None:
        process_id = run.process_id
        progress = run.progress
        final_progress = run.final_progress
        if final_progress is None:
            final_progress = run.final_progress = {}
        if run.end_record is not None:  # resumed after the end was written
            await self._after_terminal(run.end_record, run)
            return
        if run.lease_lost:
            if progress is not None:
                await progress.discard()
            return
        retry = None
        if run.parent is None and not (cancelled or scope.is_cancelled or run.cancel_requested):
            retry = plan_retry(run.definition.retries, run.record.attempt, error, self.clock.wall())
        if progress is not None:
            if retry is not None and error is not None and not run.abandoned:
                progress.log(LogLevel.WARNING, f"{retry.note}: {_error_text(error)}")
            if scope.context.cancel_reason is CancelationReason.TIMEOUT and not run.abandoned:
                progress.log(LogLevel.WARNING, scope.context.cancel_message or "timed out")
            try:
                if run.abandoned:
                    await progress.close()
                else:
                    await progress.close_into(final_progress)
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
        context = scope.context

        def history(state: ProcessState) -> RunRecord:
            return _run_record(
                run.record,
                started_at=run.record.running_since or now,
                ended_at=now,
                status=_STATUS[state],
                error=error_text if state is S.FAILED else None,
                traceback=context.traceback,
                operation_id=context.id,
                cancel_reason=context.cancel_reason,
                cancel_message=context.cancel_message or None,
            )

        record = await self._end_record(
            run,
            target,
            cancelled,
            now,
            duration,
            error_text,
            history,
            final_progress,
            retry,
            child_cancelled=isinstance(error, ChildProcessCancelled),
        )
        run.end_record = record
        if record is None:
            if final_progress and progress is not None and not run.lease_lost:
                # The terminal write that was to carry it did not happen: write it alone.
                progress.reopen_pending()
                try:
                    await progress.flush()
                except ProcessNotFound:
                    pass
                except Exception:
                    logger.exception("final progress flush of %r failed", process_id)
            return
        run.final_state = record.state
        run.error = record.error
        if run.listener is not None:
            run.listener(str(record.state), run.progress.percent if run.progress else None, None)
        if record.state is S.SCHEDULED:  # waiting for a retry, or handed back to the fleet
            if retry is not None:
                self._arm_retry(process_id, retry.delay)
            return
        await self._after_terminal(record, run)

    async def _end_record(
        self,
        run: _Run,
        target: ProcessState,
        cancelled: bool,
        now: datetime,
        duration: float | None,
        error: str | None,
        history: Callable[[ProcessState], RunRecord],
        final_progress: dict[str, Any],
        retry: RetryPlan | None = None,
        child_cancelled: bool = False,
    ) -> ProcessRecord | None:
        process_id = run.process_id
        if run.hand_back and target is S.CANCELLED and not run.cancel_requested:
            handed = await self._hand_back(run, history, final_progress)
            if handed is not None:
                return handed
        for _ in range(3):
            if cancelled:
                await self._ack_cancel(process_id)
                expected: set[ProcessState] = {S.CANCELLING}
            else:
                expected = {S.RUNNING}
            fields: dict[str, Any] = {"duration": duration, **final_progress}
            written = target
            if target is S.DONE:
                fields["done_at"] = now
            elif target is S.FAILED and retry is not None and not cancelled:
                # The failed attempt enters the history; the process waits for its retry,
                # unleased so that whoever serves it when it is due may start it.
                written = S.SCHEDULED
                fields.update(_RETRY_WAIT, error=error)
                fields.update(attempt=retry.attempt, next_attempt_at=retry.due)
            elif target is S.FAILED:
                fields.update(failed_at=now, error=error)
            else:
                fields["stopped_at"] = now
            resumed = run.end_submitted
            run.end_submitted = True
            try:
                # The run enters the history in the same write, only if this end wins.
                record = await self.store.transition(
                    process_id,
                    expected,
                    written,
                    expected_owner=self.engine_id,
                    run=history(target),
                    **fields,
                )
            except LeaseLost as exc:
                logger.warning("run of %r ends without a record: %s", process_id, exc)
                run.lease_lost = True
                return None
            except InvalidTransition as exc:
                if resumed and exc.current in END_STATES:
                    # An interrupted attempt's write went through: that end is this one.
                    found = await _quiet_get(self.store, process_id)
                    if found is not None and found.state in END_STATES:
                        self._notify(found)
                        return found
                if not cancelled and exc.current in (S.CANCEL_REQUESTED, S.CANCELLING):
                    # A cancel arrived while the run was ending: end it as cancelled (also
                    # when what ended it was a child's cancel, which reached it first).
                    cancelled = True
                    if target is S.DONE or child_cancelled:
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

    async def _hand_back(
        self,
        run: _Run,
        history: Callable[[ProcessState], RunRecord],
        final_progress: dict[str, Any],
    ) -> ProcessRecord | None:
        """Give a run its worker's drain stopped back to the fleet: ``running ->
        scheduled``, unleased, its attempt in the history as cancelled. Counted neither as
        an error retry nor as a lost worker; a ``"resume"`` task keeps its progress and
        log. None when the record moved meanwhile (a cancel request): it ends as usual."""
        fields: dict[str, Any] = {**final_progress, **_RETRY_WAIT}
        if run.record.on_worker_lost != "resume":
            fields["log"] = ()
        try:
            record = await self.store.transition(
                run.process_id,
                {S.RUNNING},
                S.SCHEDULED,
                expected_owner=self.engine_id,
                run=history(S.CANCELLED),
                **fields,
            )
        except (InvalidTransition, ProcessNotFound):
            return None
        # Only while still unclaimed: another worker may take it over at once.
        await self.store.delete_descendants(run.process_id, only_if_states={S.SCHEDULED})
        self._notify(record)
        return record

    async def _ack_cancel(self, process_id: str, *, requested: bool = False) -> None:
        """Move a run being cancelled to ``cancelling`` (via ``cancel_requested`` unless the
        caller knows it is there already); steps another caller took are skipped."""
        steps = _ACK_FROM_REQUESTED if requested else _ACK_FROM_RUNNING
        for expected, target in steps:
            try:
                record = await self.store.transition(
                    process_id, {expected}, target, expected_owner=self.engine_id
                )
            except (InvalidTransition, ProcessNotFound):
                continue
            self._notify(record)

    async def _after_terminal(self, record: ProcessRecord, run: _Run | None) -> None:
        if record.ephemeral or (run is not None and run.ephemeral):
            await self.store.delete(record.process_id, only_if_states=END_STATES, descendants=True)
            if record.adhoc:
                self._definitions.pop(record.process_id, None)
                self._schedules.pop(record.process_id, None)

    async def _mark_ephemeral(self, run: _Run) -> None:
        run.ephemeral = True
        record = await self.store.update_definition(run.process_id, ephemeral=True)
        run.record = dataclasses.replace(run.record, ephemeral=record.ephemeral)

    async def _abort_unstarted(self, process_id: str) -> None:
        """A launch was cancelled around its store write: never leave a run scheduled that
        nobody will start."""
        if process_id in self._runs:
            return
        record = await _quiet_get(self.store, process_id)
        if record is None or record.state is not S.SCHEDULED:
            return
        if record.lease_owner != self.engine_id:
            return
        try:
            cancelled = await self.store.transition(
                process_id, {S.SCHEDULED}, S.CANCELLED, stopped_at=self.clock.wall()
            )
        except (InvalidTransition, ProcessNotFound):
            return
        self._notify(cancelled)

    # ------------------------------------------------------------------ children
    async def _run_child(
        self, parent: ProcessContext, task: TaskInstance, fan: ProgressFanIn | None
    ) -> ChildResult:
        self._validate(task)
        parent_run = parent._run
        order = parent._next_order()  # taken before any await: spawn order is sibling order
        existing = await self.store.get(task.process_id)
        if existing is not None:
            if existing.state in ACTIVE_STATES:
                raise InvalidDefinition(
                    f"child process id {task.process_id!r} is in use by an active process: "
                    "give each child a unique id"
                )
            # Only while it is still finished: a copy that raced us may have started it.
            finished = frozenset(S) - ACTIVE_STATES
            if (
                not await self.store.delete(
                    task.process_id, only_if_states=finished, descendants=True
                )
                and await self.store.get(task.process_id) is not None
            ):
                raise InvalidDefinition(
                    f"child process id {task.process_id!r} was started by another run "
                    "meanwhile: give each child a unique id"
                )
        record = new_record(task, now=self.clock.wall(), parent=parent_run.record, order=order)
        try:
            try:
                await self.store.create(record, parent_owner=self.engine_id)
            except LeaseLost as exc:
                # The parent's lease was lost: a newer attempt may own it. Stop this copy.
                self._lose(parent_run, f"lease-lost: {exc}")
                raise
            scheduled = await self.store.transition(
                task.process_id, {S.IDLE}, S.SCHEDULED, **self._hold(task)
            )
        except asyncio.CancelledError:
            await _shielded(self._abort_unstarted(task.process_id))
            raise
        listener = fan.listener(task.process_id, task.name) if fan is not None else None
        run = self._start_run(scheduled, task, parent=parent_run, listener=listener)
        self._notify(scheduled)
        if listener is not None:
            listener("scheduled", None, None)
        assert run.task is not None
        try:
            await run.done.wait()
        except asyncio.CancelledError:
            if not run.finishing:
                run.task.cancel()
            await asyncio.wait({run.task}, timeout=self.cancel_grace + self.abandon_after)
            raise
        state = run.final_state or S.CANCELLED
        return ChildResult(process_id=task.process_id, state=str(state), error=run.error)

    def _arm_abandon(self, run: _Run) -> None:
        loop = asyncio.get_running_loop()
        loop.call_later(self.cancel_grace + self.abandon_after, self._check_abandon, run)

    def _check_abandon(self, run: _Run) -> None:
        if run.finished or run.abandoned or run.ended:
            return
        why = (
            "it ignored its cancellation and was still running "
            f"{self.cancel_grace + self.abandon_after:g}s after the cancel"
        )
        self._spawn(self._abandon(run, why))

    async def _abandon(self, run: _Run, why: str) -> None:
        if run.abandoned or run.ended:
            return
        run.abandoned = True
        run.waiting_for_slot = False  # never start it later
        process_id = run.process_id
        if run.scope is not None:
            run.scope.context.metadata["abandoned"] = True
        if run.progress is not None:
            try:
                await run.progress.close()
            except Exception:
                logger.exception("progress flush of abandoned %r failed", process_id)
        now = self.clock.wall()
        message = f"abandoned: {why}; its task may still be executing in the background"
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
        run.set_done()

    # ------------------------------------------------------------------ plumbing
    # ------------------------------------------------------------------ retries
    def _arm_retry(self, process_id: str, delay: float) -> None:
        """Start (or, in a fleet, let a claim start) a retry once it is due."""
        task = asyncio.get_running_loop().create_task(
            self._retry_when_due(process_id, delay), name=f"taskwarden-retry:{process_id}"
        )
        self._retry_waits.add(task)
        task.add_done_callback(self._retry_waits.discard)
        task.add_done_callback(self._log_task_failure)

    async def _retry_when_due(self, process_id: str, delay: float) -> None:
        await self.clock.sleep(delay)
        if self._stop.is_set():
            return  # the record waits for whoever serves it next
        if self.lease_seconds is not None:
            # A worker's engine: its claims start what is due (another worker may be first).
            for callback in self.on_slot_freed:
                callback()
            return
        record = await _quiet_get(self.store, process_id)
        definition = self._definitions.get(process_id)
        if (
            record is None
            or definition is None
            or record.state is not S.SCHEDULED
            or record.lease_owner is not None
            or record.next_attempt_at is None
            or process_id in self._runs
        ):
            return  # cancelled, launched, dismissed or taken while it waited
        run = self._start_run(record, definition)
        run.take_lease = True  # its task has not begun: the start reads this

    async def _rearm_retries(self) -> None:
        """Arm the retries that wait in the store for the processes defined here (after a
        restart, their timers are gone)."""
        now = self.clock.wall()
        for record in await self.store.list(state=S.SCHEDULED):
            due = record.next_attempt_at
            if due is None or record.lease_owner is not None:
                continue
            if record.process_id in self._definitions:
                self._arm_retry(record.process_id, max(0.0, (due - now).total_seconds()))

    async def _wait_for_retries(self, process_id: str) -> None:
        """Wait until the process is no longer waiting for or running a retry. The next
        attempt may start here or on another worker, so the store is the judge: it is read
        when a local run ends and about every second otherwise."""
        while True:
            record = await self.store.get(process_id)
            if record is None or record.state in _INACTIVE:
                return
            run = self._runs.get(process_id)
            if run is not None:
                await run.done.wait()
                continue
            started = self._start_waiters.setdefault(process_id, asyncio.Event())
            waits = {
                asyncio.ensure_future(started.wait()),
                asyncio.ensure_future(self.clock.sleep(1.0)),
            }
            try:
                await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for waiting in waits:
                    waiting.cancel()
                if self._start_waiters.get(process_id) is started and started.is_set():
                    del self._start_waiters[process_id]

    async def _cancel_retry_waits(self) -> None:
        waits = list(self._retry_waits)
        for task in waits:
            task.cancel()
        if waits:
            await asyncio.wait(waits)
