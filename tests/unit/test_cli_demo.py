"""``taskwarden demo``: scopes with the live tree and history, then processes on SQLite."""

from __future__ import annotations

import io
from pathlib import Path

from rich.console import Console

from taskwarden.cli import main
from taskwarden.cli.demo import run_demo


async def test_demo_shows_scopes_then_processes_with_every_outcome(tmp_path: Path) -> None:
    buffer = io.StringIO()
    store = f"sqlite:///{tmp_path / 'demo.db'}"
    code = await run_demo(speed=10, console=Console(file=buffer, width=200), store=store)
    text = buffer.getvalue()
    assert code == 0
    scopes, processes = text.split("2. persistent processes", 1)
    tree, history = scopes.split("─ history ─", 1)
    assert "live operations" in tree and "resize:dog.png" in tree and "page" in tree
    for outcome in ("Success", "Error", "Cancelled", "timeout", "manual"):
        assert outcome in history
    assert "ingest/shard-2" in processes and "running" in processes
    assert "run history (from the store)" in processes
    for state in ("done", "cancelled", "failed"):
        assert state in processes


async def test_demo_runs_again_on_the_same_store(tmp_path: Path) -> None:
    store = f"sqlite:///{tmp_path / 'demo.db'}"
    for _ in range(2):
        console = Console(file=io.StringIO(), width=200)
        assert await run_demo(speed=10, console=console, store=store) == 0


def test_demo_rejects_a_non_positive_speed() -> None:
    assert main(["demo", "--speed", "0"]) == 2
