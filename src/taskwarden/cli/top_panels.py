"""``taskwarden top``'s data and drawing: one bounded sample of the store per refresh
(:class:`Sampler`), its JSON document, and the panels rich draws from the same sample.

A sample costs four bounded queries whatever the store holds: the active processes up to
what fits on screen (at most :data:`RUNNING_CAP`), the last :data:`FAILURES` failed runs,
the newest runs of the history for the throughput (an adaptive batch, see
:meth:`Sampler.sample`), and the worker records.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from rich import box
from rich.console import Console, Group, RenderableType
from rich.layout import Layout
from rich.measure import Measurement
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from taskwarden.cli.common import age, progress_cells, since, state_text
from taskwarden.model import OperationStatus
from taskwarden.processes import ProcessState

if TYPE_CHECKING:
    from taskwarden.abc import Store
    from taskwarden.model import RunRecord, WorkerRecord
    from taskwarden.processes import ProcessRecord

__all__ = [
    "FAILURES",
    "RUNNING_CAP",
    "Sampler",
    "Snapshot",
    "Throughput",
    "WorkerRow",
    "frame",
    "running_rows",
    "screen",
    "snapshot_document",
]

RUNNING_CAP = 50
"""The most active processes a sample reads, however tall the terminal."""
FAILURES = 10
"""How many of the latest failed runs a sample reads."""
WINDOW = 60.0
"""Seconds of the throughput's rolling minute."""
_BATCH_MIN, _BATCH_MAX = 100, 5000

_SHOWN_STATES = (ProcessState.RUNNING, ProcessState.CANCEL_REQUESTED, ProcessState.CANCELLING)
_OUTCOMES = {
    OperationStatus.COMPLETED: "done",
    OperationStatus.FAILED: "failed",
    OperationStatus.CANCELLED: "cancelled",
}


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkerRow:
    """One line of the workers panel: a worker record, or a lease owner without one
    (``unknown``: an embedded engine, or a worker whose record is gone)."""

    name: str
    status: str
    host: str | None
    pid: int | None
    runs: int
    renewed_at: datetime | None
    record: WorkerRecord | None


@dataclass(frozen=True, slots=True, kw_only=True)
class Throughput:
    """Finished runs in the last minute and since the previous sample, by outcome.

    ``*_at_least`` is True when the batch read ended before the period did: the counts
    are then lower bounds."""

    minute: Counter[str]
    minute_at_least: bool
    interval: float | None
    """Seconds since the previous sample; None on the first one."""
    recent: Counter[str]
    recent_at_least: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class Snapshot:
    """What one refresh read from the store."""

    taken_at: datetime
    running: list[ProcessRecord]
    more_running: bool
    failures: list[RunRecord]
    workers: list[WorkerRow]
    throughput: Throughput


class Sampler:
    """Takes :class:`Snapshot` records of ``store``, remembering the newest run seen so the
    next sample counts what finished in between."""

    def __init__(self, store: Store, *, stale_after: float = 30.0) -> None:
        self.store = store
        self.stale_after = stale_after
        self._batch = _BATCH_MIN
        self._last_index: int | None = None
        self._last_at: datetime | None = None

    async def sample(self, running_limit: int = RUNNING_CAP) -> Snapshot:
        """One bounded read of the store.

        The history is read newest first in a batch that doubles (up to 5,000 runs) while
        the last minute fills it, and shrinks back when it does not, so a quiet store costs
        a hundred rows and a busy one stays exact up to about 5,000 runs a minute (past
        that, the counts are lower bounds, shown as ``5000+``).
        """
        now = datetime.now(UTC)
        limit = max(1, min(running_limit, RUNNING_CAP))
        running = await self.store.list(state=_SHOWN_STATES, limit=limit + 1)
        failures = await self.store.query_history(status=OperationStatus.FAILED, limit=FAILURES)
        batch = await self.store.query_history(limit=self._batch)
        records = await self.store.list_workers()

        full = len(batch) == self._batch
        cutoff = now - timedelta(seconds=WINDOW)
        minute = [run for run in batch if (run.ended_at or run.started_at) >= cutoff]
        fresh = (
            [] if self._last_index is None else [r for r in batch if _index(r) > self._last_index]
        )
        throughput = Throughput(
            minute=_outcomes(minute),
            minute_at_least=full and len(minute) == len(batch),
            interval=None if self._last_at is None else (now - self._last_at).total_seconds(),
            recent=_outcomes(fresh),
            recent_at_least=full and len(fresh) == len(batch),
        )
        self._batch = min(_BATCH_MAX, max(_BATCH_MIN, 2 * max(len(minute), len(fresh))))
        self._last_index = max((_index(run) for run in batch), default=self._last_index or 0)
        self._last_at = now
        return Snapshot(
            taken_at=now,
            running=running[:limit],
            more_running=len(running) > limit,
            failures=failures,
            workers=self._workers(records, running[:limit], now),
            throughput=throughput,
        )

    def _workers(
        self, records: list[WorkerRecord], running: list[ProcessRecord], now: datetime
    ) -> list[WorkerRow]:
        rows = [
            WorkerRow(
                name=record.name,
                status=str(record.status(now, self.stale_after)),
                host=record.host,
                pid=record.pid,
                runs=record.runs,
                renewed_at=record.renewed_at,
                record=record,
            )
            for record in records
        ]
        known = {record.incarnation for record in records}
        strangers = Counter(
            r.lease_owner for r in running if r.lease_owner and r.lease_owner not in known
        )
        rows += [
            WorkerRow(
                name=owner,
                status="unknown",
                host=None,
                pid=None,
                runs=held,
                renewed_at=None,
                record=None,
            )
            for owner, held in sorted(strangers.items())
        ]
        return rows


