"""The execution history: every finished operation, its outcome, and a table to show it.

:class:`ExecutionHistory` keeps the :class:`~taskwarden.model.OperationContext` of each
finished run in memory, bounded (oldest out first), numbered by a gap-free ``index``, and
indexed by name. It is safe to use from several threads and several event loops at once.
Sinks receive each run as a frozen :class:`~taskwarden.model.RunRecord`, so a store can
persist it as is.

:class:`ExecutionRegistry` is the class-level facade of Falyx's ``ExecutionRegistry`` over a
process-wide default history, so code written for it works with only the import changed::

    from taskwarden.history import ExecutionRegistry as er

    er.record(context)
    er.summary()
    er.summary(last_result=True)
    er.summary(clear=True)

``rich`` is imported only when a summary is rendered: recording costs no terminal library.
"""

from __future__ import annotations

import inspect
import logging
import threading
from collections import deque
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import TYPE_CHECKING, Final, cast

from taskwarden.errors import ConfigurationError
from taskwarden.model import OperationContext, OperationStatus, RunRecord

if TYPE_CHECKING:
    from rich.console import Console
    from rich.text import Text

__all__ = [
    "DEFAULT_MAX_ENTRIES",
    "ExecutionHistory",
    "ExecutionRegistry",
    "HistorySink",
    "get_default_history",
    "set_default_history",
]

logger = logging.getLogger(__name__)

DEFAULT_MAX_ENTRIES: Final = 10_000
"""How many finished runs an :class:`ExecutionHistory` keeps unless told otherwise."""

HistorySink = Callable[[RunRecord], object]
"""Called synchronously with the :class:`RunRecord` of every recorded run."""

# The seed's status words, then every OperationStatus value, all lowercase.
_STATUS_ALIASES: Final[dict[str, OperationStatus | None]] = {
    "all": None,
    "success": OperationStatus.COMPLETED,
    "error": OperationStatus.FAILED,
    "canceled": OperationStatus.CANCELLED,
    **{status.value: status for status in OperationStatus},
}

_STATUS_LABELS: Final[dict[OperationStatus, tuple[str, str]]] = {
    OperationStatus.COMPLETED: ("✅ Success", "green"),
    OperationStatus.FAILED: ("❌ Error", "red"),
    OperationStatus.CANCELLED: ("🚫 Cancelled", "yellow"),
    OperationStatus.RUNNING: ("⏳ Running", "blue"),
    OperationStatus.PENDING: ("⏸ Pending", "dim"),
}

_RESULT_WIDTH: Final = 80


