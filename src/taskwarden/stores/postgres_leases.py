"""The PostgreSQL store's connection plumbing and its lease verbs (claim, renew, release,
reap, worker records), apart from :mod:`taskwarden.stores.postgres` to keep each readable.

:class:`PostgresLeases` is a base of :class:`~taskwarden.stores.postgres.PostgresStore`,
which sets the attributes declared here.
"""

from __future__ import annotations

import builtins
import json
from collections.abc import Awaitable, Callable, Collection
from datetime import datetime, timedelta
from typing import Any, TypeVar

import asyncpg

from taskwarden.clock import Clock
from taskwarden.errors import StoreError, TaskwardenError
from taskwarden.model import WorkerRecord
from taskwarden.processes import ProcessRecord, ProcessState
from taskwarden.stores.base import (
    PROCESS_COLUMNS,
    ServedIds,
    retry_transient,
    store_not_open,
    to_utc,
)
from taskwarden.stores.postgres_support import (
    ACTIVE,
    is_transient,
    record_from_row,
    row_count,
)

__all__ = ["PostgresLeases"]

_LEASE_NOW_3 = "COALESCE($3::timestamptz, now())"
"""Lease time in a claim: the database's clock unless the store was given one ($3)."""

SCOPE_UNUSED_FOR = timedelta(days=7)
"""A claim scope nobody loaded for this long is deleted (a worker reloads its own)."""
SCOPE_RELOAD = 86_400.0
"""Seconds after which a store loads its scope again (which marks it in use)."""
SCOPE_CHECK = 30.0
"""Seconds between checks, on claims that find nothing, that the scope still exists."""

T = TypeVar("T")


