"""Records and states of in-process operations; no I/O.

An *operation* is any tracked unit of async work. Its live, mutable state is an
:class:`OperationContext`; once it ends it is kept in the history as is, and converts to an
immutable :class:`RunRecord` for persistence.
"""

from __future__ import annotations

import itertools
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

__all__ = [
    "ACTIVE_STATUSES",
    "TERMINAL_STATUSES",
    "CancelationReason",
    "OperationContext",
    "OperationStatus",
    "ProgressCallback",
    "RunRecord",
    "WorkerRecord",
    "WorkerStatus",
    "format_id",
    "new_id",
    "parse_sequence",
]


class OperationStatus(StrEnum):
    """Where an operation is in its life."""

    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    CANCELLED = "cancelled"
    FAILED = "failed"


ACTIVE_STATUSES = frozenset({OperationStatus.PENDING, OperationStatus.RUNNING})
TERMINAL_STATUSES = frozenset(
    {OperationStatus.COMPLETED, OperationStatus.CANCELLED, OperationStatus.FAILED}
)


class CancelationReason(StrEnum):
    """Why an operation was cancelled."""

    TIMEOUT = "timeout"
    MANUAL = "manual"
    SIGNAL = "signal"
    CONDITION = "condition"
    PARENT = "parent"


ProgressCallback = Callable[[str, "float | None", "str | None"], Any]
"""Called as ``callback(operation_id, percent, message)``; may return an awaitable."""

_ID_SUFFIX = os.urandom(3).hex()
_sequence = itertools.count(1)


def new_id() -> str:
    """A unique id that sorts by creation time (microseconds, then a per-process counter)."""
    return format_id(time.time(), next(_sequence))


def format_id(timestamp: float, sequence: int) -> str:
    """The id of the ``sequence``-th operation of this process, started at ``timestamp``."""
    micros = int(timestamp * 1_000_000) if timestamp > 0 and timestamp != math.inf else 0
    return f"{micros:013x}{sequence:08x}{_ID_SUFFIX}"


def parse_sequence(operation_id: str) -> int | None:
    """The per-process sequence number inside an id made here, or None for a foreign id."""
    if len(operation_id) < 27 or not operation_id.endswith(_ID_SUFFIX):
        return None
    try:
        return int(operation_id[13:-6], 16)
    except ValueError:
        return None


