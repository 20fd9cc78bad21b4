"""What a worker asks of its engine: run what it claimed, stop what it lost.

:class:`ClaimMixin` is the part of :class:`~taskwarden.engine.engine.Engine` that the
fleet's :class:`~taskwarden.worker.Worker` drives. The worker claims ``scheduled`` records
from the store (launched by any process) and hands them here; when a renewal shows that a
lease was reaped, the worker tells the engine to stop that run without writing anything.
"""

from __future__ import annotations

import logging

from taskwarden.engine.runs import RunMixin
from taskwarden.model import CancelationReason
from taskwarden.processes import ProcessRecord, ProcessState

__all__ = ["ClaimMixin"]

logger = logging.getLogger("taskwarden.engine")


class ClaimMixin(RunMixin):
    """Runs claimed records and drops lost runs (see the module docstring)."""

    @property
    def served_process_ids(self) -> list[str]:
        """The root processes this engine has definitions for (what its worker claims)."""
        return list(self._definitions)

    @property
    def free_slots(self) -> int | None:
        """How many more root runs can start now (None: no limit)."""
        if self._max_concurrency is None:
            return None
        return max(0, self._max_concurrency - self._active_roots - len(self._pending))

    @property
    def held_runs(self) -> list[str]:
        """The process ids of every run this engine has (roots and children)."""
        return list(self._runs)

    async def start_claimed(self, record: ProcessRecord) -> bool:
        """Run a ``scheduled`` record that this engine's worker claimed (its lease owner is
        :attr:`engine_id`). False, and the lease handed back, when there is no definition
        for it here or it runs already."""
        process_id = record.process_id
        definition = self._definitions.get(process_id)
        if (
            definition is None
            or process_id in self._runs
            or record.state is not ProcessState.SCHEDULED
            or record.lease_owner != self.engine_id
        ):
            await self.store.release(self.engine_id, [process_id])
            return False
        self._start_run(record, definition)
        return True

    def is_running_locally(self, process_id: str) -> bool:
        """True while this engine runs ``process_id`` and has not begun recording its end."""
        run = self._runs.get(process_id)
        return run is not None and not run.finishing and not run.end_submitted

    async def hand_back(self, message: str) -> list[str]:
        """Give this engine's root runs back to the fleet; return their process ids.

        A running one is stopped (the cancel ladder, reason ``signal``) and its end puts
        the process back in ``scheduled`` for another worker instead of recording it
        cancelled; a claimed one still waiting for a slot is released at once. A drain
        calls this at its deadline.
        """
        handed: list[str] = []
        queued: list[str] = []
        for run in list(self._runs.values()):
            if run.parent is not None or run.finishing or run.end_submitted:
                continue
            if run.waiting_for_slot:
                self._drop_waiting(run)
                queued.append(run.process_id)
                continue
            run.hand_back = True
            handed.append(run.process_id)
            if run.scope is not None:
                run.scope.cancel_sync(CancelationReason.SIGNAL, message)
        if queued:
            await self.store.release(self.engine_id, queued)
        return handed + queued

    def lose_run(self, process_id: str, message: str) -> bool:
        """Stop a run whose lease was lost, writing nothing: the record may belong to a
        newer attempt on another worker. Its children stop with it. False when this engine
        does not run ``process_id``."""
        run = self._runs.get(process_id)
        if run is None or run.lease_lost:
            return False
        self._lose(run, message)
        return True