def _index(run: RunRecord) -> int:
    return run.index if run.index is not None else -1


def _outcomes(runs: list[RunRecord]) -> Counter[str]:
    counts: Counter[str] = Counter({"done": 0, "failed": 0, "cancelled": 0})
    counts.update(_OUTCOMES[run.status] for run in runs if run.status in _OUTCOMES)
    return counts


def running_rows(height: int) -> int:
    """How many active processes fit in the running panel of a ``height``-line screen."""
    # screen() gives it three fifths of what the header and the throughput leave.
    return max(1, min(RUNNING_CAP, (height - 4) * 3 // 5 - 4))


# -- the JSON document ---------------------------------------------------------------


def snapshot_document(snapshot: Snapshot, stale_after: float) -> dict[str, Any]:
    """The panels' data as one JSON document (``top --once --json``)."""
    from taskwarden.documents import process_document, run_document

    now = snapshot.taken_at
    workers = [
        row.record.to_document(now, stale_after)
        if row.record is not None
        else {
            "incarnation": row.name,
            "name": row.name,
            "host": None,
            "pid": None,
            "startedAt": None,
            "renewedAt": None,
            "runs": row.runs,
            "concurrency": None,
            "processIds": [],
            "status": row.status,
            "secondsSince": None,
        }
        for row in snapshot.workers
    ]
    flow = snapshot.throughput
    return {
        "takenAt": now.isoformat(),
        "running": {
            "items": [process_document(record) for record in snapshot.running],
            "more": snapshot.more_running,
        },
        "failures": [run_document(run) for run in snapshot.failures],
        "workers": workers,
        "throughput": {
            "window": WINDOW,
            "finished": sum(flow.minute.values()),
            **flow.minute,
            "atLeast": flow.minute_at_least,
            "interval": None
            if flow.interval is None
            else {
                "seconds": round(flow.interval, 3),
                **flow.recent,
                "atLeast": flow.recent_at_least,
            },
        },
    }


# -- the panels ----------------------------------------------------------------------


def _table(*columns: str) -> Table:
    # The message or error column takes the width left; the others keep their own.
    wide = {"MESSAGE", "ERROR"}
    table = Table(
        box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False, expand=bool(wide & set(columns))
    )
    for column in columns:
        ratio = 1 if column in wide else None
        table.add_column(column, no_wrap=True, overflow="ellipsis", ratio=ratio)
    return table


def _running(snapshot: Snapshot) -> Panel:
    names = {row.record.incarnation: row.name for row in snapshot.workers if row.record}
    shown = len(snapshot.running)
    title = (
        f"Running (first {shown}, more not shown)"
        if snapshot.more_running
        else f"Running ({shown})"
    )
    if not snapshot.running:
        return Panel(Text("nothing is running", style="dim"), title=title, title_align="left")
    table = _table("ID", "STATE", "PROGRESS", "", "MESSAGE", "WORKER", "SINCE")
    for record in snapshot.running:
        bar, label = progress_cells(record.progress_percent, width=12)
        owner = record.lease_owner
        table.add_row(
            Text(record.process_id),
            state_text(str(record.state)),
            bar,
            label,
            Text(record.progress_message or ""),
            Text(names.get(owner, owner) if owner else "-"),
            age(since(record), snapshot.taken_at),
        )
    return Panel(table, title=title, title_align="left")


def _failures(snapshot: Snapshot) -> Panel:
    title = "Recent failures"
    if not snapshot.failures:
        return Panel(Text("no failed runs", style="dim"), title=title, title_align="left")
    table = _table("PROCESS", "WHEN", "ERROR")
    for run in snapshot.failures:
        error = (run.error or "").strip().splitlines()
        table.add_row(
            Text(run.process_id or run.name),
            age(run.ended_at or run.started_at, snapshot.taken_at),
            Text(error[0] if error else "-", style="red"),
        )
    return Panel(table, title=title, title_align="left")


def _workers(snapshot: Snapshot) -> Panel:
    title = "Workers"
    if not snapshot.workers:
        return Panel(Text("no worker records", style="dim"), title=title, title_align="left")
    table = _table("NAME", "STATUS", "HOST/PID", "RUNS", "SEEN")
    for row in snapshot.workers:
        table.add_row(
            Text(row.name),
            state_text(row.status),
            "-" if row.host is None else f"{row.host}/{row.pid}",
            str(row.runs),
            "-" if row.renewed_at is None else age(row.renewed_at, snapshot.taken_at),
        )
    return Panel(table, title=title, title_align="left")


def _counts(counts: Counter[str], at_least: bool) -> Text:
    plus = "+" if at_least else ""
    return Text.assemble(
        (f"{counts['done']}{plus} done", "green"),
        ", ",
        (f"{counts['failed']}{plus} failed", "red" if counts["failed"] else ""),
        ", ",
        (f"{counts['cancelled']}{plus} cancelled", "yellow" if counts["cancelled"] else ""),
    )


def _throughput(snapshot: Snapshot) -> Panel:
    flow = snapshot.throughput
    total = sum(flow.minute.values())
    line = Text.assemble(
        (f"{total}{'+' if flow.minute_at_least else ''} runs/min", "bold"),
        ("   last minute ", "bold"),
        _counts(flow.minute, flow.minute_at_least),
        no_wrap=True,
        overflow="ellipsis",
    )
    if flow.interval is not None:
        line.append(f"   last {flow.interval:.1f}s ", style="bold")
        line.append_text(_counts(flow.recent, flow.recent_at_least))
    return Panel(line, title="Throughput", title_align="left")


def _header(snapshot: Snapshot | None, store: str, status: str, problem: str | None) -> Text:
    text = Text.assemble(("taskwarden top", "bold"), f"  {store}  ")
    if snapshot is not None:
        text.append(snapshot.taken_at.strftime("%H:%M:%S UTC"), style="dim")
    if status:
        text.append(f"  {status}", style="dim")
    if problem:
        text.append(f"  {problem}", style="bold red")
    return text


def screen(
    snapshot: Snapshot | None,
    *,
    console: Console,
    store: str,
    status: str = "",
    problem: str | None = None,
) -> RenderableType:
    """The full-screen view: a header line, the running processes, the failures beside
    the workers, and the throughput on the last line."""
    layout = Layout()
    layout.split_column(
        Layout(_header(snapshot, store, status, problem), size=1), Layout(name="body")
    )
    if snapshot is None:
        layout["body"].update(Text("reading the store...", style="dim"))
        return layout
    layout["body"].split_column(
        Layout(_running(snapshot), ratio=3),
        Layout(name="middle", ratio=2),
        Layout(_throughput(snapshot), size=3),
    )
    workers = _workers(snapshot)
    # The workers' columns are short: the panel takes their width, the errors the rest.
    fit = Measurement.get(console, console.options, workers.renderable).maximum + 4
    half = console.width // 2
    layout["middle"].split_row(Layout(_failures(snapshot)), Layout(workers, size=min(fit, half)))
    return layout


def frame(snapshot: Snapshot, *, store: str) -> RenderableType:
    """The panels one under the other, at their natural height (``top --once``)."""
    return Group(
        _header(snapshot, store, "", None),
        _running(snapshot),
        _failures(snapshot),
        _workers(snapshot),
        _throughput(snapshot),
    )