class ExecutionHistory:
    """A bounded, thread-safe record of finished operations.

    Each recorded context keeps its identity (no copy) and receives ``context.index``: 0, 1,
    2, ... in record order, never reused until :meth:`clear`. Beyond ``max_entries`` the
    oldest run is dropped; the indexes of the runs kept do not change, so
    ``get_by_index(i)`` finds run ``i`` for as long as it is kept.

    Every method takes one :class:`threading.Lock` (never an asyncio lock), so one history
    can be shared by threads that each run their own event loop. Sinks are called outside
    the lock, in the recording thread.

    >>> history = ExecutionHistory(max_entries=2)
    >>> for name in ("a", "b", "c"):
    ...     history.record(OperationContext(name=name))
    0
    1
    2
    >>> [(c.index, c.name) for c in history.get_all()]
    [(1, 'b'), (2, 'c')]
    """

    __slots__ = (
        "_buffer",
        "_by_name",
        "_first_index",
        "_lock",
        "_max_entries",
        "_names",
        "_next_index",
        "_sink_errors",
        "_sinks",
    )

    def __init__(self, *, max_entries: int = DEFAULT_MAX_ENTRIES) -> None:
        """Create an empty history that keeps at most ``max_entries`` runs (at least 1)."""
        if isinstance(max_entries, bool) or not isinstance(max_entries, int) or max_entries < 1:
            raise ConfigurationError(
                f"max_entries must be a positive integer, got {max_entries!r}: "
                f"pass how many finished runs to keep (default {DEFAULT_MAX_ENTRIES})"
            )
        self._max_entries = max_entries
        self._lock = threading.Lock()
        # A ring: run ``i`` lives in slot ``i % max_entries``. It grows by appending until
        # full, then each new run overwrites the oldest, so lookups by index are O(1). The
        # kept runs are the indexes ``_first_index`` to ``_next_index - 1``; slots before
        # ``_first_index`` hold None once prune() dropped them.
        self._buffer: list[OperationContext | None] = []
        # The name each slot was recorded under, so eviction finds the right per-name
        # bucket even if a context is renamed after it was recorded.
        self._names: list[str] = []
        self._by_name: dict[str, OperationContext | deque[OperationContext]] = {}
        self._first_index = 0
        self._next_index = 0
        self._sinks: tuple[HistorySink, ...] = ()
        self._sink_errors = 0

    # -- the process-wide default ---------------------------------------------------------

    @classmethod
    def get_default(cls) -> ExecutionHistory:
        """The process-wide history behind :class:`ExecutionRegistry`."""
        return _default_history

    # -- recording -------------------------------------------------------------------------

    def record(self, context: OperationContext) -> int:
        """Keep a finished ``context``, set its ``index``, notify the sinks; return the index.

        The context is kept as is, not copied: record each context once, after it ended. A
        sink that raises is logged and counted in :attr:`sink_errors`; it never makes
        ``record`` fail.
        """
        with self._lock:
            index = self._record_locked(context)
            sinks = self._sinks
        if sinks:
            self._notify(context, sinks)
        return index

    def _record_locked(self, context: OperationContext) -> int:
        """:meth:`record` without the lock and the sinks: the caller holds ``_lock``."""
        name = context.name
        index = self._next_index
        self._next_index = index + 1
        context.index = index
        by_name = self._by_name
        # A name maps to its one kept run, or to a deque once it repeats: most names
        # are unique, and a deque per run would cost more than the rest of record().
        bucket = by_name.get(name)
        if bucket is None:
            by_name[name] = context
        elif isinstance(bucket, deque):
            bucket.append(context)
        else:
            by_name[name] = deque((bucket, context))
        capacity = self._max_entries
        if index < capacity:
            self._buffer.append(context)
            self._names.append(name)
        else:
            slot = index % capacity
            evicted_name = self._names[slot]
            self._buffer[slot] = context
            self._names[slot] = name
            if index - self._first_index >= capacity:
                # The evicted run is the oldest of all, hence the oldest of its name.
                self._first_index += 1
                _drop_oldest(by_name, evicted_name)
        return index

    def add_sink(self, sink: HistorySink) -> None:
        """Call ``sink(run_record)`` for every run recorded from now on.

        Sinks are synchronous and run in the recording thread, outside the history's lock,
        in the order they were added; keep them quick (hand the record to a queue that a
        task drains, to persist it). Records from concurrent threads may reach a sink out of
        index order: each carries its ``index``.
        """
        with self._lock:
            self._sinks = (*self._sinks, sink)

    def remove_sink(self, sink: HistorySink) -> None:
        """Stop calling ``sink``; does nothing if it was not added."""
        with self._lock:
            self._sinks = tuple(s for s in self._sinks if s != sink)

    @property
    def sink_errors(self) -> int:
        """How many sink calls failed since creation.

        A call fails when the sink raises or returns an awaitable, or when the run could
        not be converted to a :class:`RunRecord` (then no sink is called for it).
        """
        return self._sink_errors

    def _notify(self, context: OperationContext, sinks: tuple[HistorySink, ...]) -> None:
        try:
            run = context.to_run_record()
        except Exception:
            # A context a scope never produced (a hand-made one with a bad time, say).
            self._count_sink_error()
            logger.exception(
                "history could not convert run %s (%r) to a RunRecord for its sinks",
                context.index,
                context.name,
                extra={"operation_id": context.id},
            )
            return
        for sink in sinks:
            try:
                returned = sink(run)
            except Exception:
                self._count_sink_error()
                logger.exception(
                    "history sink %r failed on run %s (%r)",
                    sink,
                    run.index,
                    run.name,
                    extra={"operation_id": run.operation_id},
                )
                continue
            if inspect.isawaitable(returned):
                # Nobody would await it: close it so it neither leaks nor warns later.
                close = getattr(returned, "close", None)
                if callable(close):
                    close()
                self._count_sink_error()
                logger.error(
                    "history sink %r returned an awaitable, which is never awaited: sinks "
                    "must be synchronous (put the record on a queue that a task drains)",
                    sink,
                    extra={"operation_id": run.operation_id},
                )

    def _count_sink_error(self) -> None:
        with self._lock:
            self._sink_errors += 1

    # -- lookups ---------------------------------------------------------------------------

    @property
    def max_entries(self) -> int:
        """How many runs are kept at most; older ones are dropped first."""
        return self._max_entries

    @property
    def total_recorded(self) -> int:
        """How many runs were recorded since creation or the last :meth:`clear`.

        This is also the index the next run receives. It exceeds ``len(history)`` by the
        number of runs dropped, to stay within :attr:`max_entries` or by :meth:`prune`.
        """
        return self._next_index

    def __len__(self) -> int:
        """How many runs are kept now."""
        with self._lock:
            return self._next_index - self._first_index

    def _ordered(self) -> list[OperationContext]:
        """Every kept run, oldest first; the caller holds the lock."""
        buffer = self._buffer
        count = self._next_index - self._first_index
        start = self._first_index % self._max_entries
        end = start + count
        kept = (
            buffer[start:end]
            if end <= len(buffer)
            else buffer[start:] + buffer[: end - len(buffer)]
        )
        return cast("list[OperationContext]", kept)  # kept slots never hold None

    def get_all(self) -> list[OperationContext]:
        """Every kept run, oldest first, in a new list the caller may change freely."""
        with self._lock:
            return self._ordered()

    def get_by_name(self, name: str) -> list[OperationContext]:
        """The kept runs named ``name``, oldest first (a new list; empty when none)."""
        with self._lock:
            return _named(self._by_name, name)

    def get_by_index(self, index: int) -> OperationContext | None:
        """Run number ``index``, or None if it was never recorded or was already dropped.

        Indexes are identities, not positions: a negative index finds nothing.
        """
        with self._lock:
            if not self._first_index <= index < self._next_index:
                return None
            return self._buffer[index % self._max_entries]

    def get_latest(self) -> OperationContext | None:
        """The most recently recorded run, or None when the history is empty."""
        with self._lock:
            if self._next_index == self._first_index:
                return None
            return self._buffer[(self._next_index - 1) % self._max_entries]

    def query(
        self,
        limit: int | None = None,
        status: OperationStatus | str | None = None,
        since: float | datetime | None = None,
        name: str | None = None,
    ) -> list[OperationContext]:
        """The kept runs that match every filter given, newest first.

        ``status`` is an :class:`OperationStatus` or its value (``"completed"``,
        ``"failed"``, ``"cancelled"``, ...). ``since`` keeps runs that ended at or after a
        UNIX timestamp or a timezone-aware datetime. ``limit`` caps how many are returned.
        Raises :class:`~taskwarden.errors.ConfigurationError` for a bad filter.
        """
        if limit is not None and (isinstance(limit, bool) or limit < 0):
            raise ConfigurationError(f"limit must be None or >= 0, got {limit!r}")
        wanted = None if status is None else _parse_status(status, allow_all=False)
        cutoff = None if since is None else _parse_since(since)
        if limit == 0:
            return []
        with self._lock:
            if name is not None:
                candidates = _named(self._by_name, name)
            elif wanted is None and cutoff is None and limit is not None:
                # Unfiltered and capped: copy only what is returned.
                count = min(limit, self._next_index - self._first_index)
                capacity = self._max_entries
                newest = self._next_index - 1
                buffer = self._buffer
                newest_first = [buffer[(newest - i) % capacity] for i in range(count)]
                return cast("list[OperationContext]", newest_first)
            else:
                candidates = self._ordered()
        # Filter outside the lock: recording never waits for a scan.
        matches: list[OperationContext] = []
        for context in reversed(candidates):
            if wanted is not None and context.status != wanted:
                continue
            if cutoff is not None and _end_or_start(context) < cutoff:
                continue
            matches.append(context)
            if limit is not None and len(matches) >= limit:
                break
        return matches

    def prune(self, ended_before: float | datetime | None = None) -> int:
        """Drop the oldest runs that ended before ``ended_before`` (all runs if None).

        Runs are dropped oldest first and pruning stops at the first run that ended at or
        after the cutoff, so the kept runs stay a contiguous range of indexes; a run recorded
        out of end-time order may outlive the cutoff until the runs before it go. Unlike
        :meth:`clear`, indexes are not reused. Returns how many runs were dropped.
        """
        cutoff = None if ended_before is None else _parse_since(ended_before, "ended_before")
        with self._lock:
            buffer, names, by_name = self._buffer, self._names, self._by_name
            capacity = self._max_entries
            first, stop = self._first_index, self._next_index
            while first < stop:
                slot = first % capacity
                context = buffer[slot]
                assert context is not None  # kept slots always hold a run
                if cutoff is not None and _end_or_start(context) >= cutoff:
                    break
                buffer[slot] = None
                _drop_oldest(by_name, names[slot])
                first += 1
            dropped = first - self._first_index
            self._first_index = first
        return dropped

    def clear(self) -> None:
        """Forget every run and restart indexes at 0 (sinks and their error count stay)."""
        with self._lock:
            self._buffer = []
            self._names = []
            self._by_name = {}
            self._first_index = 0
            self._next_index = 0

    # -- display ---------------------------------------------------------------------------

    def summary(
        self,
        name: str = "",
        index: int | None = None,
        result_index: int | None = None,
        clear: bool = False,
        last_result: bool = False,
        status: OperationStatus | str = "all",
        console: Console | None = None,
    ) -> None:
        """Print the history, or one run's result, to ``console`` (stdout by default).

        The first option given wins, in this order:

        - ``clear``: forget every run and say so;
        - ``last_result``: the result of the newest run (its traceback if it failed, its
          cancel reason if it was cancelled), skipping contexts whose
          ``ignore_in_history`` attribute is true;
        - ``result_index``: the same for run number ``result_index``;
        - otherwise a table of the runs (index, name, start, end, duration, status, result
          or exception), all of them, those named ``name``, or run number ``index``.

        ``status`` filters the table's rows: ``"all"``, ``"success"`` (completed runs
        only), ``"error"`` (failed runs), ``"cancelled"``, or any :class:`OperationStatus`
        or its value. A name or index that matches nothing prints a message saying so.
        Raises :class:`~taskwarden.errors.ConfigurationError` for an unknown ``status``.
        """
        wanted = _parse_status(status, allow_all=True)
        from rich.console import Console

        out = console if console is not None else Console()
        if clear:
            self.clear()
            out.print("[green]✅ Execution history cleared.[/green]")
            return
        if last_result:
            for context in reversed(self.get_all()):
                if not getattr(context, "ignore_in_history", False):
                    _print_result(out, context)
                    return
            out.print("[red]❌ No executions to show: there is no last result.[/red]")
            return
        if result_index is not None:
            found = self.get_by_index(result_index)
            if found is None:
                out.print(_missing_index(result_index, self))
                return
            _print_result(out, found)
            return
        self._print_table(out, name, index, wanted, status)

    def _print_table(
        self,
        out: Console,
        name: str,
        index: int | None,
        wanted: OperationStatus | None,
        status: OperationStatus | str,
    ) -> None:
        from rich import box
        from rich.markup import escape
        from rich.table import Table

        if index is not None:
            found = self.get_by_index(index)
            if found is None or (name and found.name != name):
                out.print(_missing_index(index, self, name))
                return
            contexts = [found]
            title = f"📊 Execution History for Index {index}"
        elif name:
            contexts = self.get_by_name(name)
            if not contexts:
                out.print(f"[red]❌ No executions found for {escape(repr(name))}.[/red]")
                return
            title = f"📊 Execution History for {escape(repr(name))}"
        else:
            contexts = self.get_all()
            if not contexts:
                out.print("[yellow]No executions recorded yet.[/yellow]")
                return
            title = "📊 Execution History"
        if wanted is not None:
            contexts = [c for c in contexts if c.status == wanted]
            if not contexts:
                label = status.value if isinstance(status, OperationStatus) else status
                out.print(f"[yellow]No executions with status {escape(repr(label))}.[/yellow]")
                return

        table = Table(title=title, expand=True, box=box.SIMPLE)
        table.add_column("Index", justify="right", style="dim")
        table.add_column("Name", style="bold cyan")
        table.add_column("Start", justify="right", style="dim")
        table.add_column("End", justify="right", style="dim")
        table.add_column("Duration", justify="right")
        table.add_column("Status", style="bold")
        table.add_column("Result / Exception", overflow="fold")
        for context in contexts:
            table.add_row(*_row(context))
        kept, total = len(self), self.total_recorded
        if kept < total and not name and index is None:
            table.caption = (
                f"{kept} of {total} recorded runs kept (at most {self.max_entries}, "
                "oldest dropped first)"
            )
        out.print(table)


