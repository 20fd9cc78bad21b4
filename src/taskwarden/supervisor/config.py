"""The supervisor's vocabulary: priorities, categories, task configs, metrics and reports.

Plain records and pure functions, no I/O: what :class:`~taskwarden.supervisor.Supervisor`
takes as configuration and hands back as snapshots.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Protocol, runtime_checkable

from taskwarden.errors import ConfigurationError, ShutdownTimeout

__all__ = [
    "DEFAULT_CATEGORY_PRIORITIES",
    "DEFAULT_SHUTDOWN_ORDER",
    "CriticalTaskConfig",
    "CriticalTasksProvider",
    "HealthPolicy",
    "ShutdownPhase",
    "ShutdownReport",
    "SupervisorState",
    "TaskCategory",
    "TaskHealth",
    "TaskMetrics",
    "TaskPriority",
    "TaskState",
    "restart_delay",
]


class TaskPriority(StrEnum):
    """How important a task is; shutdown cancels the least important first."""

    LOW = "low"
    NORMAL = "normal"
    HIGH = "high"
    CRITICAL = "critical"


DEFAULT_SHUTDOWN_ORDER: tuple[TaskPriority, ...] = (
    TaskPriority.LOW,
    TaskPriority.NORMAL,
    TaskPriority.HIGH,
    TaskPriority.CRITICAL,
)
"""The phases of a graceful shutdown, first cancelled first."""


class TaskCategory(StrEnum):
    """What kind of work an asyncio task does, derived from its name (see ``category_prefixes``)."""

    SCHEDULED = "scheduled"
    GATEWAY = "gateway"
    SYSTEM = "system"
    COMMAND = "command"
    UNKNOWN = "unknown"


DEFAULT_CATEGORY_PRIORITIES: Mapping[TaskCategory, TaskPriority] = {
    TaskCategory.UNKNOWN: TaskPriority.LOW,
    TaskCategory.COMMAND: TaskPriority.LOW,
    TaskCategory.SYSTEM: TaskPriority.NORMAL,
    TaskCategory.SCHEDULED: TaskPriority.HIGH,
    TaskCategory.GATEWAY: TaskPriority.CRITICAL,
}
"""The shutdown phase of a task the supervisor does not own, by its category.

