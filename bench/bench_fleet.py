#!/usr/bin/env python3
"""The worker fleet's drain, beside pgqueuer and procrastinate with the same worker counts.

    python bench/bench_fleet.py drain --store sqlite|postgres --workers W [--n 10000]
    python bench/bench_fleet.py latency --store sqlite|postgres [--bus redis]
    python bench/bench_fleet.py run [--repeats 3] [--n 10000]     # the table, interleaved
    python bench/bench_fleet.py worker ...                        # spawned, not by hand

Servers: ``BENCH_PG_URL`` (each case gets a fresh database, dropped afterwards) and
``BENCH_REDIS_URL`` (a fresh key prefix), as for the other benchmarks.

Measured as the peers are (``peers_queue.py``): every job's only work is appending
``"<seq> <time.monotonic()>"`` to a sink file (the clock is system-wide).

* ``drain``: N processes launched from this process (no definitions here: ``scheduled``,
  no owner), then W fresh worker processes (``taskwarden.worker.Worker``, concurrency 100
  each) that start claiming together once all have loaded their definitions; the number
  is (N - 1) / (first job start -> last job start), so launching and worker boot are
  excluded, as for the peers.
* ``latency``: one warm idle worker; 200 launches at 50/s from this process; the latency
  is the job's start stamp minus the time just before ``launch()``: p50 and p99.
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
import uuid
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "src"))

from peers_queue import Sink, pct, stamp  # noqa: E402

PG_URL = os.environ.get("BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")


# --------------------------------------------------------------------------- the worker side
def _definitions(n: int) -> Any:
    from taskwarden.engine import ProcessContext, TaskInstance

    async def noop(ctx: ProcessContext) -> None:
        stamp(int(ctx.process_id[5:]))

    tasks = [TaskInstance(execute=noop, process_id=f"noop-{i}", name="noop") for i in range(n)]

    async def get_tasks(services: dict[str, Any]) -> list[TaskInstance]:
        return tasks

    return get_tasks


async def work(args: argparse.Namespace) -> None:
    """One worker process: load the definitions, say so, claim once the go file exists."""
    from taskwarden.worker import Worker

    go = args.go

    class Gated(Worker):
        async def claim_once(self) -> int:
            while not os.path.exists(go):  # noqa: ASYNC110, ASYNC240 - a flag another process makes
                await asyncio.sleep(0.005)
            return await super().claim_once()

    worker = Gated(
        args.url,
        prefix=args.prefix,
        bus=args.bus or None,
        get_task_definitions=_definitions(args.n),
        concurrency=args.concurrency,
        progress_flush_interval=0.0,
    )
    run = asyncio.ensure_future(worker.run())
    await worker.ready.wait()
    print("ready", flush=True)
    await run


# --------------------------------------------------------------------------- the driver side
class Namespace:
    """A fresh store namespace: a SQLite file, or a PostgreSQL database."""

    def __init__(self, kind: str, tmp: str) -> None:
        self.kind = kind
        self.prefix = "taskwarden"
        self.db = ""
        if kind == "sqlite":
            self.url = f"sqlite:///{tmp}/fleet.db"
        else:
            self.db = f"twfleet_{os.getpid()}_{uuid.uuid4().hex[:8]}"
            self.url = PG_URL.rpartition("/")[0] + "/" + self.db

    async def __aenter__(self) -> Namespace:
        if self.db:
            import asyncpg

            admin = await asyncpg.connect(PG_URL)
            try:
                await admin.execute(f"CREATE DATABASE {self.db}")
            finally:
                await admin.close()
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.db:
            import asyncpg

            admin = await asyncpg.connect(PG_URL)
            try:
                await admin.execute(f"DROP DATABASE IF EXISTS {self.db} WITH (FORCE)")
            finally:
                await admin.close()


def spawn_worker(cmd: list[str], log: Path, **env: str) -> Any:
    """Start a worker process (``cmd``): stdout piped (it prints ``ready``), stderr to
    ``log``, ``env`` added to the environment. :func:`_stop` kills it."""
    out = log.open("w")
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=out,
        text=True,
        env={**os.environ, **env, "PYTHONUNBUFFERED": "1"},
    )
    return proc, out


def _spawn(url: str, prefix: str, n: int, go: str, sink: str, bus: str, log: Path) -> Any:
    cmd = [
        sys.executable, __file__, "worker", "--url", url, "--prefix", prefix,
        "--n", str(n), "--go", go, "--concurrency", "100", "--bus", bus,
    ]  # fmt: skip
    return spawn_worker(cmd, log, BENCH_SINK=sink)


def _stop(procs: list[Any]) -> None:
    for proc, out in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
        proc.stdout.close()
        out.close()


async def _prepare(url: str, n: int) -> None:
    """Create the N records once (what the first worker's resync would do)."""
    from taskwarden.engine import Engine
    from taskwarden.registry import OperationRegistry

    engine = Engine(url, get_task_definitions=_definitions(n), registry=OperationRegistry())
    await engine.init()
    await engine.shutdown()


async def case_drain(args: argparse.Namespace) -> dict[str, Any]:
    from taskwarden.stores import open_store
    from taskwarden.worker import launch

    tmp = tempfile.mkdtemp(prefix="twfleet-")
    async with Namespace(args.store, tmp) as ns:
        await _prepare(ns.url, args.n)
        sink = Sink(os.path.join(tmp, "drain.sink"))
        go = os.path.join(tmp, "go")
        procs = [
            _spawn(ns.url, ns.prefix, args.n, go, sink.path, "", Path(tmp) / f"w{i}.log")
            for i in range(args.workers)
        ]
        try:
            for proc, _ in procs:
                assert proc.stdout.readline().startswith("ready"), "a worker did not start"
            async with open_store(ns.url) as store:
                t0 = time.monotonic()
                for i in range(args.n):
                    await launch(store, f"noop-{i}")
                launch_s = time.monotonic() - t0
            open(go, "w").close()  # noqa: ASYNC230 - an empty flag file
            ok = await sink.wait_for(args.n, args.timeout, interval=0.02)
        finally:
            _stop(procs)
    result: dict[str, Any] = {"launch_per_s": args.n / launch_s}
    if ok:
        stamps = sorted(sink.starts.values())
        result["drain_per_s"] = (args.n - 1) / (stamps[-1] - stamps[0])
    else:
        result["error"] = f"only {len(sink.starts)}/{args.n} ran within {args.timeout}s"
    return result


async def case_latency(args: argparse.Namespace) -> dict[str, Any]:
    from taskwarden.bus import open_bus
    from taskwarden.stores import open_store
    from taskwarden.worker import launch

    tmp = tempfile.mkdtemp(prefix="twfleet-")
    m, rate = args.trickle, args.rate
    bus_url = f"{REDIS_URL}" if args.bus == "redis" else ""
    async with Namespace(args.store, tmp) as ns:
        await _prepare(ns.url, m + 1)
        sink = Sink(os.path.join(tmp, "latency.sink"))
        go = os.path.join(tmp, "go")
        open(go, "w").close()  # noqa: ASYNC230 - an empty flag file
        procs = [_spawn(ns.url, ns.prefix, m + 1, go, sink.path, bus_url, Path(tmp) / "w.log")]
        sent: dict[int, float] = {}
        bus = open_bus(bus_url) if bus_url else None
        try:
            assert procs[0][0].stdout.readline().startswith("ready")
            if bus is not None:
                await bus.open()
            async with open_store(ns.url) as store:
                await launch(store, f"noop-{m}", bus=bus)  # warm-up
                await sink.wait_for(1, 30)
                await asyncio.sleep(1.0)
                t0 = time.monotonic() + 0.05
                for seq in range(m):
                    delay = t0 + seq / rate - time.monotonic()
                    if delay > 0:
                        await asyncio.sleep(delay)
                    sent[seq] = time.monotonic()
                    await launch(store, f"noop-{seq}", bus=bus)
                ok = await sink.wait_for(m + 1, 60)
        finally:
            if bus is not None:
                await bus.close()
            _stop(procs)
    lat = [(sink.starts[s] - sent[s]) * 1e3 for s in range(m) if s in sink.starts]
    return {"ok": ok, "lat_p50_ms": pct(lat, 50), "lat_p99_ms": pct(lat, 99)}


# --------------------------------------------------------------------------- the table
def _one(cmd: list[str], python: str) -> dict[str, Any]:
    done = subprocess.run([python, *cmd], capture_output=True, text=True, timeout=900)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if not lines:
        return {"error": done.stderr.strip().splitlines()[-1:] or ["no output"]}
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def run_table(args: argparse.Namespace) -> None:
    peers_python = str(HERE / ".venv-peers" / "bin" / "python")
    peers = str(HERE / "peers_queue.py")
    n = str(args.n)
    cases: dict[str, tuple[list[str], str]] = {}
    for w in args.worker_counts:
        ws = str(w)
        cases[f"taskwarden postgres x{w}"] = (
            [__file__, "drain", "--store", "postgres", "--workers", ws, "--n", n],
            sys.executable,
        )
        cases[f"taskwarden sqlite x{w}"] = (
            [__file__, "drain", "--store", "sqlite", "--workers", ws, "--n", n],
            sys.executable,
        )
        for batch in ("10", "100"):
            cases[f"pgqueuer batch {batch} x{w}"] = (
                [peers, "bench", "--peer", "pgqueuer", "--case", "drain", "--n", n,
                 "--workers", ws, "--batch", batch],
                peers_python,
            )  # fmt: skip
        cases[f"procrastinate x{w}"] = (
            [peers, "bench", "--peer", "procrastinate", "--case", "drain", "--n", n,
             "--workers", ws],
            peers_python,
        )  # fmt: skip
    cases["sqlite baseline"] = ([str(HERE / "sqlite_baseline.py"), "--n", n], sys.executable)
    for store, bus in (
        ("sqlite", ""),
        ("sqlite", "redis"),
        ("postgres", ""),
        ("postgres", "redis"),
    ):
        cmd = [__file__, "latency", "--store", store] + (["--bus", bus] if bus else [])
        cases[f"latency {store}{' + ' + bus if bus else ''}"] = (cmd, sys.executable)
    results: dict[str, list[dict[str, Any]]] = {key: [] for key in cases}
    for repeat in range(args.repeats):
        for key, (cmd, python) in cases.items():  # interleaved: drift spreads over all
            print(f"[{repeat + 1}/{args.repeats}] {key}", file=sys.stderr, flush=True)
            results[key].append(_one(cmd, python))

    def med(key: str, field: str) -> float | None:
        values = [r[field] for r in results[key] if r.get(field) is not None]
        return statistics.median(values) if values else None

    print(f"Fleet drain, N = {args.n}, medians of {args.repeats} interleaved repeats\n")
    print("| workers | taskwarden PG | pgqueuer b10 | pgqueuer b100 | procrastinate "
          "| tw / pgq b10 | tw / pgq b100 | tw / procr | taskwarden SQLite |")  # fmt: skip
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for w in args.worker_counts:
        tw = med(f"taskwarden postgres x{w}", "drain_per_s")
        p10 = med(f"pgqueuer batch 10 x{w}", "drain_per_s")
        p100 = med(f"pgqueuer batch 100 x{w}", "drain_per_s")
        pr = med(f"procrastinate x{w}", "drain_per_s")
        sq = med(f"taskwarden sqlite x{w}", "drain_per_s")

        def f(v: float | None) -> str:
            return "-" if v is None else f"{v:,.0f}/s"

        def r(a: float | None, b: float | None) -> str:
            return "-" if a is None or b is None else f"{a / b:.2f}x"

        print(f"| {w} | {f(tw)} | {f(p10)} | {f(p100)} | {f(pr)} | {r(tw, p10)} "
              f"| {r(tw, p100)} | {r(tw, pr)} | {f(sq)} |")  # fmt: skip
    base = med("sqlite baseline", "drain_per_s")
    print(f"\nBare sqlite3 loop with the same writes (one process): {f(base)}; taskwarden SQLite "
          + ", ".join(f"x{w} {r(med(f'taskwarden sqlite x{w}', 'drain_per_s'), base)}"
                      for w in args.worker_counts) + " of it")  # fmt: skip
    print("\n| launch -> running (another process) | p50 | p99 |\n| --- | ---: | ---: |")
    for key in cases:
        if key.startswith("latency"):
            p50, p99 = med(key, "lat_p50_ms"), med(key, "lat_p99_ms")
            show = (
                "-" if p50 is None else f"{p50:.1f} ms",
                "-" if p99 is None else f"{p99:.1f} ms",
            )
            label = (
                key[8:]
                if "+" in key
                else f"{key[8:]} (no bus{', NOTIFY' if 'postgres' in key else ''})"
            )
            print(f"| {label} | {show[0]} | {show[1]} |")
    errors = {k: [r["error"] for r in v if "error" in r] for k, v in results.items()}
    for key, errs in errors.items():
        if errs:
            print(f"\n{key}: {errs}", file=sys.stderr)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("mode", choices=["drain", "latency", "run", "worker"])
    ap.add_argument("--store", choices=["sqlite", "postgres"], default="sqlite")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--worker-counts", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--bus", default="")
    ap.add_argument("--trickle", type=int, default=200)
    ap.add_argument("--rate", type=float, default=50.0)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--timeout", type=float, default=300.0)
    ap.add_argument("--url", default="")
    ap.add_argument("--prefix", default="taskwarden")
    ap.add_argument("--go", default="")
    ap.add_argument("--concurrency", type=int, default=100)
    args = ap.parse_args()
    if args.mode == "worker":
        asyncio.run(work(args))
    elif args.mode == "run":
        run_table(args)
    else:
        case = case_drain if args.mode == "drain" else case_latency
        print(json.dumps({"case": args.mode, "store": args.store, "workers": args.workers,
                          **asyncio.run(case(args))}), flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