def _named(
    by_name: dict[str, OperationContext | deque[OperationContext]], name: str
) -> list[OperationContext]:
    bucket = by_name.get(name)
    if bucket is None:
        return []
    return list(bucket) if isinstance(bucket, deque) else [bucket]


def _drop_oldest(by_name: dict[str, OperationContext | deque[OperationContext]], name: str) -> None:
    bucket = by_name[name]
    if isinstance(bucket, deque):
        bucket.popleft()
        if len(bucket) == 1:
            by_name[name] = bucket[0]
    else:
        del by_name[name]


def _parse_status(status: OperationStatus | str, *, allow_all: bool) -> OperationStatus | None:
    if isinstance(status, OperationStatus):
        return status
    key = status.lower() if isinstance(status, str) else None
    if key is None or key not in _STATUS_ALIASES or (key == "all" and not allow_all):
        choices = sorted(k for k in _STATUS_ALIASES if allow_all or k != "all")
        raise ConfigurationError(
            f"unknown status {status!r}: use an OperationStatus or one of {', '.join(choices)}"
        )
    return _STATUS_ALIASES[key]


def _parse_since(since: float | datetime, argument: str = "since") -> float:
    if isinstance(since, datetime):
        if since.tzinfo is None or since.utcoffset() is None:
            raise ConfigurationError(
                f"{argument}={since!r} is a naive datetime: pass a timezone-aware one "
                "(e.g. datetime.now(UTC)) or a UNIX timestamp"
            )
        return since.timestamp()
    if isinstance(since, bool) or not isinstance(since, int | float):
        raise ConfigurationError(
            f"{argument} must be a UNIX timestamp or an aware datetime, got {since!r}"
        )
    return float(since)


