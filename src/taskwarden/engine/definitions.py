"""Task definitions: a process as the application declares it (seed 004's ``TaskInstance``)."""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from taskwarden.engine.retries import RetryPolicy
from taskwarden.errors import InvalidDefinition
from taskwarden.processes import ProcessRecord

if TYPE_CHECKING:
    from taskwarden.engine.context import ProcessContext

__all__ = [
    "Execute",
    "TaskInstance",
    "check_lease",
    "definition_fields",
    "new_record",
    "validate_definition",
]

Execute = Callable[["ProcessContext"], Awaitable[None]]
"""An async task function: ``async def execute(ctx: ProcessContext) -> None``."""


@dataclass(slots=True)
class TaskInstance:
    """One process the engine manages: its task function, id, name and options.

    The fields and defaults are the seed's; ``resumable`` says whether a run interrupted by
    a stopped engine may be relaunched on the next start (else it is only recorded failed),
    ``schedule_tz`` names the IANA time zone of ``schedule`` (UTC when None), and
    ``timeout`` limits each run to that many seconds: past it the run is cancelled through
    the cancel ladder with the reason ``timeout``, its log says it timed out, and its
    history entry carries ``cancel_reason`` ``TIMEOUT``.

    In a fleet of workers, ``on_worker_lost`` says what happens to a run whose worker died
    (its lease expired): ``"fail"`` (the default) records it failed, naming the worker;
    ``"retry"`` records that attempt failed and launches it again, at most
    ``lost_retries`` times per launch (then it stays failed with the reason
    ``worker-lost``); ``"resume"`` does the same for a task that picks up from what it
    saved. ``lease_seconds`` overrides, for this task's runs, the lease of the worker that
    runs them (None: the worker's, 30 s by default): a task that blocks its event loop for
    long stretches may want a longer one, a task whose runs must be recovered fast a
    shorter one. A worker refuses a definition whose lease is under 3 times its renewal
    interval.

    ``retries`` opts in to retries on error (see :class:`~taskwarden.engine.RetryPolicy`):
    a run that raises is recorded failed in the history, and its process waits in
    ``scheduled`` until ``next_attempt_at``, when any engine or worker serving it starts it
    again; past the last attempt the process is ``failed``.

    Example::

        TaskInstance(execute=nightly_cleanup, process_id="nightly-cleanup",
                     name="Nightly Cleanup", schedule="0 2 * * *", schedule_tz="Europe/Paris")
    """

    execute: Execute
    process_id: str
    name: str
    description: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)
    schedule: str | None = None
    special: bool = False
    warning: str | None = None
    cancellable: bool = True
    resumable: bool = False
    schedule_tz: str | None = None
    timeout: float | None = None
    on_worker_lost: str = "fail"
    lost_retries: int = 1
    retries: RetryPolicy | None = None
    lease_seconds: float | None = None


MAX_LEASE = 86_400.0
"""The longest lease a task may ask for (a day): a dead worker's runs wait that long."""

WORKER_LOST_POLICIES = ("fail", "retry", "resume")
"""What ``on_worker_lost`` may say: record the run failed, launch it again (within
``lost_retries``), or launch it again as a resume of what it saved."""


def validate_definition(task: TaskInstance) -> None:
    """Check a definition before it is used; raise :class:`InvalidDefinition` naming it."""
    if not isinstance(task, TaskInstance):
        raise InvalidDefinition(f"expected a TaskInstance, got {type(task).__name__}")
    if not isinstance(task.process_id, str) or not task.process_id:
        raise InvalidDefinition(f"process_id must be a non-empty string, got {task.process_id!r}")
    if not callable(task.execute):
        raise InvalidDefinition(
            f"process {task.process_id!r}: execute must be an async function taking ctx"
        )
    if not _positive_seconds(task.timeout):
        raise InvalidDefinition(
            f"process {task.process_id!r}: timeout must be a finite number of seconds > 0 "
            f"(or None for no limit), got {task.timeout!r}"
        )
    if not _positive_seconds(task.lease_seconds) or (task.lease_seconds or 0) > MAX_LEASE:
        raise InvalidDefinition(
            f"process {task.process_id!r}: lease_seconds must be a number of seconds > 0 and "
            f"at most {MAX_LEASE:g} (or None for the worker's lease), got {task.lease_seconds!r}"
        )
    if task.on_worker_lost not in WORKER_LOST_POLICIES:
        raise InvalidDefinition(
            f"process {task.process_id!r}: on_worker_lost must be one of "
            f"{', '.join(map(repr, WORKER_LOST_POLICIES))}, got {task.on_worker_lost!r}"
        )
    retries = task.lost_retries
    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
        raise InvalidDefinition(
            f"process {task.process_id!r}: lost_retries must be an int >= 0, got {retries!r}"
        )
    if task.retries is not None and not isinstance(task.retries, RetryPolicy):
        raise InvalidDefinition(
            f"process {task.process_id!r}: retries takes a RetryPolicy (for example "
            f"RetryPolicy(attempts=3)) or None, got {task.retries!r}"
        )
    if task.schedule is not None or task.schedule_tz is not None:
        from taskwarden.engine.cron import CronSchedule

        CronSchedule.parse(task.process_id, task.schedule, task.schedule_tz)


def check_lease(task: TaskInstance, renew_interval: float) -> None:
    """Refuse (InvalidDefinition) a lease override shorter than 3 renewals of the worker
    that would run the task: one late renewal must not lose its runs."""
    lease = task.lease_seconds
    if lease is not None and lease < 3 * renew_interval * (1 - 1e-9):
        raise InvalidDefinition(
            f"process {task.process_id!r}: lease_seconds ({lease!r}) must be at least 3 x the "
            f"worker's renew_interval ({renew_interval!r}): raise it to {3 * renew_interval:g} "
            "or more, or renew more often"
        )


def _positive_seconds(value: object) -> bool:
    """None, or a finite number of seconds > 0 (a bool is not a number here)."""
    if value is None:
        return True
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    return 0 < value < math.inf


def definition_fields(task: TaskInstance) -> dict[str, Any]:
    """The record fields a definition declares (what ``resync`` compares and updates)."""
    return {
        "name": task.name,
        "description": task.description,
        "params": dict(task.params),
        "metadata": dict(task.metadata),
        "cancellable": task.cancellable,
        "special": task.special,
        "warning": task.warning,
        "schedule": task.schedule,
        "resumable": task.resumable,
        "on_worker_lost": task.on_worker_lost,
        "lost_retries": task.lost_retries,
        "lease_seconds": None if task.lease_seconds is None else float(task.lease_seconds),
    }


def new_record(
    task: TaskInstance,
    *,
    now: datetime,
    adhoc: bool = False,
    ephemeral: bool = False,
    parent: ProcessRecord | None = None,
    order: int = 0,
) -> ProcessRecord:
    """A fresh idle record for ``task`` (a root, or a child of ``parent``)."""
    return ProcessRecord(
        process_id=task.process_id,
        parent_id=None if parent is None else parent.process_id,
        root_id="" if parent is None else parent.root_id,
        depth=0 if parent is None else parent.depth + 1,
        order=order,
        adhoc=adhoc,
        ephemeral=ephemeral,
        created_at=now,
        updated_at=now,
        **definition_fields(task),
    )
