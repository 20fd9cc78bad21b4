"""The state of one run as the engine carries it, and the helpers its modules share.

:class:`_Run` is the engine's bookkeeping for a run in flight: its definition, record,
scope, progress and how it ended. The constants say which fields a launch resets and what
a process waiting for a retry shows; the functions build history entries and read the
store without raising.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from taskwarden.abc import Store
from taskwarden.engine.definitions import TaskInstance
from taskwarden.model import CancelationReason, OperationStatus, RunRecord
from taskwarden.processes import ACTIVE_STATES, ProcessRecord, ProcessState

if TYPE_CHECKING:
    from taskwarden.engine.progress import ProgressBuffer
    from taskwarden.scope import Cancelable

logger = logging.getLogger("taskwarden.engine")

S = ProcessState

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
    "lost_count": 0,
    "attempt": 0,
    "next_attempt_at": None,
}


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
    ended: bool = False
    """True once the run is over (what :attr:`done` announces)."""
    _done: asyncio.Event | None = None
    started: bool = False
    finished: bool = False
    abandoned: bool = False
    waiting_for_slot: bool = False
    holds_slot: bool = False
    cancel_requested: bool = False
    cancel_message: str = ""
    ephemeral: bool = False
    final_state: ProcessState | None = None
    error: str | None = None
    launch: asyncio.Future[ProcessRecord | None] | None = None
    """Set for a run started together with its launch: the launch's outcome (its
    ``scheduled`` record once its bookkeeping is done, None if it failed)."""
    finishing: bool = False
    """Its end is being recorded: the engine no longer cancels its task."""
    final_progress: dict[str, Any] | None = None
    end_submitted: bool = False
    end_record: ProcessRecord | None = None
    lease_lost: bool = False
    """Its lease was reaped (the worker looked dead): nothing it does is written."""
    hand_back: bool = False
    """Stopped by its worker's drain: its end gives the process back to the fleet."""
    take_lease: bool = False
    """Its start takes the lease too (a retry that this engine starts when it is due)."""
    claimed_running: bool = False
    """Its worker's claim wrote its start (``running``): its task begins without a write."""

    @property
    def done(self) -> asyncio.Event:
        """Set once the run is over; made on first use (most runs are never waited for)."""
        event = self._done
        if event is None:
            event = self._done = asyncio.Event()
            if self.ended:
                event.set()
        return event

    def set_done(self) -> None:
        """Mark the run over and wake whoever waits on :attr:`done`."""
        self.ended = True
        if self._done is not None:
            self._done.set()


def _error_text(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


_RETRY_WAIT: dict[str, Any] = {
    "running_since": None,
    "duration": None,
    "progress_percent": None,
    "progress_message": None,
    "lease_owner": None,
    "lease_expires_at": None,
}
"""What a process waiting for its retry shows: no run, no progress, no lease."""

_NOT_STARTED = ProcessRecord(process_id="(not started)", name="(not started)")
"""The record of a run until its own start returns one (only ``running_since`` is read)."""

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


def _run_record(
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
) -> RunRecord:
    return RunRecord(
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


async def _shielded(coro: Awaitable[None]) -> None:
    """Run the bookkeeping of a run's end to completion even if the caller is cancelled,
    then let the cancellation go on."""
    task = asyncio.ensure_future(coro)
    try:
        await asyncio.shield(task)
    except asyncio.CancelledError:
        await asyncio.wait({task})
        raise


_ACK_FROM_REQUESTED = ((S.CANCEL_REQUESTED, S.CANCELLING),)
_ACK_FROM_RUNNING = ((S.RUNNING, S.CANCEL_REQUESTED), *_ACK_FROM_REQUESTED)
