"""``taskwarden demo`` runs nested operations and shows the live tree and the history."""

from __future__ import annotations

import io

from rich.console import Console

from taskwarden.cli import main
from taskwarden.cli.demo import run_demo


async def test_demo_shows_tree_then_history_with_every_outcome() -> None:
    buffer = io.StringIO()
    code = await run_demo(speed=10, console=Console(file=buffer, width=200))
    text = buffer.getvalue()
    assert code == 0
    tree, history = text.split("history", 1)
    assert "live operations" in tree and "resize:dog.png" in tree and "page" in tree
    for outcome in ("Success", "Error", "Cancelled", "timeout", "manual"):
        assert outcome in history


def test_demo_rejects_a_non_positive_speed() -> None:
    assert main(["demo", "--speed", "0"]) == 2
