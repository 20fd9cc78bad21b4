"""The SQLite store's call plumbing and its lease verbs (claim, renew, release, reap,
worker records), apart from :mod:`taskwarden.stores.sqlite` to keep each readable.

:class:`SQLiteLeases` is a base of :class:`~taskwarden.stores.sqlite.SQLiteStore`, which
sets the attributes declared here.
"""

from __future__ import annotations

import asyncio
import builtins
import json
import sqlite3
from collections.abc import Callable, Collection, Sequence
from datetime import datetime, timedelta
from typing import Any

from taskwarden.clock import Clock
from taskwarden.errors import StoreError
from taskwarden.model import WorkerRecord
from taskwarden.processes import ACTIVE_STATES, ProcessRecord, ProcessState
from taskwarden.stores.base import (
    PROCESS_COLUMNS,
    ServedIds,
    encode_dt,
    store_not_open,
)
from taskwarden.stores.sqlite_support import (
    READ,
    WRITE,
    DatabaseThread,
    chunks,
    dt,
    placeholders,
    record_from_row,
)

__all__ = ["SQLiteLeases"]


def _required(value: datetime | None) -> datetime:
    if value is None:  # pragma: no cover - the column is NOT NULL
        raise StoreError("a required time column is NULL")
    return value


_COLS = ", ".join(PROCESS_COLUMNS)


def _expires(default: str, now: str) -> str:
    """The lease expiry a claim or renewal writes, as SQL: ``default`` (an argument holding
    the worker's expiry, computed exactly) unless the row's task overrides the lease,
    then ``now`` (an argument) plus its ``lease_seconds``, in the fixed-width text of
    ``encode_dt`` (to the millisecond, rounded down: never later than the lease says).
    """
    return (
        f"CASE WHEN lease_seconds IS NULL THEN {default} ELSE strftime('%Y-%m-%dT%H:%M:%f', "
        f"{now}, '+' || printf('%.6f', lease_seconds) || ' seconds') || '000+00:00' END"
    )


_ACTIVE = tuple(sorted(state.value for state in ACTIVE_STATES))


