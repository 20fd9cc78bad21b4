"""Cancelling tasks phase by phase, each phase under a deadline of the supervisor's clock."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from taskwarden.clock import Clock
from taskwarden.supervisor.config import ShutdownPhase, ShutdownReport, TaskPriority

__all__ = ["PhaseTarget", "cancel_in_phases", "wait_all"]

logger = logging.getLogger("taskwarden.supervisor")


async def wait_all(
    clock: Clock, tasks: Iterable[asyncio.Future[Any]], seconds: float | None
) -> set[asyncio.Future[Any]]:
    """Wait until every task is done or ``seconds`` of ``clock`` pass; return those not done.

    The tasks are not cancelled: this only stops waiting for them.
    """
    pending = {task for task in tasks if not task.done()}
    if not pending:
        return pending
    if seconds is None:
        await asyncio.wait(pending)
        return set()
    timer = asyncio.get_running_loop().create_task(
        clock.sleep(seconds), name="taskwarden-supervisor-deadline"
    )
    try:
        while pending:
            done, _ = await asyncio.wait(pending | {timer}, return_when=asyncio.FIRST_COMPLETED)
            pending -= done
            if timer in done:
                break
    finally:
        timer.cancel()
    return pending


@dataclass(frozen=True, slots=True, kw_only=True)
class PhaseTarget:
    """A task to cancel in a shutdown phase, and how."""

    name: str
    task: asyncio.Task[Any]
    cancel: Callable[[], object]
    owned: bool
    """A supervised run: its errors are in its metrics, not in the report."""


async def cancel_in_phases(
    clock: Clock,
    order: Sequence[TaskPriority],
    targets: Mapping[TaskPriority, Sequence[PhaseTarget]],
    seconds: float,
) -> ShutdownReport:
    """Cancel ``targets`` one priority at a time in ``order``, each phase for ``seconds``.

    A task still running at its phase's deadline is reported as left, and the next phase
    starts anyway: one task that swallows cancellation cannot hang a shutdown.
    """
    phases: list[ShutdownPhase] = []
    errors: dict[str, str] = {}
    for priority in order:
        entries = targets.get(priority)
        if not entries:
            continue
        started = clock.now()
        names = tuple(sorted(entry.name for entry in entries))
        logger.debug("shutdown: cancelling %s task(s): %s", priority.value, ", ".join(names))
        for entry in entries:
            entry.cancel()
        pending = await wait_all(clock, (entry.task for entry in entries), seconds)
        left = tuple(sorted(entry.name for entry in entries if entry.task in pending))
        if left:
            logger.error(
                "shutdown: %s task(s) ignored cancellation for %gs: %s",
                priority.value,
                seconds,
                ", ".join(left),
            )
        for entry in entries:
            task = entry.task
            if not entry.owned and task.done() and not task.cancelled():
                exc = task.exception()
                if exc is not None:
                    errors[entry.name] = repr(exc)
        phases.append(
            ShutdownPhase(
                priority=priority, cancelled=names, left=left, duration=clock.now() - started
            )
        )
    return ShutdownReport(phases=tuple(phases), errors=errors)