class OperationContext:
    """The live state of one operation: what the registry and history show.

    Times are UNIX timestamps in seconds (``time.time()``), as in the seed API; use
    :meth:`to_run_record` for timezone-aware values. The ``id`` is made on first use from
    the start time and a per-process sequence number, so it sorts by creation time.
    """

    __slots__ = (
        "_id",
        "_metadata",
        "_progress_callbacks",
        "_seq",
        "cancel_message",
        "cancel_reason",
        "end_time",
        "exception",
        "index",
        "kind",
        "name",
        "parent_id",
        "progress_message",
        "progress_percent",
        "result",
        "start_time",
        "status",
        "traceback",
    )

    def __init__(
        self,
        *,
        name: str,
        id: str | None = None,
        parent_id: str | None = None,
        metadata: dict[str, Any] | None = None,
        kind: str = "scope",
    ) -> None:
        self._seq = next(_sequence)
        self._id = id
        self.name = name
        self.kind = kind
        self.status = OperationStatus.PENDING
        self.start_time: float = time.time()
        self.end_time: float | None = None
        self.parent_id = parent_id
        self.cancel_reason: CancelationReason | None = None
        self.cancel_message: str = ""
        self.result: Any = None
        self.exception: BaseException | None = None
        self.traceback: str | None = None
        self.progress_percent: float | None = None
        self.progress_message: str | None = None
        self.index: int | None = None
        # Created on first use: most operations never carry metadata or callbacks.
        self._metadata = metadata
        self._progress_callbacks: list[ProgressCallback] | None = None

    @property
    def id(self) -> str:
        """The unique id (made on first use; stable afterwards)."""
        ident = self._id
        if ident is None:
            ident = self._id = format_id(self.start_time, self._seq)
        return ident

    @property
    def metadata(self) -> dict[str, Any]:
        """Application data attached to the operation (mutable)."""
        if self._metadata is None:
            self._metadata = {}
        return self._metadata

    @property
    def progress_callbacks(self) -> list[ProgressCallback]:
        """Callbacks that receive every progress report (mutable)."""
        if self._progress_callbacks is None:
            self._progress_callbacks = []
        return self._progress_callbacks

    @property
    def elapsed_time(self) -> float:
        """Seconds since the start: grows while running, fixed once ended (0 if pending)."""
        if self.status is OperationStatus.PENDING:
            return 0.0
        end = self.end_time if self.end_time is not None else time.time()
        return max(0.0, end - self.start_time)

    @property
    def duration(self) -> float | None:
        """Seconds from start to end, or None while running."""
        if self.end_time is None:
            return None
        return max(0.0, self.end_time - self.start_time)

    @property
    def is_terminal(self) -> bool:
        """True once the operation completed, failed or was cancelled."""
        return self.status in TERMINAL_STATUSES

    @property
    def is_success(self) -> bool:
        """True only for a completed operation (not failed, not cancelled)."""
        return self.status is OperationStatus.COMPLETED

    def to_run_record(self) -> RunRecord:
        """Freeze this (ended) operation into a record that a store can keep as is."""
        return RunRecord(
            index=self.index,
            operation_id=self.id,
            name=self.name,
            kind=self.kind,
            status=self.status,
            started_at=datetime.fromtimestamp(self.start_time, UTC),
            ended_at=(
                datetime.fromtimestamp(self.end_time, UTC) if self.end_time is not None else None
            ),
            duration=self.duration,
            result=None if self.result is None else repr(self.result),
            error=None if self.exception is None else repr(self.exception),
            traceback=self.traceback,
            cancel_reason=self.cancel_reason,
            cancel_message=self.cancel_message or None,
            parent_id=self.parent_id,
            metadata=dict(self._metadata or {}),
        )

    def __repr__(self) -> str:
        return (
            f"OperationContext(id={self.id!r}, name={self.name!r}, status={self.status.value!r}, "
            f"parent_id={self.parent_id!r})"
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class RunRecord:
    """One finished run, as stored: plain values, timezone-aware UTC times.

    ``result`` and ``error`` are ``repr()`` strings so any backend can keep them. For a
    process run, ``process_id`` and ``run_number`` say which process and which of its runs.
    """

    index: int | None
    operation_id: str
    name: str
    kind: str
    status: OperationStatus
    started_at: datetime
    ended_at: datetime | None
    duration: float | None
    result: str | None = None
    error: str | None = None
    traceback: str | None = None
    cancel_reason: CancelationReason | None = None
    cancel_message: str | None = None
    parent_id: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    process_id: str | None = None
    run_number: int | None = None


class WorkerStatus(StrEnum):
    """A worker's liveness as its record tells it (seed 003's words)."""

    OK = "ok"
    STALE = "stale"
    UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkerRecord:
    """One worker process as it records itself in the store, renewed every lease tick.

    ``incarnation`` is new at every start (never just a host name), so a restarted worker
    is a new record and the runs of the old one are recognisably someone else's.
    """

    incarnation: str
    name: str
    host: str
    pid: int
    started_at: datetime
    renewed_at: datetime
    runs: int = 0
    concurrency: int | None = None
    process_ids: tuple[str, ...] = ()

    def status(self, now: datetime, stale_after: float) -> WorkerStatus:
        """``ok`` when renewed within ``stale_after`` seconds of ``now``, else ``stale``."""
        age = (now - self.renewed_at).total_seconds()
        return WorkerStatus.OK if age <= stale_after else WorkerStatus.STALE

    def to_document(self, now: datetime, stale_after: float) -> dict[str, Any]:
        """The JSON shape of the API and the CLI (camelCase, ISO-8601 times)."""
        return {
            "incarnation": self.incarnation,
            "name": self.name,
            "host": self.host,
            "pid": self.pid,
            "startedAt": self.started_at.isoformat(),
            "renewedAt": self.renewed_at.isoformat(),
            "runs": self.runs,
            "concurrency": self.concurrency,
            "processIds": list(self.process_ids),
            "status": str(self.status(now, stale_after)),
            "secondsSince": round((now - self.renewed_at).total_seconds(), 3),
        }
