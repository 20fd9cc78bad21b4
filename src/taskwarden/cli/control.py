"""``taskwarden launch | cancel | dismiss ID``: steer processes from a shell.

These commands need no definitions: they write the store (one compare-and-set each) and
notify the workers over the bus when ``--bus`` / ``$TASKWARDEN_BUS`` names one. The workers
of the fleet (``taskwarden worker``) claim the launch and run the cancel. A refusal exits 1
with its reason code (``invalid-state``, ``not-cancellable``, ``confirmation-needed``).

``cancel ID --group`` cancels a process and its descendants; ``cancel`` with filters and no
ID (``--state``, ``--metadata``, ``--root``) cancels every process they match, after a
confirmation that names the count (``--yes`` skips it).
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
    EXIT_USAGE,
    CommandError,
    add_common_options,
    emit_json,
    redact,
    require_process,
    run_command,
)
from taskwarden.cli.ps import parse_metadata, parse_states

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
        help="cancel a process (--group: with its descendants), or every process a filter matches",
        description="Record the cancel in the store and tell the worker that runs ID. "
        "With --group, ID's descendants are cancelled too. Without ID, the filters "
        "(--state, --metadata, --root; at least one) choose the processes, and a "
        "confirmation names how many (--yes skips it).",
    )
    cancel.add_argument("process_id", metavar="ID", nargs="?")
    cancel.add_argument("--reason", metavar="TEXT", help="why (kept in the process log)")
    cancel.add_argument(
        "--group", action="store_true", help="also cancel every descendant of ID (ID first)"
    )
    cancel.add_argument(
        "--state",
        action="append",
        type=parse_states,
        metavar="STATE[,STATE]",
        help="without ID: processes in these states (scheduled, running; default both)",
    )
    cancel.add_argument(
        "--metadata",
        action="append",
        type=parse_metadata,
        metavar="KEY=VALUE",
        help="without ID: processes whose metadata[KEY] equals VALUE (repeatable, ANDed)",
    )
    cancel.add_argument("--root", metavar="ID", help="without ID: only the tree of this root")
    cancel.add_argument(
        "--yes", "-y", action="store_true", help="without ID: cancel without asking first"
    )
    _add_steering_options(cancel)
    cancel.set_defaults(handler=_cancel_entry)

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


def _bulk_filters(args: argparse.Namespace) -> dict[str, Any]:
    states = [state for group in args.state or () for state in group]
    return {
        "state": states or None,
        "metadata": dict(args.metadata) if args.metadata else None,
        "root_id": args.root,
    }


def _cancel_entry(args: argparse.Namespace) -> int:
    """Check the form of ``cancel`` before the store is opened: an ID, or filters."""
    bulk = bool(args.state or args.metadata or args.root is not None)
    problem = None
    if args.group and args.process_id is None:
        problem = "--group needs the ID of the process whose group to cancel"
    elif args.process_id is None and not bulk:
        problem = (
            "give the ID of a process to cancel, or filters (--state, --metadata, --root) "
            "to cancel every process they match"
        )
    elif args.process_id is not None and bulk:
        problem = "give an ID or filters (--state, --metadata, --root), not both"
    elif bulk and args.wait:
        problem = "--wait follows one process or one group: give an ID (and --group)"
    if bulk and problem is None:
        from taskwarden.errors import ConfigurationError
        from taskwarden.worker.client import cancellable_filter

        filters = _bulk_filters(args)
        try:
            cancellable_filter(filters.pop("state"), **filters)
        except ConfigurationError as exc:
            problem = str(exc)
    if problem is not None:
        print(f"taskwarden cancel: {problem}", file=sys.stderr)
        return EXIT_USAGE
    body = _cancel_bulk if bulk else _cancel_group if args.group else _cancel
    return run_command(args, body)


async def _cancel_group(store: Store, args: argparse.Namespace) -> int:
    from taskwarden.errors import TaskwardenError
    from taskwarden.worker.client import cancel_group

    root_id = args.process_id
    await require_process(store, root_id)
    async with _bus(args) as bus:
        try:
            changed = await cancel_group(
                store, root_id, bus=bus, reason=args.reason, requested_by="cli"
            )
        except TaskwardenError as exc:
            raise _refused(exc) from None
    if args.wait:
        members = await _follow_group(store, root_id, args)
    else:
        members = await _group(store, await require_process(store, root_id))
    now = {member.process_id: member for member in members}
    root = now[root_id]
    if args.json:
        emit_json(
            {
                "root": root.to_document(),
                "changed": [now.get(r.process_id, r).to_document() for r in changed],
                "group": [{"processId": m.process_id, "state": str(m.state)} for m in members],
            }
        )
    elif args.wait:
        for member in members:
            error = f" ({member.error})" if member.error else ""
            print(f"{member.process_id}: {member.state}{error}")
    else:
        for record in changed:
            print(f"cancel requested for {record.process_id}: {record.state}")
        print(
            f"taskwarden cancel: cancel recorded for {len(changed)} of the {len(members)} "
            f"processes of the group of {root_id!r}; the others stop with the ones above "
            "them (--wait follows the whole group)",
            file=sys.stderr,
        )
    if not args.wait:
        return 0
    return 0 if str(root.state) == "done" else EXIT_REFUSED


async def _group(store: Store, root: ProcessRecord) -> list[ProcessRecord]:
    """``root`` and every descendant, ``root`` first, a page of its tree at a time."""
    members, ids = [root], {root.process_id}
    cursor: str | None = None
    while True:
        page = await store.list(root_id=root.root_id, limit=500, cursor=cursor)
        for record in page:
            if record.parent_id in ids:
                ids.add(record.process_id)
                members.append(record)
        if len(page) < 500:
            return members
        cursor = page[-1].cursor


async def _follow_group(
    store: Store, root_id: str, args: argparse.Namespace
) -> list[ProcessRecord]:
    """Read the group every ``--interval`` until no process in it is active any more."""
    from taskwarden.processes import ACTIVE_STATES

    interval = max(0.01, args.interval)
    while True:
        root = await store.get(root_id)
        if root is None:
            raise CommandError(EXIT_NOT_FOUND, f"process {root_id!r} was deleted")
        members = await _group(store, root)
        if not any(member.state in ACTIVE_STATES for member in members):
            return members
        await asyncio.sleep(interval)


def _confirm_bulk(count: int) -> None:
    noun = "process" if count == 1 else "processes"
    if not sys.stdin.isatty():
        raise CommandError(
            EXIT_REFUSED,
            f"refused (confirmation-needed): {count} {noun} match; pass --yes to cancel "
            "them (stdin is not a terminal to ask on)",
        )
    sys.stderr.write(f"Cancel {count} {noun}? [y/N] ")
    sys.stderr.flush()
    answer = sys.stdin.readline()
    if answer.strip().lower() not in ("y", "yes"):
        raise CommandError(EXIT_REFUSED, "refused (not-confirmed): nothing was cancelled")


async def _cancel_bulk(store: Store, args: argparse.Namespace) -> int:
    from taskwarden.worker.client import BulkCancelResult, cancel_matching, count_matching

    filters = _bulk_filters(args)
    matched = await count_matching(store, **filters)
    if matched == 0:
        if args.json:
            emit_json(BulkCancelResult().to_document())
        else:
            print(
                "taskwarden cancel: no scheduled or running process matches: nothing was cancelled",
                file=sys.stderr,
            )
        return 0
    if not args.yes:
        _confirm_bulk(matched)
    async with _bus(args) as bus:
        # At most what was confirmed: launches made since the count are not taken.
        result = await cancel_matching(
            store, **filters, bus=bus, reason=args.reason, requested_by="cli", limit=matched
        )
    if args.json:
        emit_json(result.to_document())
    else:
        for process_id in result.cancelled:
            print(f"cancelled {process_id}")
        for refusal in result.refused:
            print(f"refused {refusal.process_id} ({refusal.reason}): {refusal.message}")
        summary = f"{len(result.cancelled)} of {result.matched} matching processes cancelled"
        if result.refused:
            summary += f", {len(result.refused)} refused"
        print(f"taskwarden cancel: {summary}", file=sys.stderr)
    return EXIT_REFUSED if result.refused else 0


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
