"""An engine in its own OS process, controlled over a bus (used by test_remote_control).

    python -m tests.integration.remote_engine_proc STORE_URL BUS_URL PREFIX

Prints ``ready`` once it serves commands, then runs until SIGTERM.
"""

from __future__ import annotations

import asyncio
import sys

from taskwarden.bus import open_bus
from taskwarden.engine import Engine, ProcessContext, TaskInstance
from taskwarden.registry import OperationRegistry
from taskwarden.remote import RemoteControl


async def forever(ctx: ProcessContext) -> None:
    ctx.report_progress(None, "waiting to be cancelled")
    await asyncio.Event().wait()  # never checks should_continue: the ladder must force it


async def definitions(services: object) -> list[TaskInstance]:
    return [TaskInstance(execute=forever, process_id="long", name="Long job")]


async def main(store: str, bus_url: str, prefix: str) -> None:
    engine = Engine(
        store,
        get_task_definitions=definitions,
        registry=OperationRegistry(),
        cancel_grace=0.0,
    )
    await engine.init()
    async with open_bus(bus_url) as bus, RemoteControl(engine, bus, prefix=prefix):
        print("ready", flush=True)
        await engine.run()


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:4]))
