"""The embedded default store: one SQLite file, WAL, safe for several processes on one machine.

All database work runs in one dedicated thread per store, off the event loop. Calls queue
up there and the thread runs whatever is waiting as one batch in one transaction (``BEGIN
IMMEDIATE`` when the batch writes), so a burst of concurrent verbs costs one commit and one
wake-up of the event loop instead of one each. Each verb stays atomic on its own: its
compare is in the same statement (or the same write transaction) as its change, and a
transaction holding the write lock excludes every other connection to the file, in this
process or another. A verb refused with a domain error (``InvalidTransition``, ...) has
written nothing and does not disturb the others in its batch; a database error rolls the
batch back and each verb is then retried alone, so one bad call fails only itself.
"""

from __future__ import annotations

import asyncio
import builtins
import dataclasses
import json
import logging
import os
import queue
import sqlite3
import threading
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any, Final

from taskwarden.abc import Store
from taskwarden.clock import Clock, SystemClock
from taskwarden.errors import (
    ConfigurationError,
    InvalidDefinition,
    InvalidTransition,
    ProcessNotFound,
    SchemaError,
    StoreError,
    TaskwardenError,
)
from taskwarden.model import CancelationReason, OperationStatus, RunRecord
from taskwarden.processes import ACTIVE_STATES, LogEntry, ProcessRecord, ProcessState
from taskwarden.stores.base import (
    BOOL_FIELDS,
    JSON_FIELDS,
    PROCESS_COLUMNS,
    RUN_COLUMNS,
    TIME_FIELDS,
    check_definition_fields,
    check_edges,
    check_limit,
    check_metadata_filter,
    check_runtime_fields,
    encode_dt,
    json_dumps,
    load_migrations,
    log_to_json,
    parse_cursor,
    retry_transient_sync,
    run_values,
    state_filter,
    table_names,
    transition_defaults,
)

__all__ = ["SQLiteStore"]

logger = logging.getLogger("taskwarden.stores.sqlite")

_READ: Final = 0
_WRITE: Final = 1
_ALONE: Final = 2  # runs outside any batch transaction (set-up, shutdown)

_COLS = ", ".join(PROCESS_COLUMNS)
_ACTIVE = tuple(sorted(state.value for state in ACTIVE_STATES))
_MAX_PARAMS = 500  # stay well under SQLite's bound-parameter limit
_fromiso = datetime.fromisoformat
_json_loads = json.loads


def _loads(text: str) -> Any:
    # Most params, metadata and logs are empty; skipping the decoder for them is a
    # measurable share of a transition's cost.
    if text == "{}":
        return {}
    if text == "[]":
        return []
    return _json_loads(text)


def _dt(value: str | None) -> datetime | None:
    return None if value is None else _fromiso(value)


def _log(text: str) -> tuple[LogEntry, ...]:
    if text == "[]":
        return ()
    return tuple(
        LogEntry(
            timestamp=_fromiso(item["timestamp"]),
            level=item["level"],
            message=item["message"],
            data=item.get("data"),
        )
        for item in _loads(text)
    )


def _record(row: Sequence[Any]) -> ProcessRecord:
    """A row in PROCESS_COLUMNS order as a record."""
    return ProcessRecord(
        process_id=row[0],
        name=row[1],
        description=row[2],
        params=_loads(row[3]),
        metadata=_loads(row[4]),
        parent_id=row[5],
        root_id=row[6],
        depth=row[7],
        order=row[8],
        cancellable=bool(row[9]),
        adhoc=bool(row[10]),
        ephemeral=bool(row[11]),
        special=bool(row[12]),
        warning=row[13],
        schedule=row[14],
        state=ProcessState(row[15]),
        error=row[16],
        running_since=_dt(row[17]),
        done_at=_dt(row[18]),
        duration=row[19],
        failed_at=_dt(row[20]),
        stopped_at=_dt(row[21]),
        progress_percent=row[22],
        progress_message=row[23],
        log=_log(row[24]),
        created_at=_fromiso(row[25]),
        run_number=row[26],
        lease_owner=row[27],
        lease_expires_at=_dt(row[28]),
        last_cron_tick=_dt(row[29]),
        updated_at=_fromiso(row[30]),
        resumable=bool(row[31]),
    )


