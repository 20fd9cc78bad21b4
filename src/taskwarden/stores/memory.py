"""An in-memory store: the contract without persistence, for tests and throwaway engines.

Every verb runs without awaiting in between, so on one event loop each is atomic by
construction. Values are copied through JSON on the way in, so the memory store refuses
exactly what the database stores refuse and a caller's later mutation of a dict it passed
never reaches the store.
"""

from __future__ import annotations

import builtins
import dataclasses
import heapq
import itertools
import json
from collections.abc import Collection, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from taskwarden.abc import Store
from taskwarden.clock import Clock, SystemClock
from taskwarden.errors import InvalidTransition, ProcessNotFound
from taskwarden.model import OperationStatus, RunRecord, WorkerRecord
from taskwarden.processes import ACTIVE_STATES, LogEntry, ProcessRecord, ProcessState
from taskwarden.stores.base import (
    PROCESS_FIELDS,
    TIME_FIELDS,
    check_definition_fields,
    check_edges,
    check_guard,
    check_limit,
    check_runtime_fields,
    child_refused,
    duplicate_process,
    json_dumps,
    list_filters,
    metadata_matches,
    progress_refused,
    store_not_open,
    to_utc,
    transition_defaults,
    transition_refused,
)
from taskwarden.stores.statements import search_matches

__all__ = ["MemoryStore"]


# In field order; updated_at is the store's own.
_TIME_FIELDS = tuple(f for f in PROCESS_FIELDS if f in TIME_FIELDS and f != "updated_at")


def _copy_json(value: Any, what: str) -> Any:
    return json.loads(json_dumps(value, what))


def _expires(record: ProcessRecord, now: datetime, lease_seconds: float) -> datetime:
    """When a lease taken or renewed ``now`` runs out: the task's own lease, else the
    worker's ``lease_seconds``."""
    return now + timedelta(seconds=record.lease_seconds or lease_seconds)


def _clean_log(entries: Sequence[LogEntry]) -> tuple[LogEntry, ...]:
    return tuple(
        dataclasses.replace(
            entry,
            timestamp=to_utc(entry.timestamp),
            data=None if entry.data is None else _copy_json(entry.data, "log data"),
        )
        for entry in entries
    )


