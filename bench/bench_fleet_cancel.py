#!/usr/bin/env python3
"""Cancel from another process -> the job's ``finally:``, and recovery of a killed worker.

    python bench/bench_fleet_cancel.py cancel --via notify|bus|renewal [--trials 50]
    python bench/bench_fleet_cancel.py recovery --leases default|short [--trials 3]
    python bench/bench_fleet_cancel.py run [--repeats 3]        # both tables, interleaved

Servers: ``BENCH_PG_URL`` (a fresh database per case) and ``BENCH_REDIS_URL``, as for
``bench_fleet.py``.

* ``cancel``: one warm worker process on PostgreSQL runs ``hold-N``, which waits for its
  cancel and stamps the time in its ``finally:``. This process (no definitions) launches
  it, waits for ``running``, then calls ``taskwarden.worker.cancel``; the latency is the
  stamp minus the time just before the call. ``--via notify``: no bus, the store's
  trigger NOTIFYs the worker; ``--via bus``: a Redis bus; ``--via renewal``: neither
  (``listen_notify=False``), so the worker sees the request at its next lease renewal
  (``--renew`` seconds, default 1.0 here; 10 s by default in a real worker).
* ``recovery``: two worker processes; a ``retry`` task runs on one, which is SIGKILLed;
  the time from the kill to the record's ``done`` on the survivor. ``default`` leases are
  30 s renewed every 10 s, reaped every 15 s; ``short`` are 1 s / 0.25 s / 0.25 s.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "src"))

from bench_fleet import Namespace, _one, _stop, spawn_worker  # noqa: E402
from peers_queue import Sink, pct, stamp  # noqa: E402

REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
LEASES = {"default": (30.0, 10.0, 15.0), "short": (1.0, 0.25, 0.25)}


def _definitions(n: int) -> Any:
    from taskwarden.engine import ProcessContext, TaskInstance

    async def hold(ctx: ProcessContext) -> None:
        try:
            if ctx.lost_count == 0:
                await ctx.wait_cancelled()
        finally:
            stamp(int(ctx.process_id.split("-")[1]))

    tasks = [
        TaskInstance(execute=hold, process_id=f"hold-{i}", name="hold", on_worker_lost="retry")
        for i in range(n)
    ]

    async def get_tasks(services: dict[str, Any]) -> list[TaskInstance]:
        return tasks

    return get_tasks


async def work(args: argparse.Namespace) -> None:
    from taskwarden.worker import Worker

    lease, renew, reaper = LEASES[args.leases]
    if args.renew:
        renew, lease = args.renew, 3 * args.renew
    worker = Worker(
        args.url,
        bus=args.bus or None,
        get_task_definitions=_definitions(args.n),
        listen_notify=args.via != "renewal",
        lease_seconds=lease,
        renew_interval=renew,
        reaper_interval=reaper,
        poll_interval=0.05,
        cancel_grace=0.5,
        progress_flush_interval=0.0,
    )
    run = asyncio.ensure_future(worker.run())
    await worker.ready.wait()
    print("ready", worker.incarnation, flush=True)
    await run


def _spawn(args: argparse.Namespace, url: str, sink: str, bus: str, log: Path) -> Any:
    cmd = [
        sys.executable, __file__, "worker", "--url", url, "--n", str(args.trials + 1),
        "--bus", bus, "--via", args.via, "--leases", args.leases, "--renew", str(args.renew),
    ]  # fmt: skip
    return spawn_worker(cmd, log, BENCH_SINK=sink)


async def _wait_state(store: Any, process_id: str, state: str, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        record = await store.get(process_id)
        if record is not None and str(record.state) == state:
            return True
        await asyncio.sleep(0.005)
    return False


async def case_cancel(args: argparse.Namespace) -> dict[str, Any]:
    from taskwarden.bus import open_bus
    from taskwarden.stores import open_store
    from taskwarden.worker import cancel, launch

    tmp = tempfile.mkdtemp(prefix="twcancel-")
    bus_url = REDIS_URL if args.via == "bus" else ""
    lat: list[float] = []
    async with Namespace("postgres", tmp) as ns:
        sink = Sink(os.path.join(tmp, "cancel.sink"))
        procs = [_spawn(args, ns.url, sink.path, bus_url, Path(tmp) / "w.log")]
        bus = open_bus(bus_url) if bus_url else None
        try:
            assert procs[0][0].stdout.readline().startswith("ready")
            if bus is not None:
                await bus.open()
            async with open_store(ns.url) as store:
                for i in range(args.trials):
                    await launch(store, f"hold-{i}", bus=bus)
                    assert await _wait_state(store, f"hold-{i}", "running", 30)
                    await asyncio.sleep(0.02)  # past the start's bookkeeping
                    sent = time.monotonic()
                    await cancel(store, f"hold-{i}", bus=bus, reason="bench")
                    if not await sink.wait_for(i + 1, 60, interval=0.0005):
                        break
                    lat.append((sink.starts[i] - sent) * 1e3)
        finally:
            if bus is not None:
                await bus.close()
            _stop(procs)
    return {"via": args.via, "n": len(lat), "p50_ms": pct(lat, 50), "p99_ms": pct(lat, 99)}


async def case_recovery(args: argparse.Namespace) -> dict[str, Any]:
    from taskwarden.stores import open_store
    from taskwarden.worker import launch

    tmp = tempfile.mkdtemp(prefix="twrecovery-")
    took: list[float] = []
    async with Namespace("postgres", tmp) as ns:
        sink = Sink(os.path.join(tmp, "recovery.sink"))
        procs = [_spawn(args, ns.url, sink.path, "", Path(tmp) / f"w{i}.log") for i in range(2)]
        incarnations = {}
        try:
            for proc, _ in procs:
                line = proc.stdout.readline()
                assert line.startswith("ready"), line
                incarnations[line.split()[1]] = proc
            async with open_store(ns.url) as store:
                for i in range(args.trials):
                    pid = f"hold-{i}"
                    await launch(store, pid)
                    assert await _wait_state(store, pid, "running", 30)
                    record = await store.get(pid)
                    victim = incarnations.pop(record.lease_owner)
                    victim.kill()
                    killed = time.monotonic()
                    if not await _wait_state(store, pid, "done", 120):
                        break
                    took.append(time.monotonic() - killed)
                    fresh = _spawn(args, ns.url, sink.path, "", Path(tmp) / f"r{i}.log")
                    procs.append(fresh)
                    line = fresh[0].stdout.readline()
                    incarnations[line.split()[1]] = fresh[0]
        finally:
            _stop(procs)
    lease, _, reaper = LEASES[args.leases]
    return {
        "leases": args.leases,
        "n": len(took),
        "p50_s": statistics.median(took) if took else None,
        "max_s": max(took) if took else None,
        "bound_s": lease + reaper + 1.0,
    }


def run_table(args: argparse.Namespace) -> None:
    cases: dict[str, list[str]] = {
        f"cancel {via}": [__file__, "cancel", "--via", via, "--trials", str(args.trials)]
        for via in ("notify", "bus", "renewal")
    }
    cases["recovery short"] = [__file__, "recovery", "--leases", "short", "--trials", "10"]
    cases["recovery default"] = [__file__, "recovery", "--leases", "default", "--trials", "2"]
    results: dict[str, list[dict[str, Any]]] = {key: [] for key in cases}
    for repeat in range(args.repeats):
        for key, cmd in cases.items():
            print(f"[{repeat + 1}/{args.repeats}] {key}", file=sys.stderr, flush=True)
            results[key].append(_one(cmd, sys.executable))

    def med(key: str, field: str) -> float | None:
        values = [r[field] for r in results[key] if r.get(field) is not None]
        return statistics.median(values) if values else None

    print(f"Cancel from another process -> finally:, medians of {args.repeats} repeats\n")
    print("| path | p50 | p99 |\n| --- | ---: | ---: |")
    for via, label in (
        ("notify", "PostgreSQL NOTIFY (no bus)"),
        ("bus", "Redis bus"),
        ("renewal", "renewal fallback (renew every 1 s)"),
    ):
        p50, p99 = med(f"cancel {via}", "p50_ms"), med(f"cancel {via}", "p99_ms")
        print(f"| {label} | {p50 or 0:.1f} ms | {p99 or 0:.1f} ms |")
    print(
        "\n| recovery of a killed worker's run | p50 | max | bound |\n| --- | ---: | ---: | ---: |"
    )
    for leases in ("short", "default"):
        key = f"recovery {leases}"
        p50, top = med(key, "p50_s"), med(key, "max_s")
        bound = LEASES[leases][0] + LEASES[leases][2] + 1.0
        print(f"| {leases} leases | {p50 or 0:.2f} s | {top or 0:.2f} s | {bound:.2f} s |")
    for key, values in results.items():
        errors = [r["error"] for r in values if "error" in r]
        if errors:
            print(f"\n{key}: {errors}", file=sys.stderr)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("mode", choices=["cancel", "recovery", "run", "worker"])
    ap.add_argument("--via", choices=["notify", "bus", "renewal"], default="notify")
    ap.add_argument("--leases", choices=list(LEASES), default="short")
    ap.add_argument("--renew", type=float, default=0.0)
    ap.add_argument("--trials", type=int, default=50)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--url", default="")
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--bus", default="")
    args = ap.parse_args()
    if args.mode == "cancel" and args.via == "renewal" and not args.renew:
        args.renew = 1.0
    if args.mode == "worker":
        asyncio.run(work(args))
    elif args.mode == "run":
        run_table(args)
    else:
        case = case_cancel if args.mode == "cancel" else case_recovery
        print(json.dumps({"case": args.mode, **asyncio.run(case(args))}), flush=True)


if __name__ == "__main__":
    main()
