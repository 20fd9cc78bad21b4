"""SQLite specifics beyond the shared contract: batching, locking, several OS processes."""

from __future__ import annotations

import asyncio
import sqlite3
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from taskwarden.errors import InvalidDefinition, StoreError
from taskwarden.processes import ProcessRecord, ProcessState
from taskwarden.stores.sqlite import SQLiteStore
from taskwarden.stores.sqlite_support import ALONE, WRITE

S = ProcessState


def rec(process_id: str, **fields: object) -> ProcessRecord:
    """A record with defaults."""
    fields.setdefault("name", process_id)
    return ProcessRecord(process_id=process_id, **fields)  # type: ignore[arg-type]


async def test_a_failing_call_does_not_fail_the_others_in_its_batch(tmp_path: Path) -> None:
    """A database error in one queued call rolls back only that call; its batch-mates
    commit and answer normally."""
    async with SQLiteStore(tmp_path / "s.db") as store:
        # Park the database thread so that every call below lands in one batch.
        gate = threading.Event()
        parked = store._submit(ALONE, gate.wait)
        good = [store.create(rec(f"ok{i}")) for i in range(10)]
        bad = store.create(rec("bad", description=object()))  # cannot be bound
        calls = asyncio.gather(*good[:5], bad, *good[5:], return_exceptions=True)
        await asyncio.sleep(0)  # let every call queue up
        gate.set()
        await parked
        results = await calls
        assert isinstance(results[5], StoreError)
        assert isinstance(results[5].__cause__, sqlite3.Error)
        assert all(isinstance(r, ProcessRecord) for i, r in enumerate(results) if i != 5)
        assert len(await store.list()) == 10
        assert await store.get("bad") is None


async def test_calls_made_in_one_loop_iteration_share_one_transaction(tmp_path: Path) -> None:
    """The calls a loop iteration makes reach the database thread together: 20 writes
    made in one iteration commit in one transaction, even with pauses between them in
    which the thread could have woken for the first and committed it alone."""
    async with SQLiteStore(tmp_path / "s.db") as store:
        assert store._db is not None
        before = store._db.transactions
        calls = []
        for i in range(20):
            calls.append(store._submit(WRITE, _touch, i))
            time.sleep(0.002)  # noqa: ASYNC251 - holds the loop: the thread is free to run
        assert await asyncio.gather(*calls) == list(range(20))
        assert store._db.transactions - before == 1


def _touch(conn: sqlite3.Connection, value: int) -> int:
    (got,) = conn.execute("SELECT ?", (value,)).fetchone()
    return int(got)


async def test_a_lock_held_too_long_is_a_store_error_and_the_store_recovers(
    tmp_path: Path,
) -> None:
    """Another connection holding the write lock past busy_timeout (and the retries)
    gives StoreError; once it lets go, the same store works again."""
    path = tmp_path / "s.db"
    async with SQLiteStore(path, busy_timeout=0.01) as store:
        await store.create(rec("p"))
        blocker = sqlite3.connect(path, isolation_level=None)
        try:
            blocker.execute("BEGIN IMMEDIATE")
            with pytest.raises(StoreError) as info:
                await store.transition("p", [S.IDLE], S.SCHEDULED)
            assert "locked" in str(info.value)
            blocker.execute("ROLLBACK")
        finally:
            blocker.close()
        moved = await store.transition("p", [S.IDLE], S.SCHEDULED)
        assert moved.state is S.SCHEDULED


async def test_close_finishes_what_is_queued(tmp_path: Path) -> None:
    """Calls queued before close() complete; calls after it raise StoreError."""
    store = SQLiteStore(tmp_path / "s.db")
    await store.open()
    pending = [asyncio.ensure_future(store.create(rec(f"q{i}"))) for i in range(20)]
    await asyncio.sleep(0)
    await store.close()
    assert all(isinstance(task.result(), ProcessRecord) for task in pending)
    with pytest.raises(StoreError):
        await store.get("q0")
    async with SQLiteStore(tmp_path / "s.db") as again:
        assert len(await again.list()) == 20


async def test_an_in_memory_database_works(tmp_path: Path) -> None:
    """sqlite:///:memory: gives a private, working database (one connection)."""
    async with SQLiteStore(":memory:") as store:
        await store.create(rec("m"))
        assert await store.get("m") is not None


_CLAIMER = textwrap.dedent(
    """
    import asyncio, sys
    from taskwarden.stores.sqlite import SQLiteStore

    async def main(path, worker):
        got = []
        async with SQLiteStore(path) as store:
            print("ready", flush=True)
            sys.stdin.readline()
            while batch := await store.claim(worker, 60, 2):
                got.extend(r.process_id for r in batch)
        print(" ".join(got), flush=True)

    asyncio.run(main(sys.argv[1], sys.argv[2]))
    """
)


@pytest.mark.slow
async def test_claimers_in_separate_os_processes_never_share_a_process(tmp_path: Path) -> None:
    """Three OS processes claiming from one file split the work exactly."""
    path = tmp_path / "shared.db"
    async with SQLiteStore(path) as store:
        for i in range(150):
            await store.create(rec(f"c{i:03d}", state=S.SCHEDULED))
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            _CLAIMER,
            str(path),
            f"w{n}",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        for n in range(3)
    ]
    try:
        for proc in procs:
            assert proc.stdout is not None
            line = await asyncio.wait_for(proc.stdout.readline(), 30)
            assert line.strip() == b"ready"
        for proc in procs:  # let them go together
            assert proc.stdin is not None
            proc.stdin.write(b"go\n")
            await proc.stdin.drain()
        outputs = [await asyncio.wait_for(proc.communicate(), 60) for proc in procs]
    finally:
        for proc in procs:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    claimed = [pid for out, _ in outputs for pid in out.decode().split()]
    assert sorted(claimed) == [f"c{i:03d}" for i in range(150)]
    assert all(proc.returncode == 0 for proc in procs)
    async with SQLiteStore(path) as store:
        owners = {r.lease_owner for r in await store.list()}
    assert owners <= {"w0", "w1", "w2"}


async def test_an_unopenable_file_is_a_store_error(tmp_path: Path) -> None:
    """A path SQLite cannot open fails open() with StoreError, and the thread is gone."""
    store = SQLiteStore(tmp_path / "missing-dir" / "s.db")
    with pytest.raises(StoreError):
        await store.open()
    with pytest.raises(StoreError):
        await store.get("x")


async def test_a_missing_required_value_is_invalid_definition(tmp_path: Path) -> None:
    """A record without a name is refused as a definition error, not as a duplicate."""
    async with SQLiteStore(tmp_path / "s.db") as store:
        with pytest.raises(InvalidDefinition) as info:
            await store.create(rec("nameless", name=None))
        assert "exists" not in str(info.value)
