"""The ``taskwarden`` command line.

Each command lives in its own module (``ps``, ``tree``, ``history``, ``logs``, ``control``
for launch / cancel / dismiss, ``resync``, ``workers``, ``worker``, ``serve``, ``top``),
imported here for its parser only: rich, the store backends and their drivers are imported
when a command runs, so ``--help`` starts fast.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="taskwarden",
        description="The control plane for async work: track, launch, cancel and watch it.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    demo = commands.add_parser(
        "demo",
        help="run a short demo of tracked operations and print the live tree and history",
    )
    demo.add_argument(
        "--speed",
        type=float,
        default=1.0,
        help="time scale of the demo (2 runs twice as fast); default 1",
    )
    demo.add_argument(
        "--store",
        default=None,
        help="store URL for the process half (default: $TASKWARDEN_STORE or "
        "sqlite:///taskwarden.db)",
    )
    from taskwarden.cli import (
        control,
        history,
        logs,
        ps,
        resync,
        serve,
        top,
        tree,
        worker,
        workers,
    )

    for module in (ps, tree, history, logs, control, resync, workers, worker, serve, top):
        module.register(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the process exit code."""
    args = _parser().parse_args(argv)
    if args.command == "demo":
        from taskwarden.cli.demo import run_demo

        if args.speed <= 0:
            print("taskwarden demo: --speed must be greater than 0", file=sys.stderr)
            return 2
        store = args.store or os.environ.get("TASKWARDEN_STORE") or "sqlite:///taskwarden.db"
        return asyncio.run(run_demo(speed=args.speed, store=store))
    handler = getattr(args, "handler", None)
    if handler is not None:
        code: int = handler(args)
        return code
    return 2  # pragma: no cover - argparse rejects unknown commands


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
