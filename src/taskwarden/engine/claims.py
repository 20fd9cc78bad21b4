"""What a worker asks of its engine: run what it claimed, stop what it lost.

:class:`ClaimMixin` is the part of :class:`~taskwarden.engine.engine.Engine` that the
fleet's :class:`~taskwarden.worker.Worker` drives. The worker claims ``scheduled`` records
from the store (launched by any process) and hands them here; when a renewal shows that a
lease was reaped, the worker tells the engine to stop that run without writing anything.
"""

from __future__ import annotations

import logging

from taskwarden.engine.runs import RunMixin
from taskwarden.errors import InvalidTransition, ProcessNotFound
from taskwarden.model import CancelationReason
from taskwarden.processes import ProcessRecord, ProcessState

__all__ = ["ClaimMixin"]

logger = logging.getLogger("taskwarden.engine")


class ClaimMixin(RunMixin):
    """Runs claimed records and drops lost runs (see the module docstring)."""

    @property
    def served_process_ids(self) -> tuple[str, ...]:
        """The root processes this engine has definitions for (what its worker claims)."""
        return tuple(self._definitions)

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

    def held_leases(self) -> dict[str, float]:
        """The lease each held run carries (its definition's ``lease_seconds``, else the
        engine's), by process id; empty outside a fleet."""
        default = self.lease_seconds
        if default is None:
            return {}
        return {pid: run.definition.lease_seconds or default for pid, run in self._runs.items()}

    async def start_claimed(self, record: ProcessRecord) -> bool:
        """Run a record that this engine's worker claimed (its lease owner is
        :attr:`engine_id`): ``scheduled``, or ``running`` already when the claim started it
        (``Store.claim(start=True)``: the run's task then begins without a write of its
        own). False, and the process handed back unstarted, when there is no definition for
        it here or it runs already."""
        process_id = record.process_id
        definition = self._definitions.get(process_id)
        started = record.state is ProcessState.RUNNING
        if (
            definition is None
            or process_id in self._runs
            or record.state not in (ProcessState.SCHEDULED, ProcessState.RUNNING)
            or record.lease_owner != self.engine_id
        ):
            if started:
                await self._unstart(record)
            else:
                await self.store.release(self.engine_id, [process_id])
            return False
        self._start_run(record, definition, claimed_running=started)
        return True

    async def _unstart(self, record: ProcessRecord) -> None:
        """Give back a run its claim started but that cannot run here: ``scheduled``
        again, unleased, its run number as before (it never ran)."""
        try:
            back = await self.store.transition(
                record.process_id,
                {ProcessState.RUNNING},
                ProcessState.SCHEDULED,
                expected_owner=self.engine_id,
                run_number=max(0, record.run_number - 1),
                running_since=None,
                lease_owner=None,
                lease_expires_at=None,
            )
        except (InvalidTransition, ProcessNotFound):
            return  # cancelled or reaped meanwhile: that write decides
        self._notify(back)

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
