"""What every reading command shares: the common options, opening the store, exit codes,
and output (one JSON document on stdout, or rich tables that stay plain off a terminal).

Only the standard library is imported at the top: rich and the store backends are imported
when a command runs, so ``taskwarden --help`` stays fast.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import re
import shutil
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.console import Console
    from rich.text import Text

    from taskwarden.abc import Store
    from taskwarden.processes import ProcessRecord

__all__ = [
    "DEFAULT_STORE",
    "EXIT_NOT_FOUND",
    "EXIT_OK",
    "EXIT_UNAVAILABLE",
    "EXIT_USAGE",
    "CommandError",
    "add_common_options",
    "age",
    "check_store_exists",
    "console",
    "emit_json",
    "open_read_store",
    "progress_cells",
    "redact",
    "require_process",
    "run_command",
    "since",
    "state_text",
    "store_url",
]

EXIT_OK = 0
"""The command did what was asked."""
EXIT_USAGE = 2
"""A usage error (argparse uses the same code)."""
EXIT_NOT_FOUND = 3
"""No such process (or run)."""
EXIT_UNAVAILABLE = 69
"""The store cannot be reached (``EX_UNAVAILABLE``, as ``celery inspect`` uses it)."""

DEFAULT_STORE = "sqlite:///taskwarden.db"
"""The store used without ``--store`` and ``$TASKWARDEN_STORE``: the demo's file."""

_STATE_STYLES = {
    "idle": "dim",
    "scheduled": "blue",
    "running": "cyan",
    "cancel_requested": "yellow",
    "cancelling": "yellow",
    "done": "green",
    "failed": "red",
    "cancelled": "yellow",
    "completed": "green",
    "pending": "blue",
    "ok": "green",
    "stale": "red",
    "unknown": "dim",
}


class CommandError(Exception):
    """A command cannot go on: ``message`` says what to do, ``code`` is the exit code."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def add_common_options(parser: argparse.ArgumentParser) -> None:
    """Add ``--store`` and ``--json`` to a command's parser."""
    parser.add_argument(
        "--store",
        metavar="URL",
        default=None,
        help=f"store URL (default: $TASKWARDEN_STORE, else {DEFAULT_STORE})",
    )
    parser.add_argument(
        "--json",
        action="store_true",
        help="print one JSON document on stdout (messages go to stderr)",
    )


def store_url(args: argparse.Namespace) -> str:
    """The store URL a command uses: ``--store``, else ``$TASKWARDEN_STORE``, else the
    SQLite file ``taskwarden.db`` in the current folder."""
    url: str = args.store or os.environ.get("TASKWARDEN_STORE") or DEFAULT_STORE
    return url


def redact(url: str) -> str:
    """``url`` with any password replaced by ``***``, fit for a message."""
    return re.sub(r"(://[^:/@]*:)[^@/]*@", r"\1***@", url)


