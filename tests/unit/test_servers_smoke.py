"""The server fixtures give real, reachable servers."""

from __future__ import annotations

import asyncpg
import pytest
import redis.asyncio as aioredis


@pytest.mark.postgres
async def test_postgres_fixture_serves_queries(postgres_server_url: str) -> None:
    conn = await asyncpg.connect(postgres_server_url)
    try:
        assert await conn.fetchval("SELECT 40 + 2") == 42
    finally:
        await conn.close()


@pytest.mark.redis
async def test_redis_fixture_answers_ping(redis_server_url: str) -> None:
    client = aioredis.from_url(redis_server_url)
    try:
        assert await client.ping() is True
    finally:
        await client.aclose()
