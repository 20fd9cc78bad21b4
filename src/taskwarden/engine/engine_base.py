"""What every part of the engine shares: its settings and tables, change announcements,
auxiliary tasks, history entries and stopping a run whose lease was lost.

:class:`EngineBase` is the root of the engine's mixins (:mod:`~taskwarden.engine.runs`,
:mod:`~taskwarden.engine.claims`, :mod:`~taskwarden.engine.recovery`); the attributes it
declares are set by :class:`~taskwarden.engine.engine.Engine`.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from taskwarden.abc import Store
from taskwarden.clock import Clock
from taskwarden.engine.definitions import TaskInstance, check_lease, validate_definition
from taskwarden.engine.run_state import _await, _Run, _run_record
from taskwarden.model import CancelationReason, OperationStatus
from taskwarden.processes import ProcessRecord
from taskwarden.registry import OperationRegistry

if TYPE_CHECKING:
    from taskwarden.engine.cron import CronSchedule

__all__ = ["ChangeCallback", "EngineBase"]

logger = logging.getLogger("taskwarden.engine")

ChangeCallback = Callable[[ProcessRecord], Any]
"""Called with the new record after each committed state change (may return an awaitable)."""


class EngineBase:
    """The engine's shared state and plumbing (see the module docstring)."""

    store: Store
    clock: Clock
    registry: OperationRegistry
    engine_id: str
    lease_seconds: float | None
    renew_interval: float | None
    _in_order_store: bool
    services: dict[str, Any]
    cancel_grace: float
    abandon_after: float
    progress_flush_interval: float
    max_log: int
    max_messages_per_flush: int
    on_change: list[ChangeCallback]
    on_progress: list[Callable[[str], Any]]
    on_slot_freed: list[Callable[[], None]]
    _definitions: dict[str, TaskInstance]
    _schedules: dict[str, CronSchedule]
    _runs: dict[str, _Run]
    _aux: set[asyncio.Task[Any]]
    _retry_waits: set[asyncio.Task[None]]
    _start_waiters: dict[str, asyncio.Event]
    _stop: asyncio.Event
    _max_concurrency: int | None
    _active_roots: int
    _pending: deque[_Run]

    def _validate(self, task: TaskInstance) -> None:
        """Check a definition before it is used (InvalidDefinition naming it), and in a
        fleet that its lease override leaves room for renewals."""
        validate_definition(task)
        if self.renew_interval is not None:
            check_lease(task, self.renew_interval)

    def _hold(self, definition: TaskInstance) -> dict[str, Any]:
        """The lease fields a launch by this engine writes: the owner, and in a fleet
        (``lease_seconds`` set) an expiry that the worker's renewals push forward, so the
        run of a worker that dies is noticed by the others; the definition's own
        ``lease_seconds`` overrides the worker's."""
        if self.lease_seconds is None:
            return {"lease_owner": self.engine_id}
        lease = definition.lease_seconds or self.lease_seconds
        expires = self.clock.wall() + timedelta(seconds=lease)
        return {"lease_owner": self.engine_id, "lease_expires_at": expires}

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
        run = _run_record(
            record,
            started_at=started_at,
            ended_at=ended_at,
            status=status,
            error=error,
            traceback=traceback,
            operation_id=operation_id,
            cancel_reason=cancel_reason,
            cancel_message=cancel_message,
        )
        try:
            await self.store.record_run(run)
        except Exception:
            logger.exception("recording the run of %r in the history failed", record.process_id)

    def _lose(self, run: _Run, message: str) -> None:
        """Stop a run whose lease was lost, and its children, writing nothing more: the
        record may belong to a newer attempt on another worker."""
        if run.lease_lost:
            return
        logger.warning("process %r lost its lease: %s", run.process_id, message)
        stack = [run]
        while stack:
            current = stack.pop()
            current.lease_lost = True
            current.cancel_requested = True
            current.cancel_message = message
            if current.scope is not None:
                current.scope.cancel_sync(CancelationReason.MANUAL, message)
            stack.extend(r for r in self._runs.values() if r.parent is current)

    def _notify_progress(self, process_id: str) -> None:
        for callback in list(self.on_progress):
            try:
                callback(process_id)
            except Exception:
                logger.exception("on_progress callback %r failed", callback)

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
