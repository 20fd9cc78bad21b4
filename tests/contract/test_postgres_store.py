"""PostgreSQL specifics beyond the shared contract: SKIP LOCKED claiming, the pool."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest

from taskwarden.errors import InvalidTransition
from taskwarden.processes import ProcessRecord, ProcessState
from taskwarden.stores.postgres import PostgresStore

S = ProcessState
pytestmark = pytest.mark.postgres


@pytest.fixture
async def prefix(postgres_server_url: str) -> AsyncIterator[str]:
    """A unique table prefix in the server's database, dropped afterwards."""
    name = f"pg{uuid.uuid4().hex[:12]}"
    yield name
    conn = await asyncpg.connect(postgres_server_url)
    try:
        for table in ("processes", "runs", "schema_version", "workers", "scope_ids", "scopes"):
            await conn.execute(f"DROP TABLE IF EXISTS {name}_{table}")
    finally:
        await conn.close()


async def test_claim_skips_rows_locked_by_another_transaction(
    postgres_server_url: str, prefix: str
) -> None:
    """A claimer neither waits for nor takes a row another transaction holds locked."""
    async with PostgresStore(postgres_server_url, prefix=prefix) as store:
        for i in range(3):
            await store.create(ProcessRecord(process_id=f"s{i}", name="S", state=S.SCHEDULED))
        other = await asyncpg.connect(postgres_server_url)
        try:
            async with other.transaction():
                await other.execute(
                    f"SELECT 1 FROM {prefix}_processes WHERE process_id = 's0' FOR UPDATE"
                )
                claimed = await asyncio.wait_for(store.claim("w", 30, limit=10), 10)
                assert sorted(r.process_id for r in claimed) == ["s1", "s2"]
            again = await store.claim("w2", 30, limit=10)
            assert [r.process_id for r in again] == ["s0"]
        finally:
            await other.close()


async def test_a_transition_waits_for_a_locked_row_then_compares_the_new_state(
    postgres_server_url: str, prefix: str
) -> None:
    """A compare-and-set blocked by another writer re-reads the committed state: it
    fails if that writer moved the record away from the expected state."""
    async with PostgresStore(postgres_server_url, prefix=prefix) as store:
        await store.create(ProcessRecord(process_id="p", name="P", state=S.SCHEDULED))
        other = await asyncpg.connect(postgres_server_url)
        try:
            tx = other.transaction()
            await tx.start()
            await other.execute(
                f"UPDATE {prefix}_processes SET state = 'cancelled' WHERE process_id = 'p'"
            )
            attempt = asyncio.ensure_future(store.transition("p", [S.SCHEDULED], S.RUNNING))
            done, _ = await asyncio.wait({attempt}, timeout=0.2)
            assert not done  # blocked on the row lock
            await tx.commit()
        finally:
            await other.close()
        with pytest.raises(InvalidTransition) as info:
            await asyncio.wait_for(attempt, 10)
        assert info.value.current == "cancelled"


async def test_leases_are_stamped_and_compared_by_the_database_clock(
    postgres_server_url: str, prefix: str
) -> None:
    """Without a clock of its own the store leaves lease times to ``now()`` in the
    database: a writer whose wall clock is decades off still claims leases that end
    ``lease_seconds`` after the database's now, renews them so, and sees as expired what
    the database sees as expired."""
    from datetime import UTC, datetime, timedelta

    from taskwarden.clock import FakeClock

    async with PostgresStore(postgres_server_url, prefix=prefix) as store:
        store.clock = FakeClock(wall_start=datetime(2001, 1, 1, tzinfo=UTC))  # a skewed host
        for pid in ("a", "b"):
            await store.create(ProcessRecord(process_id=pid, name=pid, state=S.SCHEDULED))
        conn = await asyncpg.connect(postgres_server_url)
        try:
            db_now: datetime = await conn.fetchval("SELECT now()")
        finally:
            await conn.close()
        [claimed] = await store.claim("w", 30, limit=1, process_ids=["a"])
        assert claimed.lease_expires_at is not None
        assert abs(claimed.lease_expires_at - (db_now + timedelta(seconds=30))) < timedelta(
            seconds=10
        )
        [(renewed, _)] = await store.renew_held("w", 60)
        got = await store.get(renewed)
        assert got is not None and got.lease_expires_at is not None
        assert got.lease_expires_at - db_now > timedelta(seconds=50)
        # A lease that ended by the database's clock is expired, whatever this host says.
        await store.claim("w2", 0.0, limit=1, process_ids=["b"])  # ends at once
        assert [r.process_id for r in await store.expired_leases()] == ["b"]


async def _scopes(url: str, prefix: str) -> dict[str, int]:
    """Each stored claim scope with how many ids it holds."""
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch(
            f"SELECT c.scope, count(i.process_id) FROM {prefix}_scopes AS c "
            f"LEFT JOIN {prefix}_scope_ids AS i USING (scope) GROUP BY c.scope"
        )
    finally:
        await conn.close()
    return {row[0]: row[1] for row in rows}