class PostgresLeases:
    """Plumbing (pooled calls, the lease clock) and the lease verbs of the store."""

    prefix: str
    clock: Clock
    _db_clock: bool
    _t: str
    _workers: str
    _pool: asyncpg.Pool | None
    _served: ServedIds
    _scopes: str
    _scope_ids: str
    _scope_sql: str
    _scopes_loaded: dict[str, float]
    _scopes_checked: dict[str, float]

    # -- plumbing ---------------------------------------------------------------------

    def _lease_now(self) -> datetime | None:
        """The "now" of lease times: None for the database's ``now()`` (see __init__)."""
        return None if self._db_clock else self.clock.wall()

    async def _run(self, op: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
        """Run ``op`` on a pooled connection: transient failures retried, driver errors
        wrapped in StoreError, domain errors passed through."""
        pool = self._pool
        if pool is None:
            raise store_not_open()

        async def attempt() -> T:
            async with pool.acquire() as conn:
                return await op(conn)

        try:
            return await retry_transient(attempt, is_transient=is_transient)
        except TaskwardenError:
            raise
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
            raise StoreError(f"PostgreSQL store (prefix {self.prefix!r}) failed: {exc}") from exc

    async def _fetch_records(self, sql: str, *args: Any) -> builtins.list[ProcessRecord]:
        async def op(conn: asyncpg.Connection) -> builtins.list[ProcessRecord]:
            return [record_from_row(row) for row in await conn.fetch(sql, *args)]

        return await self._run(op)

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
        if limit <= 0:
            return []
        scope, ids = None, ""
        if process_ids is not None:
            if not process_ids:
                return []
            scope = self._served.digest(process_ids)
            ids = self._served.encode(process_ids, array_literal=True)
        served = (
            ""
            if scope is None
            # The list is stored once as a scope (see _load_scope), probed by primary key
            # for each candidate row, in the claim index's order. A scalar subquery, not
            # EXISTS or IN: those become a semi-join (losing the order) or a hash of the
            # whole scope, built at every claim (3 ms at 10,000 ids; a probe is 5 us).
            else f" AND (SELECT true FROM {self._scope_ids} AS s WHERE s.scope = $6 "
            f"AND s.process_id = {self._t}.process_id) IS TRUE"
        )
        starts = (
            "state = 'running', run_number = t.run_number + 1, running_since = $5, "
            "next_attempt_at = NULL, error = NULL, "
            if start
            else ""
        )
        sql = (
            # Unleased and expired-lease candidates come through their own indexes, so
            # rows other workers hold are never scanned.
            f"WITH free AS (SELECT process_id, updated_at FROM {self._t} "
            "WHERE state = 'scheduled' AND lease_owner IS NULL "
            f"AND (next_attempt_at IS NULL OR next_attempt_at <= {_LEASE_NOW_3}){served} "
            "ORDER BY updated_at, process_id LIMIT $4 FOR UPDATE SKIP LOCKED), "
            f"expired AS (SELECT process_id, updated_at FROM {self._t} "
            f"WHERE lease_owner IS NOT NULL AND lease_expires_at <= {_LEASE_NOW_3} "
            f"AND state = 'scheduled'{served} "
            "ORDER BY updated_at, process_id LIMIT $4 FOR UPDATE SKIP LOCKED), "
            "picked AS (SELECT process_id, updated_at AS queued_at FROM "
            "(SELECT * FROM free UNION ALL SELECT * FROM expired) AS c "
            "ORDER BY updated_at, process_id LIMIT $4) "
            f"UPDATE {self._t} AS t SET {starts}lease_owner = $1, "
            f"lease_expires_at = {_LEASE_NOW_3} "
            "+ make_interval(secs => COALESCE(t.lease_seconds, $2::float8)), "
            "updated_at = $5 FROM picked WHERE t.process_id = picked.process_id "
            f"RETURNING picked.queued_at, {', '.join('t.' + c for c in PROCESS_COLUMNS)}"
        )
        args: tuple[Any, ...] = (
            worker,
            float(lease_seconds),
            self._lease_now(),
            limit,
            self.clock.wall(),
        )
        if scope is not None:
            args = (*args, scope)

        async def op(conn: asyncpg.Connection) -> builtins.list[ProcessRecord]:
            now = self.clock.now()
            if scope is not None and now - self._scopes_loaded.get(scope, -SCOPE_RELOAD) >= (
                SCOPE_RELOAD
            ):
                # Loaded once, and again each day: a scope in use is never a week old.
                await self._load_scope(conn, scope, ids)
                self._scopes_loaded[scope] = now
            rows = await conn.fetch(sql, *args)
            if (
                not rows
                and scope is not None
                and now - self._scopes_checked.get(scope, -SCOPE_CHECK) >= SCOPE_CHECK
            ):
                # Nothing to claim: is the scope still there (deleted by hand, or by a
                # clean-up while this store was away)? Asked at most every SCOPE_CHECK, so
                # an idle worker's poll stays one statement.
                self._scopes_checked[scope] = now
                if not await conn.fetchval(self._scope_sql, scope):
                    await self._load_scope(conn, scope, ids)
                    self._scopes_loaded[scope] = now
                    rows = await conn.fetch(sql, *args)
            rows.sort(key=lambda r: (r[0], r[1]))
            return [record_from_row(tuple(row)[1:]) for row in rows]

        return await self._run(op)

    async def _load_scope(self, conn: asyncpg.Connection, scope: str, ids: str) -> None:
        """Store the list ``ids`` (an array literal) as ``scope``, and delete the scopes
        nobody loaded for a week."""
        async with conn.transaction():
            await conn.execute(
                f"INSERT INTO {self._scopes} (scope) VALUES ($1) "
                "ON CONFLICT (scope) DO UPDATE SET loaded_at = now()",
                scope,
            )
            await conn.execute(
                f"INSERT INTO {self._scope_ids} (scope, process_id) "
                "SELECT $1, unnest($2::text::text[]) ON CONFLICT DO NOTHING",
                scope,
                ids,
            )
            await conn.execute(
                f"DELETE FROM {self._scopes} WHERE loaded_at < now() - $1::interval",
                SCOPE_UNUSED_FOR,
            )

    async def renew_leases(
        self, worker: str, process_ids: Collection[str], lease_seconds: float
    ) -> builtins.list[str]:
        """See :meth:`Store.renew_leases`."""
        ids = list(dict.fromkeys(process_ids))
        if not ids:
            return []
        sql = (
            f"UPDATE {self._t} SET lease_expires_at = "
            "COALESCE($3::timestamptz, now()) "
            "+ make_interval(secs => COALESCE(lease_seconds, $6::float8)), "
            "updated_at = $4 WHERE lease_owner = $1 AND process_id = ANY($2::text[]) "
            "AND state = ANY($5::text[]) RETURNING process_id"
        )
        args = (worker, ids, self._lease_now(), self.clock.wall(), ACTIVE, float(lease_seconds))

        async def op(conn: asyncpg.Connection) -> builtins.list[str]:
            return [row[0] for row in await conn.fetch(sql, *args)]

        return await self._run(op)

    async def renew_held(
        self, worker: str, lease_seconds: float
    ) -> builtins.list[tuple[str, ProcessState]]:
        """See :meth:`Store.renew_held`."""
        sql = (
            f"UPDATE {self._t} SET lease_expires_at = "
            "COALESCE($2::timestamptz, now()) "
            "+ make_interval(secs => COALESCE(lease_seconds, $4::float8)) "
            "WHERE lease_owner = $1 AND state = ANY($3::text[]) RETURNING process_id, state"
        )
        args = (worker, self._lease_now(), ACTIVE, float(lease_seconds))

        async def op(conn: asyncpg.Connection) -> builtins.list[tuple[str, ProcessState]]:
            return [(row[0], ProcessState(row[1])) for row in await conn.fetch(sql, *args)]

        return await self._run(op)

    async def put_worker(self, worker: WorkerRecord) -> None:
        """See :meth:`Store.put_worker`."""
        sql = (
            f"INSERT INTO {self._workers} (incarnation, name, host, pid, started_at, renewed_at, "
            "runs, concurrency, process_ids) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9::jsonb) "
            "ON CONFLICT (incarnation) DO UPDATE SET name = $2, host = $3, pid = $4, "
            "started_at = $5, renewed_at = $6, runs = $7, concurrency = $8, "
            "process_ids = $9::jsonb"
        )
        args = (
            worker.incarnation,
            worker.name,
            worker.host,
            worker.pid,
            to_utc(worker.started_at),
            to_utc(worker.renewed_at),
            worker.runs,
            worker.concurrency,
            json.dumps(list(worker.process_ids)),
        )

        async def op(conn: asyncpg.Connection) -> None:
            await conn.execute(sql, *args)

        await self._run(op)

    async def list_workers(self) -> builtins.list[WorkerRecord]:
        """See :meth:`Store.list_workers`."""
        sql = (
            "SELECT incarnation, name, host, pid, started_at, renewed_at, runs, concurrency, "
            f"process_ids::text FROM {self._workers} ORDER BY name, incarnation"
        )

        async def op(conn: asyncpg.Connection) -> builtins.list[WorkerRecord]:
            return [
                WorkerRecord(
                    incarnation=row[0],
                    name=row[1],
                    host=row[2],
                    pid=row[3],
                    started_at=row[4],
                    renewed_at=row[5],
                    runs=row[6],
                    concurrency=row[7],
                    process_ids=tuple(json.loads(row[8])),
                )
                for row in await conn.fetch(sql)
            ]

        return await self._run(op)

    async def remove_worker(self, incarnation: str) -> bool:
        """See :meth:`Store.remove_worker`."""
        sql = f"DELETE FROM {self._workers} WHERE incarnation = $1"

        async def op(conn: asyncpg.Connection) -> bool:
            return row_count(await conn.execute(sql, incarnation)) == 1

        return await self._run(op)

    async def release(self, worker: str, process_ids: Collection[str]) -> builtins.list[str]:
        """See :meth:`Store.release`."""
        ids = list(dict.fromkeys(process_ids))
        if not ids:
            return []
        sql = (
            f"UPDATE {self._t} SET lease_owner = NULL, lease_expires_at = NULL, updated_at = $3 "
            "WHERE lease_owner = $1 AND process_id = ANY($2::text[]) RETURNING process_id"
        )
        args = (worker, ids, self.clock.wall())

        async def op(conn: asyncpg.Connection) -> builtins.list[str]:
            return [row[0] for row in await conn.fetch(sql, *args)]

        return await self._run(op)

    async def expired_leases(
        self, now: datetime | None = None, limit: int = 100
    ) -> builtins.list[ProcessRecord]:
        """See :meth:`Store.expired_leases`."""
        cutoff = to_utc(now) if now is not None else self._lease_now()
        sql = (
            f"SELECT {', '.join(PROCESS_COLUMNS)} FROM {self._t} WHERE lease_owner IS NOT NULL "
            "AND lease_expires_at <= COALESCE($1::timestamptz, now()) AND state = ANY($2::text[]) "
            "ORDER BY lease_expires_at, process_id LIMIT $3"
        )
        return await self._fetch_records(sql, cutoff, ACTIVE, max(0, limit))