class MemoryStore(Store):
    """Keeps records and history in dicts of this OS process; lost on exit.

    Use it from one event loop. ``clock`` decides lease expiry (default: the system clock).
    """

    executes_in_order = True  # every call runs on the one event loop, in call order

    def __init__(self, *, clock: Clock | None = None, prefix: str = "taskwarden") -> None:
        self.clock: Clock = clock or SystemClock()
        self.prefix = prefix
        self._open = False
        self._records: dict[str, ProcessRecord] = {}
        self._children: dict[str, set[str]] = {}
        self._scheduled: set[str] = set()  # so claim() costs what is queued, not everything
        self._runs: list[RunRecord] = []
        self._run_index = itertools.count(1)
        self._workers: dict[str, WorkerRecord] = {}

    def __repr__(self) -> str:
        return f"MemoryStore(records={len(self._records)}, runs={len(self._runs)})"

    # -- life cycle -------------------------------------------------------------------

    async def open(self) -> None:
        """Mark the store open (the data survives close / open on the same instance)."""
        self._open = True

    async def close(self) -> None:
        """Mark the store closed."""
        self._open = False

    def _check_open(self) -> None:
        if not self._open:
            raise store_not_open()

    def _require(self, process_id: str) -> ProcessRecord:
        record = self._records.get(process_id)
        if record is None:
            raise ProcessNotFound(process_id)
        return record

    def _put(self, record: ProcessRecord, **changes: Any) -> ProcessRecord:
        record = dataclasses.replace(record, updated_at=self.clock.wall(), **changes)
        self._records[record.process_id] = record
        if record.state is ProcessState.SCHEDULED:
            self._scheduled.add(record.process_id)
        else:
            self._scheduled.discard(record.process_id)
        return record

    # -- definitions ------------------------------------------------------------------

    async def create(
        self, record: ProcessRecord, *, parent_owner: str | None = None
    ) -> ProcessRecord:
        """See :meth:`Store.create`."""
        self._check_open()
        if record.process_id in self._records:
            raise duplicate_process(record.process_id)
        if parent_owner is not None:
            parent = self._records.get(record.parent_id or "")
            owner = None if parent is None else parent.lease_owner
            if owner != parent_owner:
                raise child_refused(record.process_id, record.parent_id, parent_owner, owner)
        times: dict[str, Any] = {
            key: to_utc(value)
            for key in _TIME_FIELDS
            if (value := getattr(record, key)) is not None
        }
        clean = dataclasses.replace(
            record,
            params=_copy_json(record.params, "params"),
            metadata=_copy_json(record.metadata, "metadata"),
            log=_clean_log(record.log),
            **times,
        )
        stored = self._put(clean)
        if stored.parent_id is not None:
            self._children.setdefault(stored.parent_id, set()).add(stored.process_id)
        return stored

    async def update_definition(self, process_id: str, /, **fields: Any) -> ProcessRecord:
        """See :meth:`Store.update_definition`."""
        self._check_open()
        check_definition_fields(fields)
        record = self._require(process_id)
        for key in ("params", "metadata"):
            if key in fields:
                fields[key] = _copy_json(fields[key], key)
        return self._put(record, **fields)

    # -- queries ----------------------------------------------------------------------

    async def get(self, process_id: str) -> ProcessRecord | None:
        """See :meth:`Store.get`."""
        self._check_open()
        return self._records.get(process_id)

    async def list(
        self,
        *,
        state: ProcessState | Collection[ProcessState] | None = None,
        root_id: str | None = None,
        parent_id: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        limit: int | None = None,
        cursor: str | None = None,
        roots_only: bool = False,
        search: str | None = None,
    ) -> builtins.list[ProcessRecord]:
        """See :meth:`Store.list`."""
        self._check_open()
        states, wanted, after = list_filters(state, metadata, limit, cursor)
        found = [
            record
            for record in self._records.values()
            if (states is None or record.state in states)
            and (root_id is None or record.root_id == root_id)
            and (parent_id is None or record.parent_id == parent_id)
            and (not roots_only or record.parent_id is None)
            and search_matches(record, search)
            and (not wanted or metadata_matches(record.metadata, wanted))
            and (after is None or (record.depth, record.order, record.process_id) > after)
        ]
        found.sort(key=lambda r: (r.depth, r.order, r.process_id))
        return found if limit is None else found[:limit]

    async def children(self, process_id: str) -> builtins.list[ProcessRecord]:
        """See :meth:`Store.children`."""
        self._check_open()
        found = [self._records[cid] for cid in self._children.get(process_id, ())]
        found.sort(key=lambda r: (r.order, r.process_id))
        return found

    # -- deletion ---------------------------------------------------------------------

    def _subtree(self, process_id: str) -> builtins.list[str]:
        out: builtins.list[str] = []
        stack = list(self._children.get(process_id, ()))
        while stack:
            current = stack.pop()
            out.append(current)
            stack.extend(self._children.get(current, ()))
        return out

    def _remove(self, process_id: str) -> None:
        record = self._records.pop(process_id)
        self._scheduled.discard(process_id)
        self._children.pop(process_id, None)
        if record.parent_id is not None:
            siblings = self._children.get(record.parent_id)
            if siblings is not None:
                siblings.discard(process_id)

    async def delete(
        self,
        process_id: str,
        *,
        only_if_states: Collection[ProcessState] | None = None,
        descendants: bool = False,
    ) -> bool:
        """See :meth:`Store.delete`."""
        self._check_open()
        record = self._records.get(process_id)
        if record is None:
            return False
        if only_if_states is not None and record.state not in frozenset(only_if_states):
            return False
        if descendants:
            for descendant in self._subtree(process_id):
                self._remove(descendant)
        self._remove(process_id)
        return True

    async def delete_descendants(
        self, process_id: str, *, only_if_states: Collection[ProcessState] | None = None
    ) -> int:
        """See :meth:`Store.delete_descendants`."""
        self._check_open()
        if only_if_states is not None:
            record = self._records.get(process_id)
            if record is None or record.state not in set(only_if_states):
                return 0
        subtree = self._subtree(process_id)
        for descendant in subtree:
            self._remove(descendant)
        return len(subtree)

    # -- state changes ----------------------------------------------------------------

    async def transition(
        self,
        process_id: str,
        expected_states: Collection[ProcessState],
        to_state: ProcessState,
        /,
        *,
        expected_owner: str | None = None,
        expected_fields: Mapping[str, bool | None] | None = None,
        run: RunRecord | None = None,
        **fields: Any,
    ) -> ProcessRecord:
        """See :meth:`Store.transition`."""
        self._check_open()
        expected = check_edges(process_id, expected_states, to_state)
        check_runtime_fields(fields)
        guard = check_guard(process_id, expected_fields)
        record = self._require(process_id)
        if record.state not in expected:
            raise InvalidTransition(process_id, record.state, to_state)
        if (expected_owner is not None and record.lease_owner != expected_owner) or any(
            getattr(record, name) != value for name, value in guard
        ):
            raise transition_refused(
                process_id,
                record.state,
                to_state,
                expected_owner,
                record.lease_owner,
                guard=guard,
                expected=expected,
            )
        increment, clear = transition_defaults(ProcessState(to_state), fields)
        if increment:
            fields["run_number"] = record.run_number + 1
        if clear:
            fields["lease_owner"] = None
            fields["lease_expires_at"] = None
        if "log" in fields:
            fields["log"] = _clean_log(fields["log"])
        for key in _TIME_FIELDS:
            if fields.get(key) is not None:
                fields[key] = to_utc(fields[key])
        history = None
        if run is not None:
            # Checked before the write, so a bad run leaves the record untouched.
            history = self._prepare_run(run)
        stored = self._put(record, state=ProcessState(to_state), **fields)
        if history is not None:
            self._append_run(
                dataclasses.replace(
                    history,
                    process_id=history.process_id or process_id,
                    run_number=(
                        stored.run_number if history.run_number is None else history.run_number
                    ),
                )
            )
        return stored

    async def update_progress(
        self,
        process_id: str,
        percent: float | None,
        message: str | None,
        log_entries: Sequence[LogEntry] = (),
        max_log: int = 1000,
        *,
        expected_owner: str | None = None,
    ) -> None:
        """See :meth:`Store.update_progress`."""
        self._check_open()
        record = self._require(process_id)
        if expected_owner is not None and record.lease_owner != expected_owner:
            raise progress_refused(process_id, expected_owner, record.lease_owner)
        log = record.log
        if log_entries:
            log = (log + _clean_log(log_entries))[-max_log:] if max_log > 0 else ()
        self._put(record, progress_percent=percent, progress_message=message, log=log)

    async def append_log(
        self, process_id: str, log_entries: Sequence[LogEntry], max_log: int = 1000
    ) -> None:
        """See :meth:`Store.append_log`."""
        self._check_open()
        record = self._require(process_id)
        log = (record.log + _clean_log(log_entries))[-max_log:] if max_log > 0 else ()
        self._put(record, log=log)

    # -- leases -----------------------------------------------------------------------

    async def claim(
        self,
        worker: str,
        lease_seconds: float,
        limit: int = 1,
        *,
        process_ids: Collection[str] | None = None,
        start: bool = False,
    ) -> builtins.list[ProcessRecord]:
        """See :meth:`Store.claim`."""
        self._check_open()
        now = self.clock.wall()
        served = None if process_ids is None else set(process_ids)
        candidates = heapq.nsmallest(
            max(0, limit),
            (
                record
                for record in map(self._records.__getitem__, self._scheduled)
                if (
                    (
                        record.lease_owner is None
                        and (record.next_attempt_at is None or record.next_attempt_at <= now)
                    )
                    or (record.lease_expires_at is not None and record.lease_expires_at <= now)
                )
                and (served is None or record.process_id in served)
            ),
            key=lambda r: (r.updated_at, r.process_id),
        )
        if not start:
            return [
                self._put(
                    record,
                    lease_owner=worker,
                    lease_expires_at=_expires(record, now, lease_seconds),
                )
                for record in candidates
            ]
        return [
            self._put(
                record,
                lease_owner=worker,
                lease_expires_at=_expires(record, now, lease_seconds),
                state=ProcessState.RUNNING,
                run_number=record.run_number + 1,
                running_since=now,
                next_attempt_at=None,
                error=None,
            )
            for record in candidates
        ]

    async def renew_leases(
        self, worker: str, process_ids: Collection[str], lease_seconds: float
    ) -> builtins.list[str]:
        """See :meth:`Store.renew_leases`."""
        self._check_open()
        now = self.clock.wall()
        renewed: builtins.list[str] = []
        for process_id in dict.fromkeys(process_ids):
            record = self._records.get(process_id)
            if record and record.lease_owner == worker and record.state in ACTIVE_STATES:
                self._put(record, lease_expires_at=_expires(record, now, lease_seconds))
                renewed.append(process_id)
        return renewed

    async def renew_held(
        self, worker: str, lease_seconds: float
    ) -> builtins.list[tuple[str, ProcessState]]:
        """See :meth:`Store.renew_held`."""
        self._check_open()
        now = self.clock.wall()
        held: builtins.list[tuple[str, ProcessState]] = []
        for process_id, record in self._records.items():
            if record.lease_owner == worker and record.state in ACTIVE_STATES:
                expires = _expires(record, now, lease_seconds)
                self._records[process_id] = dataclasses.replace(record, lease_expires_at=expires)
                held.append((process_id, record.state))
        return held

    async def put_worker(self, worker: WorkerRecord) -> None:
        """See :meth:`Store.put_worker`."""
        self._check_open()
        self._workers[worker.incarnation] = worker

    async def list_workers(self) -> builtins.list[WorkerRecord]:
        """See :meth:`Store.list_workers`."""
        self._check_open()
        return sorted(self._workers.values(), key=lambda w: (w.name, w.incarnation))

    async def remove_worker(self, incarnation: str) -> bool:
        """See :meth:`Store.remove_worker`."""
        self._check_open()
        return self._workers.pop(incarnation, None) is not None

    async def release(self, worker: str, process_ids: Collection[str]) -> builtins.list[str]:
        """See :meth:`Store.release`."""
        self._check_open()
        released: builtins.list[str] = []
        for process_id in dict.fromkeys(process_ids):
            record = self._records.get(process_id)
            if record and record.lease_owner == worker:
                self._put(record, lease_owner=None, lease_expires_at=None)
                released.append(process_id)
        return released

    async def expired_leases(
        self, now: datetime | None = None, limit: int = 100
    ) -> builtins.list[ProcessRecord]:
        """See :meth:`Store.expired_leases`."""
        self._check_open()
        cutoff = to_utc(now) if now is not None else self.clock.wall()
        expired = [
            record
            for record in self._records.values()
            if record.state in ACTIVE_STATES
            and record.lease_owner is not None
            and record.lease_expires_at is not None
            and record.lease_expires_at <= cutoff
        ]
        expired.sort(key=lambda r: (r.lease_expires_at or cutoff, r.process_id))
        return expired[: max(0, limit)]

    async def mark_cron_tick(self, process_id: str, tick: datetime) -> bool:
        """See :meth:`Store.mark_cron_tick`."""
        self._check_open()
        record = self._require(process_id)
        tick = to_utc(tick)
        if record.last_cron_tick is not None and record.last_cron_tick >= tick:
            return False
        self._put(record, last_cron_tick=tick)
        return True

    # -- history ----------------------------------------------------------------------

    async def record_run(self, run: RunRecord) -> RunRecord:
        """See :meth:`Store.record_run`."""
        self._check_open()
        return self._append_run(self._prepare_run(run))

    def _prepare_run(self, run: RunRecord) -> RunRecord:
        return dataclasses.replace(
            run,
            metadata=_copy_json(run.metadata, "run metadata"),
            started_at=to_utc(run.started_at),
            ended_at=None if run.ended_at is None else to_utc(run.ended_at),
        )

    def _append_run(self, run: RunRecord) -> RunRecord:
        stored = dataclasses.replace(run, index=next(self._run_index))
        self._runs.append(stored)
        return stored

    async def query_history(
        self,
        *,
        process_id: str | None = None,
        name: str | None = None,
        status: OperationStatus | None = None,
        since: datetime | None = None,
        limit: int | None = None,
        until: datetime | None = None,
        before: int | None = None,
    ) -> builtins.list[RunRecord]:
        """See :meth:`Store.query_history`."""
        self._check_open()
        check_limit(limit)
        cutoff = None if since is None else to_utc(since)
        end = None if until is None else to_utc(until)
        found: builtins.list[RunRecord] = []
        for run in reversed(self._runs):
            if limit is not None and len(found) >= limit:
                break
            if (
                (before is None or (run.index is not None and run.index < before))
                and (end is None or run.started_at < end)
                and (process_id is None or run.process_id == process_id)
                and (name is None or run.name == name)
                and (status is None or run.status == status)
                and (cutoff is None or run.started_at >= cutoff)
            ):
                found.append(run)
        return found
