#!/usr/bin/env python3
"""What lease renewal costs the store: statements per second for 0, 100 and 1,000 running
runs on 4 worker processes, on PostgreSQL.

    python bench/bench_renewal.py case --runs 1000 [--workers 4]
    python bench/bench_renewal.py run [--repeats 3]      # every case, interleaved: the table
    python bench/bench_renewal.py worker ...             # spawned, not by hand

The design says one renewal statement per worker per tick, whatever the number of runs
(issue 7). Each case starts W fresh ``taskwarden.worker.Worker`` processes (concurrency
``runs / W`` rounded up, renewal every ``--renew`` s, lease 3x that, reaper every 1.5x,
claim poll 1 s), launches ``runs`` processes whose task waits until it is cancelled, waits
until every one is running, then reads PostgreSQL's counters over ``--window`` seconds:
``xact_commit`` of the bench database (every transaction of the workers: renewals,
worker records, claim polls, reaper sweeps), read after 11 s without this process
connected (a backend reports its counters at most once a second, an idle one after 10 s),
and the rows updated in the processes table
(``n_tup_upd``: a renewal updates every lease it extends). The case with 0 runs is the
idle fleet's own traffic; the difference is what the runs cost.

Shorter renewals than the default (10 s) make more ticks in a short window; the table
reports statements per renewal tick too, which does not depend on the interval.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "src"))

from bench_fleet import PG_URL, Namespace, _stop, spawn_worker  # noqa: E402


def _definitions(n: int) -> Any:
    from taskwarden.engine import ProcessContext, TaskInstance

    async def hold(ctx: ProcessContext) -> None:
        await asyncio.Event().wait()  # until the worker cancels it at shutdown

    tasks = [TaskInstance(execute=hold, process_id=f"hold-{i}", name="hold") for i in range(n)]

    async def get_tasks(services: dict[str, Any]) -> list[TaskInstance]:
        return tasks

    return get_tasks


async def work(args: argparse.Namespace) -> None:
    """One worker process."""
    from taskwarden.worker import Worker

    worker = Worker(
        args.url,
        get_task_definitions=_definitions(args.n),
        concurrency=args.concurrency,
        renew_interval=args.renew,
        lease_seconds=3 * args.renew,
        reaper_interval=1.5 * args.renew,
        poll_interval=1.0,
    )
    run = asyncio.ensure_future(worker.run())
    await worker.ready.wait()
    print("ready", flush=True)
    await run


def _spawn(args: argparse.Namespace, url: str, n: int, concurrency: int, log: Path) -> Any:
    cmd = [
        sys.executable, __file__, "worker", "--url", url, "--n", str(n),
        "--concurrency", str(concurrency), "--renew", str(args.renew),
    ]  # fmt: skip
    return spawn_worker(cmd, log)


async def _counters(url: str) -> tuple[float, int, int]:
    import asyncpg

    conn = await asyncpg.connect(url)
    try:
        # Statistics are sent by each backend at the end of a transaction, at most about
        # once a second: clear this session's snapshot so the read is current.
        await conn.execute("SELECT pg_stat_clear_snapshot()")
        commits = await conn.fetchval(
            "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()"
        )
        updated = await conn.fetchval(
            "SELECT coalesce(sum(n_tup_upd), 0) FROM pg_stat_user_tables "
            "WHERE relname LIKE '%processes'"
        )
    finally:
        await conn.close()
    return time.monotonic(), int(commits), int(updated)


async def case(args: argparse.Namespace) -> dict[str, Any]:
    from taskwarden.engine import Engine
    from taskwarden.processes import ProcessState
    from taskwarden.registry import OperationRegistry
    from taskwarden.stores import open_store
    from taskwarden.worker import launch

    tmp = tempfile.mkdtemp(prefix="twrenew-")
    n = max(args.runs, 1)
    concurrency = max(1, -(-args.runs // args.workers))
    async with Namespace("postgres", tmp) as ns:
        seed = Engine(ns.url, get_task_definitions=_definitions(n), registry=OperationRegistry())
        await seed.init()
        await seed.shutdown()
        procs = [
            _spawn(args, ns.url, n, concurrency, Path(tmp) / f"w{i}.log")
            for i in range(args.workers)
        ]
        try:
            for proc, _ in procs:
                assert proc.stdout.readline().startswith("ready"), "a worker did not start"
            async with open_store(ns.url) as store:
                for i in range(args.runs):
                    await launch(store, f"hold-{i}")
                deadline = time.monotonic() + 120
                while await store.count(state=ProcessState.RUNNING) < args.runs:
                    if time.monotonic() > deadline:
                        raise RuntimeError("the runs did not all start within 120 s")
                    await asyncio.sleep(0.2)
            # A backend reports its counters at most once a second, and an idle one only
            # after 10 s: with this process's connections closed, wait that out so the
            # launches and claims are not counted in the window.
            await asyncio.sleep(max(2 * args.renew, 11.0))
            t0, c0, u0 = await _counters(ns.url)
            await asyncio.sleep(args.window)
            t1, c1, u1 = await _counters(ns.url)
            async with open_store(ns.url) as store:
                running = await store.count(state=ProcessState.RUNNING)
        finally:
            _stop(procs)
    seconds = t1 - t0
    ticks = args.workers * seconds / args.renew
    return {
        "runs": args.runs,
        "running_at_end": running,
        "commits_per_s": (c1 - c0) / seconds,
        "rows_updated_per_s": (u1 - u0) / seconds,
        "commits_per_tick": (c1 - c0) / ticks,
        "load1": os.getloadavg()[0],
    }


def run_table(args: argparse.Namespace) -> None:
    runs = (0, 100, 1000)
    results: dict[int, list[dict[str, Any]]] = {r: [] for r in runs}
    for repeat in range(args.repeats):
        for r in runs:  # interleaved
            cmd = [
                sys.executable, __file__, "case", "--runs", str(r), "--workers",
                str(args.workers), "--renew", str(args.renew), "--window", str(args.window),
            ]  # fmt: skip
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
            lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
            result = json.loads(lines[-1]) if lines else {"error": done.stderr[-300:]}
            print(f"[{repeat + 1}/{args.repeats}] {r} runs: {result}", file=sys.stderr)
            results[r].append(result)

    def med(r: int, key: str) -> float:
        values = [x[key] for x in results[r] if key in x]
        return statistics.median(values) if values else float("nan")

    def span(r: int, key: str) -> str:
        values = [x[key] for x in results[r] if key in x]
        return f"{min(values):.1f}-{max(values):.1f}" if values else "-"

    idle = med(0, "commits_per_s")
    out = [
        "# Lease renewal cost (issue 7)\n",
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, Python {sys.version.split()[0]}, "
        f"{os.cpu_count()} CPUs, PostgreSQL {PG_URL.rsplit('@', 1)[-1]}; {args.workers} worker "
        f"processes, renewal every {args.renew} s (lease {3 * args.renew} s, reaper every "
        f"{1.5 * args.renew} s, claim poll 1 s), {args.window} s window after every run "
        f"started; {args.repeats} repeats interleaved, medians (min-max).\n",
        "| running runs | transactions/s (all of the fleet's) | over the idle fleet "
        "| per worker per renewal tick | rows updated/s (processes) |",
        "| ---: | ---: | ---: | ---: | ---: |",
    ]
    out.extend(
        f"| {r:,} | {med(r, 'commits_per_s'):.1f} ({span(r, 'commits_per_s')}) "
        f"| {med(r, 'commits_per_s') - idle:+.1f} | {med(r, 'commits_per_tick'):.2f} "
        f"| {med(r, 'rows_updated_per_s'):.0f} |"
        for r in runs
    )
    out.append(
        "\nA renewal is one `UPDATE ... WHERE lease_owner = $me` per worker per tick: the "
        "transactions do not grow with the runs, the rows updated do (each lease extended). "
        "The idle fleet commits more: a worker with a free slot also polls for claims "
        "(once a second here), a full one does not. Per worker per tick: the renewal, the "
        "worker record, and the reaper's sweep every 1.5 ticks. At the default 10 s "
        "renewal the rates are a tenth of these."
    )
    text = "\n".join(out) + "\n"
    Path(args.out).write_text(text)
    print(text)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("mode", choices=["case", "run", "worker"])
    ap.add_argument("--runs", type=int, default=1000)
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--renew", type=float, default=1.0)
    ap.add_argument("--window", type=float, default=20.0)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=str(HERE / "results" / "renewal.md"))
    ap.add_argument("--url", default="")
    ap.add_argument("--n", type=int, default=1)
    ap.add_argument("--concurrency", type=int, default=1)
    args = ap.parse_args()
    if args.mode == "worker":
        asyncio.run(work(args))
    elif args.mode == "case":
        print(json.dumps(asyncio.run(case(args))))
    else:
        run_table(args)


if __name__ == "__main__":
    main()
