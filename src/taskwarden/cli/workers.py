"""``taskwarden workers``: the fleet's workers from their records in the store."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from taskwarden.cli.common import add_common_options, age, emit_json, run_command

if TYPE_CHECKING:
    from taskwarden.abc import Store

__all__ = ["register"]


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be more than 0, got {value}")
    return value


def register(commands: Any) -> None:
    """Add the ``workers`` command to the CLI's subparsers."""
    parser = commands.add_parser(
        "workers",
        help="list the workers: ok or stale, last renewal, host and pid, runs held",
        description="List the workers of the fleet from the records they renew in the store.",
    )
    add_common_options(parser)
    parser.add_argument(
        "--stale-after",
        type=_seconds,
        default=30.0,
        metavar="SECONDS",
        help="a worker not renewed for this long is stale (default 30, the default lease)",
    )
    parser.set_defaults(handler=lambda args: run_command(args, _workers))


async def _workers(store: Store, args: argparse.Namespace) -> int:
    from datetime import UTC, datetime

    now = datetime.now(UTC)
    workers = await store.list_workers()
    if args.json:
        emit_json([w.to_document(now, args.stale_after) for w in workers])
        return 0
    from rich.table import Table

    from taskwarden.cli.common import console, state_text

    if not workers:
        print("no workers have recorded themselves in this store (taskwarden worker --app ...)")
        return 0
    table = Table(box=None, pad_edge=False)
    for column in ("NAME", "STATUS", "RENEWED", "HOST", "PID", "RUNS", "SLOTS", "SERVES"):
        table.add_column(column, no_wrap=column != "SERVES")
    for worker in workers:
        serves = ", ".join(worker.process_ids[:5])
        if len(worker.process_ids) > 5:
            serves += f" (+{len(worker.process_ids) - 5})"
        table.add_row(
            worker.name,
            state_text(str(worker.status(now, args.stale_after))),
            age(worker.renewed_at, now),
            worker.host,
            str(worker.pid),
            str(worker.runs),
            "-" if worker.concurrency is None else str(worker.concurrency),
            serves,
        )
    console().print(table)
    return 0
