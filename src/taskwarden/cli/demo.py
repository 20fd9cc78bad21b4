"""``taskwarden demo``: scopes cancelled by timeout and by hand, then persistent processes."""

from __future__ import annotations

import asyncio

from rich.console import Console
from rich.rule import Rule

from taskwarden.cli.demo_processes import run_process_demo
from taskwarden.history import ExecutionHistory
from taskwarden.model import OperationStatus
from taskwarden.registry import OperationRegistry
from taskwarden.scope import Cancelable, CancelationToken


async def run_demo(
    *, speed: float = 1.0, console: Console | None = None, store: str | None = None
) -> int:
    """Run both halves of the demo: scopes in memory, then processes on ``store``.

    Returns 0 when every operation and process ended the way the demo intends.
    """
    out = console or Console()
    out.print(Rule("[bold]1. cancelable scopes, the registry and the history"))
    scopes_ok = await run_scope_demo(speed=speed, console=out)
    out.print(Rule("[bold]2. persistent processes"))
    processes_ok = await run_process_demo(
        store or "sqlite:///taskwarden.db", speed=speed, console=out
    )
    return 0 if scopes_ok and processes_ok else 1


async def run_scope_demo(*, speed: float, console: Console) -> bool:
    """Nested scopes cancelled by timeout and by hand; True when all ended as intended."""
    out = console
    registry = OperationRegistry(history=ExecutionHistory(max_entries=1000))
    tick = 0.1 / speed
    stop_report = CancelationToken()
    tree_shown = asyncio.Event()

    async def import_users() -> None:
        async with Cancelable(name="import-users", registry=registry) as op:
            for page in range(1, 6):
                op.report_progress(page * 20, f"page {page}/5")
                await asyncio.sleep(tick)
            op.set_result({"imported": 500})

    async def fetch_slow_api() -> None:
        async with Cancelable(name="fetch-slow-api", timeout=3 * tick, registry=registry):
            await asyncio.sleep(3600)  # never answers: the timeout ends it

    async def nightly_report() -> None:
        async with Cancelable(
            name="nightly-report", token=stop_report, grace_period=tick, registry=registry
        ) as op:
            while op.should_continue():  # cooperative: stops within the grace period
                op.report_progress(None, "aggregating")
                await asyncio.sleep(tick / 4)

    async def resize(image: str, fail: bool) -> None:
        async with Cancelable(name=f"resize:{image}", registry=registry) as op:
            await asyncio.sleep(2 * tick)
            if fail:
                raise OSError(f"{image}: corrupt header")
            op.set_result(f"{image} -> 256px")

    async def resize_images() -> None:
        async with Cancelable(name="resize-images", registry=registry):
            await asyncio.gather(
                resize("cat.png", False),
                resize("dog.png", True),
                resize("owl.png", False),
                return_exceptions=True,
            )

    async def show_tree() -> None:
        await asyncio.sleep(1.5 * tick)
        out.print(Rule("live operations"))
        out.print(registry.render_tree())
        tree_shown.set()
        stop_report.cancel_sync(message="cancelled by hand from the demo")

    async with Cancelable(name="demo", registry=registry):
        await asyncio.gather(
            import_users(), fetch_slow_api(), nightly_report(), resize_images(), show_tree()
        )

    out.print(Rule("history"))
    registry.history.summary(console=out)
    statuses = {ctx.name: ctx.status for ctx in registry.history.get_all()}
    expected = {
        "import-users": OperationStatus.COMPLETED,
        "fetch-slow-api": OperationStatus.CANCELLED,
        "nightly-report": OperationStatus.CANCELLED,
        "resize:dog.png": OperationStatus.FAILED,
        "demo": OperationStatus.COMPLETED,
    }
    wrong = {name: s for name, s in expected.items() if statuses.get(name) is not s}
    if wrong or not tree_shown.is_set():
        out.print(f"[red]unexpected outcome: {wrong}")
        return False
    return True
