"""``taskwarden history``: finished runs from the store, newest first; ``--show INDEX``
prints one run with its error and traceback."""

from __future__ import annotations

import argparse
import re
import sys
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from taskwarden.cli.common import (
    EXIT_NOT_FOUND,
    CommandError,
    add_common_options,
    emit_json,
    run_command,
)

if TYPE_CHECKING:
    from taskwarden.abc import Store
    from taskwarden.model import RunRecord

__all__ = ["parse_since", "register"]

_RELATIVE = re.compile(r"(\d+)\s*([smhdw])")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
_STATUSES = ("pending", "running", "completed", "cancelled", "failed")


def parse_since(text: str, now: datetime | None = None) -> datetime:
    """``--since``'s value as a UTC time: a duration back from now (``45s``, ``30m``,
    ``1h``, ``2d``, ``1w``), a date (``2026-12-01``, midnight UTC) or an ISO-8601 time
    (UTC when it has no offset)."""
    relative = _RELATIVE.fullmatch(text.strip())
    if relative:
        amount, unit = int(relative.group(1)), relative.group(2)
        return (now or datetime.now(UTC)) - timedelta(**{_UNITS[unit]: amount})
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"cannot read {text!r} as a time: use 30m, 1h, 2d, 2026-12-01 or an ISO time"
        ) from None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _index(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a run index, got {text!r}") from None


def _positive(text: str) -> int:
    value = _index(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {value}")
    return value


def register(commands: Any) -> None:
    """Add the ``history`` command to the CLI's subparsers."""
    parser = commands.add_parser(
        "history",
        help="list finished runs from the store, newest first; --show INDEX for one run",
        description="List the runs recorded in the store (they survive restarts), newest "
        "first, or show one run with its error and traceback.",
    )
    add_common_options(parser)
    parser.add_argument("--process", metavar="ID", help="only the runs of this process")
    parser.add_argument("--status", choices=_STATUSES, help="only runs that ended so")
    parser.add_argument(
        "--since",
        type=parse_since,
        metavar="WHEN",
        help="only runs started at or after WHEN: 30m, 1h, 2d, 2026-12-01 or an ISO time",
    )
    parser.add_argument("--limit", type=_positive, default=50, help="runs to show (default 50)")
    parser.add_argument(
        "--show", type=_index, metavar="INDEX", help="show the run with this index in full"
    )
    parser.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    return run_command(args, _history)


async def _history(store: Store, args: argparse.Namespace) -> int:
    from taskwarden.documents import run_document
    from taskwarden.model import OperationStatus

    if args.show is not None:
        run = await _find_run(store, args.show)
        if args.json:
            emit_json(run_document(run))
        else:
            _print_run(run)
        return 0
    runs = await store.query_history(
        process_id=args.process,
        status=None if args.status is None else OperationStatus(args.status),
        since=args.since,
        limit=args.limit,
    )
    if args.json:
        emit_json([run_document(run) for run in runs])
        return 0
    _print_table(runs)
    return 0


async def _find_run(store: Store, index: int) -> RunRecord:
    found = await store.query_history(before=index + 1, limit=1)
    if found and found[0].index == index:
        return found[0]
    raise CommandError(
        EXIT_NOT_FOUND,
        f"no run with index {index} in the history: `taskwarden history` lists them",
    )


def _when(moment: datetime | None) -> str:
    return "-" if moment is None else moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def _duration(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds:.2f}s"


def _print_table(runs: list[RunRecord]) -> None:
    from rich import box
    from rich.table import Table
    from rich.text import Text

    from taskwarden.cli.common import console, state_text

    if not runs:
        print("no runs match", file=sys.stderr)
        return
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False)
    for column in ("INDEX", "PROCESS", "RUN", "STATUS", "STARTED (UTC)", "DURATION", "ERROR"):
        table.add_column(column, no_wrap=column != "ERROR")
    for run in runs:
        reason = "" if run.cancel_reason is None else f"cancelled: {run.cancel_reason}"
        table.add_row(
            str(run.index),
            Text(run.process_id or run.name),
            "-" if run.run_number is None else str(run.run_number),
            state_text(str(run.status)),
            _when(run.started_at),
            _duration(run.duration),
            Text(run.error or reason, style="red" if run.error else ""),
        )
    console().print(table)
    print(f"{len(runs)} runs; `taskwarden history --show INDEX` for one", file=sys.stderr)


def _print_run(run: RunRecord) -> None:
    from rich.text import Text

    from taskwarden.cli.common import console, state_text

    out = console()
    fields: list[tuple[str, Any]] = [
        ("index", str(run.index)),
        ("process", run.process_id or "-"),
        ("run", "-" if run.run_number is None else str(run.run_number)),
        ("name", run.name),
        ("kind", run.kind),
        ("status", state_text(str(run.status))),
        ("started", _when(run.started_at)),
        ("ended", _when(run.ended_at)),
        ("duration", _duration(run.duration)),
    ]
    if run.result is not None:
        fields.append(("result", run.result))
    if run.error is not None:
        fields.append(("error", Text(run.error, style="red")))
    if run.cancel_reason is not None:
        fields.append(("cancel reason", str(run.cancel_reason)))
    if run.cancel_message:
        fields.append(("cancel message", run.cancel_message))
    for label, value in fields:
        out.print(Text.assemble((f"{label + ':':<15}", "bold"), value))
    if run.traceback:
        out.print(Text("traceback:", style="bold"))
        out.print(Text(run.traceback.rstrip("\n")))
