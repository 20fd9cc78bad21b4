#!/usr/bin/env python3
"""taskwarden's process engine benchmarks: one case, one run, one fresh process, one JSON line.

    python bench/bench_engine.py drain    --store sqlite|postgres [--n 10000] [--concurrency 100]
    python bench/bench_engine.py trickle  --store sqlite|postgres [--trickle 200] [--rate 50]
    python bench/bench_engine.py progress --store sqlite|postgres [--calls 1000000] [--procs 10]

``--store sqlite`` uses a fresh file in a temporary folder; ``--store postgres`` creates a
fresh database on the server of ``BENCH_PG_URL`` (a ``postgresql://`` URL whose user may
``CREATE DATABASE``) and drops it afterwards.

Cases (the numbers the issue's targets are about):

* ``drain``: N no-op ad-hoc processes are defined (not timed), then all are launched at once
  (``asyncio.gather`` of N ``launch()`` calls); ``drain_per_s`` = N / (first launch call ->
  the last process terminal, as ``on_change`` reports it). Launch writes are inside the
  timing. ``start_to_start_per_s`` = (N - 1) / (first task start -> last task start) is the
  peers' drain definition, for reference.
* ``trickle``: an idle engine (1 s after start) gets ``--trickle`` launches on a fixed
  schedule of ``--rate`` per second; latency = the task's first line (``time.monotonic()``)
  minus the time just before ``launch()``; p50 and p99.
* ``progress``: ``--procs`` processes run concurrently, each calling
  ``ctx.report_progress(percent)`` ``calls / procs`` times in chunks of 1,000 with an
  ``await asyncio.sleep(--pause)`` between chunks, so the flusher runs as in real code.
  ``cost_s`` is the time spent inside the ``report_progress`` calls (summed over chunks);
  ``writes_per_s_per_proc`` is the largest number of progress writes one process made in
  any 1-second window (the store's ``update_progress`` is counted with time stamps).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))

from taskwarden.abc import Store  # noqa: E402
from taskwarden.engine.context import ProcessContext  # noqa: E402
from taskwarden.engine.definitions import TaskInstance  # noqa: E402
from taskwarden.engine.engine import Engine  # noqa: E402
from taskwarden.processes import END_STATES, ProcessRecord  # noqa: E402
from taskwarden.registry import OperationRegistry  # noqa: E402
from taskwarden.stores import open_store  # noqa: E402

PG_URL = os.environ.get("BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


def pct(values: list[float], p: float) -> float | None:
    """The ``p``-th percentile (nearest rank) of ``values``."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


@asynccontextmanager
async def fresh_store(kind: str) -> AsyncIterator[Store]:
    """An opened, empty store of ``kind``; everything it made is removed afterwards."""
    if kind == "sqlite":
        folder = tempfile.mkdtemp(prefix="twbench-")
        store = open_store(f"sqlite:///{folder}/bench.db")
        try:
            await store.open()
            yield store
        finally:
            await store.close()
            shutil.rmtree(folder, ignore_errors=True)
        return
    if kind != "postgres":
        raise SystemExit(f"unknown store {kind!r}: sqlite or postgres")
    import asyncpg

    base, _, _ = PG_URL.rpartition("/")
    name = f"twbench_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(PG_URL)
    try:
        await admin.execute(f"CREATE DATABASE {name}")
        store = open_store(f"{base}/{name}")
        try:
            await store.open()
            yield store
        finally:
            await store.close()
    finally:
        await admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        await admin.close()


def new_engine(store: Store, concurrency: int | None) -> Engine:
    """An engine with its own registry and no definitions (the cases define ad hoc)."""
    return Engine(store, registry=OperationRegistry(), max_concurrency=concurrency)


async def define(engine: Engine, ids: list[str], execute: Callable[..., Any]) -> None:
    """Define ad-hoc processes in batches (not timed)."""
    for start in range(0, len(ids), 500):
        await asyncio.gather(
            *(
                engine.adhoc_define(TaskInstance(execute=execute, process_id=pid, name=pid))
                for pid in ids[start : start + 500]
            )
        )


async def case_drain(args: argparse.Namespace) -> dict[str, Any]:
    n = args.n
    starts: list[float] = []
    all_done = asyncio.Event()
    ended = 0

    async def noop(ctx: ProcessContext) -> None:
        starts.append(time.monotonic())

    def on_change(record: ProcessRecord) -> None:
        nonlocal ended
        if record.state in END_STATES:
            ended += 1
            if ended >= n:
                all_done.set()

    async with fresh_store(args.store) as store:
        engine = new_engine(store, args.concurrency or None)
        await engine.init()
        ids = [f"p{i:06d}" for i in range(n)]
        await define(engine, ids, noop)
        engine.on_change.append(on_change)
        gc.collect()
        c0 = time.process_time()
        t0 = time.monotonic()
        await asyncio.gather(*(engine.launch(pid) for pid in ids))
        t_launched = time.monotonic()
        await asyncio.wait_for(all_done.wait(), args.timeout)
        t1 = time.monotonic()
        cpu = time.process_time() - c0
        await engine.shutdown()
    return {
        "cpu_us_per_process": cpu / n * 1e6,
        "drain_per_s": n / (t1 - t0),
        "launch_per_s": n / (t_launched - t0),
        "start_to_start_per_s": (n - 1) / (max(starts) - min(starts)),
        "drain_s": t1 - t0,
    }


