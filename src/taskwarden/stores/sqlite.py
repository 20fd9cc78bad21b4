"""The embedded default store: one SQLite file, WAL, safe for several processes on one machine.

All database work runs in one dedicated thread per store, off the event loop
(:class:`~taskwarden.stores.sqlite_support.DatabaseThread`): calls queue up there and run in
batches, one transaction each (``BEGIN IMMEDIATE`` when the batch writes), so a burst of
concurrent verbs costs one commit and one wake-up of the event loop instead of one each.
Each verb stays atomic on its own: its compare is in the same statement (or the same write
transaction) as its change, and a transaction holding the write lock excludes every other
connection to the file, in this process or another.
"""

from __future__ import annotations

import builtins
import logging
import os
import sqlite3
from collections.abc import Collection, Mapping, Sequence
from datetime import datetime
from typing import Any

from taskwarden.abc import Store
from taskwarden.clock import Clock, SystemClock
from taskwarden.errors import (
    ConfigurationError,
    InvalidDefinition,
    ProcessNotFound,
    SchemaError,
)
from taskwarden.model import OperationStatus, RunRecord
from taskwarden.processes import LogEntry, ProcessRecord, ProcessState
from taskwarden.stores.base import (
    RUN_COLUMNS,
    Guard,
    ServedIds,
    check_edges,
    check_guard,
    check_runtime_fields,
    child_refused,
    duplicate_process,
    encode_dt,
    guard_sql,
    implied_sets,
    json_dumps,
    json_loads,
    list_filters,
    load_migrations,
    log_to_json,
    pending_migrations,
    process_values,
    progress_refused,
    retry_transient_sync,
    run_values,
    table_names,
    transition_defaults,
    transition_refused,
)
from taskwarden.stores.sqlite_leases import _COLS, SQLiteLeases
from taskwarden.stores.sqlite_support import (
    ALONE,
    READ,
    WRITE,
    DatabaseThread,
    encode_field,
    is_transient,
    placeholders,
    record_from_row,
    run_from_row,
)
from taskwarden.stores.statements import (
    SqlWhere,
    count_statement,
    definition_update,
    history_statement,
    list_statement,
)

__all__ = ["SQLiteStore"]


logger = logging.getLogger("taskwarden.stores.sqlite")


