"""An engine in its own OS process running one process step by step (used by test_logs).

    python -m tests.cli.follow_engine_proc STORE_URL GATE_DIR

The process ``stream`` logs ``step N`` and reports progress, then waits until the file
``GATE_DIR/go-N`` exists before the next step, so the test decides when the run moves on.
Prints ``running ENGINE_ID`` once the run has started; exits when the run is done.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from taskwarden.engine import Engine, ProcessContext, TaskInstance
from taskwarden.registry import OperationRegistry

STEPS = 3


async def main(store: str, gates: Path) -> None:
    async def stream(ctx: ProcessContext) -> None:
        for step in range(1, STEPS + 1):
            ctx.log("info", f"step {step}", {"step": step})
            ctx.report_progress(100 * step / (STEPS + 1), f"at step {step}")
            async with asyncio.timeout(60):
                while not (gates / f"go-{step}").exists():  # noqa: ASYNC110 - a file gate
                    await asyncio.sleep(0.01)
        ctx.log("info", "all steps done")

    async def definitions(services: object) -> list[TaskInstance]:
        return [TaskInstance(execute=stream, process_id="stream", name="Stream")]

    engine = Engine(
        store,
        get_task_definitions=definitions,
        registry=OperationRegistry(),
        progress_flush_interval=0.0,
        engine_id="follow-engine",
    )
    await engine.init()
    try:
        await engine.launch("stream")
        print(f"running {engine.engine_id}", flush=True)
        await engine.wait("stream")
    finally:
        await engine.shutdown(timeout=5.0)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], Path(sys.argv[2])))
