"""The Store contract, run over every backend: memory, SQLite (a file) and PostgreSQL.

Each test gets a fresh namespace: a new MemoryStore, a new SQLite file, or a unique table
prefix in a PostgreSQL database created for this module. ``Backend.make`` builds another
store on the same data, for reopen and multi-store races.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import socket
import sqlite3
import sys
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from taskwarden.abc import Store
from taskwarden.clock import FakeClock
from taskwarden.errors import (
    ConfigurationError,
    InvalidDefinition,
    InvalidTransition,
    LeaseLost,
    MissingExtra,
    ProcessNotFound,
    SchemaError,
    StoreError,
)
from taskwarden.model import OperationStatus, RunRecord, WorkerRecord
from taskwarden.processes import (
    END_STATES,
    RUNTIME_FIELDS,
    TRANSITIONS,
    LogEntry,
    LogLevel,
    ProcessRecord,
    ProcessState,
)
from taskwarden.stores import DEFAULT_SQLITE_PATH, open_store
from taskwarden.stores.base import load_migrations
from taskwarden.stores.memory import MemoryStore
from taskwarden.stores.postgres import PostgresStore
from taskwarden.stores.sqlite import SQLiteStore
from tests.store_support import postgres_database  # noqa: F401 (a fixture, found by name)

S = ProcessState
T0 = datetime(2026, 3, 1, 9, 30, tzinfo=UTC)


class Backend:
    """Builds stores that share one namespace (file, prefix or instance)."""

    name = "memory"

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self._memory: MemoryStore | None = None

    def make(self) -> Store:
        """Another store over the same data (the memory backend has only one)."""
        if self._memory is None:
            self._memory = MemoryStore(clock=self.clock)
        return self._memory

    @property
    def shares_instance(self) -> bool:
        """True when make() returns the same object (no separate connections to race)."""
        return True

    async def set_schema_version(self, version: int) -> None:
        """Pretend a newer taskwarden migrated the database."""
        raise NotImplementedError

    async def schema_versions(self) -> list[int]:
        """The versions recorded in the schema_version table, in order."""
        raise NotImplementedError

    async def run_sql(self, *statements: str) -> None:
        """Run raw SQL on the backend's database (for faking an older schema)."""
        raise NotImplementedError

    async def cleanup(self) -> None:
        """Drop what this namespace left behind."""


