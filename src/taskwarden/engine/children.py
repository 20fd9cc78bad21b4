"""Child processes: ``run_child`` (sequential) and ``parallel_group`` (bounded fan-out).

A child is a process record under its parent (``parent_id``, ``root_id``, ``depth``,
``order``) whose run executes in a scope nested in the parent's, so cancelling the parent
reaches every descendant. A failed or cancelled child raises
:class:`~taskwarden.errors.ChildProcessFailed` / :class:`~taskwarden.errors.ChildProcessCancelled`
(both ``RuntimeError``, as the seed raises) unless the caller asked to survive it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any

from taskwarden.engine.definitions import Execute, TaskInstance
from taskwarden.errors import ChildProcessCancelled, ChildProcessFailed, ConfigurationError

if TYPE_CHECKING:
    from taskwarden.engine.context import ProcessContext

__all__ = [
    "ChildProgressCallback",
    "ChildProgressInfo",
    "ChildResult",
    "ParallelGroup",
    "ProgressFanIn",
    "check_child",
    "run_child",
]

logger = logging.getLogger("taskwarden.engine.children")


@dataclass(slots=True)
class ChildResult:
    """How one child ended: ``state`` is ``"done"``, ``"failed"`` or ``"cancelled"``."""

    process_id: str
    state: str
    error: str | None = None


@dataclass(slots=True)
class ChildProgressInfo:
    """The current state and progress of one child, as passed to ``on_child_progress``."""

    process_id: str
    name: str
    state: str
    percent: float | None = None
    message: str | None = None


ChildProgressCallback = Callable[[list[ChildProgressInfo]], None]
"""Receives the infos of every child of a ``run_child`` call or a group, in start order."""


class ProgressFanIn:
    """Keeps the latest info of each child of one call or group and reports them together."""

    __slots__ = ("_callback", "_infos")

    def __init__(self, callback: ChildProgressCallback) -> None:
        self._callback = callback
        self._infos: dict[str, ChildProgressInfo] = {}

    def listener(
        self, process_id: str, name: str
    ) -> Callable[[str, float | None, str | None], None]:
        """A per-child listener: ``listener(state, percent, message)``."""
        info = ChildProgressInfo(process_id=process_id, name=name, state="scheduled")
        self._infos[process_id] = info

        def update(state: str, percent: float | None, message: str | None) -> None:
            info.state = state
            if percent is not None or state == "running":
                info.percent = percent
            if message is not None:
                info.message = message
            try:
                self._callback(list(self._infos.values()))
            except Exception:
                logger.exception("on_child_progress callback failed for %r", process_id)

        return update


def check_child(result: ChildResult, survive_failure: bool, survive_cancel: bool) -> str:
    """Return the child's state, or raise the typed error the survive flags ask for."""
    if result.state == "failed" and not survive_failure:
        raise ChildProcessFailed(result.process_id, result.state, result.error)
    if result.state == "cancelled" and not survive_cancel:
        raise ChildProcessCancelled(result.process_id, result.state, result.error)
    return result.state


async def run_child(
    ctx: ProcessContext,
    execute: Execute,
    process_id: str,
    name: str,
    description: str | None = None,
    params: dict[str, Any] | None = None,
    survive_failure: bool = False,
    survive_cancel: bool = False,
    on_child_progress: ChildProgressCallback | None = None,
) -> str:
    """Run one child to its end and return its final state (see ``ProcessContext.run_child``)."""
    task = TaskInstance(
        execute=execute,
        process_id=process_id,
        name=name,
        description=description,
        params=dict(params or {}),
    )
    fan = ProgressFanIn(on_child_progress) if on_child_progress is not None else None
    result = await ctx._engine._run_child(ctx, task, fan)
    return check_child(result, survive_failure, survive_cancel)


class ParallelGroup:
    """Runs children concurrently, never more than ``max_concurrency`` at once.

    Use it as an async context manager; :meth:`spawn` waits for a free slot, so the body
    never runs ahead of the limit. On exit it waits for every child; then :attr:`results`
    holds one :class:`ChildResult` per spawned child in spawn order, and a failed or
    cancelled child raises unless ``survive_failure`` / ``survive_cancel``. If the body
    raises, the running children are cancelled first.
    """

    def __init__(
        self,
        ctx: ProcessContext,
        max_concurrency: int = 10,
        survive_failure: bool = False,
        survive_cancel: bool = False,
        on_child_progress: ChildProgressCallback | None = None,
    ) -> None:
        if isinstance(max_concurrency, bool) or not isinstance(max_concurrency, int):
            raise ConfigurationError(
                f"max_concurrency must be an int >= 1, got {max_concurrency!r}"
            )
        if max_concurrency < 1:
            raise ConfigurationError(f"max_concurrency must be >= 1, got {max_concurrency!r}")
        self._ctx = ctx
        self.max_concurrency = max_concurrency
        self.survive_failure = survive_failure
        self.survive_cancel = survive_cancel
        self._fan = ProgressFanIn(on_child_progress) if on_child_progress is not None else None
        self._slots = asyncio.Semaphore(max_concurrency)
        self._tasks: list[tuple[str, asyncio.Task[ChildResult]]] = []
        self._open = False
        self.results: list[ChildResult] = []
        """One result per child, in spawn order, once the group has exited."""

    async def __aenter__(self) -> ParallelGroup:
        self._open = True
        return self

    async def spawn(
        self,
        execute: Execute,
        process_id: str,
        name: str,
        description: str | None = None,
        params: dict[str, Any] | None = None,
    ) -> None:
        """Start a child once fewer than ``max_concurrency`` children are running."""
        if not self._open:
            raise ConfigurationError(
                "spawn() works only inside 'async with ctx.parallel_group(...) as group:'"
            )
        task = TaskInstance(
            execute=execute,
            process_id=process_id,
            name=name,
            description=description,
            params=dict(params or {}),
        )
        await self._slots.acquire()
        try:
            child = asyncio.get_running_loop().create_task(
                self._run(task), name=f"taskwarden-child:{process_id}"
            )
        except BaseException:
            self._slots.release()
            raise
        self._tasks.append((process_id, child))

    async def _run(self, task: TaskInstance) -> ChildResult:
        try:
            return await self._ctx._engine._run_child(self._ctx, task, self._fan)
        finally:
            self._slots.release()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._open = False
        tasks = [task for _, task in self._tasks]
        if exc_type is not None:
            for task in tasks:
                task.cancel()
        try:
            if tasks:
                await asyncio.wait(tasks)
        except asyncio.CancelledError:
            for task in tasks:
                task.cancel()
            await asyncio.wait(tasks, timeout=self._ctx._engine.cancel_grace + 1.0)
            raise
        self.results = [_result_of(process_id, task) for process_id, task in self._tasks]
        if exc_type is not None:
            return
        for result in self.results:
            check_child(result, self.survive_failure, self.survive_cancel)


def _result_of(process_id: str, task: asyncio.Task[ChildResult]) -> ChildResult:
    if task.cancelled():
        return ChildResult(process_id=process_id, state="cancelled")
    error = task.exception()
    if error is not None:
        # The child could not even start (e.g. a duplicate id): report it as failed.
        return ChildResult(
            process_id=process_id, state="failed", error=f"{type(error).__name__}: {error}"
        )
    return task.result()
