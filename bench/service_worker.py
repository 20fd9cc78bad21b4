#!/usr/bin/env python3
"""A worker OS process for ``bench_service.py``: processes that report progress on a schedule.

    python bench/service_worker.py --store URL [--bus URL] --n 20 --every 1.2 2.0 \
        --duration 20 --sink FILE

It is a real :class:`taskwarden.worker.Worker` (claims, leases, progress buffers, and with a
bus the change events of its remote control). It defines ``rep-0`` .. ``rep-<n-1>``; once
launched (by the driver, through the store), each reports progress every
``uniform(*every)`` seconds for ``duration`` seconds with the message ``"<index>:<seq>"``,
then ends.

The commit stamp: the worker's store is wrapped so that, when ``update_progress`` returns
(the write is committed), the line ``"<message> <time.monotonic()>"`` is appended to the
sink. The clock is system-wide, so the driver compares it with the time a frame carrying
that message reached its SSE clients. Prints ``ready`` once it claims.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))

MAX_REPORTS = 100_000
"""A bound on the reports of one run, whatever its schedule."""


def _definitions(args: argparse.Namespace) -> Any:
    from taskwarden.engine import ProcessContext, TaskInstance

    lo, hi = args.every

    async def report(ctx: ProcessContext) -> None:
        index = int(ctx.process_id.rpartition("-")[2])
        rng = random.Random(index * 7919 + int(time.monotonic()))
        deadline = time.monotonic() + args.duration
        seq = 0
        while seq < MAX_REPORTS and time.monotonic() < deadline:
            await asyncio.sleep(rng.uniform(lo, hi))
            seq += 1
            ctx.report_progress(float(seq % 100), f"{index}:{seq}")
        await asyncio.sleep(0.2)  # the last report gets its own flush, and so its stamp

    tasks = [
        TaskInstance(execute=report, process_id=f"rep-{i}", name=f"Reporter {i}")
        for i in range(args.n)
    ]

    async def get_tasks(services: dict[str, Any]) -> list[TaskInstance]:
        return tasks

    return get_tasks


def _stamp_commits(store: Any, sink: Path) -> None:
    """Append ``"<message> <monotonic>"`` to ``sink`` each time a progress write returns."""
    out = sink.open("a", buffering=1)
    original = store.update_progress

    async def update_progress(
        process_id: str, percent: Any, message: Any, *a: Any, **kw: Any
    ) -> Any:
        result = await original(process_id, percent, message, *a, **kw)
        out.write(f"{message} {time.monotonic():.6f}\n")
        return result

    store.update_progress = update_progress


async def work(args: argparse.Namespace) -> None:
    from taskwarden.worker import Worker

    worker = Worker(
        args.store,
        bus=args.bus or None,
        get_task_definitions=_definitions(args),
        concurrency=max(1, args.n),
        drain_timeout=1.0,
        name="bench-service-worker",
    )
    _stamp_commits(worker.store, Path(args.sink))
    run = asyncio.ensure_future(worker.run())
    ready = asyncio.ensure_future(worker.ready.wait())
    await asyncio.wait({run, ready}, timeout=60, return_when=asyncio.FIRST_COMPLETED)
    if not worker.ready.is_set():
        ready.cancel()
        await run  # it failed: let its error show
        raise SystemExit("the worker did not start within 60 s")
    print("ready", flush=True)
    await run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--store", required=True)
    ap.add_argument("--bus", default="")
    ap.add_argument("--n", type=int, default=20)
    ap.add_argument("--every", type=float, nargs=2, default=[1.2, 2.0], metavar=("MIN", "MAX"))
    ap.add_argument("--duration", type=float, default=20.0)
    ap.add_argument("--sink", required=True)
    asyncio.run(work(ap.parse_args()))


if __name__ == "__main__":
    main()
