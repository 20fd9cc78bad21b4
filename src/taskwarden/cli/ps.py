"""``taskwarden ps``: the processes with their state, progress, worker and since when.

``--sort FIELD`` orders the page that was read: the Store contract lists in keyset order
``(depth, order, id)`` only, so a page is chosen in that order and then sorted (``--limit``
larger than the matches sorts them all).
"""

from __future__ import annotations

import argparse
import re
import sys
from typing import TYPE_CHECKING, Any

from taskwarden.cli.common import add_common_options, emit_json, run_command

if TYPE_CHECKING:
    from taskwarden.abc import Store
    from taskwarden.processes import ProcessRecord, ProcessState

__all__ = ["SORT_FIELDS", "parse_metadata", "parse_sort", "parse_states", "register", "sort_page"]

_INT = re.compile(r"[+-]?\d+")

SORT_FIELDS: dict[str, str] = {
    "created": "created_at",
    "updated": "updated_at",
    "state": "state",
    "name": "name",
    "id": "process_id",
}
"""``--sort``'s fields and the record attribute each one orders by."""


def parse_sort(text: str) -> tuple[str, bool]:
    """``--sort``'s value: a field of :data:`SORT_FIELDS`, ``-`` first for descending;
    returns ``(field, descending)``."""
    name = text.strip()
    descending = name.startswith("-")
    name = name.removeprefix("-")
    if name not in SORT_FIELDS:
        raise argparse.ArgumentTypeError(
            f"unknown sort field {name!r}: use one of {', '.join(SORT_FIELDS)} "
            "(- first for descending: --sort=-updated)"
        )
    return name, descending


def sort_page(records: list[ProcessRecord], name: str, descending: bool) -> list[ProcessRecord]:
    """``records`` ordered by ``name`` (ties keep the store order: the sort is stable)."""
    from taskwarden.processes import ProcessState

    attribute = SORT_FIELDS[name]
    # States sort in their life order (idle, scheduled, running, ...), not by name.
    life = {state: position for position, state in enumerate(ProcessState)}

    def key(record: ProcessRecord) -> Any:
        value = getattr(record, attribute)
        return life[value] if name == "state" else value

    return sorted(records, key=key, reverse=descending)


def parse_states(text: str) -> list[str]:
    """``--state``'s value: one state or a comma list; an unknown one is a usage error
    whose message lists the valid states."""
    from taskwarden.processes import ProcessState

    valid = [state.value for state in ProcessState]
    states = [part.strip() for part in text.split(",") if part.strip()]
    if not states:
        raise argparse.ArgumentTypeError(f"give a state: one of {', '.join(valid)}")
    for state in states:
        if state not in valid:
            raise argparse.ArgumentTypeError(
                f"unknown state {state!r}: use one of {', '.join(valid)}"
            )
    return states


def _scalar(text: str) -> str | int | float | bool:
    """A metadata value as typed on the command line: a bool, int or float when it looks
    like one, else the string itself."""
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if _INT.fullmatch(text):
        return int(text)
    try:
        number = float(text)
    except ValueError:
        return text
    # "nan" and "inf" parse as floats but nobody means them as numbers here.
    return number if number == number and abs(number) != float("inf") else text


def parse_metadata(text: str) -> tuple[str, str | int | float | bool]:
    """``--metadata``'s value: ``key=value``; the value is parsed by :func:`_scalar`."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected key=value, got {text!r}")
    return key, _scalar(value)


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {value}")
    return value


def register(commands: Any) -> None:
    """Add the ``ps`` command to the CLI's subparsers."""
    parser = commands.add_parser(
        "ps",
        help="list processes: state, progress, worker and since when",
        description="List processes with their state, progress, worker and since when, "
        "sorted by (depth, order, id). Special processes are hidden unless --all.",
    )
    add_common_options(parser)
    parser.add_argument(
        "--state",
        action="append",
        type=parse_states,
        metavar="STATE[,STATE]",
        help="only processes in these states (repeatable, or a comma list)",
    )
    parser.add_argument("--root", metavar="ID", help="only the tree of this root process")
    parser.add_argument(
        "--metadata",
        action="append",
        type=parse_metadata,
        metavar="KEY=VALUE",
        help="only processes whose metadata[KEY] equals VALUE (repeatable, ANDed; "
        "numbers and true/false match as such)",
    )
    parser.add_argument("--all", action="store_true", help="include special processes")
    parser.add_argument(
        "--limit", type=_positive, default=50, help="processes per page (default 50)"
    )
    parser.add_argument("--cursor", help="start after this cursor (printed by the previous page)")
    parser.add_argument(
        "--sort",
        type=parse_sort,
        metavar="[-]FIELD",
        help=f"order the page by {', '.join(SORT_FIELDS)} (descending: --sort=-FIELD); the page "
        "itself is chosen in store order, so raise --limit to sort more at once",
    )
    parser.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    return run_command(args, _ps)