def _end_or_start(context: OperationContext) -> float:
    return context.end_time if context.end_time is not None else context.start_time


def _missing_index(index: int, history: ExecutionHistory, name: str = "") -> str:
    from rich.markup import escape

    kept = len(history)
    if index < 0:
        hint = "indexes start at 0"
    elif kept == 0:
        hint = "the history is empty"
    else:
        first = history.total_recorded - kept
        hint = f"kept indexes are {first} to {history.total_recorded - 1}"
    where = f" named {escape(repr(name))}" if name else ""
    return f"[red]❌ No execution found for index {index}{where}: {hint}.[/red]"


def _clock(timestamp: float | None) -> str:
    if timestamp is None:
        return "n/a"
    return datetime.fromtimestamp(timestamp).strftime("%H:%M:%S")


def _shorten(text: str) -> str:
    return text if len(text) <= _RESULT_WIDTH else f"{text[: _RESULT_WIDTH - 1]}…"


def _outcome(context: OperationContext) -> str:
    """What the run produced, in one line: result, exception or cancel reason."""
    if context.status is OperationStatus.CANCELLED:
        reason = context.cancel_reason.value if context.cancel_reason is not None else "unknown"
        text = f"reason: {reason}"
        if context.cancel_message:
            text += f" ({context.cancel_message})"
        return text
    if context.exception is not None:
        return repr(context.exception)
    return repr(context.result)