class SQLiteLeases:
    """Queued calls to the database thread, and the lease verbs of the store."""

    clock: Clock
    _t: str
    _workers: str
    _db: DatabaseThread | None
    _served: ServedIds
    _claim_sql: str
    _claim_served_sql: str
    _served_table: str
    _served_loaded: tuple[str, ...] | None

    def _submit(self, kind: int, fn: Callable[..., Any], *args: Any) -> asyncio.Future[Any]:
        if self._db is None:
            raise store_not_open()
        return self._db.submit(kind, fn, *args)

    def _select(
        self, conn: sqlite3.Connection, sql: str, args: Sequence[Any]
    ) -> builtins.list[ProcessRecord]:
        return [record_from_row(row) for row in conn.execute(sql, args)]

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
        now = self.clock.wall()
        if limit <= 0:
            return []
        expires = encode_dt(now + timedelta(seconds=lease_seconds))
        ids = None if process_ids is None else tuple(process_ids)
        load = None
        if ids is not None and ids != self._served_loaded:
            # A new scope: this claim's transaction loads it first. Until that claim
            # returns, every claim loads its own scope, so none runs against a table that
            # a claim ahead of it changes. (Calls run and return in the order made.)
            self._served_loaded = None
            load = self._served.encode(ids)
        result: builtins.list[ProcessRecord] = await self._submit(
            WRITE, self._claim, worker, expires, encode_dt(now), limit, ids is not None, load, start
        )
        if load is not None:
            self._served_loaded = ids
        return result

    def _claim(
        self,
        conn: sqlite3.Connection,
        worker: str,
        expires: str,
        now: str,
        limit: int,
        scoped: bool,
        load: str | None,
        start: bool,
    ) -> builtins.list[ProcessRecord]:
        if load is not None:
            conn.execute(f"DELETE FROM {self._served_table}")
            conn.execute(
                f"INSERT INTO {self._served_table} SELECT DISTINCT value FROM json_each(?)",
                (load,),
            )
        sql = self._claim_served_sql if scoped else self._claim_sql
        cursor = conn.execute(sql, (now, limit, now, limit, limit))
        ids = [row[0] for row in cursor]
        if not ids:
            return []
        starts = (
            "state = 'running', run_number = run_number + 1, running_since = ?3, "
            "next_attempt_at = NULL, error = NULL, "
            if start
            else ""
        )
        rows = conn.execute(
            f"UPDATE {self._t} SET {starts}lease_owner = ?1, "
            f"lease_expires_at = {_expires('?2', '?3')}, "
            f"updated_at = ?3 WHERE process_id IN ({placeholders(len(ids))}) RETURNING {_COLS}",
            (worker, expires, now, *ids),
        ).fetchall()
        by_id = {row[0]: row for row in rows}
        return [record_from_row(by_id[pid]) for pid in ids]

    async def renew_leases(
        self, worker: str, process_ids: Collection[str], lease_seconds: float
    ) -> builtins.list[str]:
        """See :meth:`Store.renew_leases`."""
        now = self.clock.wall()
        ids = list(dict.fromkeys(process_ids))
        if not ids:
            return []
        expires = encode_dt(now + timedelta(seconds=lease_seconds))
        sets = f"lease_expires_at = {_expires('?', '?')}, updated_at = ?"
        at = encode_dt(now)
        result: builtins.list[str] = await self._submit(
            WRITE, self._lease_update, sets, (expires, at, at), worker, ids, True
        )
        return result

    async def renew_held(
        self, worker: str, lease_seconds: float
    ) -> builtins.list[tuple[str, ProcessState]]:
        """See :meth:`Store.renew_held`."""
        now = self.clock.wall()
        expires = encode_dt(now + timedelta(seconds=lease_seconds))
        sql = (
            f"UPDATE {self._t} SET lease_expires_at = {_expires('?', '?')} WHERE lease_owner = ? "
            f"AND state IN ({placeholders(len(_ACTIVE))}) RETURNING process_id, state"
        )
        rows: builtins.list[tuple[Any, ...]] = await self._submit(
            WRITE, self._fetch_rows, sql, (expires, encode_dt(now), worker, *_ACTIVE)
        )
        return [(row[0], ProcessState(row[1])) for row in rows]

    def _fetch_rows(
        self, conn: sqlite3.Connection, sql: str, args: Sequence[Any]
    ) -> builtins.list[tuple[Any, ...]]:
        return [tuple(row) for row in conn.execute(sql, args)]

    async def put_worker(self, worker: WorkerRecord) -> None:
        """See :meth:`Store.put_worker`."""
        sql = (
            f"INSERT OR REPLACE INTO {self._workers} (incarnation, name, host, pid, started_at, "
            "renewed_at, runs, concurrency, process_ids) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
        )
        args = (
            worker.incarnation,
            worker.name,
            worker.host,
            worker.pid,
            encode_dt(worker.started_at),
            encode_dt(worker.renewed_at),
            worker.runs,
            worker.concurrency,
            json.dumps(list(worker.process_ids)),
        )
        await self._submit(WRITE, self._fetch_rows, sql, args)

    async def list_workers(self) -> builtins.list[WorkerRecord]:
        """See :meth:`Store.list_workers`."""
        sql = (
            "SELECT incarnation, name, host, pid, started_at, renewed_at, runs, concurrency, "
            f"process_ids FROM {self._workers} ORDER BY name, incarnation"
        )
        rows: builtins.list[tuple[Any, ...]] = await self._submit(READ, self._fetch_rows, sql, ())
        return [
            WorkerRecord(
                incarnation=row[0],
                name=row[1],
                host=row[2],
                pid=row[3],
                started_at=_required(dt(row[4])),
                renewed_at=_required(dt(row[5])),
                runs=row[6],
                concurrency=row[7],
                process_ids=tuple(json.loads(row[8])),
            )
            for row in rows
        ]

    async def remove_worker(self, incarnation: str) -> bool:
        """See :meth:`Store.remove_worker`."""
        sql = f"DELETE FROM {self._workers} WHERE incarnation = ? RETURNING incarnation"
        rows: builtins.list[tuple[Any, ...]] = await self._submit(
            WRITE, self._fetch_rows, sql, (incarnation,)
        )
        return bool(rows)

    async def release(self, worker: str, process_ids: Collection[str]) -> builtins.list[str]:
        """See :meth:`Store.release`."""
        ids = list(dict.fromkeys(process_ids))
        if not ids:
            return []
        sets = "lease_owner = NULL, lease_expires_at = NULL, updated_at = ?"
        now = encode_dt(self.clock.wall())
        result: builtins.list[str] = await self._submit(
            WRITE, self._lease_update, sets, (now,), worker, ids, False
        )
        return result

    def _lease_update(
        self,
        conn: sqlite3.Connection,
        sets: str,
        set_args: tuple[Any, ...],
        worker: str,
        ids: builtins.list[str],
        active_only: bool,
    ) -> builtins.list[str]:
        done: builtins.list[str] = []
        active = f" AND state IN ({placeholders(len(_ACTIVE))})" if active_only else ""
        for chunk in chunks(ids):
            rows = conn.execute(
                f"UPDATE {self._t} SET {sets} WHERE lease_owner = ?{active} "
                f"AND process_id IN ({placeholders(len(chunk))}) RETURNING process_id",
                (*set_args, worker, *(_ACTIVE if active_only else ()), *chunk),
            ).fetchall()
            done.extend(row[0] for row in rows)
        return done

    async def expired_leases(
        self, now: datetime | None = None, limit: int = 100
    ) -> builtins.list[ProcessRecord]:
        """See :meth:`Store.expired_leases`."""
        cutoff = encode_dt(now if now is not None else self.clock.wall())
        sql = (
            f"SELECT {_COLS} FROM {self._t} INDEXED BY {self._t}_lease "
            "WHERE lease_owner IS NOT NULL AND lease_expires_at <= ? "
            f"AND state IN ({placeholders(len(_ACTIVE))}) "
            "ORDER BY lease_expires_at, process_id LIMIT ?"
        )
        result: builtins.list[ProcessRecord] = await self._submit(
            READ, self._select, sql, (cutoff, *_ACTIVE, max(0, limit))
        )
        return result