async def case_trickle(args: argparse.Namespace) -> dict[str, Any]:
    m, rate = args.trickle, args.rate
    started: dict[str, float] = {}

    async def noop(ctx: ProcessContext) -> None:
        started[ctx.process_id] = time.monotonic()

    async with fresh_store(args.store) as store:
        engine = new_engine(store, args.concurrency or None)
        await engine.init()
        ids = [f"t{i:04d}" for i in range(m)]
        await define(engine, ids, noop)
        sent: dict[str, float] = {}
        await asyncio.sleep(1.0)
        t0 = time.monotonic() + 0.05
        for i, pid in enumerate(ids):
            delay = t0 + i / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            sent[pid] = time.monotonic()
            await engine.launch(pid)
        for pid in ids:
            await asyncio.wait_for(engine.wait(pid), args.timeout)
        await engine.shutdown()
    lat = [(started[pid] - sent[pid]) * 1e3 for pid in ids if pid in started]
    return {
        "trickle_ok": len(lat) == m,
        "lat_p50_ms": pct(lat, 50),
        "lat_p99_ms": pct(lat, 99),
        "lat_mean_ms": statistics.fmean(lat),
    }


async def case_progress(args: argparse.Namespace) -> dict[str, Any]:
    procs = args.procs
    per_proc = args.calls // procs
    chunk = 1_000
    pause = args.pause
    cost: list[float] = []
    writes: dict[str, list[float]] = {}

    async def reporter(ctx: ProcessContext) -> None:
        report = ctx.report_progress
        spent = 0.0
        done = 0
        while done < per_proc:
            size = min(chunk, per_proc - done)
            base = done
            t = time.perf_counter()
            for i in range(base, base + size):
                report(i * 100.0 / per_proc)
            spent += time.perf_counter() - t
            done += size
            await asyncio.sleep(pause)
        cost.append(spent)

    async with fresh_store(args.store) as store:
        original = store.update_progress

        async def counted(process_id: str, *rest: Any, **kw: Any) -> None:
            writes.setdefault(process_id, []).append(time.monotonic())
            await original(process_id, *rest, **kw)

        store.update_progress = counted  # type: ignore[method-assign]
        engine = new_engine(store, None)
        await engine.init()
        ids = [f"r{i:03d}" for i in range(procs)]
        await define(engine, ids, reporter)
        t0 = time.monotonic()
        await asyncio.gather(*(engine.launch_and_wait(pid) for pid in ids))
        wall = time.monotonic() - t0
        await engine.shutdown()

    def peak(stamps: list[float]) -> int:
        best, lo = 0, 0
        for hi, stamp in enumerate(stamps):
            while stamp - stamps[lo] >= 1.0:
                lo += 1
            best = max(best, hi - lo + 1)
        return best

    counts = [len(v) for v in writes.values()]
    return {
        "calls": per_proc * procs,
        "cost_s": sum(cost),
        "ns_per_call": sum(cost) / (per_proc * procs) * 1e9,
        "wall_s": wall,
        "writes_total": sum(counts),
        "writes_per_s_per_proc": max(peak(v) for v in writes.values()),
        "avg_writes_per_s_per_proc": statistics.fmean(counts) / wall,
    }


CASES = {"drain": case_drain, "trickle": case_trickle, "progress": case_progress}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("case", choices=sorted(CASES))
    ap.add_argument("--store", default="sqlite", choices=["sqlite", "postgres"])
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--concurrency", type=int, default=0, help="engine max_concurrency; 0: none")
    ap.add_argument("--trickle", type=int, default=200)
    ap.add_argument("--rate", type=float, default=50.0)
    ap.add_argument("--calls", type=int, default=1_000_000)
    ap.add_argument("--procs", type=int, default=10)
    ap.add_argument("--pause", type=float, default=0.02, help="s between chunks of 1,000 calls")
    ap.add_argument("--timeout", type=float, default=300.0)
    ap.add_argument("--loop", default="asyncio", choices=["asyncio", "uvloop"])
    args = ap.parse_args()
    if args.loop == "uvloop":
        import uvloop

        uvloop.install()
    result = asyncio.run(CASES[args.case](args))
    out = {
        "peer": "taskwarden",
        "case": args.case,
        "backend": args.store,
        "concurrency": args.concurrency,
        **({"n": args.n} if args.case == "drain" else {}),
        **result,
    }
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