def _sqlite_path(url: str) -> str | None:
    """The file a ``sqlite://`` URL names (as :func:`~taskwarden.stores.open_store` reads
    it), or None for another scheme or an in-memory database."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() != "sqlite":
        return None
    from taskwarden.stores import DEFAULT_SQLITE_PATH

    path = (rest[1:] if rest.startswith("/") else rest) or DEFAULT_SQLITE_PATH
    return None if path == ":memory:" else path


def check_store_exists(url: str) -> None:
    """Raise a CommandError (exit 69) when ``url`` names a SQLite file that does not
    exist: a read command must not create an empty store."""
    path = _sqlite_path(url)
    if path is not None and not Path(path).is_file():
        raise CommandError(
            EXIT_UNAVAILABLE,
            f"there is no store at {redact(url)} ({Path(path).absolute()} does not exist): "
            "pass --store URL or set TASKWARDEN_STORE "
            "(`taskwarden demo` creates ./taskwarden.db)",
        )


@asynccontextmanager
async def open_read_store(url: str) -> AsyncIterator[Store]:
    """Open the store at ``url`` for reading, mapping every failure to a CommandError.

    Call :func:`check_store_exists` first, so a missing SQLite file is reported rather
    than created.
    """
    from taskwarden.errors import ConfigurationError, StoreError
    from taskwarden.stores import open_store

    shown = redact(url)
    try:
        store = open_store(url)
    except ConfigurationError as exc:
        code = EXIT_UNAVAILABLE if isinstance(exc, ImportError) else EXIT_USAGE
        raise CommandError(code, str(exc)) from None
    try:
        await store.open()
    except StoreError as exc:
        raise CommandError(
            EXIT_UNAVAILABLE,
            f"cannot open the store at {shown}: {exc}; check that the server is running "
            "and the URL is right (--store or TASKWARDEN_STORE)",
        ) from None
    try:
        yield store
    except StoreError as exc:
        raise CommandError(
            EXIT_UNAVAILABLE, f"the store at {shown} failed: {exc}; try again"
        ) from None
    finally:
        await store.close()


async def require_process(store: Store, process_id: str) -> ProcessRecord:
    """The record of ``process_id``; a CommandError with exit code 3 when there is none."""
    record = await store.get(process_id)
    if record is None:
        raise CommandError(
            EXIT_NOT_FOUND,
            f"no process {process_id!r} in the store: `taskwarden ps --all` lists them",
        )
    return record


def run_command(
    args: argparse.Namespace,
    body: Callable[[Store, argparse.Namespace], Awaitable[int]],
    *,
    interrupt_code: int = 130,
) -> int:
    """Open the store, run ``body`` on it, and turn every failure into a message on
    stderr and an exit code (never a traceback). Ctrl-C returns ``interrupt_code``."""
    # Retry notices of the store would land on stderr through logging's last resort.
    logging.getLogger("taskwarden").addHandler(logging.NullHandler())
    logging.getLogger("taskwarden").propagate = False

    url = store_url(args)

    async def main() -> int:
        async with open_read_store(url) as store:
            return await body(store, args)

    from taskwarden.errors import ConfigurationError

    try:
        check_store_exists(url)
        return asyncio.run(main())
    except CommandError as exc:
        print(f"taskwarden {args.command}: {exc.message}", file=sys.stderr)
        return exc.code
    except ConfigurationError as exc:
        print(f"taskwarden {args.command}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return interrupt_code


def emit_json(document: Any, *, lines: bool = False) -> None:
    """Write ``document`` to stdout as JSON: indented, or on one line with ``lines``."""
    text = json.dumps(document, separators=(",", ":")) if lines else json.dumps(document, indent=2)
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def console(file: IO[str] | None = None) -> Console:
    """A rich console on ``file`` (stdout): styled on a terminal, plain text (no ANSI at
    all) when the stream is not a terminal or ``NO_COLOR`` is set."""
    from rich.console import Console

    stream = file if file is not None else sys.stdout
    is_tty = stream.isatty()
    if is_tty and not os.environ.get("NO_COLOR"):
        return Console(file=stream, highlight=False, emoji=False)
    width = shutil.get_terminal_size((160, 24)).columns if is_tty else None
    if width is None:
        width = int(os.environ["COLUMNS"]) if os.environ.get("COLUMNS", "").isdigit() else 160
    return Console(
        file=stream,
        force_terminal=False,
        no_color=True,
        color_system=None,
        highlight=False,
        emoji=False,
        width=width,
    )


def state_text(state: str) -> Text:
    """A process state or run status, styled by outcome."""
    from rich.text import Text

    return Text(state, style=_STATE_STYLES.get(state, ""))


def progress_cells(percent: float | None, width: int = 20) -> tuple[Any, str]:
    """A progress bar and its label (``42%``, or ``-`` when unknown)."""
    from rich.progress_bar import ProgressBar
    from rich.text import Text

    if percent is None:
        return Text(""), "-"
    return ProgressBar(total=100, completed=percent, width=width), f"{percent:.0f}%"


def since(record: ProcessRecord) -> datetime:
    """When a process entered its current state (as far as the record tells)."""
    by_state = {
        "running": record.running_since,
        "done": record.done_at,
        "failed": record.failed_at,
        "cancelled": record.stopped_at,
        "idle": None,
    }
    moment = by_state.get(str(record.state))
    return moment or record.updated_at


def age(moment: datetime, now: datetime | None = None) -> str:
    """How long ago ``moment`` was, in the largest whole unit: ``5s ago``, ``3m ago``."""
    seconds = max(0, int(((now or datetime.now(UTC)) - moment).total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit} ago"
    return f"{seconds}s ago"