def _encode(field: str, value: Any) -> Any:
    """One field's value as SQLite stores it."""
    if value is None:
        return None
    if field in TIME_FIELDS:
        return encode_dt(value)
    if field in JSON_FIELDS:
        return json_dumps(value, field)
    if field == "log":
        return json_dumps(log_to_json(value), "log data")
    if field in BOOL_FIELDS:
        return 1 if value else 0
    if field == "state":
        return ProcessState(value).value
    return value


def _run_from_row(row: Sequence[Any]) -> RunRecord:
    return RunRecord(
        index=row[0],
        operation_id=row[1],
        name=row[2],
        kind=row[3],
        status=OperationStatus(row[4]),
        started_at=_fromiso(row[5]),
        ended_at=_dt(row[6]),
        duration=row[7],
        result=row[8],
        error=row[9],
        traceback=row[10],
        cancel_reason=None if row[11] is None else CancelationReason(row[11]),
        cancel_message=row[12],
        parent_id=row[13],
        metadata=_loads(row[14]),
        process_id=row[15],
        run_number=row[16],
    )


def _is_transient(exc: BaseException) -> bool:
    if not isinstance(exc, sqlite3.OperationalError):
        return False
    text = str(exc).lower()
    return "locked" in text or "busy" in text


def _placeholders(count: int) -> str:
    return ", ".join("?" * count)


def _chunks(items: Sequence[str]) -> Iterable[Sequence[str]]:
    for start in range(0, len(items), _MAX_PARAMS):
        yield items[start : start + _MAX_PARAMS]


@dataclasses.dataclass(slots=True)
class _Job:
    kind: int
    fn: Callable[..., Any]
    args: tuple[Any, ...]
    future: asyncio.Future[Any] | None
    loop: asyncio.AbstractEventLoop | None


def _settle(outcomes: list[tuple[asyncio.Future[Any], Any, BaseException | None]]) -> None:
    for future, result, error in outcomes:
        if future.done():  # the caller gave up (cancelled); the write stands
            continue
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)


