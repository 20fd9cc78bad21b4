"""What an engine does on start about the runs a stopped engine left active.

:class:`RecoveryMixin` is the part of :class:`~taskwarden.engine.engine.Engine` that finds
processes left ``scheduled``, ``running`` or being cancelled by an engine that is gone (this
engine's own id, no owner, an expired lease, or a default-id engine of this host whose OS
process has exited), records them failed with a message that says so, and names the
resumable ones to launch again.
"""

from __future__ import annotations

import logging
import os
import socket

from taskwarden.engine.run_state import _seconds
from taskwarden.engine.runs import RunMixin
from taskwarden.errors import InvalidTransition, ProcessNotFound
from taskwarden.model import OperationStatus
from taskwarden.processes import ACTIVE_STATES, ProcessState

__all__ = ["HOST", "RecoveryMixin", "owner_process_gone"]

logger = logging.getLogger("taskwarden.engine")

S = ProcessState

HOST = socket.gethostname()
"""This machine's host name: the first part of a default engine id."""


class RecoveryMixin(RunMixin):
    """Resolves a stopped engine's runs on start (see the module docstring); the engine's
    run bookkeeping (:class:`~taskwarden.engine.runs.RunMixin`) records what it finds."""

    async def _reconcile(self) -> list[str]:
        """Record failed what a stopped engine left active; return resumable ids to relaunch."""
        now = self.clock.wall()
        relaunch: list[str] = []
        for record in await self.store.list(state=ACTIVE_STATES):
            owner = record.lease_owner
            if owner is None and record.state is S.SCHEDULED:
                continue  # launched from elsewhere, waiting for a worker to claim it
            if self.lease_seconds is not None and owner is not None and owner != self.engine_id:
                # In a fleet another worker's run goes by its task's on_worker_lost policy:
                # the worker resolves it (at start when its owner's process is gone from
                # this host, else by the reaper once its lease expires), not this engine.
                continue
            expired = record.lease_expires_at is not None and record.lease_expires_at <= now
            held = owner is not None and owner != self.engine_id and not expired
            if held and owner is not None and not owner_process_gone(owner):
                continue  # another live engine runs it
            message = (
                f"the engine that ran it ({owner or 'unknown'}) stopped before the run ended; "
                "it was recorded failed when the engine started again"
            )
            try:
                failed = await self.store.transition(
                    record.process_id,
                    {record.state},
                    S.FAILED,
                    error=message,
                    failed_at=now,
                    duration=_seconds(record.running_since, now),
                )
            except (InvalidTransition, ProcessNotFound):
                continue
            self._notify(failed)
            logger.warning(
                "process %r was left %s by engine %r and is recorded failed (engines sharing "
                "a store need distinct engine_id values)",
                record.process_id,
                record.state,
                owner,
            )
            if record.running_since is not None:
                await self._record_history(
                    failed,
                    started_at=record.running_since,
                    ended_at=now,
                    status=OperationStatus.FAILED,
                    error=message,
                )
            if failed.resumable and failed.parent_id is None:
                relaunch.append(failed.process_id)
        return relaunch


def owner_process_gone(owner: str) -> bool:
    """True if ``owner`` is a default engine id or a worker incarnation
    (``<host>:<pid>:<n>``) of this host whose OS process has exited."""
    host, sep, rest = owner.rpartition(":")  # <host>:<pid>:<n>
    host, sep2, pid_text = host.rpartition(":")
    if not (sep and sep2) or host != HOST or not pid_text.isdigit() or not rest.isdigit():
        return False
    pid = int(pid_text)
    if pid == os.getpid():
        return False  # another engine of this very process: alive
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False  # exists but belongs to someone else (EPERM)
    return False
