"""A tiny application for ``taskwarden serve --app tests.cli.serve_app:application``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from taskwarden import Application
from taskwarden.engine import ProcessContext, TaskInstance


async def greet(ctx: ProcessContext) -> None:
    ctx.log("info", "greeting")
    ctx.report_progress(100, f"hello {ctx.services['audience']}")


async def get_tasks(
    services: dict[str, Any], metadata_filter: Mapping[str, Any] | None = None
) -> list[TaskInstance]:
    return [TaskInstance(execute=greet, process_id="greet", name="Greet")]


application = Application(get_tasks, services={"audience": "from serve"})
plain_function = get_tasks
