"""The scale-out store: PostgreSQL through asyncpg and a connection pool.

Every verb is one statement or one short transaction. Compare-and-set is ``UPDATE ... WHERE
state = ANY($n) RETURNING``; claiming locks candidate rows with ``FOR UPDATE SKIP LOCKED`` so
concurrent claimers on any number of machines skip each other's rows instead of waiting.
Migrations run under a transaction-scoped advisory lock, so workers starting together apply
each migration once.
"""

from __future__ import annotations

import asyncio
import builtins
import logging
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from datetime import datetime
from typing import Any

import asyncpg

from taskwarden.abc import Store
from taskwarden.clock import Clock, SystemClock
from taskwarden.errors import (
    InvalidDefinition,
    ProcessNotFound,
    SchemaError,
    StoreError,
)
from taskwarden.model import OperationStatus, RunRecord
from taskwarden.processes import LogEntry, ProcessRecord, ProcessState
from taskwarden.stores.base import (
    PROCESS_COLUMNS,
    RUN_COLUMNS,
    ServedIds,
    check_edges,
    check_guard,
    check_runtime_fields,
    child_refused,
    duplicate_process,
    guard_sql,
    implied_sets,
    json_dumps,
    list_filters,
    load_migrations,
    log_to_json,
    pending_migrations,
    process_values,
    progress_refused,
    retry_transient,
    run_values,
    store_not_open,
    table_names,
    to_utc,
    transition_defaults,
    transition_refused,
)
from taskwarden.stores.postgres_leases import PostgresLeases
from taskwarden.stores.postgres_support import (
    COLS,
    FIELD_TYPES,
    JSON_TEXT_FIELDS,
    RUN_TYPES,
    Call,
    encode_field,
    init_connection,
    is_transient,
    keep_session,
    record_from_row,
    row_count,
    run_from_row,
)
from taskwarden.stores.statements import (
    SqlWhere,
    count_statement,
    definition_update,
    history_statement,
    list_statement,
)

__all__ = ["PostgresStore"]


def _appended_log(entries: str, keep: str) -> str:
    """SQL for the log with the JSON array in parameter ``entries`` appended, keeping the
    newest (parameter) ``keep`` entries: one statement, no read first."""
    return (
        f"CASE WHEN {keep} <= 0 THEN '[]'::jsonb "
        f"WHEN jsonb_array_length(log) + jsonb_array_length({entries}::jsonb) <= {keep} "
        f"THEN log || {entries}::jsonb "
        "ELSE (SELECT jsonb_agg(e ORDER BY i) FROM (SELECT e, i FROM "
        f"jsonb_array_elements(log || {entries}::jsonb) WITH ORDINALITY AS x(e, i) "
        f"ORDER BY i DESC LIMIT {keep}) AS kept) END"
    )


logger = logging.getLogger("taskwarden.stores.postgres")