async def process_page(
    store: Store,
    *,
    states: list[ProcessState] | None,
    root_id: str | None,
    metadata: dict[str, Any] | None,
    include_special: bool,
    limit: int,
    cursor: str | None,
) -> tuple[list[ProcessRecord], str | None, int]:
    """One keyset page of the matching processes: ``(records, next_cursor, total)``.

    The cursor is :attr:`ProcessRecord.cursor` of the last record shown, as
    :meth:`Store.list` takes it; ``total`` counts every match, on every page.
    """
    from taskwarden.errors import ConfigurationError
    from taskwarden.processes import decode_cursor

    after: tuple[int, int, str] | None = None
    if cursor is not None:
        try:
            after = decode_cursor(cursor)
        except ValueError:
            raise ConfigurationError(
                f"cursor {cursor!r} does not parse: pass the cursor a previous page printed"
            ) from None
    # The Store contract has no count and no "special" filter: one read of the matches
    # gives both the page and the total.
    matches = await store.list(state=states, root_id=root_id, metadata=metadata)
    if not include_special:
        matches = [record for record in matches if not record.special]
    if after is not None:
        matches_after = [
            record for record in matches if (record.depth, record.order, record.process_id) > after
        ]
    else:
        matches_after = matches
    page = matches_after[:limit]
    next_cursor = page[-1].cursor if len(matches_after) > limit else None
    return page, next_cursor, len(matches)


async def _ps(store: Store, args: argparse.Namespace) -> int:
    from taskwarden.documents import process_document
    from taskwarden.processes import ProcessState

    states = None
    if args.state:
        states = [ProcessState(state) for group in args.state for state in group]
    records, next_cursor, total = await process_page(
        store,
        states=states,
        root_id=args.root,
        metadata=dict(args.metadata) if args.metadata else None,
        include_special=args.all,
        limit=args.limit,
        cursor=args.cursor,
    )
    if args.sort is not None:
        records = sort_page(records, *args.sort)
    if args.json:
        emit_json(
            {
                "items": [process_document(record) for record in records],
                "nextCursor": next_cursor,
                "totalCount": total,
            }
        )
        return 0
    _print_table(records)
    hidden = "" if args.all else " (special processes hidden: --all shows them)"
    print(f"{len(records)} of {total} processes{hidden}", file=sys.stderr)
    if next_cursor is not None:
        print(f"next page: --cursor {next_cursor}", file=sys.stderr)
    return 0


def _print_table(records: list[ProcessRecord]) -> None:
    from datetime import UTC, datetime

    from rich import box
    from rich.table import Table
    from rich.text import Text

    from taskwarden.cli.common import age, console, progress_cells, since, state_text

    out = console()
    if not records:
        print("no processes match", file=sys.stderr)
        return
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False)
    for column in ("ID", "NAME", "STATE", "PROGRESS", "", "MESSAGE", "WORKER", "SINCE"):
        table.add_column(column, no_wrap=column in ("ID", "STATE", "SINCE"))
    now = datetime.now(UTC)
    for record in records:
        bar, label = progress_cells(record.progress_percent, width=12)
        message = record.error if record.error else (record.progress_message or "")
        table.add_row(
            Text(record.process_id),
            Text(record.name),
            state_text(str(record.state)),
            bar,
            label,
            Text(message, style="red" if record.error else ""),
            Text(record.lease_owner or "-"),
            age(since(record), now),
        )
    out.print(table)