BACKENDS: list[Any] = ["memory", "sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


@pytest.fixture
def clock() -> FakeClock:
    """A clock that only moves when the test says so."""
    return FakeClock(wall_start=T0)


@pytest.fixture(params=BACKENDS)
async def backend(
    request: pytest.FixtureRequest, clock: FakeClock, tmp_path: Path
) -> AsyncIterator[Backend]:
    """One backend, fresh namespace per test."""
    factory: Callable[..., Backend] = BACKEND_FACTORIES[request.param]
    made = factory(clock=clock, tmp_path=tmp_path, request=request)
    try:
        yield made
    finally:
        await made.cleanup()


@pytest.fixture
async def store(backend: Backend) -> AsyncIterator[Store]:
    """An open store of the backend under test."""
    async with backend.make() as opened:
        yield opened


def _memory_backend(*, clock: FakeClock, **_: Any) -> Backend:
    return Backend(clock)


class SQLiteBackend(Backend):
    """Stores over one SQLite file in the test's tmp_path."""

    name = "sqlite"

    def __init__(self, clock: FakeClock, path: Path) -> None:
        super().__init__(clock)
        self.path = path

    def make(self) -> Store:
        return SQLiteStore(self.path, clock=self.clock)

    @property
    def shares_instance(self) -> bool:
        return False

    async def set_schema_version(self, version: int) -> None:
        def bump() -> None:
            with contextlib.closing(sqlite3.connect(self.path)) as conn, conn:
                conn.execute(
                    "INSERT INTO taskwarden_schema_version (version, applied_at) VALUES (?, ?)",
                    (version, "2099-01-01T00:00:00.000000+00:00"),
                )

        await asyncio.to_thread(bump)

    async def run_sql(self, *statements: str) -> None:
        def run() -> None:
            with contextlib.closing(sqlite3.connect(self.path)) as conn, conn:
                for statement in statements:
                    conn.execute(statement.replace("{p}", "taskwarden"))

        await asyncio.to_thread(run)

    async def schema_versions(self) -> list[int]:
        def read() -> list[int]:
            with contextlib.closing(sqlite3.connect(self.path)) as conn:
                rows = conn.execute(
                    "SELECT version FROM taskwarden_schema_version ORDER BY version"
                ).fetchall()
            return [row[0] for row in rows]

        return await asyncio.to_thread(read)


def _sqlite_backend(*, clock: FakeClock, tmp_path: Path, **_: Any) -> Backend:
    return SQLiteBackend(clock, tmp_path / "store.db")


class PostgresBackend(Backend):
    """Stores over a unique table prefix in this module's PostgreSQL database."""

    name = "postgres"

    def __init__(self, clock: FakeClock, url: str) -> None:
        super().__init__(clock)
        self.url = url
        self.prefix = f"t{uuid.uuid4().hex[:12]}"

    def make(self) -> Store:
        return PostgresStore(self.url, prefix=self.prefix, clock=self.clock, max_size=4)

    @property
    def shares_instance(self) -> bool:
        return False

    async def set_schema_version(self, version: int) -> None:
        conn = await asyncpg.connect(self.url)
        try:
            await conn.execute(
                f"INSERT INTO {self.prefix}_schema_version (version, applied_at) "
                "VALUES ($1, now())",
                version,
            )
        finally:
            await conn.close()

    async def run_sql(self, *statements: str) -> None:
        conn = await asyncpg.connect(self.url)
        try:
            for statement in statements:
                await conn.execute(statement.replace("{p}", self.prefix))
        finally:
            await conn.close()

    async def schema_versions(self) -> list[int]:
        conn = await asyncpg.connect(self.url)
        try:
            rows = await conn.fetch(
                f"SELECT version FROM {self.prefix}_schema_version ORDER BY version"
            )
        finally:
            await conn.close()
        return [row[0] for row in rows]

    async def cleanup(self) -> None:
        conn = await asyncpg.connect(self.url)
        try:
            for table in ("processes", "runs", "schema_version", "workers", "scope_ids", "scopes"):
                await conn.execute(f"DROP TABLE IF EXISTS {self.prefix}_{table}")
        finally:
            await conn.close()


def _postgres_backend(*, clock: FakeClock, request: pytest.FixtureRequest, **_: Any) -> Backend:
    url: str = request.getfixturevalue("postgres_database")
    return PostgresBackend(clock, url)


BACKEND_FACTORIES: dict[str, Callable[..., Backend]] = {
    "memory": _memory_backend,
    "sqlite": _sqlite_backend,
    "postgres": _postgres_backend,
}

_ids = itertools.count()


def rec(process_id: str | None = None, **fields: Any) -> ProcessRecord:
    """A record with sensible defaults."""
    pid = process_id or f"p{next(_ids)}"
    fields.setdefault("name", pid.upper())
    fields.setdefault("created_at", T0)
    return ProcessRecord(process_id=pid, **fields)


def run_record(**fields: Any) -> RunRecord:
    """A finished run with sensible defaults."""
    fields.setdefault("index", None)
    fields.setdefault("operation_id", uuid.uuid4().hex)
    fields.setdefault("name", "job")
    fields.setdefault("kind", "process")
    fields.setdefault("status", OperationStatus.COMPLETED)
    fields.setdefault("started_at", T0)
    fields.setdefault("ended_at", T0 + timedelta(seconds=2))
    fields.setdefault("duration", 2.0)
    return RunRecord(**fields)


async def put(store: Store, state: ProcessState = S.IDLE, **fields: Any) -> ProcessRecord:
    """Create a record directly in ``state``."""
    return await store.create(rec(state=state, **fields))


def comparable(record: ProcessRecord) -> dict[str, Any]:
    """A record's document without the store-maintained updated_at."""
    doc = record.to_document()
    doc.pop("updatedAt")
    return doc


# -- life cycle ---------------------------------------------------------------------------


async def test_verbs_on_a_closed_store_raise_store_error(backend: Backend) -> None:
    """Using a store before open() is a clear StoreError, not a driver crash."""
    store = backend.make()
    with pytest.raises(StoreError):
        await store.get("x")


async def test_open_twice_and_close_twice_are_harmless(backend: Backend) -> None:
    """open() on an open store and close() on a closed one are no-ops."""
    store = backend.make()
    await store.open()
    await store.open()
    await store.create(rec("a"))
    await store.close()
    await store.close()
    async with backend.make() as again:
        assert await again.get("a") is not None


# -- create / get / update_definition -----------------------------------------------------


async def test_create_then_get_returns_every_field_as_given(store: Store) -> None:
    """A record survives the store with every field intact."""
    record = rec(
        "full",
        description="desc",
        params={"n": 1, "nested": {"list": [1, "two", None, True]}},
        metadata={"customer": "2", "tier": 3},
        parent_id="root",
        root_id="root",
        depth=1,
        order=7,
        cancellable=False,
        adhoc=True,
        ephemeral=True,
        special=True,
        warning="are you sure?",
        schedule="*/5 * * * *",
        state=S.FAILED,
        error="kaput",
        running_since=T0,
        done_at=None,
        duration=0.25,
        failed_at=T0 + timedelta(microseconds=1),
        stopped_at=T0,
        progress_percent=12.5,
        progress_message="half",
        log=(
            LogEntry(timestamp=T0, level=LogLevel.EVENT, message="start"),
            LogEntry(timestamp=T0, level=LogLevel.DEBUG, message="d", data={"k": [1, 2]}),
        ),
        run_number=4,
        lease_owner="w1",
        lease_expires_at=T0 + timedelta(seconds=30),
        last_cron_tick=T0,
        resumable=True,
    )
    created = await store.create(record)
    got = await store.get("full")
    assert got is not None
    assert comparable(got) == comparable(record)
    assert comparable(created) == comparable(record)
    assert got == dataclasses.replace(record, updated_at=got.updated_at)


async def test_get_of_a_missing_id_is_none(store: Store) -> None:
    """get() answers None rather than raising."""
    assert await store.get("nope") is None


async def test_create_refuses_an_existing_id(store: Store) -> None:
    """A duplicate process id is an InvalidDefinition, and the first record stays."""
    await store.create(rec("dup", name="first"))
    with pytest.raises(InvalidDefinition):
        await store.create(rec("dup", name="second"))
    got = await store.get("dup")
    assert got is not None and got.name == "first"


async def test_create_refuses_params_that_are_not_json(store: Store) -> None:
    """Non-JSON params are refused up front, on every backend alike."""
    with pytest.raises(InvalidDefinition):
        await store.create(rec("bad", params={"x": object()}))
    assert await store.get("bad") is None


async def test_concurrent_creates_of_one_id_let_exactly_one_win(backend: Backend) -> None:
    """Of many concurrent creates of one id, exactly one succeeds."""
    async with backend.make() as a, backend.make() as b:
        results = await asyncio.gather(
            *(s.create(rec("race")) for s in [a, b] * 5), return_exceptions=True
        )
    assert sum(isinstance(r, ProcessRecord) for r in results) == 1
    assert all(isinstance(r, ProcessRecord | InvalidDefinition) for r in results)


async def test_update_definition_changes_definition_and_keeps_runtime(store: Store) -> None:
    """update_definition never touches state, status, progress, log or lease."""
    await put(
        store,
        S.RUNNING,
        process_id="d",
        metadata={"a": 1},
        progress_percent=50.0,
        run_number=2,
        lease_owner="w",
        lease_expires_at=T0,
        running_since=T0,
        log=(LogEntry(timestamp=T0, level=LogLevel.INFO, message="m"),),
    )
    updated = await store.update_definition(
        "d",
        name="New",
        description="nd",
        params={"p": 2},
        metadata={"b": "x"},
        order=5,
        cancellable=False,
        special=True,
        warning="w!",
        schedule="0 * * * *",
        resumable=True,
        ephemeral=True,
        adhoc=True,
    )
    got = await store.get("d")
    assert got == updated
    assert (got.name, got.description, got.params, got.metadata) == (
        "New",
        "nd",
        {"p": 2},
        {"b": "x"},
    )
    assert (got.order, got.cancellable, got.special, got.warning) == (5, False, True, "w!")
    assert (got.schedule, got.resumable, got.ephemeral, got.adhoc) == (
        "0 * * * *",
        True,
        True,
        True,
    )
    assert got.state is S.RUNNING
    assert (got.progress_percent, got.run_number, got.lease_owner) == (50.0, 2, "w")
    assert got.running_since == T0 and len(got.log) == 1


async def test_update_definition_refuses_runtime_fields(store: Store) -> None:
    """Runtime fields cannot sneak in through update_definition."""
    await put(store, process_id="d")
    for field in ("state", "error", "lease_owner", "log", "process_id"):
        with pytest.raises(InvalidDefinition):
            await store.update_definition("d", **{field: None})


async def test_update_definition_of_a_missing_id_raises(store: Store) -> None:
    """ProcessNotFound, not a silent no-op."""
    with pytest.raises(ProcessNotFound):
        await store.update_definition("ghost", name="x")


# -- list / children ----------------------------------------------------------------------


async def _tree(store: Store) -> None:
    await put(store, process_id="r1", order=1, metadata={"customer": "2", "n": 1, "on": True})
    await put(store, process_id="r0", order=0, state=S.DONE, metadata={"customer": "3"})
    await put(
        store,
        process_id="r1/b",
        parent_id="r1",
        root_id="r1",
        depth=1,
        order=1,
        metadata={"customer": "2", "n": 1.0},
    )
    await put(
        store,
        process_id="r1/a",
        parent_id="r1",
        root_id="r1",
        depth=1,
        order=0,
        state=S.RUNNING,
        metadata={"customer": "2", "on": 1},
    )
    await put(
        store,
        process_id="r1/a/x",
        parent_id="r1/a",
        root_id="r1",
        depth=2,
        order=0,
        state=S.RUNNING,
    )


def _ids_of(records: list[ProcessRecord]) -> list[str]:
    return [r.process_id for r in records]


async def test_list_sorts_by_depth_then_order_then_id(store: Store) -> None:
    """The seed's order: depth, order, then id."""
    await _tree(store)
    assert _ids_of(await store.list()) == ["r0", "r1", "r1/a", "r1/b", "r1/a/x"]


async def test_list_filters_combine_with_and(store: Store) -> None:
    """state (one or several), root_id, parent_id and metadata all narrow the result."""
    await _tree(store)
    assert _ids_of(await store.list(state=S.RUNNING)) == ["r1/a", "r1/a/x"]
    assert _ids_of(await store.list(state=[S.DONE, S.IDLE])) == ["r0", "r1", "r1/b"]
    assert _ids_of(await store.list(root_id="r1")) == ["r1", "r1/a", "r1/b", "r1/a/x"]
    assert _ids_of(await store.list(parent_id="r1")) == ["r1/a", "r1/b"]
    assert _ids_of(await store.list(root_id="r1", state=S.RUNNING, parent_id="r1")) == ["r1/a"]
    assert _ids_of(await store.list(state=[])) == []


async def test_list_metadata_filter_is_an_and_of_equalities(store: Store) -> None:
    """Every key must equal; a number matches a number and a bool only a bool."""
    await _tree(store)
    assert _ids_of(await store.list(metadata={"customer": "2"})) == ["r1", "r1/a", "r1/b"]
    assert _ids_of(await store.list(metadata={"customer": "2", "n": 1})) == ["r1", "r1/b"]
    assert _ids_of(await store.list(metadata={"on": True})) == ["r1"]
    assert _ids_of(await store.list(metadata={"on": 1})) == ["r1/a"]
    assert _ids_of(await store.list(metadata={"customer": 2})) == []
    assert _ids_of(await store.list(metadata={"missing": "x"})) == []


async def test_list_keeps_roots_only_and_searches_name_or_id(store: Store) -> None:
    """roots_only drops every child; search matches a substring of the name or the id,
    ignoring case, and treats % and _ as text."""
    await _tree(store)
    await put(store, process_id="ingest_50%", name="Nightly INGEST")
    assert _ids_of(await store.list(roots_only=True)) == ["ingest_50%", "r0", "r1"]
    assert _ids_of(await store.list(search="/A")) == ["r1/a", "r1/a/x"]  # names are upper
    assert _ids_of(await store.list(search="nightly ingest")) == ["ingest_50%"]
    assert _ids_of(await store.list(search="_50%")) == ["ingest_50%"]
    assert _ids_of(await store.list(search="%")) == ["ingest_50%"]
    assert _ids_of(await store.list(search="r1", roots_only=True)) == ["r1"]
    assert _ids_of(await store.list(search="x", state=S.RUNNING)) == ["r1/a/x"]
    assert _ids_of(await store.list(search="")) == _ids_of(await store.list())
    first = await store.list(roots_only=True, limit=1)
    rest = await store.list(roots_only=True, cursor=first[-1].cursor)
    assert _ids_of(first + rest) == ["ingest_50%", "r0", "r1"]


async def test_count_counts_what_list_returns_without_a_limit(store: Store) -> None:
    """count() takes list()'s filters and answers len(list(...)) in one query."""
    await _tree(store)
    cases: list[dict[str, Any]] = [
        {},
        {"state": S.RUNNING},
        {"state": [S.DONE, S.IDLE]},
        {"state": []},
        {"root_id": "r1"},
        {"parent_id": "r1"},
        {"root_id": "r1", "state": S.RUNNING, "parent_id": "r1"},
        {"metadata": {"customer": "2"}},
        {"metadata": {"customer": "2", "n": 1}},
        {"metadata": {"on": True}},
        {"metadata": {"customer": 2}},
        {"roots_only": True},
        {"search": "a"},
        {"search": "R1/", "roots_only": True},
        {"search": "1", "state": S.RUNNING},
    ]
    for filters in cases:
        assert await store.count(**filters) == len(await store.list(**filters)), filters
    assert await store.count() == 5
    with pytest.raises(ConfigurationError):
        await store.count(metadata={"a": None})


async def test_a_fenced_create_needs_the_parents_lease(store: Store) -> None:
    """create(parent_owner=) inserts a child only while its parent is leased by that owner."""
    await put(store, process_id="p", state=S.RUNNING, lease_owner="w1")
    child = rec(process_id="p/c", parent_id="p", root_id="p", depth=1)
    with pytest.raises(LeaseLost) as refused:
        await store.create(child, parent_owner="w0")
    assert "'w1'" in str(refused.value) and "'w0'" in str(refused.value)
    assert await store.get("p/c") is None
    orphan = rec(process_id="q/c", parent_id="q", root_id="q", depth=1)
    with pytest.raises(LeaseLost):
        await store.create(orphan, parent_owner="w1")
    created = await store.create(child, parent_owner="w1")
    assert created.parent_id == "p" and await store.get("p/c") is not None


async def test_get_many_reads_the_records_it_finds(store: Store) -> None:
    """get_many() answers by id, and leaves out the ids no record has."""
    await _tree(store)
    found = await store.get_many(["r1/a", "r0", "missing", "r0"])
    assert sorted(found) == ["r0", "r1/a"]
    assert found["r1/a"] == await store.get("r1/a")
    assert await store.get_many([]) == {}


async def test_changed_since_is_every_record_written_at_or_after_a_time(store: Store) -> None:
    """Every write stamps updated_at: changed_since() finds what a write touched."""
    await _tree(store)
    everything = await store.changed_since(datetime(2000, 1, 1, tzinfo=UTC))
    assert sorted(_ids_of(everything)) == sorted(_ids_of(await store.list()))
    assert [r.updated_at for r in everything] == sorted(r.updated_at for r in everything)
    newest = max(r.updated_at for r in everything)
    await store.update_progress("r0", 50, "half")
    touched = {r.process_id: r for r in await store.changed_since(newest)}
    assert touched["r0"].progress_percent == 50  # (the fixtures' clocks may stand still)
    assert touched["r0"].updated_at >= newest
    assert await store.changed_since(touched["r0"].updated_at + timedelta(days=1)) == []


async def test_list_refuses_non_scalar_metadata_filters(store: Store) -> None:
    """A dict or None as a filter value is a ConfigurationError."""
    with pytest.raises(ConfigurationError):
        await store.list(metadata={"a": {"b": 1}})
    with pytest.raises(ConfigurationError):
        await store.list(metadata={"a": None})


async def test_list_pages_with_a_keyset_cursor(store: Store) -> None:
    """Pages follow each other without gaps or repeats, even when records are added."""
    for i in range(25):
        await put(store, process_id=f"k{i:02d}", order=i % 3)
    seen: list[str] = []
    cursor: str | None = None
    while True:
        page = await store.list(limit=10, cursor=cursor)
        if not page:
            break
        seen.extend(_ids_of(page))
        cursor = page[-1].cursor
        if len(seen) == 10:
            # Inserted before the cursor: must not shift the next page.
            await put(store, process_id="a-late", order=0)
    expected = sorted((f"k{i:02d}" for i in range(25)), key=lambda p: (int(p[1:]) % 3, p))
    assert seen == expected


async def test_list_limit_and_bad_cursor(store: Store) -> None:
    """limit=0 gives nothing; a malformed cursor or negative limit is a ConfigurationError."""
    await _tree(store)
    assert await store.list(limit=0) == []
    assert len(await store.list(limit=2)) == 2
    with pytest.raises(ConfigurationError):
        await store.list(cursor="garbage")
    with pytest.raises(ConfigurationError):
        await store.list(limit=-1)


async def test_children_are_the_direct_children_in_order(store: Store) -> None:
    """children() returns only the next level, by order then id."""
    await _tree(store)
    assert _ids_of(await store.children("r1")) == ["r1/a", "r1/b"]
    assert _ids_of(await store.children("r1/a")) == ["r1/a/x"]
    assert await store.children("r0") == []
    assert await store.children("ghost") == []


# -- delete -------------------------------------------------------------------------------


async def test_delete_removes_one_record(store: Store) -> None:
    """delete() removes the record and says so; a missing one returns False."""
    await _tree(store)
    assert await store.delete("r0") is True
    assert await store.get("r0") is None
    assert await store.delete("r0") is False


async def test_delete_only_if_states_is_atomic_check_and_delete(store: Store) -> None:
    """With only_if_states the record goes only while in one of them."""
    await _tree(store)
    assert await store.delete("r1/a", only_if_states=[S.IDLE, *END_STATES]) is False
    assert await store.get("r1/a") is not None
    assert await store.delete("r0", only_if_states=[S.DONE]) is True


async def test_delete_with_descendants_removes_the_subtree(store: Store) -> None:
    """descendants=True takes the whole subtree; other trees stay."""
    await _tree(store)
    assert await store.delete("r1", descendants=True) is True
    assert _ids_of(await store.list()) == ["r0"]


async def test_delete_descendants_keeps_the_process(store: Store) -> None:
    """delete_descendants() counts and removes every level below, not the process."""
    await _tree(store)
    assert await store.delete_descendants("r1") == 3
    assert _ids_of(await store.list()) == ["r0", "r1"]
    assert await store.delete_descendants("r1") == 0
    assert await store.delete_descendants("ghost") == 0


async def test_delete_descendants_only_if_states_checks_the_process_itself(
    store: Store,
) -> None:
    """With only_if_states the subtree goes only while the process is in one of them (a
    launch's clean-up must not take the children of a run a worker started meanwhile)."""
    await _tree(store)
    r1 = await store.get("r1")
    assert r1 is not None
    others = [s for s in ProcessState if s is not r1.state]
    assert await store.delete_descendants("r1", only_if_states=others) == 0
    assert len(await store.list(root_id="r1")) == 4
    assert await store.delete_descendants("ghost", only_if_states=[r1.state]) == 0
    assert await store.delete_descendants("r1", only_if_states=[r1.state]) == 3
    assert _ids_of(await store.list()) == ["r0", "r1"]


async def test_delete_descendants_of_a_mid_node(store: Store) -> None:
    """Only the subtree below the given node goes."""
    await _tree(store)
    assert await store.delete_descendants("r1/a") == 1
    assert _ids_of(await store.list()) == ["r0", "r1", "r1/a", "r1/b"]


# -- transition ---------------------------------------------------------------------------


async def test_every_table_edge_succeeds_and_every_other_edge_is_refused(store: Store) -> None:
    """The full 8x8 matrix: allowed edges move the state, others raise InvalidTransition."""
    failures = []
    for a, b in itertools.product(ProcessState, ProcessState):
        pid = f"m-{a.value}-{b.value}"
        await put(store, a, process_id=pid)
        allowed = b in TRANSITIONS[a]
        try:
            result = await store.transition(pid, [a], b)
        except InvalidTransition:
            if allowed:
                failures.append(f"{a}->{b} refused")
            got = await store.get(pid)
            assert got is not None and got.state is a
        else:
            if not allowed:
                failures.append(f"{a}->{b} accepted")
            assert result.state is b
            got = await store.get(pid)
            assert got is not None and got.state is b
    assert failures == []


async def test_transition_refuses_a_record_in_another_state(store: Store) -> None:
    """The compare fails: InvalidTransition names the state found, nothing changes."""
    await put(store, S.DONE, process_id="t")
    with pytest.raises(InvalidTransition) as info:
        await store.transition("t", [S.SCHEDULED], S.RUNNING)
    assert info.value.current == "done"
    assert info.value.reason == "invalid-state"
    got = await store.get("t")
    assert got is not None and got.state is S.DONE


async def test_transition_of_a_missing_record_raises_not_found(store: Store) -> None:
    """ProcessNotFound for an unknown id."""
    with pytest.raises(ProcessNotFound):
        await store.transition("ghost", [S.IDLE], S.SCHEDULED)


async def test_transition_validates_edges_and_fields_first(store: Store) -> None:
    """An edge outside the table, empty expectations or a definition field are refused."""
    await put(store, S.IDLE, process_id="t")
    with pytest.raises(InvalidTransition):
        await store.transition("t", [S.IDLE, S.DONE], S.RUNNING)
    with pytest.raises(InvalidTransition):
        await store.transition("t", [], S.SCHEDULED)
    with pytest.raises(InvalidDefinition):
        await store.transition("t", [S.IDLE], S.SCHEDULED, name="x")
    got = await store.get("t")
    assert got is not None and got.state is S.IDLE


async def test_transition_sets_fields_in_the_same_write(store: Store) -> None:
    """Runtime fields given to transition land with the new state."""
    await put(store, S.RUNNING, process_id="t", running_since=T0)
    entry = LogEntry(timestamp=T0, level=LogLevel.ERROR, message="bad", data={"e": 1})
    done = await store.transition(
        "t",
        [S.RUNNING],
        S.FAILED,
        error="boom",
        failed_at=T0 + timedelta(seconds=3),
        duration=3.0,
        progress_percent=None,
        progress_message="stopped",
        log=(entry,),
    )
    assert (done.state, done.error, done.duration) == (S.FAILED, "boom", 3.0)
    assert done.failed_at == T0 + timedelta(seconds=3)
    assert done.log == (entry,)
    assert await store.get("t") == done


async def test_entering_running_increments_run_number(store: Store) -> None:
    """Each run gets the next number, atomically, unless one is given."""
    await put(store, S.SCHEDULED, process_id="t", run_number=0)
    first = await store.transition("t", [S.SCHEDULED], S.RUNNING)
    assert first.run_number == 1
    await store.transition("t", [S.RUNNING], S.DONE)
    await store.transition("t", [S.DONE], S.SCHEDULED)
    assert (await store.transition("t", [S.SCHEDULED], S.RUNNING)).run_number == 2
    await store.transition("t", [S.RUNNING], S.DONE)
    await store.transition("t", [S.DONE], S.SCHEDULED)
    explicit = await store.transition("t", [S.SCHEDULED], S.RUNNING, run_number=10)
    assert explicit.run_number == 10


async def test_ending_or_idling_clears_the_lease(store: Store) -> None:
    """A transition into an END state or idle drops lease_owner and lease_expires_at."""
    lease = {"lease_owner": "w", "lease_expires_at": T0 + timedelta(seconds=9)}
    await put(store, S.RUNNING, process_id="t", **lease)
    running = await store.transition("t", [S.RUNNING], S.CANCEL_REQUESTED)
    assert running.lease_owner == "w"
    ended = await store.transition("t", [S.CANCEL_REQUESTED], S.FAILED)
    assert (ended.lease_owner, ended.lease_expires_at) == (None, None)


async def test_transition_with_expected_owner_refuses_a_lost_lease(store: Store) -> None:
    """expected_owner makes the lease part of the compare."""
    await put(store, S.RUNNING, process_id="t", lease_owner="w2", lease_expires_at=T0)
    with pytest.raises(InvalidTransition):
        await store.transition("t", [S.RUNNING], S.DONE, expected_owner="w1")
    done = await store.transition("t", [S.RUNNING], S.DONE, expected_owner="w2")
    assert done.state is S.DONE


async def test_concurrent_transitions_let_exactly_one_win(backend: Backend) -> None:
    """Many concurrent compare-and-sets on one record (over two stores): one winner."""
    async with backend.make() as a, backend.make() as b:
        await a.create(rec("race", state=S.IDLE))
        for trial in range(5):
            expected = [S.IDLE, S.DONE]
            results = await asyncio.gather(
                *(s.transition("race", expected, S.SCHEDULED) for s in [a, b] * 10),
                return_exceptions=True,
            )
            winners = [r for r in results if isinstance(r, ProcessRecord)]
            assert len(winners) == 1, f"trial {trial}: {results}"
            assert all(isinstance(r, ProcessRecord | InvalidTransition) for r in results)
            await a.transition("race", [S.SCHEDULED], S.RUNNING)
            await b.transition("race", [S.RUNNING], S.DONE)
        got = await a.get("race")
        assert got is not None and got.run_number == 5


async def test_transition_with_a_run_records_it_in_the_same_write(store: Store) -> None:
    """run= appends the run to the history, numbered from the record, only on success."""
    await put(store, S.SCHEDULED, process_id="t")
    await store.transition("t", [S.SCHEDULED], S.RUNNING)
    finished = run_record(name="T", process_id=None, run_number=None, metadata={"k": 1})
    done = await store.transition("t", [S.RUNNING], S.DONE, run=finished)
    with pytest.raises(InvalidTransition):
        await store.transition("t", [S.RUNNING], S.FAILED, run=run_record(name="lost"))
    history = await store.query_history()
    assert len(history) == 1
    assert (history[0].process_id, history[0].run_number) == ("t", done.run_number)
    assert history[0] == dataclasses.replace(
        finished, index=history[0].index, process_id="t", run_number=1
    )
    explicit = run_record(name="T", process_id="other", run_number=7)
    await store.transition("t", [S.DONE], S.IDLE, run=explicit)
    latest = (await store.query_history(limit=1))[0]
    assert (latest.process_id, latest.run_number) == ("other", 7)


async def test_naive_datetimes_are_refused(store: Store) -> None:
    """A datetime without a time zone is ambiguous: ConfigurationError, nothing written."""
    await put(store, S.SCHEDULED, process_id="t")
    with pytest.raises(ConfigurationError):
        await store.transition("t", [S.SCHEDULED], S.RUNNING, running_since=datetime(2026, 1, 1))
    got = await store.get("t")
    assert got is not None and got.state is S.SCHEDULED


async def test_a_cancelled_caller_leaves_the_store_usable(store: Store) -> None:
    """Cancelling a task that awaits a verb neither breaks nor blocks the store."""
    await put(store, S.IDLE, process_id="t")
    task = asyncio.ensure_future(store.transition("t", [S.IDLE], S.SCHEDULED))
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    got = await asyncio.wait_for(store.get("t"), 5)
    assert got is not None and got.state in (S.IDLE, S.SCHEDULED)
    await asyncio.wait_for(store.create(rec("after")), 5)


async def test_concurrent_transitions_on_many_records_keep_their_own_outcomes(
    store: Store,
) -> None:
    """Many transitions in flight at once (which a backend may send as one statement)
    each get their own fields, their own run and their own refusal."""
    for i in range(30):
        await put(store, S.RUNNING if i % 3 else S.DONE, process_id=f"c{i:02d}", run_number=1)

    def fail(i: int) -> Any:
        return store.transition(
            f"c{i:02d}",
            [S.RUNNING],
            S.FAILED,
            error=f"e{i}",
            failed_at=T0 + timedelta(seconds=i),
            run=run_record(name=f"c{i}", process_id=None, run_number=None),
        )

    calls = [fail(i) for i in range(30)]
    calls.append(store.transition("ghost", [S.RUNNING], S.FAILED, error="x", run=run_record()))
    calls.append(store.transition("c01", [S.RUNNING], S.CANCEL_REQUESTED))  # another shape
    results = await asyncio.gather(*calls, return_exceptions=True)
    assert isinstance(results[30], ProcessNotFound)
    # c01 is raced by two calls of different shapes: exactly one of them wins.
    assert isinstance(results[1], ProcessRecord) != isinstance(results[31], ProcessRecord)
    for i in range(30):
        outcome = results[i]
        if i % 3 == 0:
            assert isinstance(outcome, InvalidTransition) and outcome.current == "done"
        elif i != 1:
            assert isinstance(outcome, ProcessRecord), outcome
            assert (outcome.process_id, outcome.error) == (f"c{i:02d}", f"e{i}")
            assert outcome.failed_at == T0 + timedelta(seconds=i)
    history = await store.query_history()
    recorded = sorted((r.name, r.process_id, r.run_number) for r in history)
    winners = [i for i in range(30) if i % 3 and (i != 1 or isinstance(results[1], ProcessRecord))]
    assert recorded == sorted((f"c{i}", f"c{i:02d}", 1) for i in winners)


# -- progress -----------------------------------------------------------------------------


def _entries(n: int, start: int = 0) -> list[LogEntry]:
    return [
        LogEntry(timestamp=T0 + timedelta(seconds=i), level=LogLevel.INFO, message=f"m{i}")
        for i in range(start, start + n)
    ]


async def test_update_progress_sets_progress_and_appends_the_log(store: Store) -> None:
    """One call sets percent and message and appends entries in order."""
    await put(store, S.RUNNING, process_id="p")
    await store.update_progress("p", 10.0, "ten", _entries(2))
    await store.update_progress("p", None, None, _entries(1, start=2))
    got = await store.get("p")
    assert got is not None
    assert (got.progress_percent, got.progress_message) == (None, None)
    assert [e.message for e in got.log] == ["m0", "m1", "m2"]
    await store.update_progress("p", 55.5, "more")
    got = await store.get("p")
    assert got is not None and (got.progress_percent, len(got.log)) == (55.5, 3)


async def test_update_progress_keeps_only_the_newest_max_log(store: Store) -> None:
    """The log is bounded: the oldest entries go first."""
    await put(store, S.RUNNING, process_id="p")
    await store.update_progress("p", 1.0, None, _entries(4), max_log=5)
    await store.update_progress("p", 2.0, None, _entries(4, start=4), max_log=5)
    got = await store.get("p")
    assert got is not None and [e.message for e in got.log] == [f"m{i}" for i in range(3, 8)]
    await store.update_progress("p", 3.0, None, _entries(9, start=8), max_log=3)
    got = await store.get("p")
    assert got is not None and [e.message for e in got.log] == ["m14", "m15", "m16"]


async def test_a_fenced_progress_write_needs_the_lease(store: Store) -> None:
    """With ``expected_owner`` progress and log are written only by the lease's holder;
    anyone else gets LeaseLost and the record is untouched."""
    await put(store, S.RUNNING, process_id="p", lease_owner="w1")
    entry = LogEntry(timestamp=T0, level=LogLevel.INFO, message="from w1")
    await store.update_progress("p", 10.0, "w1 at 10", [entry], expected_owner="w1")
    for entries in ([], [LogEntry(timestamp=T0, level=LogLevel.INFO, message="stale")]):
        with pytest.raises(LeaseLost):
            await store.update_progress("p", 99.0, "stale", entries, expected_owner="w0")
    got = await store.get("p")
    assert got is not None and (got.progress_percent, got.progress_message) == (10.0, "w1 at 10")
    assert [e.message for e in got.log] == ["from w1"]
    with pytest.raises(ProcessNotFound):
        await store.update_progress("ghost", 1.0, None, expected_owner="w1")


async def test_append_log_adds_entries_and_leaves_the_progress_alone(store: Store) -> None:
    """append_log appends (newest max_log kept) without touching percent and message,
    in any state; a missing record raises ProcessNotFound."""
    await put(store, S.RUNNING, process_id="p", lease_owner="w1")
    await store.update_progress("p", 40.0, "the worker's", _entries(2), expected_owner="w1")
    await store.append_log("p", _entries(2, start=2), max_log=3)
    got = await store.get("p")
    assert got is not None and (got.progress_percent, got.progress_message) == (
        40.0,
        "the worker's",
    )
    assert [e.message for e in got.log] == ["m1", "m2", "m3"]
    await store.transition("p", [S.RUNNING], S.DONE)
    await store.append_log("p", _entries(1, start=9))
    done = await store.get("p")
    assert done is not None and done.state is S.DONE and done.log[-1].message == "m9"
    await store.append_log("p", _entries(1), max_log=0)
    cleared = await store.get("p")
    assert cleared is not None and cleared.log == ()
    with pytest.raises(ProcessNotFound):
        await store.append_log("ghost", _entries(1))


async def test_update_progress_of_a_missing_record_raises(store: Store) -> None:
    """ProcessNotFound, not a silent no-op."""
    with pytest.raises(ProcessNotFound):
        await store.update_progress("ghost", 1.0, None)


# -- leases -------------------------------------------------------------------------------


async def test_claim_takes_scheduled_processes_without_a_live_lease(
    store: Store, clock: FakeClock
) -> None:
    """Only scheduled, unleased (or expired) processes are claimed, oldest first, up to limit."""
    await put(store, S.IDLE, process_id="idle")
    await put(store, S.RUNNING, process_id="running")
    await put(store, S.SCHEDULED, process_id="kept", lease_owner="engine")
    await put(
        store,
        S.SCHEDULED,
        process_id="held",
        lease_owner="x",
        lease_expires_at=T0 + timedelta(seconds=5),
    )
    for i in range(3):
        await put(store, S.SCHEDULED, process_id=f"s{i}")
    claimed = await store.claim("w1", lease_seconds=10, limit=2)
    assert _ids_of(claimed) == ["s0", "s1"]
    assert all(r.lease_owner == "w1" for r in claimed)
    assert all(r.lease_expires_at == T0 + timedelta(seconds=10) for r in claimed)
    assert _ids_of(await store.claim("w2", lease_seconds=10, limit=10)) == ["s2"]
    assert await store.claim("w2", lease_seconds=10, limit=10) == []
    clock.advance(5)
    assert _ids_of(await store.claim("w3", lease_seconds=10, limit=10)) == ["held"]


async def test_claim_leaves_a_retry_until_it_is_due(store: Store, clock: FakeClock) -> None:
    """An unleased scheduled process with ``next_attempt_at`` in the future waits for it;
    the retry fields round-trip through a transition."""
    await put(store, S.RUNNING, process_id="flaky")
    waiting = await store.transition(
        "flaky",
        [S.RUNNING],
        S.SCHEDULED,
        attempt=1,
        next_attempt_at=T0 + timedelta(seconds=2),
        lost_count=1,
        lease_owner=None,
        error="attempt 1 failed",
    )
    assert waiting.attempt == 1 and waiting.lost_count == 1
    assert waiting.next_attempt_at == T0 + timedelta(seconds=2)
    await put(store, S.SCHEDULED, process_id="fresh")
    assert _ids_of(await store.claim("w", lease_seconds=10, limit=10)) == ["fresh"]
    clock.advance(2)
    [due] = await store.claim("w", lease_seconds=10, limit=10, process_ids=["flaky"])
    assert due.process_id == "flaky" and due.lease_owner == "w" and due.attempt == 1
    got = await store.get("flaky")
    assert got is not None and got.next_attempt_at == T0 + timedelta(seconds=2)


async def test_claim_with_start_takes_and_starts_in_one_write(
    store: Store, clock: FakeClock
) -> None:
    """``start=True``: each taken record is ``running`` at once, its run number one up,
    ``running_since`` now, a due retry's wait and error cleared; the rest as a claim."""
    await put(store, S.RUNNING, process_id="flaky", run_number=2)
    await store.transition(
        "flaky",
        [S.RUNNING],
        S.SCHEDULED,
        attempt=1,
        next_attempt_at=T0,
        lease_owner=None,
        error="attempt 1 failed",
    )
    await put(store, S.SCHEDULED, process_id="fresh")
    await put(store, S.SCHEDULED, process_id="later", next_attempt_at=T0 + timedelta(seconds=9))
    clock.advance(1)
    claimed = await store.claim("w", lease_seconds=10, limit=10, start=True)
    assert _ids_of(claimed) == ["flaky", "fresh"]
    by_id = {r.process_id: r for r in claimed}
    assert by_id["flaky"].run_number == 3 and by_id["fresh"].run_number == 1
    for record in claimed:
        assert record.state is S.RUNNING
        assert record.lease_owner == "w"
        assert record.lease_expires_at == T0 + timedelta(seconds=11)
        assert record.running_since == T0 + timedelta(seconds=1)
        assert record.next_attempt_at is None and record.error is None
        assert await store.get(record.process_id) == record
    assert by_id["flaky"].attempt == 1  # the attempt count is the end's to move
    later = await store.get("later")
    assert later is not None and later.state is S.SCHEDULED and later.lease_owner is None
    done = await store.transition("fresh", [S.RUNNING], S.DONE, expected_owner="w")
    assert done.state is S.DONE and done.lease_owner is None


_RUNTIME_SAMPLES: dict[str, Any] = {
    "error": "boom",
    "running_since": T0,
    "done_at": T0,
    "duration": 1.5,
    "failed_at": T0,
    "stopped_at": T0,
    "progress_percent": 40.0,
    "progress_message": "half",
    "log": (),
    "run_number": 7,
    "lease_owner": "w",
    "lease_expires_at": T0,
    "lost_count": 1,
    "attempt": 2,
    "next_attempt_at": T0,
}


async def test_transitions_made_together_may_set_every_runtime_field(store: Store) -> None:
    """Calls of one shape made in the same loop turn share a statement (PostgreSQL
    batches them): each runtime field must survive that path too."""
    assert set(_RUNTIME_SAMPLES) == set(RUNTIME_FIELDS)
    for pid in ("a", "b"):
        await put(store, S.RUNNING, process_id=pid)
    done = await asyncio.gather(
        *(store.transition(pid, [S.RUNNING], S.FAILED, **_RUNTIME_SAMPLES) for pid in "ab")
    )
    for record in done:
        assert record.state is S.FAILED
        for name, value in _RUNTIME_SAMPLES.items():
            assert getattr(record, name) == value, name


async def test_claim_serves_ids_with_any_characters(store: Store) -> None:
    """The served ids reach the claim intact whatever they hold (quotes, backslashes,
    commas, braces, spaces, ``NULL``, non-ASCII), and a changed list is not the old one."""
    odd = ['a"b', "c\\d", "e,f", "{g}", " h ", "NULL", "ü-ß", "plain"]
    for pid in odd:
        await put(store, S.SCHEDULED, process_id=pid)
    await put(store, S.SCHEDULED, process_id="not-served")
    got = await store.claim("w", 10, 20, process_ids=tuple(odd[:4]))
    assert sorted(_ids_of(got)) == sorted(odd[:4])
    got = await store.claim("w", 10, 20, process_ids=odd[4:])
    assert sorted(_ids_of(got)) == sorted(odd[4:])
    assert await store.claim("w", 10, 20, process_ids=()) == []
    assert _ids_of(await store.claim("w", 10, 20)) == ["not-served"]


async def test_claims_in_flight_together_each_keep_their_own_scope(store: Store) -> None:
    """Claims made at once with different served lists (a store may keep the last list
    on its side) each take only from their own list, and a list used before, then
    replaced, is honoured again when it comes back."""
    a = [f"a{i}" for i in range(4)]
    b = [f"b{i}" for i in range(4)]
    for pid in a + b:
        await put(store, S.SCHEDULED, process_id=pid)
    [first] = await store.claim("w", 10, 1, process_ids=tuple(a))
    assert first.process_id in a
    got = await asyncio.gather(
        store.claim("w", 10, 1, process_ids=tuple(b)),
        store.claim("w", 10, 1, process_ids=tuple(a)),
    )
    assert [_ids_of(g)[0][0] for g in got] == ["b", "a"]
    assert set(_ids_of(await store.claim("w", 10, 1, process_ids=tuple(b)))) <= set(b)
    last_a = await store.claim("w", 10, 10, process_ids=tuple(a))
    assert sorted(_ids_of(last_a)) == a[2:]


async def test_concurrent_claimers_never_share_a_process(backend: Backend) -> None:
    """The union of concurrent claims is every scheduled process, each exactly once."""
    async with backend.make() as a, backend.make() as b:
        for i in range(60):
            await a.create(rec(f"c{i:02d}", state=S.SCHEDULED))

        async def drain(store: Store, worker: str) -> list[str]:
            got: list[str] = []
            while batch := await store.claim(worker, lease_seconds=60, limit=3):
                got.extend(_ids_of(batch))
            return got

        results = await asyncio.gather(drain(a, "wa"), drain(b, "wb"), drain(a, "wc"))
        everything = [pid for result in results for pid in result]
        assert sorted(everything) == [f"c{i:02d}" for i in range(60)]
        for worker, result in zip(["wa", "wb", "wc"], results, strict=True):
            for pid in result:
                got = await a.get(pid)
                assert got is not None and got.lease_owner == worker


async def test_renew_extends_only_the_workers_own_live_leases(
    store: Store, clock: FakeClock
) -> None:
    """renew_leases returns what it renewed; others' and ended processes are left out."""
    for i in range(3):
        await put(store, S.SCHEDULED, process_id=f"s{i}")
    await store.claim("w1", lease_seconds=10, limit=2)
    await store.claim("w2", lease_seconds=10, limit=1)
    await store.transition("s0", [S.SCHEDULED], S.RUNNING)
    clock.advance(8)
    renewed = await store.renew_leases("w1", ["s0", "s1", "s2", "ghost"], lease_seconds=10)
    assert sorted(renewed) == ["s0", "s1"]
    got = await store.get("s0")
    assert got is not None and got.lease_expires_at == T0 + timedelta(seconds=18)
    other = await store.get("s2")
    assert other is not None and other.lease_expires_at == T0 + timedelta(seconds=10)
    await store.transition("s0", [S.RUNNING], S.DONE)
    assert await store.renew_leases("w1", ["s0"], lease_seconds=10) == []


async def test_release_clears_only_the_workers_leases(store: Store) -> None:
    """release() gives processes back for another claim."""
    for i in range(2):
        await put(store, S.SCHEDULED, process_id=f"s{i}")
    await store.claim("w1", lease_seconds=10, limit=1)
    await store.claim("w2", lease_seconds=10, limit=1)
    assert await store.release("w1", ["s0", "s1"]) == ["s0"]
    assert _ids_of(await store.claim("w3", lease_seconds=10, limit=5)) == ["s0"]


async def test_claim_takes_only_the_served_process_ids(store: Store, clock: FakeClock) -> None:
    """A worker claims what it has definitions for; others stay queued for other workers."""
    for pid in ("mine-a", "theirs", "mine-b"):
        await put(store, S.SCHEDULED, process_id=pid)
    await put(
        store,
        S.SCHEDULED,
        process_id="mine-expired",
        lease_owner="dead",
        lease_expires_at=T0 + timedelta(seconds=1),
    )
    served = ["mine-a", "mine-b", "mine-expired", "unknown"]
    assert _ids_of(await store.claim("w", 10, 10, process_ids=served)) == ["mine-a", "mine-b"]
    clock.advance(2)
    assert _ids_of(await store.claim("w", 10, 10, process_ids=served)) == ["mine-expired"]
    assert await store.claim("w", 10, 10, process_ids=[]) == []
    assert _ids_of(await store.claim("w", 10, 10)) == ["theirs"]


async def test_renew_held_extends_every_active_lease_of_the_worker_and_reports_states(
    store: Store, clock: FakeClock
) -> None:
    """One call renews all the worker's active leases and says each one's state; others'
    leases, ended runs and updated_at are left alone."""
    for i in range(4):
        await put(store, S.SCHEDULED, process_id=f"s{i}")
    await store.claim("w1", lease_seconds=10, limit=3)
    await store.claim("w2", lease_seconds=10, limit=1)
    await store.transition("s0", [S.SCHEDULED], S.RUNNING)
    await store.transition("s1", [S.SCHEDULED], S.RUNNING)
    await store.transition("s1", [S.RUNNING], S.CANCEL_REQUESTED)
    await store.transition("s2", [S.SCHEDULED], S.RUNNING)
    await store.transition("s2", [S.RUNNING], S.DONE)
    before = await store.get("s0")
    clock.advance(8)
    held = await store.renew_held("w1", lease_seconds=10)
    assert sorted(held) == [("s0", S.RUNNING), ("s1", S.CANCEL_REQUESTED)]
    renewed = await store.get("s0")
    assert renewed is not None and before is not None
    assert renewed.lease_expires_at == T0 + timedelta(seconds=18)
    assert renewed.updated_at == before.updated_at
    other = await store.get("s3")
    assert other is not None and other.lease_expires_at == T0 + timedelta(seconds=10)
    assert await store.renew_held("nobody", lease_seconds=10) == []


async def test_expired_leases_lists_without_clearing(store: Store, clock: FakeClock) -> None:
    """What a reaper resolves: active, expired, owner intact, oldest expiry first."""
    for i in range(4):
        await put(store, S.SCHEDULED, process_id=f"s{i}")
    await store.claim("w1", lease_seconds=10, limit=1)
    await store.claim("w2", lease_seconds=5, limit=1)
    await store.claim("w3", lease_seconds=60, limit=1)
    await store.transition("s0", [S.SCHEDULED], S.RUNNING)
    await store.transition("s1", [S.SCHEDULED], S.RUNNING)
    assert await store.expired_leases() == []
    clock.advance(10)
    found = await store.expired_leases()
    assert [(r.process_id, r.lease_owner) for r in found] == [("s1", "w2"), ("s0", "w1")]
    assert len(await store.expired_leases(limit=1)) == 1
    again = await store.get("s0")
    assert again is not None and again.lease_owner == "w1"
    await store.transition("s0", [S.RUNNING], S.FAILED, expected_owner="w1")
    assert _ids_of(await store.expired_leases()) == ["s1"]


async def test_worker_records_are_put_listed_replaced_and_removed(store: Store) -> None:
    """put_worker upserts by incarnation; list_workers sorts by name; remove says if found."""
    first = WorkerRecord(
        incarnation="b-1",
        name="beta",
        host="h",
        pid=11,
        started_at=T0,
        renewed_at=T0,
        runs=0,
        concurrency=4,
        process_ids=("x", "y"),
    )
    await store.put_worker(first)
    await store.put_worker(dataclasses.replace(first, incarnation="a-1", name="alpha", pid=12))
    later = dataclasses.replace(first, renewed_at=T0 + timedelta(seconds=10), runs=3)
    await store.put_worker(later)
    workers = await store.list_workers()
    assert [w.incarnation for w in workers] == ["a-1", "b-1"]
    assert workers[1] == later
    assert await store.remove_worker("b-1") is True
    assert await store.remove_worker("b-1") is False
    assert [w.name for w in await store.list_workers()] == ["alpha"]


# -- cron ---------------------------------------------------------------------------------


async def test_mark_cron_tick_is_true_once_per_tick(backend: Backend) -> None:
    """Of many engines marking one tick at once, exactly one gets True."""
    async with backend.make() as a, backend.make() as b:
        await a.create(rec("cron"))
        tick = T0 + timedelta(minutes=5)
        results = await asyncio.gather(*(s.mark_cron_tick("cron", tick) for s in [a, b] * 5))
        assert results.count(True) == 1
        assert await a.mark_cron_tick("cron", tick) is False
        assert await b.mark_cron_tick("cron", tick - timedelta(minutes=1)) is False
        assert await b.mark_cron_tick("cron", tick + timedelta(minutes=1)) is True
        got = await a.get("cron")
        assert got is not None and got.last_cron_tick == tick + timedelta(minutes=1)


async def test_mark_cron_tick_of_a_missing_record_raises(store: Store) -> None:
    """ProcessNotFound, not False: a missing process is a bug to surface."""
    with pytest.raises(ProcessNotFound):
        await store.mark_cron_tick("ghost", T0)


# -- history ------------------------------------------------------------------------------


async def test_record_run_assigns_increasing_indexes(store: Store) -> None:
    """record_run returns the run with its position in the history."""
    first = await store.record_run(run_record())
    second = await store.record_run(run_record())
    assert first.index is not None and second.index is not None
    assert second.index > first.index


async def test_query_history_filters_newest_first(store: Store) -> None:
    """Filters by process, name, status and start time; newest first; limit."""
    await store.record_run(run_record(process_id="a", run_number=1, name="A"))
    await store.record_run(
        run_record(
            process_id="a",
            run_number=2,
            name="A",
            status=OperationStatus.FAILED,
            error="ValueError('x')",
            traceback="Traceback...",
            started_at=T0 + timedelta(hours=1),
        )
    )
    await store.record_run(run_record(process_id="b", run_number=1, name="B"))
    assert [r.run_number for r in await store.query_history(process_id="a")] == [2, 1]
    assert [r.process_id for r in await store.query_history()] == ["b", "a", "a"]
    assert [r.name for r in await store.query_history(name="B")] == ["B"]
    failed = await store.query_history(status=OperationStatus.FAILED)
    assert [(r.run_number, r.error, r.traceback) for r in failed] == [
        (2, "ValueError('x')", "Traceback...")
    ]
    since = await store.query_history(since=T0 + timedelta(minutes=30))
    assert [r.run_number for r in since] == [2]
    assert len(await store.query_history(limit=2)) == 2
    until = await store.query_history(until=T0 + timedelta(minutes=30))
    assert [(r.process_id, r.run_number) for r in until] == [("b", 1), ("a", 1)]


async def test_query_history_pages_by_index(store: Store) -> None:
    """``before`` keeps the runs recorded before a given index: a page's last index gives
    the next page, however the history grows meanwhile; it combines with the filters."""
    for i in range(7):
        await store.record_run(run_record(process_id="a" if i % 2 else "b", run_number=i))
    walked: list[int | None] = []
    before: int | None = None
    while page := await store.query_history(limit=3, before=before):
        walked += [r.run_number for r in page]
        before = page[-1].index
        await store.record_run(run_record(process_id="new", run_number=99))  # not seen
    assert walked == [6, 5, 4, 3, 2, 1, 0]
    newest_a = (await store.query_history(process_id="a", limit=1))[0]
    assert newest_a.index is not None
    older = await store.query_history(process_id="a", before=newest_a.index)
    assert [r.run_number for r in older] == [3, 1]
    one = await store.query_history(before=newest_a.index + 1, limit=1)  # = one run by index
    assert one == [newest_a]


async def test_concurrent_record_runs_each_come_back_as_recorded(store: Store) -> None:
    """Runs recorded at once (which a backend may insert in one statement) each come back
    with their own values and a distinct index, and the history holds exactly them."""
    runs = [
        run_record(process_id=f"p{i}", run_number=i, name=f"n{i}", metadata={"i": i})
        for i in range(25)
    ]
    recorded = await asyncio.gather(*(store.record_run(run) for run in runs))
    for run, got in zip(runs, recorded, strict=True):
        assert got == dataclasses.replace(run, index=got.index)
    assert len({got.index for got in recorded}) == 25
    history = await store.query_history()
    assert sorted(history, key=lambda r: r.process_id or "") == sorted(
        recorded, key=lambda r: r.process_id or ""
    )


async def test_history_keeps_every_field_and_survives_a_reopen(backend: Backend) -> None:
    """A run read back after closing and reopening the store equals the one recorded."""
    run = run_record(
        process_id="p",
        run_number=3,
        status=OperationStatus.CANCELLED,
        result="None",
        cancel_reason=None,
        cancel_message="user asked",
        parent_id="parent",
        metadata={"customer": "2", "n": [1, 2]},
        ended_at=None,
        duration=None,
    )
    async with backend.make() as store:
        recorded = await store.record_run(run)
    async with backend.make() as store:
        got = await store.query_history(process_id="p")
    assert got == [recorded]
    assert recorded == dataclasses.replace(run, index=recorded.index)


async def test_records_survive_a_reopen(backend: Backend) -> None:
    """Process records persist across close and open (on the memory store: same instance)."""
    async with backend.make() as store:
        created = await store.create(rec("keep", params={"a": 1}))
    async with backend.make() as store:
        assert await store.get("keep") == created


# -- migrations ---------------------------------------------------------------------------


async def test_opening_again_applies_no_migration_twice(backend: Backend) -> None:
    """Migrations are idempotent: many opens, data intact."""
    async with backend.make() as store:
        await store.create(rec("m"))
    for _ in range(3):
        async with backend.make() as store:
            assert await store.get("m") is not None


async def test_concurrent_first_opens_migrate_once(backend: Backend) -> None:
    """Several stores opening a fresh database at once apply each migration once."""
    if backend.name == "memory":
        pytest.skip("the memory store has no schema")
    stores = [backend.make() for _ in range(4)]
    await asyncio.gather(*(store.open() for store in stores))
    try:
        await stores[0].create(rec("m"))
        assert all([await store.get("m") is not None for store in stores])
    finally:
        await asyncio.gather(*(store.close() for store in stores))
    for _ in range(2):
        async with backend.make():
            pass
    assert await backend.schema_versions() == list(range(1, _latest(backend.name) + 1))


def _latest(name: str) -> int:
    return load_migrations("postgres" if name == "postgres" else name, "x")[-1][0]


async def test_a_version_1_database_is_upgraded_on_open(backend: Backend) -> None:
    """Opening a database at schema version 1 applies the later migrations, keeps the data,
    and claiming works on the result."""
    if backend.name == "memory":
        pytest.skip("the memory store has no schema")
    async with backend.make() as store:
        await store.create(rec("old", state=S.SCHEDULED))
    await backend.run_sql(
        "DROP INDEX {p}_processes_claim",
        "ALTER TABLE {p}_processes DROP COLUMN on_worker_lost",
        "ALTER TABLE {p}_processes DROP COLUMN lost_retries",
        "ALTER TABLE {p}_processes DROP COLUMN lost_count",
        "ALTER TABLE {p}_processes DROP COLUMN attempt",
        "ALTER TABLE {p}_processes DROP COLUMN next_attempt_at",
        "ALTER TABLE {p}_processes DROP COLUMN lease_seconds",
        "DROP TABLE {p}_workers",
        *(
            ["DROP TABLE {p}_scope_ids", "DROP TABLE {p}_scopes"]
            if backend.name == "postgres"
            else []
        ),
        "DELETE FROM {p}_schema_version WHERE version > 1",
    )
    assert await backend.schema_versions() == [1]
    async with backend.make() as store:
        assert _ids_of(await store.claim("w", 30, 5)) == ["old"]
    assert await backend.schema_versions() == list(range(1, _latest(backend.name) + 1))


async def test_a_newer_schema_refuses_to_open(backend: Backend) -> None:
    """A database migrated by a newer taskwarden raises SchemaError on open."""
    if backend.name == "memory":
        pytest.skip("the memory store has no schema")
    async with backend.make():
        pass
    await backend.set_schema_version(999)
    store = backend.make()
    with pytest.raises(SchemaError):
        await store.open()
    await store.close()


# -- open_store ---------------------------------------------------------------------------


def test_open_store_picks_the_backend_from_the_url(tmp_path: Path) -> None:
    """memory://, sqlite:///relative, sqlite:////absolute, sqlite:// and postgres(ql)://."""
    assert isinstance(open_store("memory://"), MemoryStore)
    relative = open_store("sqlite:///data/tw.db")
    assert isinstance(relative, SQLiteStore) and relative.path == "data/tw.db"
    absolute = open_store(f"sqlite:///{tmp_path}/tw.db", prefix="app")
    assert isinstance(absolute, SQLiteStore) and absolute.path == f"{tmp_path}/tw.db"
    assert absolute.prefix == "app"
    default = open_store("sqlite://")
    assert isinstance(default, SQLiteStore) and default.path == DEFAULT_SQLITE_PATH
    assert isinstance(open_store("postgresql://u@h/db"), PostgresStore)
    assert isinstance(open_store("postgres://u@h/db"), PostgresStore)


def test_open_store_refuses_an_unknown_scheme_listing_the_valid_ones() -> None:
    """A typo gets a ConfigurationError that says what would work."""
    for url in ("mysql://x", "sqlite3:///x.db", "taskwarden.db"):
        with pytest.raises(ConfigurationError) as info:
            open_store(url)
        for form in ("memory://", "sqlite:///", "postgresql://"):
            assert form in str(info.value)


def test_open_store_refuses_an_unsafe_prefix() -> None:
    """The prefix becomes part of SQL identifiers, so only safe names pass."""
    with pytest.raises(ConfigurationError):
        open_store("sqlite:///x.db", prefix="x; DROP TABLE y")


def test_open_store_names_the_extra_when_the_driver_is_missing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Without asyncpg, postgresql:// says to install taskwarden[postgres]."""
    monkeypatch.setitem(sys.modules, "asyncpg", None)
    monkeypatch.delitem(sys.modules, "taskwarden.stores.postgres")
    with pytest.raises(MissingExtra) as info:
        open_store("postgresql://u@h/db")
    assert info.value.extra == "postgres"
    assert "taskwarden[postgres]" in str(info.value)


async def test_sqlite_stores_in_two_threads_share_one_file(tmp_path: Path) -> None:
    """Two SQLite stores (two connections, two threads) on one file see each other's
    writes and never both win a compare-and-set."""
    path = tmp_path / "shared.db"
    async with SQLiteStore(path) as a, SQLiteStore(path) as b:
        await a.create(rec("shared", state=S.IDLE))
        seen = await b.get("shared")
        assert seen is not None and seen.state is S.IDLE
        results = await asyncio.gather(
            *(s.transition("shared", [S.IDLE], S.SCHEDULED) for s in [a, b] * 25),
            return_exceptions=True,
        )
        assert sum(isinstance(r, ProcessRecord) for r in results) == 1
        assert a._db is not b._db


async def test_sqlite_store_uses_wal(tmp_path: Path) -> None:
    """The file is in WAL mode, so readers never block the writer."""
    async with SQLiteStore(tmp_path / "wal.db"):
        pass
    with contextlib.closing(sqlite3.connect(tmp_path / "wal.db")) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


async def test_an_unreachable_postgres_server_is_a_store_error() -> None:
    """Connection refused is retried briefly, then raised as StoreError."""
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    store = PostgresStore(f"postgresql://nobody@127.0.0.1:{port}/none")
    with pytest.raises(StoreError):
        await asyncio.wait_for(store.open(), 30)
    with pytest.raises(StoreError):
        await store.get("x")


# -- call order ---------------------------------------------------------------------------


async def test_a_store_that_executes_in_order_runs_a_dependent_call_issued_early(
    store: Store,
) -> None:
    """executes_in_order promises that a verb issued before the previous one's answer came
    back still sees its effect (the engine relies on it to start a run behind its launch)."""
    await store.create(rec("ordered"))
    S = ProcessState
    first = asyncio.ensure_future(store.transition("ordered", {S.IDLE}, S.SCHEDULED))
    second = asyncio.ensure_future(store.transition("ordered", {S.SCHEDULED}, S.RUNNING))
    outcomes = await asyncio.gather(first, second, return_exceptions=True)
    if store.executes_in_order:
        assert [r.state for r in outcomes if isinstance(r, ProcessRecord)] == [
            S.SCHEDULED,
            S.RUNNING,
        ]
    else:  # no promise: the second may lose the race, but never both win wrongly
        assert isinstance(outcomes[0], ProcessRecord)
        record = await store.get("ordered")
        assert record is not None and record.state in {S.SCHEDULED, S.RUNNING}


async def test_a_tasks_own_lease_overrides_the_workers_in_claims_and_renewals(
    store: Store, clock: FakeClock
) -> None:
    """A record with ``lease_seconds`` (its task's override) gets that lease from a claim
    (with or without start), ``renew_leases`` and ``renew_held``; the others get the
    worker's. The override is a definition field: it round-trips and can be changed."""
    await put(store, S.SCHEDULED, process_id="long", lease_seconds=90.5)
    await put(store, S.SCHEDULED, process_id="plain")
    await put(store, S.SCHEDULED, process_id="started", lease_seconds=45.0)
    claimed = {r.process_id: r for r in await store.claim("w", 10, 2)}
    assert claimed["long"].lease_expires_at == T0 + timedelta(seconds=90.5)
    assert claimed["long"].lease_seconds == 90.5
    assert claimed["plain"].lease_expires_at == T0 + timedelta(seconds=10)
    [started] = await store.claim("w", 10, 5, start=True)
    assert started.state is S.RUNNING and started.lease_expires_at == T0 + timedelta(seconds=45)
    clock.advance(5)
    assert sorted(await store.renew_leases("w", ["long", "plain"], lease_seconds=10)) == [
        "long",
        "plain",
    ]
    expiries = {r.process_id: r.lease_expires_at for r in await store.list()}
    assert expiries == {
        "long": T0 + timedelta(seconds=95.5),
        "plain": T0 + timedelta(seconds=15),
        "started": T0 + timedelta(seconds=45),
    }
    clock.advance(5)
    assert len(await store.renew_held("w", lease_seconds=10)) == 3
    after = {r.process_id: r.lease_expires_at for r in await store.list()}
    assert after == {
        "long": T0 + timedelta(seconds=100.5),
        "plain": T0 + timedelta(seconds=20),
        "started": T0 + timedelta(seconds=55),
    }
    changed = await store.update_definition("long", lease_seconds=None)
    assert changed.lease_seconds is None
    await store.renew_held("w", lease_seconds=10)
    got = await store.get("long")
    assert got is not None and got.lease_expires_at == T0 + timedelta(seconds=20)


async def test_expected_fields_guard_a_transition_in_the_same_write(store: Store) -> None:
    """``expected_fields`` adds field conditions to the compare-and-set: a child is not
    launched as a root, a non-cancellable process is not cancelled; the refusal says which
    field, the record is untouched; a bad guard is refused before any I/O. Batched calls
    (one loop turn) keep each call's own outcome."""
    await put(store, S.IDLE, process_id="root")
    await put(store, S.IDLE, process_id="child", parent_id="root", root_id="root", depth=1)
    await put(store, S.RUNNING, process_id="fixed", cancellable=False)
    await put(store, S.RUNNING, process_id="soft")
    roots = {"parent_id": None}
    launched = await store.transition("root", [S.IDLE], S.SCHEDULED, expected_fields=roots)
    assert launched.state is S.SCHEDULED
    with pytest.raises(InvalidTransition, match="does not have parent_id=None") as refused:
        await store.transition("child", [S.IDLE], S.SCHEDULED, expected_fields=roots)
    assert refused.value.current == S.IDLE
    with pytest.raises(InvalidTransition) as wrong_state:
        await store.transition("root", [S.IDLE], S.SCHEDULED, expected_fields=roots)
    assert wrong_state.value.current == S.SCHEDULED and "does not have" not in str(
        wrong_state.value
    )
    cancellable = {"cancellable": True}
    outcomes = await asyncio.gather(
        store.transition("fixed", [S.RUNNING], S.CANCEL_REQUESTED, expected_fields=cancellable),
        store.transition("soft", [S.RUNNING], S.CANCEL_REQUESTED, expected_fields=cancellable),
        return_exceptions=True,
    )
    assert isinstance(outcomes[0], InvalidTransition) and "cancellable=True" in str(outcomes[0])
    assert isinstance(outcomes[1], ProcessRecord) and outcomes[1].state is S.CANCEL_REQUESTED
    for pid, state in (("child", S.IDLE), ("fixed", S.RUNNING)):
        got = await store.get(pid)
        assert got is not None and got.state is state
    with pytest.raises(ProcessNotFound):
        await store.transition("ghost", [S.IDLE], S.SCHEDULED, expected_fields=roots)
    bad_guards: list[dict[str, Any]] = [{"name": None}, {"parent_id": "root"}]
    for bad in bad_guards:
        with pytest.raises(InvalidTransition, match="expected_fields takes"):
            await store.transition("root", [S.SCHEDULED], S.RUNNING, expected_fields=bad)
