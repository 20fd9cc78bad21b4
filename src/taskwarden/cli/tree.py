"""``taskwarden tree ID``: a process and its descendants, each with state, progress,
message and error."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from taskwarden.cli.common import add_common_options, emit_json, require_process, run_command

if TYPE_CHECKING:
    from rich.tree import Tree

    from taskwarden.abc import Store

__all__ = ["non_negative", "register"]


def non_negative(text: str) -> int:
    """An argparse type: a whole number, 0 or more."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def register(commands: Any) -> None:
    """Add the ``tree`` command to the CLI's subparsers."""
    parser = commands.add_parser(
        "tree",
        help="show a process tree with per-node state, progress, message and error",
        description="Show a process and its descendants, children in launch order.",
    )
    parser.add_argument("process_id", metavar="ID", help="the process at the top of the tree")
    add_common_options(parser)
    parser.add_argument(
        "--depth",
        type=non_negative,
        default=None,
        metavar="N",
        help="levels below ID to show (0: the process alone; default: all)",
    )
    parser.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    return run_command(args, _tree)


async def _tree(store: Store, args: argparse.Namespace) -> int:
    from taskwarden.documents import tree_document

    record = await require_process(store, args.process_id)
    document = await tree_document(store, record, max_depth=args.depth)
    if args.json:
        emit_json(document)
        return 0
    from taskwarden.cli.common import console

    console().print(_render(document))
    return 0


def _label(doc: dict[str, Any]) -> Any:
    from rich.table import Table
    from rich.text import Text

    from taskwarden.cli.common import progress_cells, state_text

    status = doc["status"]
    progress = doc["progress"]
    bar, percent = progress_cells(progress["percent"], width=16)
    row = Table.grid(padding=(0, 1))
    head = Text.assemble((doc["name"], "bold"), " ", (f"({doc['processId']})", "dim"))
    cells: list[Any] = [head, state_text(status["state"]), bar, Text(percent)]
    if progress["message"]:
        cells.append(Text(progress["message"]))
    if status["error"]:
        cells.append(Text(f"error: {status['error']}", style="red"))
    for _ in cells:
        row.add_column(no_wrap=False)
    row.add_row(*cells)
    return row


def _render(document: dict[str, Any]) -> Tree:
    from rich.tree import Tree

    root = Tree(_label(document), guide_style="dim")

    def add(node: Tree, doc: dict[str, Any]) -> None:
        for child in doc["children"]:
            add(node.add(_label(child)), child)

    add(root, document)
    return root