It keeps the seed's order: unknown and command tasks go first, the gateway last.
"""


class TaskState(StrEnum):
    """Where a critical task is in its supervised life."""

    PENDING = "pending"
    """Registered; the supervisor has not started it yet."""
    RUNNING = "running"
    """An attempt is running."""
    BACKOFF = "backoff"
    """The last attempt ended; waiting out the restart delay."""
    STOPPED = "stopped"
    """Ended and not restarted: cancelled, unregistered, shut down, or completed."""
    FAILED = "failed"
    """Gave up: it needed more than ``max_restarts`` restarts within ``restart_window``."""


class SupervisorState(StrEnum):
    """The run state of a :class:`~taskwarden.supervisor.Supervisor`."""

    STARTING = "starting"
    STARTED = "started"
    STOPPING = "stopping"
    STOPPED = "stopped"


TaskFactory = Callable[[], Awaitable[Any]]
"""Makes one run of a critical task: an ``async def`` function called with no argument."""

HealthProbe = Callable[[], "bool | Awaitable[bool]"]
"""Answers whether a running task is alive; False (or raising) gets it restarted."""


def _positive(name: str, value: float, *, allow_zero: bool = True) -> None:
    ok = value >= 0 if allow_zero else value > 0
    if isinstance(value, bool) or not ok or math.isnan(value) or math.isinf(value):
        bound = ">= 0" if allow_zero else "> 0"
        raise ConfigurationError(f"{name} must be a finite number {bound}, got {value!r}")


@dataclass(frozen=True, slots=True, kw_only=True)
class CriticalTaskConfig:
    """A background task that must keep running, and how to restart it when it ends.

    Args:
        name: unique name; the asyncio task and the operation of each run carry it.
        factory: an ``async def`` function (no arguments) that runs the task once; it is
            called again for every restart.
        priority: its shutdown phase (least important cancelled first).
        max_restarts: how many restarts are allowed within ``restart_window`` seconds
            before the supervisor gives up (state ``FAILED``); None means no limit.
        restart_delay: seconds to wait before the first restart.
        backoff_factor: each restart still inside the window multiplies the delay by this.
        max_delay: the delay never exceeds this many seconds.
        restart_window: seconds a restart counts against ``max_restarts`` and the backoff;
            a task that ran well for longer starts again from ``restart_delay``.
        health_check_interval: seconds between health checks of the running task.
        health_check: an optional probe called at each health check while it runs; False
            or an exception restarts it (through the same policy).
        category: its category among the loop's tasks.
        owner: who registered it (a plugin, a module); :meth:`Supervisor.unregister_owner`
            removes all of one owner's tasks at once.
        restart_on_success: restart it when a run returns normally (critical tasks are
            meant to run forever); False leaves it ``STOPPED``.
        metadata: application data copied onto the operation of every run.
    """

    name: str
    factory: TaskFactory
    priority: TaskPriority = TaskPriority.HIGH
    max_restarts: int | None = 5
    restart_delay: float = 30.0
    backoff_factor: float = 2.0
    max_delay: float = 600.0
    restart_window: float = 3600.0
    health_check_interval: float = 300.0
    health_check: HealthProbe | None = None
    category: TaskCategory = TaskCategory.SCHEDULED
    owner: str | None = None
    restart_on_success: bool = True
    metadata: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ConfigurationError(f"a critical task needs a non-empty name, got {self.name!r}")
        if not callable(self.factory):
            raise ConfigurationError(
                f"factory of {self.name!r} must be an async function to call for each run, "
                f"got {self.factory!r}"
            )
        if self.max_restarts is not None and (
            isinstance(self.max_restarts, bool) or self.max_restarts < 0
        ):
            raise ConfigurationError(
                f"max_restarts of {self.name!r} must be an integer >= 0 or None (no limit), "
                f"got {self.max_restarts!r}"
            )
        _positive(f"restart_delay of {self.name!r}", self.restart_delay)
        _positive(f"max_delay of {self.name!r}", self.max_delay)
        _positive(f"restart_window of {self.name!r}", self.restart_window, allow_zero=False)
        _positive(
            f"health_check_interval of {self.name!r}", self.health_check_interval, allow_zero=False
        )
        _positive(f"backoff_factor of {self.name!r}", self.backoff_factor)
        if self.backoff_factor < 1:
            raise ConfigurationError(
                f"backoff_factor of {self.name!r} must be >= 1 (1 keeps the delay constant), "
                f"got {self.backoff_factor!r}"
            )
        for label, kind in (("priority", TaskPriority), ("category", TaskCategory)):
            value = getattr(self, label)
            try:
                # Frozen: coerce "high" to TaskPriority.HIGH the only way a frozen class can.
                object.__setattr__(self, label, kind(value))
            except ValueError:
                choices = ", ".join(member.value for member in kind)
                raise ConfigurationError(
                    f"{label} of {self.name!r} must be one of {choices}, got {value!r}"
                ) from None


def restart_delay(config: CriticalTaskConfig, recent_restarts: int) -> float:
    """The wait before the next restart, given the restarts already in the window.

    ``restart_delay * backoff_factor ** recent_restarts``, capped at ``max_delay``:

    >>> from taskwarden.supervisor import CriticalTaskConfig
    >>> async def run() -> None: ...
    >>> config = CriticalTaskConfig(name="x", factory=run, restart_delay=1, max_delay=5)
    >>> [restart_delay(config, n) for n in range(5)]
    [1.0, 2.0, 4.0, 5.0, 5.0]
    """
    try:
        delay = config.restart_delay * config.backoff_factor**recent_restarts
    except OverflowError:
        return float(config.max_delay)
    return float(min(delay, config.max_delay))


@runtime_checkable
class CriticalTasksProvider(Protocol):
    """Anything that declares critical tasks (a plugin, a cog, a service object)."""

    def get_critical_tasks(self) -> list[CriticalTaskConfig]:
        """The critical tasks this provider wants supervised."""
        ...


@dataclass(frozen=True, slots=True, kw_only=True)
class HealthPolicy:
    """When a supervised task counts as healthy.

    A task is healthy when it is running, its error rate over the last ``error_window``
    seconds is below ``max_error_rate`` per hour, fewer than ``max_recent_restarts``
    restarts fall inside its restart window, and its last restart is at least
    ``settle_time`` seconds old. Old errors and old restarts age out: they never make a
    task that runs well look sick.
    """

    max_error_rate: float = 10.0
    error_window: float = 3600.0
    max_recent_restarts: int = 3
    settle_time: float = 300.0

    def __post_init__(self) -> None:
        _positive("max_error_rate", self.max_error_rate)
        _positive("error_window", self.error_window, allow_zero=False)
        _positive("settle_time", self.settle_time)
        if isinstance(self.max_recent_restarts, bool) or self.max_recent_restarts < 1:
            raise ConfigurationError(
                f"max_recent_restarts must be an integer >= 1, got {self.max_recent_restarts!r}"
            )


def _utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True, kw_only=True)
class TaskMetrics:
    """A snapshot of what the supervisor measured for one task name.

    Runs are the supervised runs of a critical task and the calls of an
    :func:`~taskwarden.supervisor.instrumented_task` function of that name.

    It can also be built as seed 002's dataclass, from a name and a category alone:
    ``TaskMetrics(name="poll", category=TaskCategory.SCHEDULED)`` has priority
    ``NORMAL``, ``start_time`` now, every count zero and no last error or restart. Unlike
    the seed's, times are timezone-aware UTC datetimes (``.timestamp()`` gives the seed's
    epoch seconds), and "now" is the time of construction, not of the import.
    """

    name: str
    category: TaskCategory
    priority: TaskPriority = TaskPriority.NORMAL
    critical: bool = False
    """True for a registered critical task, False for a name seen only by instrumentation."""
    state: TaskState | None = None
    """The critical task's state; None for a name seen only by instrumentation."""
    start_time: datetime = field(default_factory=_utc_now)
    """When the supervisor first saw this name (registration or first run)."""
    runs: int = 0
    restart_count: int = 0
    last_restart: datetime | None = None
    total_runtime: float = 0.0
    avg_runtime: float = 0.0
    max_runtime: float = 0.0
    error_count: int = 0
    last_error: str | None = None
    last_error_time: datetime | None = None

    def __post_init__(self) -> None:
        for label, kind in (("category", TaskCategory), ("priority", TaskPriority)):
            value = getattr(self, label)
            try:
                object.__setattr__(self, label, kind(value))  # "high" -> TaskPriority.HIGH
            except ValueError:
                choices = ", ".join(member.value for member in kind)
                raise ConfigurationError(
                    f"{label} of {self.name!r} must be one of {choices}, got {value!r}"
                ) from None