async def test_workers_with_the_same_definitions_share_one_stored_scope(
    postgres_server_url: str, prefix: str
) -> None:
    """The served list is stored once under a digest of its content: two processes
    claiming from the same ids load one scope, a different list is another."""
    async with (
        PostgresStore(postgres_server_url, prefix=prefix) as one,
        PostgresStore(postgres_server_url, prefix=prefix) as two,
    ):
        for pid in ("a", "b", "c"):
            await one.create(ProcessRecord(process_id=pid, name=pid, state=S.SCHEDULED))
        [first] = await one.claim("w1", 30, 1, process_ids=["a", "b"])
        [second] = await two.claim("w2", 30, 1, process_ids=("a", "b"))
        assert {first.process_id, second.process_id} == {"a", "b"}
        assert sorted((await _scopes(postgres_server_url, prefix)).values()) == [2]
        [third] = await two.claim("w2", 30, 1, process_ids=["c"])
        assert third.process_id == "c"
        assert sorted((await _scopes(postgres_server_url, prefix)).values()) == [1, 2]


async def test_a_scope_deleted_behind_a_workers_back_is_loaded_again(
    postgres_server_url: str, prefix: str
) -> None:
    """A store keeps the scopes it loaded; when another process's clean-up deleted one,
    the next claim that finds nothing sees it is gone, loads it again and claims."""
    async with PostgresStore(postgres_server_url, prefix=prefix) as store:
        for pid in ("a", "b"):
            await store.create(ProcessRecord(process_id=pid, name=pid, state=S.SCHEDULED))
        [first] = await store.claim("w", 30, 1, process_ids=["a", "b"])
        conn = await asyncpg.connect(postgres_server_url)
        try:
            await conn.execute(f"DELETE FROM {prefix}_scopes")
        finally:
            await conn.close()
        [second] = await store.claim("w", 30, 1, process_ids=["a", "b"])
        assert {first.process_id, second.process_id} == {"a", "b"}
        assert sorted((await _scopes(postgres_server_url, prefix)).values()) == [2]


async def test_scopes_nobody_loaded_for_a_week_are_deleted_when_one_is_loaded(
    postgres_server_url: str, prefix: str
) -> None:
    """Loading a scope deletes those last loaded more than a week ago (old definitions of
    a past deployment) with their ids, and keeps the ones loaded within the week."""
    from datetime import timedelta

    async with PostgresStore(postgres_server_url, prefix=prefix) as store:
        await store.create(ProcessRecord(process_id="x", name="x", state=S.SCHEDULED))
        for ids in (["old"], ["recent"]):
            assert await store.claim("w", 30, 1, process_ids=ids) == []
        scopes = await _scopes(postgres_server_url, prefix)
        conn = await asyncpg.connect(postgres_server_url)
        try:
            [old, recent] = [
                await conn.fetchval(
                    f"SELECT scope FROM {prefix}_scope_ids WHERE process_id = $1", pid
                )
                for pid in ("old", "recent")
            ]
            for scope, age in ((old, timedelta(days=8)), (recent, timedelta(days=6))):
                await conn.execute(
                    f"UPDATE {prefix}_scopes SET loaded_at = now() - $2::interval WHERE scope = $1",
                    scope,
                    age,
                )
        finally:
            await conn.close()
        assert set(scopes) == {old, recent}
        [claimed] = await store.claim("w", 30, 1, process_ids=["x"])
        assert claimed.process_id == "x"
        after = await _scopes(postgres_server_url, prefix)
        assert old not in after and after[recent] == 1 and len(after) == 2


async def test_a_scope_in_use_is_loaded_again_each_day_and_checked_at_most_every_30_s(
    postgres_server_url: str, prefix: str
) -> None:
    """A long-lived worker loads its scope again after a day (so the week-long clean-up
    never takes a scope in use); a claim that finds nothing checks that the scope still
    exists at most every 30 s, so an idle poll is one statement."""
    from datetime import UTC, datetime

    from taskwarden.clock import FakeClock

    async def loaded_at() -> datetime:
        conn = await asyncpg.connect(postgres_server_url)
        try:
            value: datetime = await conn.fetchval(f"SELECT max(loaded_at) FROM {prefix}_scopes")
        finally:
            await conn.close()
        return value

    async def sql(statement: str) -> None:
        conn = await asyncpg.connect(postgres_server_url)
        try:
            await conn.execute(statement)
        finally:
            await conn.close()

    clock = FakeClock(wall_start=datetime.now(UTC))
    async with PostgresStore(postgres_server_url, prefix=prefix) as store:
        store.clock = clock
        ids = ["a", "b"]
        assert await store.claim("w", 30, 1, process_ids=ids) == []  # loads, then checks
        await sql(f"UPDATE {prefix}_scopes SET loaded_at = now() - interval '6 days'")
        old = await loaded_at()
        clock.advance(86_399)
        assert await store.claim("w", 30, 1, process_ids=ids) == []
        assert await loaded_at() == old
        clock.advance(1)
        assert await store.claim("w", 30, 1, process_ids=ids) == []
        assert await loaded_at() > old  # loaded again: in use
        clock.advance(30)
        assert await store.claim("w", 30, 1, process_ids=ids) == []  # checked now
        # Deleted behind its back: found out at the first empty claim 30 s after that check.
        await sql(f"DELETE FROM {prefix}_scopes")
        await store.create(ProcessRecord(process_id="a", name="a", state=S.SCHEDULED))
        clock.advance(29)
        assert await store.claim("w", 30, 1, process_ids=ids) == []
        clock.advance(1)
        [claimed] = await store.claim("w", 30, 1, process_ids=ids)
        assert claimed.process_id == "a"
