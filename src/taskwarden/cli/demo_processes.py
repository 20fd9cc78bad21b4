"""The process half of ``taskwarden demo``: persistent processes on the SQLite default.

Processes with parallel children and progress, one cancelled by hand, one that fails, and a
cron schedule that fires for real. The engine's wall clock is shifted so the next minute
starts about a second into the demo: the scheduler, the store and the exactly-once tick are
the real ones, only the wait is shortened.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

from rich.console import Console
from rich.rule import Rule
from rich.table import Table

from taskwarden.clock import SystemClock
from taskwarden.engine import (
    Engine,
    ProcessContext,
    TaskInstance,
    average_progress,
)
from taskwarden.processes import END_STATES, ProcessRecord, ProcessState
from taskwarden.registry import OperationRegistry


class _SoonNextMinute(SystemClock):
    """The system clock, with wall time moved so that a fresh minute begins soon."""

    def __init__(self) -> None:
        self._offset = timedelta(0)

    def aim(self, lead: float, after: datetime | None) -> None:
        """Make the next minute boundary past ``after`` (and past now) come in ``lead`` s.

        ``after`` is the last tick already fired in the store: each tick fires only once,
        so a demo run again within the same minute aims at a later one.
        """
        real = datetime.now(UTC)
        target = real.replace(second=0, microsecond=0) + timedelta(minutes=1)
        if after is not None:
            target = max(target, after.replace(second=0, microsecond=0) + timedelta(minutes=1))
        self._offset = target - real - timedelta(seconds=lead)

    def wall(self) -> datetime:
        return super().wall() + self._offset


def _definitions(tick: float) -> list[TaskInstance]:
    async def shard(ctx: ProcessContext) -> None:
        for step in range(1, 5):
            ctx.report_progress(step * 25, f"{ctx.params['rows'] * step // 4} rows")
            await asyncio.sleep(tick)

    async def ingest(ctx: ProcessContext) -> None:
        async with ctx.parallel_group(
            max_concurrency=2, on_child_progress=average_progress(ctx)
        ) as group:
            for n in range(3):
                await group.spawn(
                    execute=shard,
                    process_id=f"{ctx.process_id}/shard-{n}",
                    name=f"Shard {n}",
                    params={"rows": 1000 * (n + 1)},
                )
        ctx.report_progress(100, "all shards loaded")

    async def report(ctx: ProcessContext) -> None:
        while ctx.should_continue():  # cooperative: returns soon after a cancel
            ctx.report_progress(None, "aggregating")
            await asyncio.sleep(tick / 2)

    async def flaky(ctx: ProcessContext) -> None:
        await asyncio.sleep(tick)
        raise ConnectionError("upstream refused the connection")

    async def cleanup(ctx: ProcessContext) -> None:
        ctx.log("info", "removed 12 expired sessions")

    return [
        TaskInstance(execute=ingest, process_id="ingest", name="Nightly ingest"),
        TaskInstance(execute=report, process_id="report", name="Monthly report"),
        TaskInstance(execute=flaky, process_id="flaky", name="Flaky upstream sync"),
        TaskInstance(
            execute=cleanup,
            process_id="cleanup",
            name="Session cleanup",
            schedule="* * * * *",
        ),
    ]


def _tree_table(records: list[ProcessRecord], title: str) -> Table:
    table = Table(title=title)
    table.add_column("process")
    table.add_column("state")
    table.add_column("progress", justify="right")
    table.add_column("message / error", overflow="fold")
    children: dict[str | None, list[ProcessRecord]] = {}
    for record in records:
        children.setdefault(record.parent_id, []).append(record)
    ordered: list[ProcessRecord] = []

    def visit(parent_id: str | None) -> None:
        for child in children.get(parent_id, []):
            ordered.append(child)
            visit(child.process_id)

    visit(None)
    for record in ordered:
        percent = record.progress_percent
        table.add_row(
            "  " * record.depth + record.process_id,
            record.state.value,
            "" if percent is None else f"{percent:.0f}%",
            record.error or record.progress_message or "",
        )
    return table


async def run_process_demo(store: str, *, speed: float, console: Console) -> bool:
    """Run the process demo on ``store``; True when every process ended as intended."""
    tick = 0.2 / speed
    clock = _SoonNextMinute()
    engine = Engine(
        store,
        get_task_definitions=lambda services: _async(_definitions(tick)),
        registry=OperationRegistry(),
        clock=clock,
        cancel_grace=2.0,
    )
    await engine.init()
    cleanup = await engine.get_process("cleanup")
    clock.aim(min(1.0, 5 * tick), cleanup.last_cron_tick if cleanup is not None else None)
    runner = asyncio.create_task(engine.run(), name="taskwarden-demo-engine")
    await asyncio.wait_for(engine.running.wait(), 5)
    try:
        for process_id in ("ingest", "report", "flaky", "cleanup"):
            record = await engine.get_process(process_id)
            if record is not None and record.state in END_STATES:
                await engine.dismiss(process_id)  # a previous demo run left it ended
        for process_id in ("ingest", "report", "flaky"):
            await engine.launch(process_id)
        await asyncio.sleep(2.5 * tick)
        console.print(Rule(f"processes in {store}"))
        console.print(_tree_table(await engine.list_processes(), "while running"))
        await engine.cancel("report")
        for process_id in ("ingest", "report", "flaky", "cleanup"):
            await _wait_terminal(engine, process_id, bound=10 + 20 * tick)
        console.print(_tree_table(await engine.list_processes(), "at the end"))
        history = Table(title="run history (from the store)")
        for column in ("process", "run", "status", "duration", "error"):
            history.add_column(column)
        for run in await engine.query_history(limit=12):
            history.add_row(
                run.process_id or run.name,
                str(run.run_number),
                run.status.value,
                f"{run.duration:.3f}s" if run.duration is not None else "",
                run.error or "",
            )
        console.print(history)
        states = {
            pid: (await engine.get_process(pid)) for pid in ("ingest", "report", "flaky", "cleanup")
        }
        expected = {
            "ingest": ProcessState.DONE,
            "report": ProcessState.CANCELLED,
            "flaky": ProcessState.FAILED,
            "cleanup": ProcessState.DONE,
        }
        return all(
            record is not None and record.state is expected[pid] for pid, record in states.items()
        )
    finally:
        await engine.shutdown()
        await asyncio.wait_for(runner, 10)


async def _async(value: list[TaskInstance]) -> list[TaskInstance]:
    return value


async def _wait_terminal(engine: Engine, process_id: str, *, bound: float) -> None:
    done = asyncio.Event()

    def watch(record: ProcessRecord) -> None:
        if record.process_id == process_id and record.state in END_STATES:
            done.set()

    engine.on_change.append(watch)
    try:
        record = await engine.get_process(process_id)
        if record is not None and record.state in END_STATES:
            return
        await asyncio.wait_for(done.wait(), bound)
    finally:
        engine.on_change.remove(watch)
