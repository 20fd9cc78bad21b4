"""``taskwarden worker --app PKG.MODULE:ATTR``: run one worker of the fleet."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from typing import Any

from taskwarden.cli.common import (
    EXIT_UNAVAILABLE,
    EXIT_USAGE,
    redact,
    store_url,
)

__all__ = ["register"]


def _positive(kind: type[int] | type[float]) -> Any:
    def parse(text: str) -> int | float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not value > 0:
            raise argparse.ArgumentTypeError(f"must be more than 0, got {text}")
        return value

    return parse


def register(commands: Any) -> None:
    """Add the ``worker`` command to the CLI's subparsers."""
    parser = commands.add_parser(
        "worker",
        help="run a worker: claim and run the application's processes from the store",
        description=(
            "Run one worker of the fleet for the application PKG.MODULE:ATTR (an "
            "taskwarden.Application). It claims launches made by any process, renews its "
            "leases, resolves dead workers' runs, and drains on SIGTERM."
        ),
    )
    parser.add_argument(
        "--app", required=True, metavar="PKG.MODULE:ATTR", help="the Application to serve"
    )
    parser.add_argument(
        "--store", metavar="URL", default=None, help="store URL (default: $TASKWARDEN_STORE)"
    )
    parser.add_argument(
        "--bus", metavar="URL", default=None, help="bus URL (default: $TASKWARDEN_BUS)"
    )
    parser.add_argument(
        "--concurrency", type=_positive(int), default=10, metavar="N", help="root runs at once"
    )
    parser.add_argument("--name", default=None, help="the worker's name (default host:pid)")
    parser.add_argument(
        "--lease",
        type=_positive(float),
        default=30.0,
        metavar="SECONDS",
        help="lease length (renewed every third of it; default 30)",
    )
    parser.add_argument(
        "--drain",
        type=float,
        default=25.0,
        metavar="SECONDS",
        help="on SIGTERM, how long running runs may finish before they are cancelled",
    )
    parser.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    from taskwarden.application import load_application
    from taskwarden.errors import BusError, ConfigurationError, StoreError

    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s"
    )
    url = store_url(args)
    bus = args.bus or os.environ.get("TASKWARDEN_BUS") or None
    try:
        application = load_application(args.app)
        from taskwarden.worker import Worker

        worker = Worker(
            url,
            get_task_definitions=application.get_task_definitions,
            services=application.services,
            bus=bus,
            name=args.name,
            concurrency=args.concurrency,
            lease_seconds=args.lease,
            renew_interval=args.lease / 3,
            reaper_interval=args.lease / 2,
            drain_timeout=max(0.0, args.drain),
        )
    except ConfigurationError as exc:
        print(f"taskwarden worker: {exc}", file=sys.stderr)
        return EXIT_USAGE
    print(
        f"taskwarden worker {worker.name} ({worker.incarnation}) on {redact(url)}: "
        f"{args.app}, {args.concurrency} slots",
        file=sys.stderr,
        flush=True,
    )
    try:
        asyncio.run(worker.run())
    except (StoreError, BusError) as exc:
        print(
            f"taskwarden worker: cannot reach the store or the bus: {exc}; check the URLs "
            "(--store / TASKWARDEN_STORE, --bus / TASKWARDEN_BUS) and that the servers run",
            file=sys.stderr,
        )
        return EXIT_UNAVAILABLE
    except KeyboardInterrupt:
        return 130
    return 0