class PostgresStore(PostgresLeases, Store):
    """Process records and history in PostgreSQL (``postgresql://user:pass@host/db``).

    Args:
        dsn: a libpq connection URL.
        prefix: starts every table name (several applications can share a database).
        clock: decides lease expiry and ``updated_at`` (default: the system clock). Workers
            on several machines compare lease times, so keep their clocks in sync (NTP) and
            leases much longer than the skew.
        min_size, max_size: bounds of the connection pool.
    """

    def __init__(
        self,
        dsn: str,
        *,
        prefix: str = "taskwarden",
        clock: Clock | None = None,
        min_size: int = 1,
        max_size: int = 10,
    ) -> None:
        self.dsn = dsn
        self.prefix = prefix
        self.clock: Clock = clock or SystemClock()
        # Leases are stamped and compared by the database's clock (now()), never a
        # worker's; a clock given here (a FakeClock in tests) replaces it.
        self._db_clock = clock is None
        self._t, self._runs, self._version = table_names(prefix)
        self._workers = f"{prefix}_workers"
        self._min_size = min_size
        self._max_size = max_size
        self._pool: asyncpg.Pool | None = None
        self._transition_sql: dict[tuple[Any, ...], str] = {}
        self._served = ServedIds()
        self._scopes, self._scope_ids = f"{prefix}_scopes", f"{prefix}_scope_ids"
        self._scope_sql = f"SELECT EXISTS (SELECT 1 FROM {self._scopes} WHERE scope = $1)"
        # When this store last loaded, and last checked, each scope (clock.now()).
        self._scopes_loaded: dict[str, float] = {}
        self._scopes_checked: dict[str, float] = {}
        self._single_sql_cache: dict[tuple[Any, ...], str] = {}
        self._pending: dict[tuple[Any, ...], list[tuple[Any, asyncio.Future[Any]]]] = {}
        self._flushing: set[asyncio.Task[None]] = set()

    def __repr__(self) -> str:
        return f"PostgresStore(prefix={self.prefix!r})"

    # -- life cycle -------------------------------------------------------------------

    async def open(self) -> None:
        """See :meth:`Store.open`: creates the pool and migrates under an advisory lock."""
        if self._pool is not None:
            return
        try:
            pool = await retry_transient(
                lambda: asyncpg.create_pool(
                    self.dsn,
                    min_size=self._min_size,
                    max_size=self._max_size,
                    init=init_connection,
                    reset=keep_session,
                    statement_cache_size=512,
                ),
                is_transient=is_transient,
            )
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
            raise StoreError(f"cannot connect to PostgreSQL: {exc}") from exc
        assert pool is not None
        try:
            async with pool.acquire() as conn:
                await self._migrate(conn)
        except BaseException:
            await pool.close()
            raise
        self._pool = pool

    async def close(self) -> None:
        """See :meth:`Store.close`: finishes pending transitions, then closes the pool."""
        if self._flushing:
            await asyncio.gather(*self._flushing, return_exceptions=True)
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()

    async def _migrate(self, conn: asyncpg.Connection) -> None:
        migrations = load_migrations("postgres", self.prefix)
        try:
            async with conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", self._version)
                await conn.execute(
                    f"CREATE TABLE IF NOT EXISTS {self._version} "
                    "(version INTEGER PRIMARY KEY, applied_at TIMESTAMPTZ NOT NULL)"
                )
                current = await conn.fetchval(f"SELECT max(version) FROM {self._version}") or 0
                pending = pending_migrations(
                    migrations, current, database="the database", prefix=self.prefix
                )
                for version, statements in pending:
                    logger.info("migrating prefix %s to schema version %d", self.prefix, version)
                    for statement in statements:
                        await conn.execute(statement)
                    await conn.execute(
                        f"INSERT INTO {self._version} (version, applied_at) VALUES ($1, $2)",
                        version,
                        self.clock.wall(),
                    )
        except asyncpg.PostgresError as exc:
            raise SchemaError(f"migrating prefix {self.prefix!r} failed: {exc}") from exc

    # -- definitions ------------------------------------------------------------------

    async def create(
        self, record: ProcessRecord, *, parent_owner: str | None = None
    ) -> ProcessRecord:
        """See :meth:`Store.create`."""
        values = process_values(record, encode_field, self.clock.wall())
        placeholders = ", ".join(f"${i}" for i in range(1, len(values) + 1))
        sql = f"INSERT INTO {self._t} ({COLS}) VALUES ({placeholders}) RETURNING {COLS}"
        # FOR SHARE keeps the reaper from taking the parent's lease until the insert commits.
        fence = f"SELECT lease_owner FROM {self._t} WHERE process_id = $1 FOR SHARE"

        async def op(conn: asyncpg.Connection) -> ProcessRecord:
            try:
                if parent_owner is None:
                    row = await conn.fetchrow(sql, *values)
                else:
                    async with conn.transaction():
                        owner = await conn.fetchval(fence, record.parent_id)
                        if owner != parent_owner:
                            raise child_refused(
                                record.process_id, record.parent_id, parent_owner, owner
                            )
                        row = await conn.fetchrow(sql, *values)
            except asyncpg.UniqueViolationError:
                raise duplicate_process(record.process_id) from None
            except asyncpg.IntegrityConstraintViolationError as exc:
                raise InvalidDefinition(
                    f"process {record.process_id!r} cannot be stored: {exc}"
                ) from exc
            return record_from_row(row)

        return await self._run(op)

    async def update_definition(self, process_id: str, /, **fields: Any) -> ProcessRecord:
        """See :meth:`Store.update_definition`."""
        sql, args = definition_update(
            self._t, process_id, fields, self.clock.wall(), encode_field, numbered=True
        )

        async def op(conn: asyncpg.Connection) -> ProcessRecord:
            row = await conn.fetchrow(sql, *args)
            if row is None:
                raise ProcessNotFound(process_id)
            return record_from_row(row)

        return await self._run(op)

    # -- queries ----------------------------------------------------------------------

    async def get(self, process_id: str) -> ProcessRecord | None:
        """See :meth:`Store.get`."""
        found = await self._fetch_records(
            f"SELECT {COLS} FROM {self._t} WHERE process_id = $1", process_id
        )
        return found[0] if found else None

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
        states, wanted, after = list_filters(state, metadata, limit, cursor)
        where = self._list_where(states, wanted)
        if where is None:
            return []
        sql = list_statement(
            where,
            f"SELECT {COLS} FROM {self._t}",
            root_id=root_id,
            parent_id=parent_id,
            after=after,
            limit=limit,
            roots_only=roots_only,
            search=search,
        )
        return await self._fetch_records(sql, *where.args)

    async def count(
        self,
        *,
        state: ProcessState | Collection[ProcessState] | None = None,
        root_id: str | None = None,
        parent_id: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        roots_only: bool = False,
        search: str | None = None,
    ) -> int:
        """See :meth:`Store.count`."""
        states, wanted, _ = list_filters(state, metadata, None, None)
        where = self._list_where(states, wanted)
        if where is None:
            return 0
        sql = count_statement(
            where,
            self._t,
            root_id=root_id,
            parent_id=parent_id,
            roots_only=roots_only,
            search=search,
        )

        async def op(conn: asyncpg.Connection) -> int:
            found: int = await conn.fetchval(sql, *where.args)
            return found

        return await self._run(op)

    async def get_many(self, process_ids: Collection[str]) -> dict[str, ProcessRecord]:
        """See :meth:`Store.get_many`."""
        if not process_ids:
            return {}
        records = await self._fetch_records(
            f"SELECT {COLS} FROM {self._t} WHERE process_id = ANY($1::text[])",
            sorted(set(process_ids)),
        )
        return {r.process_id: r for r in records}

    async def changed_since(self, since: datetime) -> builtins.list[ProcessRecord]:
        """See :meth:`Store.changed_since`."""
        return await self._fetch_records(
            f"SELECT {COLS} FROM {self._t} WHERE updated_at >= $1 ORDER BY updated_at, process_id",
            since,
        )

    @staticmethod
    def _list_where(
        states: frozenset[ProcessState] | None, wanted: Mapping[str, Any]
    ) -> SqlWhere | None:
        """The state and metadata clauses of a list or count; None when nothing can match."""
        where = SqlWhere(numbered=True)
        if states is not None:
            if not states:
                return None
            where.add(f"state = ANY({where.arg(sorted(s.value for s in states))}::text[])")
        for key, value in wanted.items():
            filter_json = json_dumps({key: value}, "metadata filter")
            where.add(f"metadata @> {where.arg(filter_json)}::jsonb")
        return where

    async def children(self, process_id: str) -> builtins.list[ProcessRecord]:
        """See :meth:`Store.children`."""
        return await self._fetch_records(
            f"SELECT {COLS} FROM {self._t} WHERE parent_id = $1 ORDER BY sort_order, process_id",
            process_id,
        )

    # -- deletion ---------------------------------------------------------------------

    def _subtree_sql(self) -> str:
        return (
            f"WITH RECURSIVE sub(id) AS (SELECT process_id FROM {self._t} WHERE parent_id = $1 "
            f"UNION SELECT t.process_id FROM {self._t} AS t JOIN sub ON t.parent_id = sub.id) "
            f"DELETE FROM {self._t} WHERE process_id IN (SELECT id FROM sub)"
        )

    async def delete(
        self,
        process_id: str,
        *,
        only_if_states: Collection[ProcessState] | None = None,
        descendants: bool = False,
    ) -> bool:
        """See :meth:`Store.delete`."""
        sql = f"DELETE FROM {self._t} WHERE process_id = $1"
        args: builtins.list[Any] = [process_id]
        if only_if_states is not None:
            states = sorted(ProcessState(s).value for s in only_if_states)
            if not states:
                return False
            sql += " AND state = ANY($2::text[])"
            args.append(states)

        async def op(conn: asyncpg.Connection) -> bool:
            async with conn.transaction():
                if row_count(await conn.execute(sql, *args)) != 1:
                    return False
                if descendants:
                    await conn.execute(self._subtree_sql(), process_id)
                return True

        return await self._run(op)

    async def delete_descendants(
        self, process_id: str, *, only_if_states: Collection[ProcessState] | None = None
    ) -> int:
        """See :meth:`Store.delete_descendants`."""
        sql = self._subtree_sql()
        args: builtins.list[Any] = [process_id]
        if only_if_states is not None:
            # One snapshot: children created after a claim seen here as not yet made are
            # not visible to this DELETE either.
            sql += (
                f" AND EXISTS (SELECT 1 FROM {self._t} WHERE process_id = $1 "
                "AND state = ANY($2::text[]))"
            )
            args.append([ProcessState(s).value for s in only_if_states])

        async def op(conn: asyncpg.Connection) -> int:
            return row_count(await conn.execute(sql, *args))

        return await self._run(op)

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
        """See :meth:`Store.transition`.

        Concurrent calls of the same shape (same field names, same lease and run options)
        made in one turn of the event loop share one statement: one round trip for all of
        them. Each keeps its own compare-and-set; of calls on one record, one wins.
        """
        if self._pool is None:
            raise store_not_open()
        expected = check_edges(process_id, expected_states, to_state)
        check_runtime_fields(fields)
        guard = check_guard(process_id, expected_fields)
        target = ProcessState(to_state)
        increment, clear = transition_defaults(target, fields)
        names = tuple(sorted(fields))
        call = Call(
            process_id=process_id,
            expected=",".join(sorted(state.value for state in expected)),
            owner=expected_owner,
            target=target,
            now=self.clock.wall(),
            values=[encode_field(name, fields[name]) for name in names],
            run=None if run is None else run_values(run, to_utc, process_id=process_id),
            guard=guard,
        )
        key = (names, increment, clear, expected_owner is not None, run is not None, guard)
        record: ProcessRecord = await self._combined(("transition", key), call)
        return record

    async def _combined(self, key: tuple[Any, ...], item: Any) -> Any:
        """Queue ``item`` with the others of ``key`` made in this turn of the event loop;
        one statement serves them all on the next turn (see ``_flush``)."""
        loop = asyncio.get_running_loop()
        full_key = (loop, *key)
        future: asyncio.Future[Any] = loop.create_future()
        batch = self._pending.get(full_key)
        if batch is None:
            batch = self._pending[full_key] = []
            # Runs on the next loop turn, once every caller of this turn has joined. It
            # never fails on its own: every outcome goes to the callers' futures.
            flush = loop.create_task(self._flush(full_key, batch))
            self._flushing.add(flush)
            flush.add_done_callback(self._flushing.discard)
        batch.append((item, future))
        return await future

    async def _flush(
        self, full_key: tuple[Any, ...], batch: builtins.list[tuple[Any, asyncio.Future[Any]]]
    ) -> None:
        if self._pending.get(full_key) is batch:
            del self._pending[full_key]
        kind, key = full_key[1], full_key[2]
        items = [item for item, _ in batch]
        runner: Callable[..., Awaitable[Sequence[object]]] = (
            self._transition_batch if kind == "transition" else self._record_run_batch
        )
        try:
            outcomes = await self._run(lambda conn: runner(conn, key, items))
        except BaseException as exc:
            for _, future in batch:
                if not future.done():
                    future.set_exception(
                        StoreError("the store was closed during the call")
                        if isinstance(exc, asyncio.CancelledError)
                        else exc
                    )
            if isinstance(exc, asyncio.CancelledError):
                raise
            return
        for (_, future), outcome in zip(batch, outcomes, strict=True):
            if future.done():  # the caller gave up; the write stands
                continue
            if isinstance(outcome, BaseException):
                future.set_exception(outcome)
            else:
                future.set_result(outcome)

    def _batch_sql(self, key: tuple[Any, ...]) -> str:
        sql = self._transition_sql.get(key)
        if sql is not None:
            return sql
        names, increment, clear, with_owner, with_run, guard = key
        columns = ["ord", "pid", "expected", "owner", "target", "now"]
        types = ["int4", "text", "text", "text", "text", "timestamptz"]
        sets = ["state = v.target", "updated_at = v.now"]
        for i, name in enumerate(names):
            columns.append(f"f{i}")
            types.append(FIELD_TYPES[name])
            cast = "::jsonb" if name in JSON_TEXT_FIELDS else ""
            sets.append(f"{name} = v.f{i}{cast}")
        sets.extend(implied_sets(increment, clear, alias="t."))
        inserted: builtins.list[str] = []
        if with_run:
            for i, kind in enumerate(RUN_TYPES):
                columns.append(f"r{i}")
                types.append("text" if kind == "jsonb" else kind)
                inserted.append(f"v.r{i}::jsonb" if kind == "jsonb" else f"v.r{i}")
            inserted[-1] = f"COALESCE({inserted[-1]}, upd.run_number)"
        arrays = ", ".join(f"${i}::{kind}[]" for i, kind in enumerate(types, start=1))
        owner = " AND t.lease_owner = v.owner" if with_owner else ""
        owner += guard_sql(guard, alias="t.")
        sql = (
            f"WITH v AS (SELECT * FROM unnest({arrays}) AS v({', '.join(columns)})), "
            f"upd AS (UPDATE {self._t} AS t SET {', '.join(sets)} FROM v "
            "WHERE t.process_id = v.pid AND t.state = ANY(string_to_array(v.expected, ','))"
            f"{owner} RETURNING v.ord AS ord, {', '.join('t.' + c for c in PROCESS_COLUMNS)})"
        )
        if with_run:
            sql += (
                f", ins AS (INSERT INTO {self._runs} ({', '.join(RUN_COLUMNS[1:])}) "
                f"SELECT {', '.join(inserted)} FROM upd JOIN v ON v.ord = upd.ord)"
            )
        sql += " SELECT * FROM upd"
        self._transition_sql[key] = sql
        return sql

    def _single_sql(self, key: tuple[Any, ...]) -> str:
        sql = self._single_sql_cache.get(key)
        if sql is not None:
            return sql
        names, increment, clear, with_owner, with_run, guard = key
        sets = ["state = $4", "updated_at = $5"]
        sets.extend(f"{name} = ${i}" for i, name in enumerate(names, start=6))
        sets.extend(implied_sets(increment, clear))
        owner = " AND lease_owner = $3" if with_owner else " AND $3::text IS NULL"
        owner += guard_sql(guard)
        sql = (
            f"UPDATE {self._t} SET {', '.join(sets)} WHERE process_id = $1 "
            f"AND state = ANY(string_to_array($2, ','))"
            f"{owner} RETURNING 0, {COLS}"
        )
        if with_run:
            # A data-modifying CTE: the run is inserted only when the update matched.
            first = 6 + len(names)
            values = [f"${i}::{kind}" for i, kind in enumerate(RUN_TYPES, start=first)]
            values[-1] = f"COALESCE({values[-1]}, upd.run_number)"
            sql = (
                f"WITH upd AS ({sql}), ins AS (INSERT INTO {self._runs} "
                f"({', '.join(RUN_COLUMNS[1:])}) SELECT {', '.join(values)} FROM upd) "
                "SELECT * FROM upd"
            )
        self._single_sql_cache[key] = sql
        return sql

    async def _transition_batch(
        self, conn: asyncpg.Connection, key: tuple[Any, ...], calls: builtins.list[Call]
    ) -> builtins.list[ProcessRecord | BaseException]:
        """One statement for many compare-and-sets; an outcome per call, in order."""
        names = key[0]
        if len(calls) == 1:
            # Alone, a plain UPDATE by primary key is cheaper than the unnest join.
            call = calls[0]
            row = await conn.fetchrow(
                self._single_sql(key),
                call.process_id,
                call.expected,
                call.owner,
                call.target.value,
                call.now,
                *call.values,
                *(call.run or ()),
            )
            if row is not None:
                return [record_from_row(tuple(row)[1:])]
            return await self._refusals(conn, calls, {})
        columns: builtins.list[builtins.list[Any]] = [
            list(range(len(calls))),
            [c.process_id for c in calls],
            [c.expected for c in calls],
            [c.owner for c in calls],
            [c.target.value for c in calls],
            [c.now for c in calls],
        ]
        columns.extend([c.values[i] for c in calls] for i in range(len(names)))
        if key[4]:
            columns.extend(
                [c.run[i] for c in calls if c.run is not None] for i in range(len(RUN_TYPES))
            )
        rows = await conn.fetch(self._batch_sql(key), *columns)
        won = {row[0]: record_from_row(tuple(row)[1:]) for row in rows}
        if len(won) == len(calls):
            return [won[i] for i in range(len(calls))]
        return await self._refusals(conn, calls, won)

    async def _refusals(
        self,
        conn: asyncpg.Connection,
        calls: builtins.list[Call],
        won: dict[int, ProcessRecord],
    ) -> builtins.list[ProcessRecord | BaseException]:
        """Outcomes in call order: the records won, and why each other call lost."""
        lost = [c.process_id for i, c in enumerate(calls) if i not in won]
        found = {
            row[0]: (row[1], row[2])
            for row in await conn.fetch(
                f"SELECT process_id, state, lease_owner FROM {self._t} "
                "WHERE process_id = ANY($1::text[])",
                lost,
            )
        }
        outcomes: builtins.list[ProcessRecord | BaseException] = []
        for i, call in enumerate(calls):
            if i in won:
                outcomes.append(won[i])
            elif call.process_id not in found:
                outcomes.append(ProcessNotFound(call.process_id))
            else:
                state, lease_owner = found[call.process_id]
                outcomes.append(
                    transition_refused(
                        call.process_id,
                        state,
                        call.target,
                        call.owner,
                        lease_owner,
                        guard=call.guard,
                        expected=call.expected.split(","),
                    )
                )
        return outcomes

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
        now = self.clock.wall()
        if log_entries:
            new_log = json_dumps(log_to_json(log_entries), "log data")
            sql = (
                f"UPDATE {self._t} SET progress_percent = $2, progress_message = $3, "
                f"updated_at = $4, log = {_appended_log('$5', '$6')} WHERE process_id = $1"
            )
            args: tuple[Any, ...] = (process_id, percent, message, now, new_log, max_log)
        else:
            sql = (
                f"UPDATE {self._t} SET progress_percent = $2, progress_message = $3, "
                "updated_at = $4 WHERE process_id = $1"
            )
            args = (process_id, percent, message, now)
        if expected_owner is not None:
            sql += f" AND lease_owner = ${len(args) + 1}"
            args = (*args, expected_owner)

        async def op(conn: asyncpg.Connection) -> None:
            if row_count(await conn.execute(sql, *args)) == 1:
                return
            holder = await conn.fetchrow(
                f"SELECT lease_owner FROM {self._t} WHERE process_id = $1", process_id
            )
            if holder is None or expected_owner is None:
                raise ProcessNotFound(process_id)
            raise progress_refused(process_id, expected_owner, holder[0])

        await self._run(op)

    async def append_log(
        self, process_id: str, log_entries: Sequence[LogEntry], max_log: int = 1000
    ) -> None:
        """See :meth:`Store.append_log`."""
        new_log = json_dumps(log_to_json(log_entries), "log data")
        sql = (
            f"UPDATE {self._t} SET updated_at = $2, log = {_appended_log('$3', '$4')} "
            "WHERE process_id = $1"
        )
        args = (process_id, self.clock.wall(), new_log, max_log)

        async def op(conn: asyncpg.Connection) -> None:
            if row_count(await conn.execute(sql, *args)) != 1:
                raise ProcessNotFound(process_id)

        await self._run(op)

    async def mark_cron_tick(self, process_id: str, tick: datetime) -> bool:
        """See :meth:`Store.mark_cron_tick`."""
        sql = (
            f"UPDATE {self._t} SET last_cron_tick = $2, updated_at = $3 WHERE process_id = $1 "
            "AND (last_cron_tick IS NULL OR last_cron_tick < $2)"
        )
        args = (process_id, to_utc(tick), self.clock.wall())

        async def op(conn: asyncpg.Connection) -> bool:
            if row_count(await conn.execute(sql, *args)) == 1:
                return True
            if await conn.fetchval(f"SELECT 1 FROM {self._t} WHERE process_id = $1", process_id):
                return False
            raise ProcessNotFound(process_id)

        return await self._run(op)

    # -- history ----------------------------------------------------------------------

    async def record_run(self, run: RunRecord) -> RunRecord:
        """See :meth:`Store.record_run`. Concurrent calls share one statement."""
        if self._pool is None:
            raise store_not_open()
        recorded: RunRecord = await self._combined(("record_run", ()), run_values(run, to_utc))
        return recorded

    async def _record_run_batch(
        self,
        conn: asyncpg.Connection,
        key: tuple[Any, ...],
        rows: builtins.list[tuple[Any, ...]],
    ) -> builtins.list[RunRecord | BaseException]:
        columns = RUN_COLUMNS[1:]
        if len(rows) == 1:
            placeholders = ", ".join(f"${i}" for i in range(1, len(columns) + 1))
            sql = (
                f"INSERT INTO {self._runs} ({', '.join(columns)}) VALUES ({placeholders}) "
                f"RETURNING {', '.join(RUN_COLUMNS)}"
            )
            return [run_from_row(await conn.fetchrow(sql, *rows[0]))]
        types = ["text" if kind == "jsonb" else kind for kind in RUN_TYPES]
        arrays = ", ".join(f"${i}::{kind}[]" for i, kind in enumerate(types, start=1))
        selected = ", ".join(
            f"u.{c}::jsonb" if kind == "jsonb" else f"u.{c}"
            for c, kind in zip(columns, RUN_TYPES, strict=True)
        )
        # Rows are inserted, and numbered by the idx sequence, in the order unnest yields
        # them: sorting what comes back by idx puts it back in call order.
        sql = (
            f"INSERT INTO {self._runs} ({', '.join(columns)}) SELECT {selected} FROM "
            f"unnest({arrays}) AS u({', '.join(columns)}) RETURNING {', '.join(RUN_COLUMNS)}"
        )
        fetched = await conn.fetch(sql, *([row[i] for row in rows] for i in range(len(columns))))
        return [run_from_row(row) for row in sorted(fetched, key=lambda r: r[0])]

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
        sql, args = history_statement(
            self._runs,
            to_utc,
            numbered=True,
            process_id=process_id,
            name=name,
            status=status,
            since=since,
            limit=limit,
            until=until,
            before=before,
        )

        async def op(conn: asyncpg.Connection) -> builtins.list[RunRecord]:
            return [run_from_row(row) for row in await conn.fetch(sql, *args)]

        return await self._run(op)
