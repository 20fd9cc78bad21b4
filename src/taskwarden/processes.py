"""The process model: states, the transition table as data, and the process record; no I/O.

A *process* is a persistent, relaunchable unit of work (seed 004, optio-core). Its record
lives in a :class:`~taskwarden.abc.Store`; every change of :attr:`ProcessRecord.state` is a
compare-and-set that the store validates against :data:`TRANSITIONS`.

The table is the seed's, plus deliberate edges into ``failed`` (and the seed's documented
direct cancel of a queued process)::

    idle             -> scheduled
    scheduled        -> running, cancel_requested, cancelled (added), failed (added)
    running          -> done, failed, cancel_requested, scheduled (added)
    cancel_requested -> cancelling, failed      (added)
    cancelling       -> cancelled, failed       (added)
    done             -> scheduled, idle
    failed           -> scheduled, idle
    cancelled        -> scheduled, idle

Why the added edges: the seed lets a cancel that is never acknowledged leave a record in
``cancel_requested`` or ``cancelling`` forever, and a process whose worker died stays
``running`` forever. taskwarden always ends a record truthfully instead: a run that swallows
the forced cancel and keeps going is recorded ``failed`` (abandoned), and the processes of a
dead or crashed worker are recorded ``failed`` by recovery (``running -> failed`` was already
in the seed). A queued run that can never start (its definition is gone, the engine that
queued it crashed before starting it) is recorded ``failed`` by ``scheduled -> failed``.
``running -> scheduled`` is a failed attempt of a task with retries on error going back
to wait for its next try, in one write with its run's history entry (so nobody waiting
for the end sees a failure that is about to be retried).
``scheduled -> cancelled`` is the seed's documented cancel of a queued process
(its text says "If scheduled, it transitions directly to cancelled"); its table lists
``cancel_requested`` for it too, and both are kept.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from types import MappingProxyType
from typing import Any

__all__ = [
    "ACTIVE_STATES",
    "CANCELLABLE_STATES",
    "DEFINITION_FIELDS",
    "DISMISSABLE_STATES",
    "END_STATES",
    "LAUNCHABLE_STATES",
    "RUNTIME_FIELDS",
    "TRANSITIONS",
    "LogEntry",
    "LogLevel",
    "ProcessRecord",
    "ProcessState",
    "can_transition",
    "decode_cursor",
    "utcnow",
]


def utcnow() -> datetime:
    """The current time, timezone-aware UTC (the default clock of every store)."""
    return datetime.now(UTC)


class ProcessState(StrEnum):
    """Where a process is in its life (the seed's ``status.state``)."""

    IDLE = "idle"
    SCHEDULED = "scheduled"
    RUNNING = "running"
    CANCEL_REQUESTED = "cancel_requested"
    CANCELLING = "cancelling"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


ACTIVE_STATES: frozenset[ProcessState] = frozenset(
    {
        ProcessState.SCHEDULED,
        ProcessState.RUNNING,
        ProcessState.CANCEL_REQUESTED,
        ProcessState.CANCELLING,
    }
)
"""Queued or executing: the process holds a run (and, with workers, a lease)."""

END_STATES: frozenset[ProcessState] = frozenset(
    {ProcessState.DONE, ProcessState.FAILED, ProcessState.CANCELLED}
)
"""The run is over; the record shows its outcome until dismissed or relaunched."""

LAUNCHABLE_STATES: frozenset[ProcessState] = frozenset({ProcessState.IDLE} | END_STATES)
"""States from which ``launch`` may schedule a new run."""

CANCELLABLE_STATES: frozenset[ProcessState] = frozenset(
    {ProcessState.SCHEDULED, ProcessState.RUNNING}
)
"""States from which ``cancel`` is accepted."""

DISMISSABLE_STATES: frozenset[ProcessState] = END_STATES
"""States from which ``dismiss`` resets the process to idle."""

_S = ProcessState

TRANSITIONS: Mapping[ProcessState, frozenset[ProcessState]] = MappingProxyType(
    {
        _S.IDLE: frozenset({_S.SCHEDULED}),
        _S.SCHEDULED: frozenset({_S.RUNNING, _S.CANCEL_REQUESTED, _S.CANCELLED, _S.FAILED}),
        _S.RUNNING: frozenset({_S.DONE, _S.FAILED, _S.CANCEL_REQUESTED, _S.SCHEDULED}),
        _S.CANCEL_REQUESTED: frozenset({_S.CANCELLING, _S.FAILED}),
        _S.CANCELLING: frozenset({_S.CANCELLED, _S.FAILED}),
        _S.DONE: frozenset({_S.SCHEDULED, _S.IDLE}),
        _S.FAILED: frozenset({_S.SCHEDULED, _S.IDLE}),
        _S.CANCELLED: frozenset({_S.SCHEDULED, _S.IDLE}),
    }
)
"""Every allowed state change: ``TRANSITIONS[current]`` is the set of allowed next states."""


def can_transition(current: ProcessState | str, target: ProcessState | str) -> bool:
    """True when the table allows ``current -> target`` (accepts the string values too)."""
    try:
        return ProcessState(target) in TRANSITIONS[ProcessState(current)]
    except ValueError:
        return False


class LogLevel(StrEnum):
    """The level of a process log entry (the seed's ``log[].level``)."""

    EVENT = "event"
    INFO = "info"
    DEBUG = "debug"
    WARNING = "warning"
    ERROR = "error"


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.astimezone(UTC).isoformat()


@dataclass(frozen=True, slots=True, kw_only=True)
class LogEntry:
    """One entry of a process log: when, how important, what, and optional structured data."""

    timestamp: datetime
    level: LogLevel
    message: str
    data: dict[str, Any] | None = None

    def to_document(self) -> dict[str, Any]:
        """The seed's JSON shape: ``{timestamp, level, message, data?}`` (``data`` only if set)."""
        doc: dict[str, Any] = {
            "timestamp": _iso(self.timestamp),
            "level": str(self.level),
            "message": self.message,
        }
        if self.data is not None:
            doc["data"] = self.data
        return doc

    @classmethod
    def from_document(cls, doc: Mapping[str, Any]) -> LogEntry:
        """Rebuild an entry from :meth:`to_document`'s shape."""
        return cls(
            timestamp=datetime.fromisoformat(doc["timestamp"]),
            level=LogLevel(doc["level"]),
            message=doc["message"],
            data=doc.get("data"),
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class ProcessRecord:
    """A process as stored: its definition, its tree position, and its runtime status.

    Immutable: a store returns a new record for every change (use ``dataclasses.replace``
    to derive one in memory). ``parent_id`` and ``root_id`` hold process ids;
    ``root_id == process_id`` for a root. Times are timezone-aware UTC.

    Beyond the seed's document, the fields the distributed workers need: ``run_number``
    (incremented by the store on every transition into ``running``), ``lease_owner`` and
    ``lease_expires_at`` (who holds the process and until when), ``last_cron_tick`` (the
    last cron fire time claimed by :meth:`~taskwarden.abc.Store.mark_cron_tick`),
    ``updated_at`` (set by the store on every write), ``resumable`` (whether a process
    whose worker died may be relaunched rather than failed), and the policy for a run
    whose worker is lost: ``on_worker_lost`` (``"fail"``, ``"retry"`` or ``"resume"``),
    ``lost_retries`` (the relaunch budget of ``"retry"``) and ``lost_count`` (how many
    times the current launch was relaunched after a lost worker). For a task with retries
    on error, ``attempt`` counts the retries of the current launch (0 on the first try) and
    ``next_attempt_at`` says when a failed attempt's process, back in ``scheduled``, is due
    to be tried again.
    """

    process_id: str
    name: str
    description: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)
    parent_id: str | None = None
    root_id: str = ""
    depth: int = 0
    order: int = 0
    cancellable: bool = True
    adhoc: bool = False
    ephemeral: bool = False
    special: bool = False
    warning: str | None = None
    schedule: str | None = None
    state: ProcessState = ProcessState.IDLE
    error: str | None = None
    running_since: datetime | None = None
    done_at: datetime | None = None
    duration: float | None = None
    failed_at: datetime | None = None
    stopped_at: datetime | None = None
    progress_percent: float | None = None
    progress_message: str | None = None
    log: tuple[LogEntry, ...] = ()
    created_at: datetime = field(default_factory=utcnow)
    run_number: int = 0
    lease_owner: str | None = None
    lease_expires_at: datetime | None = None
    last_cron_tick: datetime | None = None
    updated_at: datetime = field(default_factory=utcnow)
    resumable: bool = False
    on_worker_lost: str = "fail"
    lost_retries: int = 1
    lost_count: int = 0
    attempt: int = 0
    next_attempt_at: datetime | None = None
    lease_seconds: float | None = None

    def __post_init__(self) -> None:
        # A root's root is itself; filling it here keeps "" from ever reaching a store.
        if not self.root_id:
            object.__setattr__(self, "root_id", self.process_id)
        if not isinstance(self.state, ProcessState):
            object.__setattr__(self, "state", ProcessState(self.state))

    @property
    def is_root(self) -> bool:
        """True for a process without a parent."""
        return self.parent_id is None

    def __getitem__(self, key: str) -> Any:
        """Read a field of :meth:`to_document` (seed compatibility: ``proc["status"]["state"]``)."""
        return self.to_document()[key]

    @property
    def cursor(self) -> str:
        """An opaque keyset cursor: pass it to ``Store.list(cursor=...)`` for the next page."""
        return f"{self.depth}:{self.order}:{self.process_id}"

    def to_document(self) -> dict[str, Any]:
        """The seed's camelCase JSON document, datetimes as ISO-8601 strings.

        The seed's fields come first in its order; the worker fields follow under their
        camelCase names (``runNumber``, ``leaseOwner``, ``leaseExpiresAt``, ``lastCronTick``,
        ``updatedAt``, ``resumable``, ``onWorkerLost``, ``lostRetries``, ``lostCount``,
        ``attempt``, ``nextAttemptAt``, ``leaseSeconds``).
        """
        return {
            "processId": self.process_id,
            "name": self.name,
            "description": self.description,
            "params": self.params,
            "metadata": self.metadata,
            "parentId": self.parent_id,
            "rootId": self.root_id,
            "depth": self.depth,
            "order": self.order,
            "cancellable": self.cancellable,
            "adhoc": self.adhoc,
            "ephemeral": self.ephemeral,
            "special": self.special,
            "warning": self.warning,
            "schedule": self.schedule,
            "status": {
                "state": str(self.state),
                "error": self.error,
                "runningSince": _iso(self.running_since),
                "doneAt": _iso(self.done_at),
                "duration": self.duration,
                "failedAt": _iso(self.failed_at),
                "stoppedAt": _iso(self.stopped_at),
            },
            "progress": {"percent": self.progress_percent, "message": self.progress_message},
            "log": [entry.to_document() for entry in self.log],
            "createdAt": _iso(self.created_at),
            "runNumber": self.run_number,
            "leaseOwner": self.lease_owner,
            "leaseExpiresAt": _iso(self.lease_expires_at),
            "lastCronTick": _iso(self.last_cron_tick),
            "updatedAt": _iso(self.updated_at),
            "resumable": self.resumable,
            "onWorkerLost": self.on_worker_lost,
            "lostRetries": self.lost_retries,
            "lostCount": self.lost_count,
            "attempt": self.attempt,
            "nextAttemptAt": _iso(self.next_attempt_at),
            "leaseSeconds": self.lease_seconds,
        }


DEFINITION_FIELDS: frozenset[str] = frozenset(
    {
        "name",
        "description",
        "params",
        "metadata",
        "order",
        "cancellable",
        "adhoc",
        "ephemeral",
        "special",
        "warning",
        "schedule",
        "resumable",
        "on_worker_lost",
        "lost_retries",
        "lease_seconds",
    }
)
"""Fields that ``Store.update_definition`` may change: what a task definition declares."""

RUNTIME_FIELDS: frozenset[str] = frozenset(
    {
        "error",
        "running_since",
        "done_at",
        "duration",
        "failed_at",
        "stopped_at",
        "progress_percent",
        "progress_message",
        "log",
        "run_number",
        "lease_owner",
        "lease_expires_at",
        "lost_count",
        "attempt",
        "next_attempt_at",
    }
)
"""Fields that ``Store.transition`` may set together with the new state."""


def decode_cursor(cursor: str) -> tuple[int, int, str]:
    """Split a :attr:`ProcessRecord.cursor` into ``(depth, order, process_id)``.

    Raises ``ValueError`` for a string that no record produced.
    """
    depth, order, process_id = cursor.split(":", 2)
    return int(depth), int(order), process_id