class SQLiteStore(SQLiteLeases, Store):
    """Process records and history in one SQLite file (``sqlite:///path``).

    Args:
        path: the database file (created if missing), or ``":memory:"``.
        prefix: starts every table name.
        clock: decides lease expiry and ``updated_at`` (default: the system clock).
        busy_timeout: seconds a writer waits for another connection's lock before a
            transient error (retried a few times, then StoreError).
        synchronous: SQLite's ``synchronous`` pragma. ``NORMAL`` (the default) in WAL mode
            never corrupts the file but may lose the last commits on power loss; ``FULL``
            trades speed for that too.
        max_batch: at most this many queued calls share one transaction.
    """

    executes_in_order = True  # one database thread takes the calls in call order

    def __init__(
        self,
        path: str | os.PathLike[str] = "./taskwarden.db",
        *,
        prefix: str = "taskwarden",
        clock: Clock | None = None,
        busy_timeout: float = 10.0,
        synchronous: str = "NORMAL",
        max_batch: int = 256,
    ) -> None:
        self.path = os.fspath(path)
        self.prefix = prefix
        self.clock: Clock = clock or SystemClock()
        self._t, self._runs, self._version = table_names(prefix)
        self._busy_timeout = busy_timeout
        if synchronous.upper() not in ("OFF", "NORMAL", "FULL", "EXTRA"):
            raise ConfigurationError(
                f"synchronous must be OFF, NORMAL, FULL or EXTRA: {synchronous!r}"
            )
        self._synchronous = synchronous.upper()
        self._max_batch = max(1, max_batch)
        self._db: DatabaseThread | None = None
        self._transition_sql: dict[tuple[Any, ...], str] = {}
        self._served = ServedIds()
        # The ids the last claim scoped to, kept in a TEMP table of this store's connection
        # (its primary key answers the claim's IN at once; a bound JSON list was parsed
        # and built into a b-tree at every claim: 5 ms a claim at 10,000 ids).
        self._served_table = f"temp.{prefix}_served"
        self._served_loaded: tuple[str, ...] | None = None
        # Unleased and expired-lease candidates are found separately, each through its own
        # index, so rows other workers hold are never scanned (a claim stays cheap however
        # many scheduled processes are leased).
        self._claim_sql, self._claim_served_sql = (
            "SELECT process_id FROM ("
            f"SELECT * FROM (SELECT process_id, updated_at FROM {self._t} "
            f"INDEXED BY {self._t}_claim WHERE state = 'scheduled' AND lease_owner IS NULL "
            f"AND (next_attempt_at IS NULL OR next_attempt_at <= ?)"
            f"{served} ORDER BY updated_at, process_id LIMIT ?) "
            f"UNION ALL SELECT * FROM (SELECT process_id, updated_at FROM {self._t} "
            f"INDEXED BY {self._t}_lease WHERE lease_owner IS NOT NULL "
            f"AND lease_expires_at <= ? AND state = 'scheduled'{served} "
            "ORDER BY updated_at, process_id LIMIT ?)"
            ") ORDER BY updated_at, process_id LIMIT ?"
            for served in ("", f" AND process_id IN (SELECT process_id FROM {self._served_table})")
        )
        self._workers = f"{prefix}_workers"
        self._insert_run_sql = (
            f"INSERT INTO {self._runs} ({', '.join(RUN_COLUMNS[1:])}) "
            f"VALUES ({placeholders(len(RUN_COLUMNS) - 1)})"
        )

    def __repr__(self) -> str:
        return f"SQLiteStore(path={self.path!r}, prefix={self.prefix!r})"

    async def open(self) -> None:
        """See :meth:`Store.open`: starts the thread, connects, enables WAL, migrates."""
        if self._db is not None:
            return
        db = DatabaseThread(describe=repr(self.path), max_batch=self._max_batch)
        db.start()
        self._db = db
        self._served_loaded = None
        try:
            await db.submit(ALONE, self._setup, db)
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        """See :meth:`Store.close`: finishes what is queued, closes, stops the thread."""
        db, self._db = self._db, None
        if db is not None:
            await db.stop(lambda: _close(db))

    def _setup(self, db: DatabaseThread) -> None:
        def connect() -> sqlite3.Connection:
            conn = sqlite3.connect(
                self.path,
                timeout=self._busy_timeout,
                isolation_level=None,
                check_same_thread=False,
                cached_statements=512,
            )
            try:
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute(f"PRAGMA synchronous={self._synchronous}")
                conn.execute(f"PRAGMA busy_timeout={int(self._busy_timeout * 1000)}")
                self._migrate(conn)
                conn.execute(
                    f"CREATE TEMP TABLE IF NOT EXISTS {self._served_table} "
                    "(process_id TEXT PRIMARY KEY) WITHOUT ROWID"
                )
            except BaseException:
                conn.close()
                raise
            return conn

        db.conn = retry_transient_sync(connect, is_transient=is_transient)

    def _migrate(self, conn: sqlite3.Connection) -> None:
        migrations = load_migrations("sqlite", self.prefix)
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute(
                f"CREATE TABLE IF NOT EXISTS {self._version} "
                "(version INTEGER PRIMARY KEY, applied_at TEXT NOT NULL)"
            )
            current = conn.execute(f"SELECT max(version) FROM {self._version}").fetchone()[0] or 0
            pending = pending_migrations(
                migrations, current, database=repr(self.path), prefix=self.prefix
            )
            for version, statements in pending:
                logger.info("migrating %s to schema version %d", self.path, version)
                for statement in statements:
                    conn.execute(statement)
                conn.execute(
                    f"INSERT INTO {self._version} (version, applied_at) VALUES (?, ?)",
                    (version, encode_dt(self.clock.wall())),
                )
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            conn.execute("ROLLBACK")
            if is_transient(exc):
                raise
            raise SchemaError(f"migrating {self.path!r} failed: {exc}") from exc
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    # -- definitions ------------------------------------------------------------------

    async def create(
        self, record: ProcessRecord, *, parent_owner: str | None = None
    ) -> ProcessRecord:
        """See :meth:`Store.create`."""
        values = process_values(record, encode_field, encode_dt(self.clock.wall()))
        fence = None if parent_owner is None else (record.parent_id, parent_owner)
        result: ProcessRecord = await self._submit(
            WRITE, self._create, record.process_id, values, fence
        )
        return result

    def _create(
        self,
        conn: sqlite3.Connection,
        process_id: str,
        values: list[Any],
        fence: tuple[str | None, str] | None = None,
    ) -> ProcessRecord:
        if fence is not None:  # in the write transaction: no one else writes meanwhile
            parent_id, expected = fence
            found = conn.execute(
                f"SELECT lease_owner FROM {self._t} WHERE process_id = ?", (parent_id,)
            ).fetchone()
            owner = None if found is None else found[0]
            if owner != expected:
                raise child_refused(process_id, parent_id, expected, owner)
        try:
            row = conn.execute(
                f"INSERT INTO {self._t} ({_COLS}) VALUES ({placeholders(len(values))}) "
                f"RETURNING {_COLS}",
                values,
            ).fetchone()
        except sqlite3.IntegrityError as exc:
            if "UNIQUE" not in str(exc):
                raise InvalidDefinition(f"process {process_id!r} cannot be stored: {exc}") from exc
            raise duplicate_process(process_id) from None
        return record_from_row(row)

    async def update_definition(self, process_id: str, /, **fields: Any) -> ProcessRecord:
        """See :meth:`Store.update_definition`."""
        sql, args = definition_update(
            self._t, process_id, fields, self.clock.wall(), encode_field, numbered=False
        )
        result: ProcessRecord = await self._submit(WRITE, self._update_one, sql, args, process_id)
        return result

    def _update_one(
        self, conn: sqlite3.Connection, sql: str, args: Sequence[Any], process_id: str
    ) -> ProcessRecord:
        row = conn.execute(sql, args).fetchone()
        if row is None:
            raise ProcessNotFound(process_id)
        return record_from_row(row)

    # -- queries ----------------------------------------------------------------------

    async def get(self, process_id: str) -> ProcessRecord | None:
        """See :meth:`Store.get`."""
        result: ProcessRecord | None = await self._submit(READ, self._get, process_id)
        return result

    def _get(self, conn: sqlite3.Connection, process_id: str) -> ProcessRecord | None:
        row = conn.execute(
            f"SELECT {_COLS} FROM {self._t} WHERE process_id = ?", (process_id,)
        ).fetchone()
        return None if row is None else record_from_row(row)

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
            f"SELECT {_COLS} FROM {self._t}",
            root_id=root_id,
            parent_id=parent_id,
            after=after,
            limit=limit,
            roots_only=roots_only,
            search=search,
        )
        result: builtins.list[ProcessRecord] = await self._submit(
            READ, self._select, sql, where.args
        )
        return result

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
        found: int = await self._submit(READ, self._count, sql, where.args)
        return found

    async def get_many(self, process_ids: Collection[str]) -> dict[str, ProcessRecord]:
        """See :meth:`Store.get_many`."""
        ids = sorted(set(process_ids))
        found: dict[str, ProcessRecord] = {}
        for start in range(0, len(ids), 500):  # under SQLite's limit on placeholders
            chunk = ids[start : start + 500]
            sql = f"SELECT {_COLS} FROM {self._t} WHERE process_id IN ({placeholders(len(chunk))})"
            records: builtins.list[ProcessRecord] = await self._submit(
                READ, self._select, sql, chunk
            )
            found.update((r.process_id, r) for r in records)
        return found

    async def changed_since(self, since: datetime) -> builtins.list[ProcessRecord]:
        """See :meth:`Store.changed_since`."""
        sql = f"SELECT {_COLS} FROM {self._t} WHERE updated_at >= ? ORDER BY updated_at, process_id"
        result: builtins.list[ProcessRecord] = await self._submit(
            READ, self._select, sql, [encode_dt(since)]
        )
        return result

    @staticmethod
    def _count(conn: sqlite3.Connection, sql: str, args: Sequence[Any]) -> int:
        return int(conn.execute(sql, args).fetchone()[0])

    def _list_where(
        self, states: frozenset[ProcessState] | None, wanted: Mapping[str, Any]
    ) -> SqlWhere | None:
        """The state and metadata clauses of a list or count; None when nothing can match."""
        where = SqlWhere(numbered=False)
        if states is not None:
            if not states:
                return None
            values = sorted(s.value for s in states)
            where.add(f"state IN ({', '.join(map(where.arg, values))})")
        for key, value in wanted.items():
            if isinstance(value, bool):
                kinds, value = "('true')" if value else "('false')", None
            elif isinstance(value, int | float):
                kinds = "('integer', 'real')"
            else:
                kinds = "('text')"
            key_arg = where.arg(key)  # the key's placeholder comes before the value's
            test = "" if value is None else f" AND value = {where.arg(value)}"
            where.add(
                f"EXISTS (SELECT 1 FROM json_each({self._t}.metadata) "
                f"WHERE key = {key_arg} AND type IN {kinds}{test})"
            )
        return where

    async def children(self, process_id: str) -> builtins.list[ProcessRecord]:
        """See :meth:`Store.children`."""
        sql = f"SELECT {_COLS} FROM {self._t} WHERE parent_id = ? ORDER BY sort_order, process_id"
        result: builtins.list[ProcessRecord] = await self._submit(
            READ, self._select, sql, (process_id,)
        )
        return result

    # -- deletion ---------------------------------------------------------------------

    def _subtree_sql(self) -> str:
        # The statement must start with DELETE for sqlite3 to report its rowcount.
        return (
            f"DELETE FROM {self._t} WHERE process_id IN (WITH RECURSIVE sub(id) AS "
            f"(SELECT process_id FROM {self._t} WHERE parent_id = ? UNION "
            f"SELECT t.process_id FROM {self._t} AS t JOIN sub ON t.parent_id = sub.id) "
            "SELECT id FROM sub)"
        )

    async def delete(
        self,
        process_id: str,
        *,
        only_if_states: Collection[ProcessState] | None = None,
        descendants: bool = False,
    ) -> bool:
        """See :meth:`Store.delete`."""
        sql = f"DELETE FROM {self._t} WHERE process_id = ?"
        args: builtins.list[Any] = [process_id]
        if only_if_states is not None:
            states = sorted(ProcessState(s).value for s in only_if_states)
            if not states:
                return False
            sql += f" AND state IN ({placeholders(len(states))})"
            args.extend(states)
        result: bool = await self._submit(WRITE, self._delete, sql, args, descendants)
        return result

    def _delete(
        self, conn: sqlite3.Connection, sql: str, args: Sequence[Any], descendants: bool
    ) -> bool:
        if conn.execute(sql, args).rowcount != 1:
            return False
        if descendants:
            conn.execute(self._subtree_sql(), (args[0],))
        return True

    async def delete_descendants(
        self, process_id: str, *, only_if_states: Collection[ProcessState] | None = None
    ) -> int:
        """See :meth:`Store.delete_descendants`."""
        states = None if only_if_states is None else [ProcessState(s).value for s in only_if_states]
        result: int = await self._submit(WRITE, self._delete_descendants, process_id, states)
        return result

    def _delete_descendants(
        self, conn: sqlite3.Connection, process_id: str, states: builtins.list[str] | None
    ) -> int:
        if states is not None:
            # The batch's transaction holds the write lock: the state cannot move under us.
            row = conn.execute(
                f"SELECT state FROM {self._t} WHERE process_id = ?", (process_id,)
            ).fetchone()
            if row is None or row[0] not in states:
                return 0
        count: int = conn.execute(self._subtree_sql(), (process_id,)).rowcount
        return count

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
        expected = check_edges(process_id, expected_states, to_state)
        check_runtime_fields(fields)
        guard = check_guard(process_id, expected_fields)
        target = ProcessState(to_state)
        increment, clear = transition_defaults(target, fields)
        names = sorted(fields)
        key = (tuple(names), len(expected), increment, clear, expected_owner is not None, guard)
        sql = self._transition_sql.get(key)
        if sql is None:
            sets = ["state = ?", "updated_at = ?", *(f"{name} = ?" for name in names)]
            sets.extend(implied_sets(increment, clear))
            sql = (
                f"UPDATE {self._t} SET {', '.join(sets)} WHERE process_id = ? "
                f"AND state IN ({placeholders(len(expected))})"
                f"{' AND lease_owner = ?' if expected_owner is not None else ''}"
                f"{guard_sql(guard, true='1', false='0')} RETURNING {_COLS}"
            )
            self._transition_sql[key] = sql
        args = [
            target.value,
            encode_dt(self.clock.wall()),
            *(encode_field(name, fields[name]) for name in names),
            process_id,
            *(state.value for state in expected),
        ]
        if expected_owner is not None:
            args.append(expected_owner)
        history = None if run is None else run_values(run, encode_dt, process_id=process_id)
        refusal = (guard, expected)
        result: ProcessRecord = await self._submit(
            WRITE, self._transition, sql, args, process_id, target, expected_owner, history, refusal
        )
        return result

    def _transition(
        self,
        conn: sqlite3.Connection,
        sql: str,
        args: Sequence[Any],
        process_id: str,
        target: ProcessState,
        owner: str | None,
        history: tuple[Any, ...] | None,
        refusal: tuple[Guard, frozenset[ProcessState]] = ((), frozenset()),
    ) -> ProcessRecord:
        row = conn.execute(sql, args).fetchone()
        if row is not None:
            if history is not None:
                if history[-1] is None:
                    history = (*history[:-1], row[26])  # the run number just assigned
                conn.execute(self._insert_run_sql, history)
            return record_from_row(row)
        found = conn.execute(
            f"SELECT state, lease_owner FROM {self._t} WHERE process_id = ?", (process_id,)
        ).fetchone()
        if found is None:
            raise ProcessNotFound(process_id)
        state, lease_owner = found
        guard, expected = refusal
        raise transition_refused(
            process_id, state, target, owner, lease_owner, guard=guard, expected=expected
        )

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
        now = encode_dt(self.clock.wall())
        new_log = json_dumps(log_to_json(log_entries), "log data") if log_entries else None
        await self._submit(
            WRITE,
            self._update_progress,
            process_id,
            percent,
            message,
            new_log,
            len(log_entries),
            max_log,
            now,
            expected_owner,
        )

    async def append_log(
        self, process_id: str, log_entries: Sequence[LogEntry], max_log: int = 1000
    ) -> None:
        """See :meth:`Store.append_log`."""
        now = encode_dt(self.clock.wall())
        new_log = json_dumps(log_to_json(log_entries), "log data")
        args = (process_id, None, None, new_log, len(log_entries), max_log, now, None, True)
        await self._submit(WRITE, self._update_progress, *args)

    def _update_progress(
        self,
        conn: sqlite3.Connection,
        process_id: str,
        percent: float | None,
        message: str | None,
        new_log: str | None,
        new_count: int,
        max_log: int,
        now: str,
        owner: str | None,
        keep_progress: bool = False,
    ) -> None:
        if new_log is None:
            fence = "" if owner is None else " AND lease_owner = ?"
            changed = conn.execute(
                f"UPDATE {self._t} SET progress_percent = ?, progress_message = ?, "
                f"updated_at = ? WHERE process_id = ?{fence}",
                (percent, message, now, process_id) + (() if owner is None else (owner,)),
            ).rowcount
            if changed != 1:
                self._progress_refused(conn, process_id, owner)
            return
        row = conn.execute(
            f"SELECT json_array_length(log), log, lease_owner FROM {self._t} WHERE process_id = ?",
            (process_id,),
        ).fetchone()
        if row is None:
            raise ProcessNotFound(process_id)
        count, old, holder = row
        if owner is not None and holder != owner:
            raise progress_refused(process_id, owner, holder)
        if max_log <= 0:
            log = "[]"
        elif count + new_count <= max_log:
            # Splice the JSON texts: no need to parse a log that stays within bounds.
            log = new_log if count == 0 else f"{old[:-1]},{new_log[1:]}"
        else:
            merged = (json_loads(old) + json_loads(new_log))[-max_log:]
            log = json_dumps(merged, "log data")
        if keep_progress:
            conn.execute(
                f"UPDATE {self._t} SET log = ?, updated_at = ? WHERE process_id = ?",
                (log, now, process_id),
            )
            return
        conn.execute(
            f"UPDATE {self._t} SET progress_percent = ?, progress_message = ?, log = ?, "
            "updated_at = ? WHERE process_id = ?",
            (percent, message, log, now, process_id),
        )

    def _progress_refused(
        self, conn: sqlite3.Connection, process_id: str, owner: str | None
    ) -> None:
        row = conn.execute(
            f"SELECT lease_owner FROM {self._t} WHERE process_id = ?", (process_id,)
        ).fetchone()
        if row is None or owner is None:
            raise ProcessNotFound(process_id)
        raise progress_refused(process_id, owner, row[0])

    async def mark_cron_tick(self, process_id: str, tick: datetime) -> bool:
        """See :meth:`Store.mark_cron_tick`."""
        result: bool = await self._submit(
            WRITE,
            self._mark_cron_tick,
            process_id,
            encode_dt(tick),
            encode_dt(self.clock.wall()),
        )
        return result

    def _mark_cron_tick(
        self, conn: sqlite3.Connection, process_id: str, tick: str, now: str
    ) -> bool:
        changed = conn.execute(
            f"UPDATE {self._t} SET last_cron_tick = ?, updated_at = ? WHERE process_id = ? "
            "AND (last_cron_tick IS NULL OR last_cron_tick < ?)",
            (tick, now, process_id, tick),
        ).rowcount
        if changed == 1:
            return True
        if conn.execute(f"SELECT 1 FROM {self._t} WHERE process_id = ?", (process_id,)).fetchone():
            return False
        raise ProcessNotFound(process_id)

    # -- history ----------------------------------------------------------------------

    async def record_run(self, run: RunRecord) -> RunRecord:
        """See :meth:`Store.record_run`."""
        values = run_values(run, encode_dt)
        result: RunRecord = await self._submit(WRITE, self._record_run, values)
        return result

    def _record_run(self, conn: sqlite3.Connection, values: tuple[Any, ...]) -> RunRecord:
        row = conn.execute(
            f"{self._insert_run_sql} RETURNING {', '.join(RUN_COLUMNS)}", values
        ).fetchone()
        return run_from_row(row)

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
            encode_dt,
            numbered=False,
            process_id=process_id,
            name=name,
            status=status,
            since=since,
            limit=limit,
            until=until,
            before=before,
        )
        result: builtins.list[RunRecord] = await self._submit(READ, self._history, sql, args)
        return result

    def _history(
        self, conn: sqlite3.Connection, sql: str, args: Sequence[Any]
    ) -> builtins.list[RunRecord]:
        return [run_from_row(row) for row in conn.execute(sql, args)]


def _close(db: DatabaseThread) -> None:
    if db.conn is not None:
        db.conn.close()
        db.conn = None