def _row(context: OperationContext) -> Iterable[Text | str]:
    from rich.text import Text

    label, style = _STATUS_LABELS.get(context.status, (str(context.status), ""))
    duration = context.duration
    # User data goes in Text cells: a result such as "[/]" is shown, not parsed as markup.
    return (
        str(context.index),
        Text(context.name),
        _clock(context.start_time),
        _clock(context.end_time),
        "n/a" if duration is None else f"{duration:.3f}s",
        Text(label, style=style),
        Text(_shorten(_outcome(context))),
    )


def _print_result(out: Console, context: OperationContext) -> None:
    from rich.pretty import Pretty
    from rich.text import Text

    label, style = _STATUS_LABELS.get(context.status, (str(context.status), ""))
    header = Text(f"#{context.index} ")
    header.append(context.name, style="bold cyan")
    header.append(" ")
    header.append(label, style=style)
    header.append(":")
    out.print(header)
    if context.status is OperationStatus.CANCELLED:
        out.print(Text(_outcome(context)))
    elif context.traceback:
        out.print(Text(context.traceback))
    elif context.exception is not None:
        out.print(Text(repr(context.exception)))
    else:
        out.print(Pretty(context.result))


_default_history = ExecutionHistory()


def get_default_history() -> ExecutionHistory:
    """The process-wide history behind :class:`ExecutionRegistry`."""
    return _default_history