class SQLiteStore(Store):
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
        self._queue: queue.SimpleQueue[_Job] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._conn: sqlite3.Connection | None = None
        self._stopping = False
        self._transition_sql: dict[tuple[Any, ...], str] = {}
        self._insert_run_sql = (
            f"INSERT INTO {self._runs} ({', '.join(RUN_COLUMNS[1:])}) "
            f"VALUES ({_placeholders(len(RUN_COLUMNS) - 1)})"
        )

    def __repr__(self) -> str:
        return f"SQLiteStore(path={self.path!r}, prefix={self.prefix!r})"

    # -- the database thread ----------------------------------------------------------

    def _submit(self, kind: int, fn: Callable[..., Any], *args: Any) -> asyncio.Future[Any]:
        if self._thread is None or self._stopping:
            raise StoreError("the store is not open: call await store.open() or use async with")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._queue.put(_Job(kind, fn, args, future, loop))
        return future

    def _serve(self) -> None:
        """The thread's loop: take what is queued, run it, hand the results back."""
        get, get_nowait = self._queue.get, self._queue.get_nowait
        while True:
            batch = [get()]
            while len(batch) < self._max_batch:
                try:
                    batch.append(get_nowait())
                except queue.Empty:
                    break
            stop = any(job.fn is _STOP for job in batch)
            try:
                outcomes = self._process(batch)
            except BaseException as exc:
                # Never let the thread die silently: every caller would wait forever.
                logger.exception("internal error in the SQLite store thread")
                error = StoreError(f"internal error in the SQLite store thread: {exc!r}")
                outcomes = [(job, None, error) for job in batch]
            self._deliver(outcomes)
            if stop:
                return

    def _process(self, batch: list[_Job]) -> list[tuple[_Job, Any, BaseException | None]]:
        outcomes: list[tuple[_Job, Any, BaseException | None]] = []
        group: list[_Job] = []
        stop = False
        for job in batch:
            if stop:
                outcomes.append((job, None, StoreError("the store was closed")))
            elif job.kind == _ALONE:
                outcomes.extend(self._run_group(group))
                group = []
                outcomes.append(self._run_alone(job))
                stop = job.fn is _STOP
            else:
                group.append(job)
        outcomes.extend(self._run_group(group))
        return outcomes

    def _deliver(self, outcomes: list[tuple[_Job, Any, BaseException | None]]) -> None:
        by_loop: dict[asyncio.AbstractEventLoop, list[Any]] = {}
        for job, result, error in outcomes:
            if job.future is not None and job.loop is not None:
                by_loop.setdefault(job.loop, []).append((job.future, result, error))
        for loop, items in by_loop.items():
            try:
                loop.call_soon_threadsafe(_settle, items)
            except RuntimeError:  # the loop is closed: nobody waits for these any more
                logger.debug("dropped %d store results for a closed event loop", len(items))

    def _wrap(self, exc: BaseException) -> BaseException:
        if isinstance(exc, sqlite3.Error):
            wrapped = StoreError(f"SQLite store {self.path!r} failed: {exc}")
            wrapped.__cause__ = exc
            return wrapped
        return exc

    def _run_alone(self, job: _Job) -> tuple[_Job, Any, BaseException | None]:
        try:
            return job, job.fn(*job.args), None
        except Exception as exc:
            return job, None, self._wrap(exc)

    def _run_group(self, jobs: list[_Job]) -> list[tuple[_Job, Any, BaseException | None]]:
        if not jobs:
            return []
        try:
            return retry_transient_sync(lambda: self._transaction(jobs), is_transient=_is_transient)
        except Exception as exc:
            if len(jobs) == 1:
                return [(jobs[0], None, self._wrap(exc))]
            # Isolate the culprit: every other call of the batch still gets its answer.
            return [outcome for job in jobs for outcome in self._run_group([job])]

    def _transaction(self, jobs: list[_Job]) -> list[tuple[_Job, Any, BaseException | None]]:
        conn = self._conn
        assert conn is not None
        writes = any(job.kind == _WRITE for job in jobs)
        conn.execute("BEGIN IMMEDIATE" if writes else "BEGIN")
        try:
            outcomes: list[tuple[_Job, Any, BaseException | None]] = []
            for job in jobs:
                try:
                    outcomes.append((job, job.fn(conn, *job.args), None))
                except TaskwardenError as exc:  # refused before writing anything
                    outcomes.append((job, None, exc))
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        return outcomes

    # -- life cycle -------------------------------------------------------------------

    async def open(self) -> None:
        """See :meth:`Store.open`: starts the thread, connects, enables WAL, migrates."""
        if self._thread is not None:
            return
        self._stopping = False
        self._queue = queue.SimpleQueue()
        thread = threading.Thread(
            target=self._serve, name=f"taskwarden-sqlite:{self.path}", daemon=True
        )
        thread.start()
        self._thread = thread
        try:
            await self._submit(_ALONE, self._setup)
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        """See :meth:`Store.close`: finishes what is queued, closes, stops the thread."""
        thread = self._thread
        if thread is None or self._stopping:
            return
        done = self._submit(_ALONE, _STOP, self)
        self._stopping = True
        try:
            await done
        finally:
            await asyncio.to_thread(thread.join)
            self._thread = None
            self._stopping = False

    def _setup(self) -> None:
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
            except BaseException:
                conn.close()
                raise
            return conn

        self._conn = retry_transient_sync(connect, is_transient=_is_transient)

    def _migrate(self, conn: sqlite3.Connection) -> None:
        migrations = load_migrations("sqlite", self.prefix)
        latest = migrations[-1][0]
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute(
                f"CREATE TABLE IF NOT EXISTS {self._version} "
                "(version INTEGER PRIMARY KEY, applied_at TEXT NOT NULL)"
            )
            current = conn.execute(f"SELECT max(version) FROM {self._version}").fetchone()[0] or 0
            if current > latest:
                raise SchemaError(
                    f"{self.path!r} has schema version {current} (prefix {self.prefix!r}), "
                    f"newer than this taskwarden knows ({latest}): upgrade taskwarden"
                )
            for version, statements in migrations:
                if version <= current:
                    continue
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
            if _is_transient(exc):
                raise
            raise SchemaError(f"migrating {self.path!r} failed: {exc}") from exc
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def _shutdown(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    # -- definitions ------------------------------------------------------------------

    async def create(self, record: ProcessRecord) -> ProcessRecord:
        """See :meth:`Store.create`."""
        values = [
            _encode(field, getattr(record, field))
            for field in (("order" if c == "sort_order" else c) for c in PROCESS_COLUMNS)
        ]
        values[PROCESS_COLUMNS.index("updated_at")] = encode_dt(self.clock.wall())
        result: ProcessRecord = await self._submit(_WRITE, self._create, record.process_id, values)
        return result

    def _create(
        self, conn: sqlite3.Connection, process_id: str, values: list[Any]
    ) -> ProcessRecord:
        try:
            row = conn.execute(
                f"INSERT INTO {self._t} ({_COLS}) VALUES ({_placeholders(len(values))}) "
                f"RETURNING {_COLS}",
                values,
            ).fetchone()
        except sqlite3.IntegrityError as exc:
            if "UNIQUE" not in str(exc):
                raise InvalidDefinition(f"process {process_id!r} cannot be stored: {exc}") from exc
            raise InvalidDefinition(
                f"a process with id {process_id!r} exists: pick another id, or "
                "update_definition() it"
            ) from None
        return _record(row)

    async def update_definition(self, process_id: str, /, **fields: Any) -> ProcessRecord:
        """See :meth:`Store.update_definition`."""
        check_definition_fields(fields)
        fields["updated_at"] = self.clock.wall()
        names = list(fields)
        values = [_encode(name, fields[name]) for name in names]
        sets = ", ".join(f"{'sort_order' if n == 'order' else n} = ?" for n in names)
        sql = f"UPDATE {self._t} SET {sets} WHERE process_id = ? RETURNING {_COLS}"
        result: ProcessRecord = await self._submit(
            _WRITE, self._update_one, sql, (*values, process_id), process_id
        )
        return result

    def _update_one(
        self, conn: sqlite3.Connection, sql: str, args: Sequence[Any], process_id: str
    ) -> ProcessRecord:
        row = conn.execute(sql, args).fetchone()
        if row is None:
            raise ProcessNotFound(process_id)
        return _record(row)

    # -- queries ----------------------------------------------------------------------

    async def get(self, process_id: str) -> ProcessRecord | None:
        """See :meth:`Store.get`."""
        result: ProcessRecord | None = await self._submit(_READ, self._get, process_id)
        return result

    def _get(self, conn: sqlite3.Connection, process_id: str) -> ProcessRecord | None:
        row = conn.execute(
            f"SELECT {_COLS} FROM {self._t} WHERE process_id = ?", (process_id,)
        ).fetchone()
        return None if row is None else _record(row)

    async def list(
        self,
        *,
        state: ProcessState | Collection[ProcessState] | None = None,
        root_id: str | None = None,
        parent_id: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        limit: int | None = None,
        cursor: str | None = None,
    ) -> builtins.list[ProcessRecord]:
        """See :meth:`Store.list`."""
        states = state_filter(state)
        wanted = check_metadata_filter(metadata)
        after = parse_cursor(cursor)
        check_limit(limit)
        where: builtins.list[str] = []
        args: builtins.list[Any] = []
        if states is not None:
            if not states:
                return []
            where.append(f"state IN ({_placeholders(len(states))})")
            args.extend(sorted(s.value for s in states))
        if root_id is not None:
            where.append("root_id = ?")
            args.append(root_id)
        if parent_id is not None:
            where.append("parent_id = ?")
            args.append(parent_id)
        for key, value in wanted.items():
            if isinstance(value, bool):
                kinds, value = "('true')" if value else "('false')", None
            elif isinstance(value, int | float):
                kinds = "('integer', 'real')"
            else:
                kinds = "('text')"
            test = "" if value is None else " AND value = ?"
            where.append(
                f"EXISTS (SELECT 1 FROM json_each({self._t}.metadata) "
                f"WHERE key = ? AND type IN {kinds}{test})"
            )
            args.append(key)
            if value is not None:
                args.append(value)
        if after is not None:
            where.append("(depth, sort_order, process_id) > (?, ?, ?)")
            args.extend(after)
        sql = f"SELECT {_COLS} FROM {self._t}"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY depth, sort_order, process_id"
        if limit is not None:
            sql += " LIMIT ?"
            args.append(limit)
        result: builtins.list[ProcessRecord] = await self._submit(_READ, self._select, sql, args)
        return result

    def _select(
        self, conn: sqlite3.Connection, sql: str, args: Sequence[Any]
    ) -> builtins.list[ProcessRecord]:
        return [_record(row) for row in conn.execute(sql, args)]

    async def children(self, process_id: str) -> builtins.list[ProcessRecord]:
        """See :meth:`Store.children`."""
        sql = f"SELECT {_COLS} FROM {self._t} WHERE parent_id = ? ORDER BY sort_order, process_id"
        result: builtins.list[ProcessRecord] = await self._submit(
            _READ, self._select, sql, (process_id,)
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
            sql += f" AND state IN ({_placeholders(len(states))})"
            args.extend(states)
        result: bool = await self._submit(_WRITE, self._delete, sql, args, descendants)
        return result

    def _delete(
        self, conn: sqlite3.Connection, sql: str, args: Sequence[Any], descendants: bool
    ) -> bool:
        if conn.execute(sql, args).rowcount != 1:
            return False
        if descendants:
            conn.execute(self._subtree_sql(), (args[0],))
        return True

    async def delete_descendants(self, process_id: str) -> int:
        """See :meth:`Store.delete_descendants`."""
        result: int = await self._submit(_WRITE, self._delete_descendants, process_id)
        return result

    def _delete_descendants(self, conn: sqlite3.Connection, process_id: str) -> int:
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
        run: RunRecord | None = None,
        **fields: Any,
    ) -> ProcessRecord:
        """See :meth:`Store.transition`."""
        expected = check_edges(process_id, expected_states, to_state)
        check_runtime_fields(fields)
        target = ProcessState(to_state)
        increment, clear = transition_defaults(target, fields)
        names = sorted(fields)
        key = (tuple(names), len(expected), increment, clear, expected_owner is not None)
        sql = self._transition_sql.get(key)
        if sql is None:
            sets = ["state = ?", "updated_at = ?", *(f"{name} = ?" for name in names)]
            if increment:
                sets.append("run_number = run_number + 1")
            if clear:
                sets.append("lease_owner = NULL, lease_expires_at = NULL")
            sql = (
                f"UPDATE {self._t} SET {', '.join(sets)} WHERE process_id = ? "
                f"AND state IN ({_placeholders(len(expected))})"
                f"{' AND lease_owner = ?' if expected_owner is not None else ''} "
                f"RETURNING {_COLS}"
            )
            self._transition_sql[key] = sql
        args = [
            target.value,
            encode_dt(self.clock.wall()),
            *(_encode(name, fields[name]) for name in names),
            process_id,
            *(state.value for state in expected),
        ]
        if expected_owner is not None:
            args.append(expected_owner)
        history = None if run is None else run_values(run, encode_dt, process_id=process_id)
        result: ProcessRecord = await self._submit(
            _WRITE, self._transition, sql, args, process_id, target, expected_owner, history
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
    ) -> ProcessRecord:
        row = conn.execute(sql, args).fetchone()
        if row is not None:
            if history is not None:
                if history[-1] is None:
                    history = (*history[:-1], row[26])  # the run number just assigned
                conn.execute(self._insert_run_sql, history)
            return _record(row)
        found = conn.execute(
            f"SELECT state, lease_owner FROM {self._t} WHERE process_id = ?", (process_id,)
        ).fetchone()
        if found is None:
            raise ProcessNotFound(process_id)
        state, lease_owner = found
        if owner is not None and lease_owner != owner:
            raise InvalidTransition(
                process_id,
                state,
                target,
                f"process {process_id!r} is leased by {lease_owner!r}, not {owner!r}: "
                "its lease was lost",
            )
        raise InvalidTransition(process_id, state, target)

    async def update_progress(
        self,
        process_id: str,
        percent: float | None,
        message: str | None,
        log_entries: Sequence[LogEntry] = (),
        max_log: int = 1000,
    ) -> None:
        """See :meth:`Store.update_progress`."""
        now = encode_dt(self.clock.wall())
        new_log = json_dumps(log_to_json(log_entries), "log data") if log_entries else None
        await self._submit(
            _WRITE,
            self._update_progress,
            process_id,
            percent,
            message,
            new_log,
            len(log_entries),
            max_log,
            now,
        )

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
    ) -> None:
        if new_log is None:
            changed = conn.execute(
                f"UPDATE {self._t} SET progress_percent = ?, progress_message = ?, "
                "updated_at = ? WHERE process_id = ?",
                (percent, message, now, process_id),
            ).rowcount
            if changed != 1:
                raise ProcessNotFound(process_id)
            return
        row = conn.execute(
            f"SELECT json_array_length(log), log FROM {self._t} WHERE process_id = ?",
            (process_id,),
        ).fetchone()
        if row is None:
            raise ProcessNotFound(process_id)
        count, old = row
        if max_log <= 0:
            log = "[]"
        elif count + new_count <= max_log:
            # Splice the JSON texts: no need to parse a log that stays within bounds.
            log = new_log if count == 0 else f"{old[:-1]},{new_log[1:]}"
        else:
            merged = (_loads(old) + _loads(new_log))[-max_log:]
            log = json_dumps(merged, "log data")
        conn.execute(
            f"UPDATE {self._t} SET progress_percent = ?, progress_message = ?, log = ?, "
            "updated_at = ? WHERE process_id = ?",
            (percent, message, log, now, process_id),
        )

    # -- leases -----------------------------------------------------------------------

    async def claim(
        self, worker: str, lease_seconds: float, limit: int = 1
    ) -> builtins.list[ProcessRecord]:
        """See :meth:`Store.claim`."""
        now = self.clock.wall()
        if limit <= 0:
            return []
        expires = encode_dt(now + timedelta(seconds=lease_seconds))
        result: builtins.list[ProcessRecord] = await self._submit(
            _WRITE, self._claim, worker, expires, encode_dt(now), limit
        )
        return result

    def _claim(
        self, conn: sqlite3.Connection, worker: str, expires: str, now: str, limit: int
    ) -> builtins.list[ProcessRecord]:
        ids = [
            row[0]
            for row in conn.execute(
                f"SELECT process_id FROM {self._t} WHERE state = 'scheduled' "
                "AND (lease_owner IS NULL OR lease_expires_at <= ?) "
                "ORDER BY updated_at, process_id LIMIT ?",
                (now, limit),
            )
        ]
        if not ids:
            return []
        rows = conn.execute(
            f"UPDATE {self._t} SET lease_owner = ?, lease_expires_at = ?, updated_at = ? "
            f"WHERE process_id IN ({_placeholders(len(ids))}) RETURNING {_COLS}",
            (worker, expires, now, *ids),
        ).fetchall()
        by_id = {row[0]: row for row in rows}
        return [_record(by_id[pid]) for pid in ids]

    async def renew_leases(
        self, worker: str, process_ids: Collection[str], lease_seconds: float
    ) -> builtins.list[str]:
        """See :meth:`Store.renew_leases`."""
        now = self.clock.wall()
        ids = list(dict.fromkeys(process_ids))
        if not ids:
            return []
        expires = encode_dt(now + timedelta(seconds=lease_seconds))
        sets = "lease_expires_at = ?, updated_at = ?"
        result: builtins.list[str] = await self._submit(
            _WRITE, self._lease_update, sets, (expires, encode_dt(now)), worker, ids, True
        )
        return result

    async def release(self, worker: str, process_ids: Collection[str]) -> builtins.list[str]:
        """See :meth:`Store.release`."""
        ids = list(dict.fromkeys(process_ids))
        if not ids:
            return []
        sets = "lease_owner = NULL, lease_expires_at = NULL, updated_at = ?"
        now = encode_dt(self.clock.wall())
        result: builtins.list[str] = await self._submit(
            _WRITE, self._lease_update, sets, (now,), worker, ids, False
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
        active = f" AND state IN ({_placeholders(len(_ACTIVE))})" if active_only else ""
        for chunk in _chunks(ids):
            rows = conn.execute(
                f"UPDATE {self._t} SET {sets} WHERE lease_owner = ?{active} "
                f"AND process_id IN ({_placeholders(len(chunk))}) RETURNING process_id",
                (*set_args, worker, *(_ACTIVE if active_only else ()), *chunk),
            ).fetchall()
            done.extend(row[0] for row in rows)
        return done

    async def expire_leases(self, now: datetime | None = None) -> builtins.list[ProcessRecord]:
        """See :meth:`Store.expire_leases`."""
        wall = self.clock.wall()
        cutoff = encode_dt(now if now is not None else wall)
        sql = (
            f"UPDATE {self._t} SET lease_owner = NULL, lease_expires_at = NULL, updated_at = ? "
            f"WHERE lease_owner IS NOT NULL AND lease_expires_at <= ? "
            f"AND state IN ({_placeholders(len(_ACTIVE))}) RETURNING {_COLS}"
        )
        result: builtins.list[ProcessRecord] = await self._submit(
            _WRITE, self._select, sql, (encode_dt(wall), cutoff, *_ACTIVE)
        )
        result.sort(key=lambda r: r.process_id)
        return result

    async def mark_cron_tick(self, process_id: str, tick: datetime) -> bool:
        """See :meth:`Store.mark_cron_tick`."""
        result: bool = await self._submit(
            _WRITE,
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
        result: RunRecord = await self._submit(_WRITE, self._record_run, values)
        return result

    def _record_run(self, conn: sqlite3.Connection, values: tuple[Any, ...]) -> RunRecord:
        row = conn.execute(
            f"{self._insert_run_sql} RETURNING {', '.join(RUN_COLUMNS)}", values
        ).fetchone()
        return _run_from_row(row)

    async def query_history(
        self,
        *,
        process_id: str | None = None,
        name: str | None = None,
        status: OperationStatus | None = None,
        since: datetime | None = None,
        limit: int | None = None,
    ) -> builtins.list[RunRecord]:
        """See :meth:`Store.query_history`."""
        check_limit(limit)
        where: builtins.list[str] = []
        args: builtins.list[Any] = []
        for column, value in (
            ("process_id", process_id),
            ("name", name),
            ("status", None if status is None else OperationStatus(status).value),
        ):
            if value is not None:
                where.append(f"{column} = ?")
                args.append(value)
        if since is not None:
            where.append("started_at >= ?")
            args.append(encode_dt(since))
        sql = f"SELECT {', '.join(RUN_COLUMNS)} FROM {self._runs}"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY idx DESC"
        if limit is not None:
            sql += " LIMIT ?"
            args.append(limit)
        result: builtins.list[RunRecord] = await self._submit(_READ, self._history, sql, args)
        return result

    def _history(
        self, conn: sqlite3.Connection, sql: str, args: Sequence[Any]
    ) -> builtins.list[RunRecord]:
        return [_run_from_row(row) for row in conn.execute(sql, args)]


def _stop(store: SQLiteStore) -> None:
    store._shutdown()


_STOP: Final = _stop
