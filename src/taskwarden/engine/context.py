"""``ProcessContext``: the one argument of every task function (seed 004's API)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from taskwarden.engine.children import (
    ChildProgressCallback,
    ParallelGroup,
    run_child,
)
from taskwarden.engine.definitions import Execute
from taskwarden.processes import LogLevel
from taskwarden.scope import Cancelable, validate_percent

if TYPE_CHECKING:
    from taskwarden.engine.progress import ProgressBuffer
    from taskwarden.engine.run_state import _Run
    from taskwarden.engine.runs import RunMixin

__all__ = ["ProcessContext"]


class ProcessContext:
    """What a running task receives: its inputs, progress, cancellation and children.

    Properties: :attr:`process_id`, :attr:`params`, :attr:`metadata`, :attr:`services`.
    Methods: :meth:`report_progress`, :meth:`should_continue`, :meth:`log`,
    :meth:`mark_ephemeral`, :meth:`run_child`, :meth:`parallel_group`.
    """

    __slots__ = ("_child_order", "_engine", "_listener", "_progress", "_run", "_scope")

    def __init__(
        self,
        engine: RunMixin,
        run: _Run,
        scope: Cancelable,
        progress: ProgressBuffer,
        listener: Callable[[str, float | None, str | None], None] | None = None,
    ) -> None:
        self._engine = engine
        self._run = run
        self._scope = scope
        self._progress = progress
        self._listener = listener
        self._child_order = 0

    @property
    def process_id(self) -> str:
        """The process id."""
        return self._run.process_id

    @property
    def params(self) -> dict[str, Any]:
        """The parameters of the task definition (or of ``run_child(params=...)``)."""
        return self._run.definition.params

    @property
    def metadata(self) -> dict[str, Any]:
        """The metadata of the task definition."""
        return self._run.definition.metadata

    @property
    def run_number(self) -> int:
        """Which run of the process this is (1 for the first; the store counts them)."""
        return self._run.record.run_number

    @property
    def lost_count(self) -> int:
        """How many earlier attempts of this launch were lost with their worker (0 for a
        fresh launch; see ``TaskInstance.on_worker_lost``)."""
        return self._run.record.lost_count

    @property
    def attempt(self) -> int:
        """Which retry on error this run is: 0 for the first try, 1 for the first retry
        (see ``TaskInstance.retries``)."""
        return self._run.record.attempt

    @property
    def resumed(self) -> bool:
        """True when this run resumes an attempt whose worker was lost (the task's
        ``on_worker_lost`` is ``"resume"``): the record's progress and log are what the
        lost attempt saved, so the task can pick up from there."""
        record = self._run.record
        return record.on_worker_lost == "resume" and record.lost_count > 0

    @property
    def services(self) -> dict[str, Any]:
        """The services passed to ``init()``, for dependency injection."""
        return self._engine.services

    @property
    def scope(self) -> Cancelable:
        """The :class:`~taskwarden.scope.Cancelable` this run executes in."""
        return self._scope

    def report_progress(self, percent: float | None, message: str | None = None) -> None:
        """Report progress: ``percent`` 0..100 or None (indeterminate); a message is also
        appended to the log. Buffered: the store sees at most one write per flush interval.

        Raises:
            ValueError: ``percent`` is not None and not a number from 0 to 100.
        """
        if percent is not None and not (type(percent) is float and 0.0 <= percent <= 100.0):
            percent = validate_percent(percent)
        self._progress.report(percent, message)
        listener = self._listener
        if listener is not None:
            listener("running", percent, message)

    def should_continue(self) -> bool:
        """False once cancellation was requested: poll it and return early."""
        return not self._scope.is_cancelled

    async def wait_cancelled(self) -> None:
        """Return once cancellation was requested."""
        await self._scope.wait_cancelled()

    def log(self, level: LogLevel | str, message: str, data: dict[str, Any] | None = None) -> None:
        """Append an entry to the process log (``event``, ``info``, ``debug``, ``warning``,
        ``error``). Warnings and errors are never dropped by coalescing."""
        self._progress.log(LogLevel(level), message, data)

    async def mark_ephemeral(self) -> None:
        """Delete this process once it reaches a terminal state."""
        await self._engine._mark_ephemeral(self._run)

    async def run_child(
        self,
        execute: Execute,
        process_id: str,
        name: str,
        description: str | None = None,
        params: dict[str, Any] | None = None,
        survive_failure: bool = False,
        survive_cancel: bool = False,
        on_child_progress: ChildProgressCallback | None = None,
    ) -> str:
        """Run a child process to its end; return ``"done"``, ``"failed"`` or ``"cancelled"``.

        Raises:
            ChildProcessFailed: the child failed and ``survive_failure`` is False.
            ChildProcessCancelled: the child was cancelled and ``survive_cancel`` is False.
        """
        return await run_child(
            self,
            execute,
            process_id,
            name,
            description,
            params,
            survive_failure,
            survive_cancel,
            on_child_progress,
        )

    def parallel_group(
        self,
        max_concurrency: int = 10,
        survive_failure: bool = False,
        survive_cancel: bool = False,
        on_child_progress: ChildProgressCallback | None = None,
    ) -> ParallelGroup:
        """A group that runs children concurrently (use with ``async with``)."""
        return ParallelGroup(
            self, max_concurrency, survive_failure, survive_cancel, on_child_progress
        )

    def _next_order(self) -> int:
        order = self._child_order
        self._child_order += 1
        return order

    def __repr__(self) -> str:
        return f"<ProcessContext {self.process_id!r}>"