def set_default_history(history: ExecutionHistory) -> ExecutionHistory:
    """Make ``history`` the process-wide default and return the one it replaces.

    Meant for tests and for applications that want other bounds::

        previous = set_default_history(ExecutionHistory(max_entries=100))
        try:
            ...
        finally:
            set_default_history(previous)
    """
    global _default_history
    if not isinstance(history, ExecutionHistory):
        raise ConfigurationError(f"expected an ExecutionHistory, got {history!r}")
    previous, _default_history = _default_history, history
    return previous


class ExecutionRegistry:
    """Falyx's class-level ``ExecutionRegistry`` interface over the default history.

    Every classmethod forwards to :func:`get_default_history`; explicit
    :class:`ExecutionHistory` instances are better wherever code can be handed one.
    """

    @classmethod
    def history(cls) -> ExecutionHistory:
        """The history this facade forwards to."""
        return _default_history

    @classmethod
    def record(cls, context: OperationContext) -> int:
        """Record a finished context and return its index (see :meth:`ExecutionHistory.record`)."""
        return _default_history.record(context)

    @classmethod
    def get_all(cls) -> list[OperationContext]:
        """Every kept run, oldest first, in a new list."""
        return _default_history.get_all()

    @classmethod
    def get_by_name(cls, name: str) -> list[OperationContext]:
        """The kept runs named ``name``, oldest first (empty when none)."""
        return _default_history.get_by_name(name)

    @classmethod
    def get_by_index(cls, index: int) -> OperationContext | None:
        """Run number ``index``, or None if unknown or dropped."""
        return _default_history.get_by_index(index)

    @classmethod
    def get_latest(cls) -> OperationContext | None:
        """The most recent run, or None when the history is empty."""
        return _default_history.get_latest()

    @classmethod
    def query(
        cls,
        limit: int | None = None,
        status: OperationStatus | str | None = None,
        since: float | datetime | None = None,
        name: str | None = None,
    ) -> list[OperationContext]:
        """Filtered runs, newest first (see :meth:`ExecutionHistory.query`)."""
        return _default_history.query(limit=limit, status=status, since=since, name=name)

    @classmethod
    def clear(cls) -> None:
        """Forget every run and restart indexes at 0."""
        _default_history.clear()

    @classmethod
    def summary(
        cls,
        name: str = "",
        index: int | None = None,
        result_index: int | None = None,
        clear: bool = False,
        last_result: bool = False,
        status: OperationStatus | str = "all",
        console: Console | None = None,
    ) -> None:
        """Print the history or a result (see :meth:`ExecutionHistory.summary`)."""
        _default_history.summary(
            name=name,
            index=index,
            result_index=result_index,
            clear=clear,
            last_result=last_result,
            status=status,
            console=console,
        )
