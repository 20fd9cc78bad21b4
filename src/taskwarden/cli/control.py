"""``taskwarden launch | cancel | dismiss ID``: steer processes from a shell.

These commands need no definitions: they write the store (one compare-and-set each) and
notify the workers over the bus when ``--bus`` / ``$TASKWARDEN_BUS`` names one. The workers
of the fleet (``taskwarden worker``) claim the launch and run the cancel. A refusal exits 1
with its reason code (``invalid-state``, ``not-cancellable``, ``confirmation-needed``).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from taskwarden.cli.common import (
    EXIT_NOT_FOUND,
    EXIT_UNAVAILABLE,
    CommandError,
    add_common_options,
    emit_json,
    redact,
    require_process,
    run_command,
)

if TYPE_CHECKING:
    from taskwarden.abc import Bus, Store
    from taskwarden.processes import ProcessRecord

__all__ = ["EXIT_REFUSED", "register"]

EXIT_REFUSED = 1
"""The command was refused (not cancellable, not launchable, not confirmed)."""

_END = ("done", "failed", "cancelled")


def register(commands: Any) -> None:
    """Add ``launch``, ``cancel`` and ``dismiss`` to the CLI's subparsers."""
    launch = commands.add_parser(
        "launch",
        help="launch a process on whichever worker serves it",
        description="Queue a run of ID for the workers; --wait follows it to its end.",
    )
    launch.add_argument("process_id", metavar="ID")
    _add_steering_options(launch)
    launch.add_argument(
        "--yes", "-y", action="store_true", help="launch even if the task has a warning"
    )
    launch.set_defaults(handler=lambda args: run_command(args, _launch))

    cancel = commands.add_parser(
        "cancel",
        help="cancel a scheduled or running process wherever it runs",
        description="Record the cancel in the store and tell the worker that runs ID.",
    )
    cancel.add_argument("process_id", metavar="ID")
    cancel.add_argument("--reason", metavar="TEXT", help="why (kept in the process log)")
    _add_steering_options(cancel)
    cancel.set_defaults(handler=lambda args: run_command(args, _cancel))

    dismiss = commands.add_parser(
        "dismiss",
        help="reset a done, failed or cancelled process to idle",
        description="Clear the last run of ID (times, error, progress, log, children).",
    )
    dismiss.add_argument("process_id", metavar="ID")
    add_common_options(dismiss)
    dismiss.set_defaults(handler=lambda args: run_command(args, _dismiss))


def _add_steering_options(parser: argparse.ArgumentParser) -> None:
    add_common_options(parser)
    parser.add_argument(
        "--bus",
        metavar="URL",
        default=None,
        help="bus URL to notify the workers at once (default: $TASKWARDEN_BUS; without "
        "one they find the change at their next poll or renewal)",
    )
    parser.add_argument(
        "--wait", action="store_true", help="follow the process until it ends (exit 1 unless done)"
    )
    parser.add_argument(
        "--interval",
        type=float,
        default=0.2,
        metavar="SECONDS",
        help="how often --wait reads the store (default 0.2)",
    )


@asynccontextmanager
async def _bus(args: argparse.Namespace) -> AsyncIterator[Bus | None]:
    url = args.bus or os.environ.get("TASKWARDEN_BUS")
    if not url:
        yield None
        return
    from taskwarden.bus import open_bus
    from taskwarden.errors import BusError, ConfigurationError

    try:
        bus = open_bus(url)
        await bus.open()
    except ConfigurationError as exc:
        raise CommandError(2, str(exc)) from None
    except BusError as exc:
        raise CommandError(
            EXIT_UNAVAILABLE, f"cannot reach the bus at {redact(url)}: {exc}"
        ) from None
    try:
        yield bus
    finally:
        await bus.close()


def _refused(exc: Exception) -> CommandError:
    from taskwarden.errors import ProcessNotFound, TaskwardenError

    if isinstance(exc, ProcessNotFound):
        return CommandError(EXIT_NOT_FOUND, str(exc))
    reason = exc.reason if isinstance(exc, TaskwardenError) else "refused"
    return CommandError(EXIT_REFUSED, f"refused ({reason}): {exc}")


