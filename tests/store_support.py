"""Support for the suites that run stores on PostgreSQL: a database of their own.

``postgres_database`` is a module-scoped fixture: import it into a test module and every
test there shares one fresh database on the test server (isolate tests further with a
table prefix each). :func:`temporary_database` is the same as a context manager.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import uuid
from collections.abc import Iterator

import asyncpg
import pytest

__all__ = ["postgres_database", "temporary_database"]


def _admin(server_url: str, sql: str) -> None:
    async def execute() -> None:
        conn = await asyncpg.connect(server_url)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    # Often first needed from inside a test's running loop: use a loop of our own.
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, execute()).result()


@contextlib.contextmanager
def temporary_database(server_url: str, stem: str = "tw") -> Iterator[str]:
    """Create a database named ``<stem>_<random>`` on the server; yield its URL; drop it."""
    name = f"{stem}_{uuid.uuid4().hex[:10]}"
    _admin(server_url, f"CREATE DATABASE {name}")
    try:
        yield server_url.rsplit("/", 1)[0] + "/" + name
    finally:
        _admin(server_url, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture(scope="module")
def postgres_database(postgres_server_url: str, request: pytest.FixtureRequest) -> Iterator[str]:
    """A database created for the requesting test module on the test server, dropped
    afterwards (named after the module)."""
    stem = "tw_" + request.module.__name__.rsplit(".", 1)[-1].removeprefix("test_")
    with temporary_database(postgres_server_url, stem[:40]) as url:
        yield url
