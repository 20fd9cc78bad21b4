"""Process records in bulk for ``bench_service.py``: 1,000 trees of 1 + 9 + 90 nodes.

The rows are encoded by the stores' own helpers (``process_values`` with each backend's
``encode_field``) and inserted with one ``executemany`` (SQLite) or ``COPY`` (PostgreSQL)
into a store whose schema ``open_store`` created, so they read back as the stores write them.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

__all__ = ["seed_postgres", "seed_records", "seed_sqlite"]


def seed_records(n: int) -> Iterator[Any]:
    """``n`` records (a multiple of 100): trees of one root, 9 children, 90 grandchildren."""
    from taskwarden.processes import LogEntry, LogLevel, ProcessRecord, ProcessState

    base = datetime(2026, 12, 1, tzinfo=UTC)
    index = 0
    for r in range(n // 100):
        root = f"root-{r:05d}"
        nodes: list[tuple[str, str | None, int, int]] = [(root, None, 0, r)]
        for c in range(9):
            child = f"{root}/c{c}"
            nodes.append((child, root, 1, c))
            nodes.extend((f"{child}/g{g}", child, 2, g) for g in range(10))
        for process_id, parent, depth, order in nodes:
            index += 1
            k = index % 100
            state = (
                ProcessState.FAILED if k < 5
                else ProcessState.CANCELLED if k == 5
                else ProcessState.IDLE if k < 10
                else ProcessState.DONE
            )  # fmt: skip
            started = base + timedelta(seconds=index)
            ended = None if state is ProcessState.IDLE else started + timedelta(seconds=3)
            log = () if state is ProcessState.IDLE else (
                LogEntry(timestamp=started, level=LogLevel.INFO, message="started"),
                LogEntry(timestamp=started + timedelta(seconds=1), level=LogLevel.INFO,
                         message="halfway through the batch"),
                LogEntry(timestamp=ended or started, level=LogLevel.INFO, message="finished"),
            )  # fmt: skip
            yield ProcessRecord(
                process_id=process_id,
                name=f"Node {process_id}",
                description="a seeded process",
                metadata={"team": f"team-{r % 10}", "tier": r % 3},
                parent_id=parent,
                root_id=root,
                depth=depth,
                order=order,
                state=state,
                error="RuntimeError: seeded failure" if state is ProcessState.FAILED else None,
                running_since=None if state is ProcessState.IDLE else started,
                done_at=ended if state is ProcessState.DONE else None,
                failed_at=ended if state is ProcessState.FAILED else None,
                stopped_at=ended if state is ProcessState.CANCELLED else None,
                duration=None if ended is None else 3.0,
                progress_percent=None if state is ProcessState.IDLE else 100.0,
                progress_message=None if state is ProcessState.IDLE else "finished",
                log=log,
                created_at=base,
                updated_at=ended or base,
                run_number=0 if state is ProcessState.IDLE else 1,
            )


def seed_sqlite(path: str, n: int) -> None:
    import sqlite3

    from taskwarden.stores.base import PROCESS_COLUMNS, encode_dt, process_values, table_names
    from taskwarden.stores.sqlite_support import encode_field

    table = table_names("taskwarden")[0]
    now = encode_dt(datetime.now(UTC))
    marks = ", ".join("?" * len(PROCESS_COLUMNS))
    conn = sqlite3.connect(path)
    try:
        with conn:
            conn.executemany(
                f"INSERT INTO {table} ({', '.join(PROCESS_COLUMNS)}) VALUES ({marks})",
                (process_values(rec, encode_field, now) for rec in seed_records(n)),
            )
        conn.execute("ANALYZE")
    finally:
        conn.close()


async def seed_postgres(url: str, n: int) -> None:
    import asyncpg

    from taskwarden.stores.base import PROCESS_COLUMNS, process_values, table_names
    from taskwarden.stores.postgres_support import encode_field

    table = table_names("taskwarden")[0]
    now = datetime.now(UTC)
    rows = [tuple(process_values(rec, encode_field, now)) for rec in seed_records(n)]
    conn = await asyncpg.connect(url)
    try:
        await conn.copy_records_to_table(table, records=rows, columns=list(PROCESS_COLUMNS))
        # What autovacuum does to a table in service: without it, a fresh bulk load has no
        # visibility map, and every count(*) reads the whole heap instead of an index.
        await conn.execute(f"VACUUM ANALYZE {table}")
    finally:
        await conn.close()