def _confirm(record: ProcessRecord, args: argparse.Namespace) -> None:
    if not record.warning or args.yes:
        return
    if not sys.stdin.isatty():
        raise CommandError(
            EXIT_REFUSED,
            f"refused (confirmation-needed): {record.process_id!r} warns: {record.warning}; "
            "pass --yes to launch it anyway",
        )
    answer = input(f"{record.warning}\nLaunch {record.process_id}? [y/N] ")
    if answer.strip().lower() not in ("y", "yes"):
        raise CommandError(EXIT_REFUSED, "refused (not-confirmed): nothing was launched")


async def _served(store: Store, process_id: str) -> bool:
    from datetime import UTC, datetime

    now = datetime.now(UTC)
    return any(
        process_id in worker.process_ids and worker.status(now, 30.0) == "ok"
        for worker in await store.list_workers()
    )


async def _launch(store: Store, args: argparse.Namespace) -> int:
    from taskwarden.errors import TaskwardenError
    from taskwarden.worker.client import launch

    record = await require_process(store, args.process_id)
    _confirm(record, args)
    async with _bus(args) as bus:
        try:
            scheduled = await launch(store, args.process_id, bus=bus)
        except TaskwardenError as exc:
            raise _refused(exc) from None
    if not await _served(store, args.process_id):
        print(
            f"taskwarden launch: no live worker serves {args.process_id!r} yet: it stays "
            "scheduled until one starts (taskwarden worker --app PKG.MODULE:ATTR)",
            file=sys.stderr,
        )
    return await _finish(store, args, scheduled, "launched")


async def _cancel(store: Store, args: argparse.Namespace) -> int:
    from taskwarden.errors import TaskwardenError
    from taskwarden.worker.client import cancel

    await require_process(store, args.process_id)
    async with _bus(args) as bus:
        try:
            record = await cancel(
                store, args.process_id, bus=bus, reason=args.reason, requested_by="cli"
            )
        except TaskwardenError as exc:
            raise _refused(exc) from None
    return await _finish(store, args, record, "cancel requested for")


async def _dismiss(store: Store, args: argparse.Namespace) -> int:
    from taskwarden.errors import TaskwardenError
    from taskwarden.worker.client import dismiss

    await require_process(store, args.process_id)
    try:
        record = await dismiss(store, args.process_id)
    except TaskwardenError as exc:
        raise _refused(exc) from None
    if args.json:
        emit_json(record.to_document())
    else:
        print(f"dismissed {record.process_id}: idle")
    return 0


async def _finish(store: Store, args: argparse.Namespace, record: ProcessRecord, verb: str) -> int:
    if not args.wait:
        if args.json:
            emit_json(record.to_document())
        else:
            print(f"{verb} {record.process_id}: {record.state}")
        return 0
    final = await _follow(store, record, args)
    if args.json:
        emit_json(final.to_document())
    else:
        line = f"{final.process_id}: {final.state}"
        if final.error:
            line += f" ({final.error})"
        print(line)
    return 0 if str(final.state) == "done" else EXIT_REFUSED


async def _follow(store: Store, record: ProcessRecord, args: argparse.Namespace) -> ProcessRecord:
    """Read the record every ``--interval`` until it ends; a live bar on a terminal."""
    interval = max(0.01, args.interval)
    show = sys.stderr.isatty() and not args.json
    progress: Any = None
    if show:
        from rich.progress import BarColumn, Progress, TextColumn

        progress = Progress(
            TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[status]}")
        )
        progress.start()
        bar = progress.add_task(record.process_id, total=100, status=str(record.state))
    try:
        while True:
            fresh = await store.get(record.process_id)
            if fresh is None:
                raise CommandError(EXIT_NOT_FOUND, f"process {record.process_id!r} was deleted")
            record = fresh
            if progress is not None:
                label = str(record.state)
                if record.progress_message:
                    label += f" {record.progress_message}"
                progress.update(bar, completed=record.progress_percent or 0, status=label)
            if str(record.state) in _END:
                return record
            await asyncio.sleep(interval)
    finally:
        if progress is not None:
            progress.stop()
