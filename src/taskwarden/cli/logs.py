"""``taskwarden logs ID``: a process's log, or its subtree's merged log with ``--tree``;
``--follow`` polls the store and prints new entries until the process ends."""

from __future__ import annotations

import argparse
import asyncio
from typing import TYPE_CHECKING, Any

from taskwarden.cli.common import add_common_options, emit_json, require_process, run_command

if TYPE_CHECKING:
    from rich.console import Console

    from taskwarden.abc import Store
    from taskwarden.processes import ProcessRecord

__all__ = ["new_entries", "register"]

_LEVEL_STYLES = {"error": "red", "warning": "yellow", "debug": "dim", "event": "cyan"}


def _interval(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be more than 0 seconds, got {text}")
    return value


def register(commands: Any) -> None:
    """Add the ``logs`` command to the CLI's subparsers."""
    parser = commands.add_parser(
        "logs",
        help="print a process's log (--tree: its subtree's); -f follows it live",
        description="Print a process's log, oldest first. With --follow, poll the store "
        "and print new entries until the process is done, failed or cancelled (or "
        "Ctrl-C). With --json and --follow, print one JSON object per line.",
    )
    parser.add_argument("process_id", metavar="ID", help="the process whose log to print")
    add_common_options(parser)
    parser.add_argument(
        "--tree", action="store_true", help="merge the logs of the process and its descendants"
    )
    parser.add_argument(
        "-f", "--follow", action="store_true", help="keep printing new entries until it ends"
    )
    parser.add_argument(
        "--interval",
        type=_interval,
        default=0.5,
        metavar="SECONDS",
        help="with --follow, seconds between reads of the store (default 0.5)",
    )
    parser.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    # Ctrl-C is how a follow is meant to end: success, not an error.
    return run_command(args, _logs, interrupt_code=0 if args.follow else 130)


def _key(entry: dict[str, Any]) -> tuple[Any, ...]:
    return (entry["timestamp"], entry.get("processId"), entry["level"], entry["message"])


def new_entries(entries: list[dict[str, Any]], last: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The entries after ``last`` (the last one printed). Logs are capped and trimmed from
    the front, and a relaunch starts a new log; when ``last`` is gone, the entries newer
    than it are the new ones."""
    if last is None:
        return entries
    key = _key(last)
    for position in range(len(entries) - 1, -1, -1):
        if _key(entries[position]) == key:
            return entries[position + 1 :]
    return [entry for entry in entries if entry["timestamp"] > last["timestamp"]]


async def _read(store: Store, record: ProcessRecord, tree: bool) -> list[dict[str, Any]]:
    if tree:
        from taskwarden.documents import merged_log

        return await merged_log(store, record)
    return [entry.to_document() for entry in record.log]


async def _logs(store: Store, args: argparse.Namespace) -> int:
    from taskwarden.processes import END_STATES

    record = await require_process(store, args.process_id)
    entries = await _read(store, record, args.tree)
    if not args.follow:
        if args.json:
            emit_json(entries)
        else:
            _print_entries(entries, args.tree, None)
        return 0
    import sys

    out = None if args.json else _console()
    print(f"following {record.process_id!r} until it ends (Ctrl-C stops)", file=sys.stderr)
    _emit(entries, args, out)
    last = entries[-1] if entries else None
    while record.state not in END_STATES:
        await asyncio.sleep(args.interval)
        record = await require_process(store, args.process_id)
        printed = new_entries(await _read(store, record, args.tree), last)
        _emit(printed, args, out)
        if printed:
            last = printed[-1]
    return 0


def _console() -> Console:
    from taskwarden.cli.common import console

    return console()


def _emit(entries: list[dict[str, Any]], args: argparse.Namespace, out: Console | None) -> None:
    if args.json:
        for entry in entries:
            emit_json(entry, lines=True)
    else:
        _print_entries(entries, args.tree, out)


def _print_entries(entries: list[dict[str, Any]], tree: bool, out: Console | None) -> None:
    import sys

    from rich.text import Text

    if out is None:
        if not entries:
            print("the log is empty", file=sys.stderr)
            return
        out = _console()
    for entry in entries:
        line = Text.assemble(
            (entry["timestamp"], "dim"),
            " ",
            (f"{entry['level']:<7}", _LEVEL_STYLES.get(entry["level"], "")),
            " ",
        )
        if tree:
            line.append(f"[{entry['processLabel']}] ", style="bold")
        line.append(entry["message"])
        if entry.get("data"):
            import json

            line.append(" " + json.dumps(entry["data"]), style="dim")
        out.print(line)
