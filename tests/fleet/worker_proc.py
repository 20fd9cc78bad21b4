"""A worker OS process for the chaos tests: ``python -m tests.fleet.worker_proc URL PREFIX``.

It serves ``fail-N``, ``retry-N`` and ``resume-N`` (N < 40), whose first attempt waits
until cancelled and whose later attempts (after a lost worker) finish at once, and
``quick-N`` (N < 1000) that finish at once; it prints
``ready <incarnation>`` once it claims, and runs until SIGTERM (drain) or SIGKILL.
Leases are short: 1 s, renewed every 0.25 s, reaped every 0.25 s.
"""

from __future__ import annotations

import asyncio
import logging
import sys

from taskwarden.engine import ProcessContext, TaskInstance
from taskwarden.worker import Worker


async def attempt(ctx: ProcessContext) -> None:
    if ctx.lost_count == 0:
        ctx.report_progress(40, "checkpoint saved")
        ctx.log("info", "first attempt started")
        await ctx.wait_cancelled()
        return
    if ctx.process_id.startswith("resume") and not ctx.resumed:
        raise RuntimeError("a resume must say it is one")
    ctx.log("info", f"attempt after {ctx.lost_count} lost worker(s)")
    ctx.report_progress(100, "finished on a survivor")


async def quick(ctx: ProcessContext) -> None:
    ctx.report_progress(100, "done")


async def get_tasks(services: dict[str, object]) -> list[TaskInstance]:
    quick_ones = [
        TaskInstance(execute=quick, process_id=f"quick-{n}", name=f"quick {n}") for n in range(1000)
    ]
    return quick_ones + [
        TaskInstance(
            execute=attempt,
            process_id=f"{policy}-{n}",
            name=f"{policy} {n}",
            on_worker_lost=policy,
        )
        for policy in ("fail", "retry", "resume")
        for n in range(40)
    ]


async def main(url: str, prefix: str) -> None:
    worker = Worker(
        url,
        prefix=prefix,
        get_task_definitions=get_tasks,
        lease_seconds=1.0,
        renew_interval=0.25,
        reaper_interval=0.25,
        poll_interval=0.05,
        drain_timeout=2.0,
        cancel_grace=0.5,
        progress_flush_interval=0.0,
    )
    run = asyncio.ensure_future(worker.run())
    ready = asyncio.ensure_future(worker.ready.wait())
    await asyncio.wait({run, ready}, return_when=asyncio.FIRST_COMPLETED)
    if worker.ready.is_set():
        print("ready", worker.incarnation, flush=True)
    await run


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    asyncio.run(main(sys.argv[1], sys.argv[2]))
