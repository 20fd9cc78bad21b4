"""The PostgreSQL store's codecs, constants and connection hooks."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

import asyncpg

from taskwarden.model import CancelationReason, OperationStatus, RunRecord
from taskwarden.processes import ACTIVE_STATES, LogEntry, ProcessRecord, ProcessState
from taskwarden.stores.base import (
    BOOL_FIELDS,
    JSON_FIELDS,
    PROCESS_COLUMNS,
    TIME_FIELDS,
    json_dumps,
    log_to_json,
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
    "loads",
    "log_from_items",
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

_json_loads = json.loads

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


def is_transient(exc: BaseException) -> bool:
    """True for errors after which nothing was committed, so a retry is safe."""
    return isinstance(exc, TRANSIENT)


def loads(text: str) -> Any:
    """``json.loads`` with a fast path for the empty object and list."""
    if text == "{}":
        return {}
    if text == "[]":
        return []
    return _json_loads(text)


def log_from_items(items: list[dict[str, Any]]) -> tuple[LogEntry, ...]:
    """A decoded ``log`` column as entries."""
    if not items:
        return ()
    return tuple(
        LogEntry(
            timestamp=datetime.fromisoformat(item["timestamp"]),
            level=item["level"],
            message=item["message"],
            data=item.get("data"),
        )
        for item in items
    )


def record_from_row(row: Sequence[Any]) -> ProcessRecord:
    """A row in PROCESS_COLUMNS order as a record."""
    return ProcessRecord(
        process_id=row[0],
        name=row[1],
        description=row[2],
        params=row[3],
        metadata=row[4],
        parent_id=row[5],
        root_id=row[6],
        depth=row[7],
        order=row[8],
        cancellable=row[9],
        adhoc=row[10],
        ephemeral=row[11],
        special=row[12],
        warning=row[13],
        schedule=row[14],
        state=ProcessState(row[15]),
        error=row[16],
        running_since=row[17],
        done_at=row[18],
        duration=row[19],
        failed_at=row[20],
        stopped_at=row[21],
        progress_percent=row[22],
        progress_message=row[23],
        log=log_from_items(row[24]),
        created_at=row[25],
        run_number=row[26],
        lease_owner=row[27],
        lease_expires_at=row[28],
        last_cron_tick=row[29],
        updated_at=row[30],
        resumable=row[31],
    )


def _encode_log(value: Any) -> str:
    return json_dumps(log_to_json(value), "log data") if value else "[]"


def _json_encoder(field: str) -> Callable[[Any], str]:
    def encode(value: Any) -> str:
        if not value and isinstance(value, dict):
            return "{}"
        return json_dumps(value, field)

    return encode


_ENCODERS: dict[str, Callable[[Any], Any]] = {
    **dict.fromkeys(TIME_FIELDS, to_utc),
    **{field: _json_encoder(field) for field in JSON_FIELDS},
    **dict.fromkeys(BOOL_FIELDS, bool),
    "log": _encode_log,
    "state": lambda value: ProcessState(value).value,
}


def encode_field(field: str, value: Any) -> Any:
    """One field's value as asyncpg sends it (JSON as text, times as aware UTC)."""
    if value is None:
        return None
    encode = _ENCODERS.get(field)
    return value if encode is None else encode(value)


def run_from_row(row: Sequence[Any]) -> RunRecord:
    """A row in RUN_COLUMNS order as a run record."""
    return RunRecord(
        index=row[0],
        operation_id=row[1],
        name=row[2],
        kind=row[3],
        status=OperationStatus(row[4]),
        started_at=row[5],
        ended_at=row[6],
        duration=row[7],
        result=row[8],
        error=row[9],
        traceback=row[10],
        cancel_reason=None if row[11] is None else CancelationReason(row[11]),
        cancel_message=row[12],
        parent_id=row[13],
        metadata=row[14],
        process_id=row[15],
        run_number=row[16],
    )


def row_count(status: str) -> int:
    """The row count of a command status such as ``UPDATE 3``."""
    return int(status.rsplit(" ", 1)[-1])


async def init_connection(conn: asyncpg.Connection) -> None:
    """Pool init hook: JSON columns travel as text we encode and decode ourselves."""
    # JSON travels as text we encoded ourselves (json_dumps refuses non-JSON values the
    # same way on every backend); decoding gives plain dicts and lists.
    for type_name in ("jsonb", "json"):
        await conn.set_type_codec(
            type_name, encoder=str, decoder=loads, schema="pg_catalog", format="text"
        )


async def keep_session(conn: asyncpg.Connection) -> None:
    """Pool reset hook: nothing to undo.

    The default reset sends ``RESET ALL; UNLISTEN *; ...`` on every release, one extra
    round trip per verb; this store never changes session state (no SET, LISTEN, session
    advisory locks or cursors), and asyncpg still rolls back an open transaction itself.
    """
