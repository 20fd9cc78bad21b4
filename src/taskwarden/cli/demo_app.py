"""The application of ``taskwarden serve --demo``: something to watch in the dashboard.

The terminal demo's processes (:mod:`taskwarden.cli.demo_processes`) at a pace a person can
follow: an ingest with parallel children and averaged progress, a report that aggregates
until it is cancelled, an upstream sync that fails, a session cleanup on a cron schedule
(every minute); plus a catalogue reindex of about two minutes with progress and logs, long
enough to cancel from the dashboard. Every task stops within a second of a cancel.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from taskwarden.application import Application
from taskwarden.cli.demo_processes import _definitions
from taskwarden.engine import ProcessContext, TaskInstance
from taskwarden.errors import TaskwardenError
from taskwarden.processes import END_STATES

if TYPE_CHECKING:
    from taskwarden.engine import Engine

__all__ = ["DEMO_LAUNCHES", "DEMO_TICK", "demo_application", "launch_demo"]

DEMO_TICK = 1.0
"""Seconds per step of the demo's tasks: an ingest takes about eight."""
REINDEX_BATCHES = 120

DEMO_LAUNCHES = ("ingest", "reindex", "flaky")
"""What ``serve --demo`` launches at start, so the dashboard has something running."""


async def _reindex(ctx: ProcessContext) -> None:
    ctx.log("info", f"reindexing the catalogue: {REINDEX_BATCHES} batches")
    for batch in range(1, REINDEX_BATCHES + 1):
        if not ctx.should_continue():
            ctx.log("warning", f"stopped before batch {batch}: the index is partial")
            return
        await asyncio.sleep(DEMO_TICK)
        ctx.report_progress(100 * batch / REINDEX_BATCHES, f"batch {batch}/{REINDEX_BATCHES}")
        if batch % 10 == 0:
            ctx.log("info", f"{batch * 500} documents indexed")


async def demo_tasks(
    services: dict[str, Any], metadata_filter: Mapping[str, Any] | None = None
) -> list[TaskInstance]:
    """The demo's definitions (``metadata_filter`` is ignored: there are five)."""
    return [
        *_definitions(DEMO_TICK),
        TaskInstance(
            execute=_reindex,
            process_id="reindex",
            name="Catalogue reindex",
            description="About two minutes of batches: long enough to cancel.",
            metadata={"team": "search"},
        ),
    ]


demo_application = Application(demo_tasks, name="taskwarden demo")
"""The bundled demo :class:`~taskwarden.Application` (``taskwarden serve --demo``)."""


async def launch_demo(engine: Engine) -> None:
    """Launch :data:`DEMO_LAUNCHES`, dismissing what an earlier demo left ended; a
    process that is already active (another server on the same store) is left as is."""
    for process_id in DEMO_LAUNCHES:
        try:
            record = await engine.get_process(process_id)
            if record is not None and record.state in END_STATES:
                await engine.dismiss(process_id)
            await engine.launch(process_id)
        except TaskwardenError:
            continue
