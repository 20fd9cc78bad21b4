"""The PostgreSQL store's codecs, constants and connection hooks."""

from __future__ import annotations

import dataclasses
from datetime import datetime
from typing import Any

import asyncpg

from taskwarden.processes import ACTIVE_STATES, ProcessState
from taskwarden.stores.base import (
    PROCESS_COLUMNS,
    Guard,
    decode_log,
    field_encoder,
    json_loads,
    record_decoder,
    run_decoder,
    to_utc,
)

__all__ = [
    "ACTIVE",
    "COLS",
    "FIELD_TYPES",
    "JSON_TEXT_FIELDS",
    "RUN_TYPES",
    "TRANSIENT",
    "Call",
    "encode_field",
    "init_connection",
    "is_transient",
    "keep_session",
    "record_from_row",
    "row_count",
    "run_from_row",
]

COLS = ", ".join(PROCESS_COLUMNS)
"""The process columns, in record field order, for SELECT and RETURNING lists."""

RUN_TYPES = (
    "text",
    "text",
    "text",
    "text",
    "timestamptz",
    "timestamptz",
    "float8",
    "text",
    "text",
    "text",
    "text",
    "text",
    "text",
    "jsonb",
    "text",
    "integer",
)
"""The SQL types of RUN_COLUMNS[1:], for parameters that have no column to infer them from."""

ACTIVE = sorted(state.value for state in ACTIVE_STATES)
"""The active states' values, as a query argument."""

TRANSIENT: tuple[type[BaseException], ...] = (
    asyncpg.exceptions.SerializationError,
    asyncpg.exceptions.DeadlockDetectedError,
    asyncpg.exceptions.TooManyConnectionsError,
    asyncpg.exceptions.CannotConnectNowError,
    ConnectionRefusedError,
)
"""Errors after which the statement certainly did not commit, so running it again is safe."""


FIELD_TYPES = {
    "error": "text",
    "running_since": "timestamptz",
    "done_at": "timestamptz",
    "duration": "float8",
    "failed_at": "timestamptz",
    "stopped_at": "timestamptz",
    "progress_percent": "float8",
    "progress_message": "text",
    "log": "text",
    "run_number": "int4",
    "lease_owner": "text",
    "lease_expires_at": "timestamptz",
    "lost_count": "int4",
    "attempt": "int4",
    "next_attempt_at": "timestamptz",
}
"""The SQL type of each runtime field, for the arrays of a batched transition."""

JSON_TEXT_FIELDS = frozenset({"log"})
"""Runtime fields sent as JSON text and cast to jsonb in SQL."""


@dataclasses.dataclass(slots=True, kw_only=True)
class Call:
    """One transition waiting to share a statement with others of its shape."""

    process_id: str
    expected: str
    owner: str | None
    target: ProcessState
    now: datetime
    values: list[Any]
    run: tuple[Any, ...] | None
    guard: Guard = ()


def is_transient(exc: BaseException) -> bool:
    """True for errors after which nothing was committed, so a retry is safe."""
    return isinstance(exc, TRANSIENT)


def _same(value: Any) -> Any:
    return value


record_from_row = record_decoder(
    json=_same, boolean=bool, time=_same, required_time=_same, log=decode_log
)
"""A row in PROCESS_COLUMNS order as a record (asyncpg decoded the values already)."""

encode_field = field_encoder(time=to_utc, boolean=bool)
"""One field's value as asyncpg sends it (JSON as text, times as aware UTC)."""

run_from_row = run_decoder(json=_same, time=_same, required_time=_same)
"""A row in RUN_COLUMNS order as a run record."""


def row_count(status: str) -> int:
    """The row count of a command status such as ``UPDATE 3``."""
    return int(status.rsplit(" ", 1)[-1])


async def init_connection(conn: asyncpg.Connection) -> None:
    """Pool init hook: JSON columns travel as text we encode and decode ourselves."""
    # JSON travels as text we encoded ourselves (json_dumps refuses non-JSON values the
    # same way on every backend); decoding gives plain dicts and lists.
    for type_name in ("jsonb", "json"):
        await conn.set_type_codec(
            type_name, encoder=str, decoder=json_loads, schema="pg_catalog", format="text"
        )


async def keep_session(conn: asyncpg.Connection) -> None:
    """Pool reset hook: nothing to undo.

    The default reset sends ``RESET ALL; UNLISTEN *; ...`` on every release, one extra
    round trip per verb; this store never changes session state (no SET, LISTEN, session
    advisory locks or cursors), and asyncpg still rolls back an open transaction itself.
    """
