"""The supervisor of critical asyncio tasks (seed 002's ``TaskManager``, fixed).

Critical tasks restart with a sliding-window limit and exponential backoff, every run is an
operation in the registry and the history, health and error rates are computed over
windows, all tasks of the loop can be categorized by name prefix, and shutdown cancels in
explicit priority order with a deadline per phase. See ``docs/supervisor.md``.
"""

from __future__ import annotations

from taskwarden.supervisor.categories import (
    DEFAULT_CATEGORY_PREFIXES,
    TaskCategorizer,
    get_task_name,
)
from taskwarden.supervisor.config import (
    DEFAULT_CATEGORY_PRIORITIES,
    DEFAULT_SHUTDOWN_ORDER,
    CriticalTaskConfig,
    CriticalTasksProvider,
    HealthPolicy,
    ShutdownPhase,
    ShutdownReport,
    SupervisorState,
    TaskCategory,
    TaskHealth,
    TaskMetrics,
    TaskPriority,
    TaskState,
    restart_delay,
)
from taskwarden.supervisor.core import Supervisor, current_supervisor
from taskwarden.supervisor.instrument import instrumented_task

__all__ = [
    "DEFAULT_CATEGORY_PREFIXES",
    "DEFAULT_CATEGORY_PRIORITIES",
    "DEFAULT_SHUTDOWN_ORDER",
    "CriticalTaskConfig",
    "CriticalTasksProvider",
    "HealthPolicy",
    "ShutdownPhase",
    "ShutdownReport",
    "Supervisor",
    "SupervisorState",
    "TaskCategorizer",
    "TaskCategory",
    "TaskHealth",
    "TaskMetrics",
    "TaskPriority",
    "TaskState",
    "current_supervisor",
    "get_task_name",
    "instrumented_task",
    "restart_delay",
]
