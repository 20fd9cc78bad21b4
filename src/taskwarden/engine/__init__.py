"""The process engine (seed 004): definitions, launch, cancel, children, progress, cron.

The module-level functions act on a default engine made by :func:`init`; :class:`Engine`
offers the same methods on explicit instances.
"""

from __future__ import annotations

from taskwarden.engine.children import ChildProgressInfo, ChildResult, ParallelGroup
from taskwarden.engine.context import ProcessContext
from taskwarden.engine.cron import CronSchedule
from taskwarden.engine.definitions import TaskInstance
from taskwarden.engine.engine import Engine, EngineState
from taskwarden.engine.facade import (
    adhoc_define,
    adhoc_delete,
    block_launches,
    cancel,
    cancel_group,
    cancel_group_and_wait,
    dismiss,
    get_engine,
    get_process,
    get_remote_control,
    init,
    launch,
    launch_and_wait,
    list_processes,
    resync,
    run,
    shutdown,
    unblock_launches,
)
from taskwarden.engine.progress_helpers import (
    average_progress,
    mapped_progress,
    sequential_progress,
)
from taskwarden.engine.retries import RetryPolicy

__all__ = [
    "ChildProgressInfo",
    "ChildResult",
    "CronSchedule",
    "Engine",
    "EngineState",
    "ParallelGroup",
    "ProcessContext",
    "RetryPolicy",
    "TaskInstance",
    "adhoc_define",
    "adhoc_delete",
    "average_progress",
    "block_launches",
    "cancel",
    "cancel_group",
    "cancel_group_and_wait",
    "dismiss",
    "get_engine",
    "get_process",
    "get_remote_control",
    "init",
    "launch",
    "launch_and_wait",
    "list_processes",
    "mapped_progress",
    "resync",
    "run",
    "sequential_progress",
    "shutdown",
    "unblock_launches",
]
