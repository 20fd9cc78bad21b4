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
        for table in ("processes", "runs", "schema_version"):
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
