"""Per-operation cost of the store verbs the engine's hot path uses.

Prints a table of medians over several runs, per backend: microseconds per call when calls
are awaited one after another (latency), and per process for a drain cycle run with many
processes in flight (claim in batches, then scheduled -> running -> done and record_run for
each; or with the run folded into the last transition with ``run=``), which is what the
engine does when it drains a queue.

    python bench/store_ops.py                      # memory and sqlite
    python bench/store_ops.py --postgres URL       # and PostgreSQL
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path

from taskwarden.abc import Store
from taskwarden.model import OperationStatus, RunRecord
from taskwarden.processes import ProcessRecord, ProcessState
from taskwarden.stores.memory import MemoryStore
from taskwarden.stores.sqlite import SQLiteStore

S = ProcessState
N = 2000


async def seed(store: Store, n: int, state: ProcessState) -> list[str]:
    ids = [f"b-{uuid.uuid4().hex[:12]}-{i}" for i in range(n)]
    await asyncio.gather(
        *(store.create(ProcessRecord(process_id=i, name=i, state=state)) for i in ids)
    )
    return ids


def _run(pid: str, number: int) -> RunRecord:
    now = datetime.now(UTC)
    return RunRecord(
        index=None,
        operation_id=pid,
        name=pid,
        kind="process",
        status=OperationStatus.COMPLETED,
        started_at=now,
        ended_at=now,
        duration=0.0,
        process_id=pid,
        run_number=number,
    )


async def sequential_transition(store: Store) -> float:
    ids = await seed(store, N, S.SCHEDULED)
    start = time.perf_counter()
    for pid in ids:
        await store.transition(pid, [S.SCHEDULED], S.RUNNING)
    return (time.perf_counter() - start) / N * 1e6


async def sequential_claim(store: Store) -> float:
    await seed(store, N, S.SCHEDULED)
    start = time.perf_counter()
    for _ in range(N):
        await store.claim("w", 30, 1)
    return (time.perf_counter() - start) / N * 1e6


async def drain_cycle(store: Store) -> float:
    await seed(store, N, S.SCHEDULED)

    async def one(record: ProcessRecord) -> None:
        running = await store.transition(record.process_id, [S.SCHEDULED], S.RUNNING)
        await store.transition(record.process_id, [S.RUNNING], S.DONE)
        await store.record_run(_run(record.process_id, running.run_number))

    start = time.perf_counter()
    while batch := await store.claim("w", 30, 200):
        await asyncio.gather(*(one(r) for r in batch))
    return (time.perf_counter() - start) / N * 1e6


async def drain_cycle_folded(store: Store) -> float:
    await seed(store, N, S.SCHEDULED)

    async def one(record: ProcessRecord) -> None:
        running = await store.transition(record.process_id, [S.SCHEDULED], S.RUNNING)
        run = _run(record.process_id, running.run_number)
        await store.transition(record.process_id, [S.RUNNING], S.DONE, run=run)

    start = time.perf_counter()
    while batch := await store.claim("w", 30, 200):
        await asyncio.gather(*(one(r) for r in batch))
    return (time.perf_counter() - start) / N * 1e6


CASES: list[tuple[str, Callable[[Store], Awaitable[float]]]] = [
    ("transition, one at a time (us/call)", sequential_transition),
    ("claim limit=1, one at a time (us/call)", sequential_claim),
    ("drain: claim+2 transitions+record_run (us/process)", drain_cycle),
    ("drain: claim+2 transitions, run= folded (us/process)", drain_cycle_folded),
]


async def measure(make: Callable[[], Store], runs: int) -> list[float]:
    medians = []
    for _, case in CASES:
        samples = []
        for _ in range(runs):
            async with make() as store:
                samples.append(await case(store))
        medians.append(statistics.median(samples))
    return medians


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--postgres", help="a PostgreSQL URL to include")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        counter = iter(range(1_000_000))
        backends: list[tuple[str, Callable[[], Store]]] = [
            ("memory", MemoryStore),
            ("sqlite", lambda: SQLiteStore(Path(tmp) / f"b{next(counter)}.db")),
        ]
        if args.postgres:
            from taskwarden.stores.postgres import PostgresStore

            url = args.postgres
            backends.append(
                ("postgres", lambda: PostgresStore(url, prefix=f"bench{next(counter)}"))
            )
        results = {name: await measure(make, args.runs) for name, make in backends}
    width = max(len(name) for name, _ in CASES)
    print(f"{'case':<{width}}  " + "  ".join(f"{name:>10}" for name in results))
    for row, (label, _) in enumerate(CASES):
        cells = "  ".join(f"{results[name][row]:>10.1f}" for name in results)
        print(f"{label:<{width}}  {cells}")
    print(f"(medians of {args.runs} runs, {N} processes each)")


if __name__ == "__main__":
    asyncio.run(main())
