"""The CLI suites run every command against a SQLite file and a PostgreSQL database, each
filled by a real engine once per test module."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.cli.support import populate
from tests.store_support import postgres_database

__all__ = ["postgres_database", "store"]


@pytest.fixture(
    scope="module",
    params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)],
)
def store(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The URL of a store filled by :func:`~tests.cli.support.populate`."""
    if request.param == "sqlite":
        path: Path = tmp_path_factory.mktemp("cli") / "tw.db"
        url = f"sqlite:///{path}"
    else:
        url = request.getfixturevalue("postgres_database")
    asyncio.run(populate(url))
    return url
