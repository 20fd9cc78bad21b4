#!/usr/bin/env python3
"""A soak: 100,000 runs through one worker process, with its RSS and the store's size.

    python bench/soak_fleet.py --store sqlite|postgres [--processes 1000] [--rounds 100]

1,000 processes are launched from this process (no definitions here) and run by one
``taskwarden worker`` process, 100 rounds over: each run reports progress twice and logs a
line, so a process's log would grow by a line per run if finished runs' logs were kept.
After 10,000 and after 100,000 runs it prints the worker's RSS, the store's size on disk
(the SQLite file with its WAL, or ``pg_database_size``), the longest process log, and the
history's row count. One JSON line per checkpoint, then a markdown table.
Servers: ``BENCH_PG_URL`` (a fresh database, dropped afterwards).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "src"))

from bench_fleet import Namespace  # noqa: E402


def _definitions(n: int) -> Any:
    from taskwarden.engine import ProcessContext, TaskInstance

    async def step(ctx: ProcessContext) -> None:
        ctx.report_progress(50, "half")
        ctx.log("info", f"run {ctx.run_number}")
        ctx.report_progress(100, "done")

    tasks = [TaskInstance(execute=step, process_id=f"soak-{i}", name="soak") for i in range(n)]

    async def get_tasks(services: dict[str, Any]) -> list[TaskInstance]:
        return tasks

    return get_tasks


async def work(url: str, n: int) -> None:
    from taskwarden.worker import Worker

    worker = Worker(url, get_task_definitions=_definitions(n), concurrency=100)
    run = asyncio.ensure_future(worker.run())
    await worker.ready.wait()
    print("ready", flush=True)
    await run


def _rss(pid: int) -> int:
    import psutil

    return int(psutil.Process(pid).memory_info().rss)


async def _store_size(ns: Namespace, tmp: str) -> int:
    if ns.kind == "sqlite":
        files = Path(tmp).glob("fleet.db*")  # noqa: ASYNC240 - a benchmark's measurement
        return sum(p.stat().st_size for p in files)
    import asyncpg

    conn = await asyncpg.connect(ns.url)
    try:
        size: int = await conn.fetchval("SELECT pg_database_size(current_database())")
        return size
    finally:
        await conn.close()


async def soak(args: argparse.Namespace) -> list[dict[str, Any]]:
    from taskwarden.processes import ProcessState
    from taskwarden.stores import open_store
    from taskwarden.worker import launch

    tmp = tempfile.mkdtemp(prefix="twsoak-")
    checkpoints: list[dict[str, Any]] = []
    ids = [f"soak-{i}" for i in range(args.processes)]
    async with Namespace(args.store, tmp) as ns:
        log = (Path(tmp) / "worker.log").open("w")
        proc = subprocess.Popen(  # noqa: ASYNC220 - started once, before the measurement
            [sys.executable, __file__, "--worker", "--url", ns.url, "--processes", str(len(ids))],
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
        )
        try:
            assert proc.stdout is not None and proc.stdout.readline().startswith("ready")
            async with open_store(ns.url) as store:
                started = time.monotonic()
                for round_number in range(1, args.rounds + 1):
                    for process_id in ids:
                        await launch(store, process_id)
                    deadline = time.monotonic() + 120
                    while len(await store.list(state=[ProcessState.DONE], limit=None)) < len(ids):
                        if time.monotonic() > deadline:
                            raise TimeoutError(f"round {round_number} did not finish in 120 s")
                        await asyncio.sleep(0.05)
                    runs = round_number * len(ids)
                    if runs in (10_000, 100_000) or round_number == args.rounds:
                        longest = max(len(r.log) for r in await store.list(limit=None))
                        history = len(await store.query_history(limit=None))
                        point = {
                            "store": args.store,
                            "runs": runs,
                            "seconds": round(time.monotonic() - started, 1),
                            "worker_rss_mb": round(_rss(proc.pid) / 2**20, 1),
                            "store_mb": round(await _store_size(ns, tmp) / 2**20, 1),
                            "longest_log": longest,
                            "history_rows": history,
                        }
                        print(json.dumps(point), flush=True)
                        checkpoints.append(point)
        finally:
            proc.kill()
            proc.wait(10)
            log.close()
    return checkpoints


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--store", choices=["sqlite", "postgres"], default="sqlite")
    ap.add_argument("--processes", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=100)
    ap.add_argument("--worker", action="store_true")
    ap.add_argument("--url", default="")
    args = ap.parse_args()
    if args.worker:
        asyncio.run(work(args.url, args.processes))
        return
    points = asyncio.run(soak(args))
    print("\n| store | runs | seconds | worker RSS | store size | longest log | history rows |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for p in points:
        print(
            f"| {p['store']} | {p['runs']:,} | {p['seconds']} | {p['worker_rss_mb']} MB "
            f"| {p['store_mb']} MB | {p['longest_log']} | {p['history_rows']:,} |"
        )


if __name__ == "__main__":
    main()
