"""A tiny application for ``taskwarden worker --app tests.fleet.app_module:application``."""

from __future__ import annotations

from typing import Any

from taskwarden import Application
from taskwarden.engine import ProcessContext, TaskInstance


async def hello(ctx: ProcessContext) -> None:
    ctx.report_progress(100, f"hello {ctx.services['greeting']}")


async def long(ctx: ProcessContext) -> None:
    await ctx.wait_cancelled()


async def get_tasks(services: dict[str, Any]) -> list[TaskInstance]:
    return [
        TaskInstance(execute=hello, process_id="hello", name="Hello"),
        TaskInstance(execute=long, process_id="long", name="Long"),
    ]


application = Application(get_tasks, services={"greeting": "from the fleet"})
not_an_application = get_tasks
GREETING = "a string, not an application"