@dataclass(frozen=True, slots=True, kw_only=True)
class TaskHealth:
    """The health of one task, judged by the supervisor's :class:`HealthPolicy`."""

    name: str
    is_healthy: bool
    state: TaskState | None
    uptime: float
    """Seconds the current run has been running (0 when not running)."""
    error_rate: float
    """Errors per hour over the policy's ``error_window``."""
    errors_in_window: int
    restart_count: int
    """Restarts since registration."""
    restarts_in_window: int
    """Restarts inside the task's ``restart_window``: what the restart policy counts."""
    last_seen: datetime | None
    """Now while it runs; else when its last run ended."""
    problems: tuple[str, ...] = ()
    """Why it is unhealthy, one phrase each (empty when healthy)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ShutdownPhase:
    """One phase of a shutdown: the tasks of one priority, cancelled together."""

    priority: TaskPriority
    cancelled: tuple[str, ...]
    """Names of the tasks cancelled in this phase."""
    left: tuple[str, ...]
    """Names of those still running when the phase's deadline passed."""
    duration: float
    """Seconds (of the supervisor's clock) the phase took."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ShutdownReport:
    """What a graceful shutdown did, phase by phase, and what it could not stop."""

    phases: tuple[ShutdownPhase, ...]
    errors: Mapping[str, str] = field(default_factory=dict)
    """``repr`` of the exception each cancelled task ended with, when not a cancellation."""

    @property
    def left(self) -> tuple[str, ...]:
        """Every task still running after its phase's deadline (it ignored the cancel)."""
        return tuple(name for phase in self.phases for name in phase.left)

    @property
    def clean(self) -> bool:
        """True when every cancelled task ended within its phase's deadline."""
        return not self.left

    def raise_if_left(self) -> None:
        """Raise :class:`~taskwarden.errors.ShutdownTimeout` naming the tasks left, if any."""
        if self.left:
            raise ShutdownTimeout(
                f"{len(self.left)} task(s) ignored cancellation past the shutdown deadline: "
                f"{', '.join(self.left)}; make them let asyncio.CancelledError propagate"
            )
