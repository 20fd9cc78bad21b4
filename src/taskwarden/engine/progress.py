"""Buffered progress: reports cost microseconds, the store sees at most one write per interval.

Each run has a :class:`ProgressBuffer`. :meth:`~ProgressBuffer.report` and
:meth:`~ProgressBuffer.log` only change memory and wake a flusher task; the flusher writes
the latest percent and message and the new log entries in one ``store.update_progress``
call, then sleeps one flush interval (``TASKWARDEN_PROGRESS_FLUSH_INTERVAL_MS``, default
100 ms), so a process causes at most one progress write per interval however often it
reports. :meth:`~ProgressBuffer.close` stops the flusher and writes what is left: the final
flush is never lost. At the end of a run, a pending percent and message ride on the run's
terminal transition instead (:meth:`~ProgressBuffer.close_into`): one write, not two.

A burst of messages is coalesced: within one flush interval at most ``max_messages``
entries of level event, info or debug are kept and the rest become one
``"(N messages dropped)"`` entry; warnings and errors are always kept. The log of a process
keeps its newest ``max_log`` entries.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any

from taskwarden.clock import Clock
from taskwarden.errors import ConfigurationError, LeaseLost
from taskwarden.processes import LogEntry, LogLevel

if TYPE_CHECKING:
    from taskwarden.abc import Store
    from taskwarden.model import OperationContext

__all__ = [
    "DEFAULT_FLUSH_INTERVAL",
    "DEFAULT_MAX_LOG",
    "DEFAULT_MAX_MESSAGES",
    "ProgressBuffer",
    "flush_interval_from_env",
]

logger = logging.getLogger("taskwarden.engine.progress")

DEFAULT_FLUSH_INTERVAL = 0.1
"""Seconds between two progress writes of one process."""

DEFAULT_MAX_LOG = 1000
"""Log entries kept per process."""

DEFAULT_MAX_MESSAGES = 20
"""Event, info and debug entries kept per flush interval before the rest are dropped."""

_KEPT_LEVELS = frozenset({LogLevel.WARNING, LogLevel.ERROR})


def flush_interval_from_env() -> float:
    """The flush interval in seconds from ``TASKWARDEN_PROGRESS_FLUSH_INTERVAL_MS``."""
    raw = os.environ.get("TASKWARDEN_PROGRESS_FLUSH_INTERVAL_MS")
    if raw is None or raw.strip() == "":
        return DEFAULT_FLUSH_INTERVAL
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value >= 0:
        raise ConfigurationError(
            f"TASKWARDEN_PROGRESS_FLUSH_INTERVAL_MS={raw!r}: give a number of milliseconds >= 0"
        )
    return value / 1000.0


class ProgressBuffer:
    """The pending progress of one run and the task that flushes it to the store."""

    __slots__ = (
        "_clock",
        "_closed",
        "_dirty",
        "_drop_at",
        "_drop_time",
        "_dropped",
        "_entries",
        "_flushing",
        "_interval",
        "_kept",
        "_max_log",
        "_max_messages",
        "_message",
        "_on_flush",
        "_on_lease_lost",
        "_operation",
        "_owner",
        "_percent",
        "_sleeping",
        "_store",
        "_task",
        "_wake",
        "lease_lost",
        "process_id",
        "writes",
    )

    def __init__(
        self,
        store: Store,
        process_id: str,
        *,
        clock: Clock,
        interval: float = DEFAULT_FLUSH_INTERVAL,
        max_log: int = DEFAULT_MAX_LOG,
        max_messages: int = DEFAULT_MAX_MESSAGES,
        percent: float | None = None,
        message: str | None = None,
        operation: OperationContext | None = None,
        on_flush: Callable[[str], None] | None = None,
        owner: str | None = None,
        on_lease_lost: Callable[[str], None] | None = None,
    ) -> None:
        self._store = store
        self._on_flush = on_flush
        self._owner = owner
        self._on_lease_lost = on_lease_lost
        self.lease_lost = False
        """True once a fenced write was refused: nothing more is written."""
        self.process_id = process_id
        self._clock = clock
        self._interval = interval
        self._max_log = max_log
        self._max_messages = max_messages
        self._operation = operation
        self._percent = percent
        self._message = message
        self._entries: list[LogEntry] = []
        self._kept = 0
        self._dropped = 0
        self._drop_at = 0
        self._drop_time: datetime | None = None
        self._dirty = False
        self._closed = False
        self._flushing = False
        self._sleeping = False
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self.writes = 0
        """How many progress writes this buffer made (for tests and benchmarks)."""

    @property
    def percent(self) -> float | None:
        """The latest reported percent."""
        return self._percent

    @property
    def message(self) -> str | None:
        """The latest reported message."""
        return self._message

    def report(self, percent: float | None, message: str | None) -> None:
        """Set the progress (``percent`` already validated); a message is also logged."""
        self._percent = percent
        operation = self._operation
        if operation is not None:
            operation.progress_percent = percent
        if message is not None:
            self._message = message
            if operation is not None:
                operation.progress_message = message
            self._append(LogLevel.INFO, message, None)
        if not self._dirty:
            self._mark_dirty()

    def log(self, level: LogLevel, message: str, data: dict[str, Any] | None = None) -> None:
        """Append a log entry (subject to coalescing unless a warning or an error)."""
        self._append(level, message, data)
        if not self._dirty:
            self._mark_dirty()

    def _append(self, level: LogLevel, message: str, data: dict[str, Any] | None) -> None:
        if level not in _KEPT_LEVELS:
            if self._kept >= self._max_messages:
                if not self._dropped:
                    # The "(N messages dropped)" entry goes where the dropping began.
                    self._drop_at = len(self._entries)
                    self._drop_time = self._clock.wall()
                self._dropped += 1
                return
            self._kept += 1
        entries = self._entries
        entries.append(
            LogEntry(timestamp=self._clock.wall(), level=level, message=message, data=data)
        )
        if len(entries) > 2 * self._max_log:
            # The store keeps only the newest max_log anyway: bound memory between flushes.
            trimmed = len(entries) - self._max_log
            del entries[:trimmed]
            self._drop_at = max(0, self._drop_at - trimmed)

    def _mark_dirty(self) -> None:
        self._dirty = True
        if self._closed:
            return
        if self._task is None:
            self._wake = asyncio.Event()
            self._wake.set()
            self._task = asyncio.get_running_loop().create_task(
                self._loop(), name=f"taskwarden-progress:{self.process_id}"
            )
        else:
            assert self._wake is not None
            self._wake.set()

    async def _loop(self) -> None:
        wake = self._wake
        assert wake is not None
        while not self._closed:
            await wake.wait()
            wake.clear()
            if self._closed:
                break
            self._flushing = True
            try:
                await self.flush()
            except Exception:
                logger.exception("progress flush of %r failed; retrying later", self.process_id)
            finally:
                self._flushing = False
            if self._closed:
                break
            self._sleeping = True
            try:
                await self._clock.sleep(self._interval)
            finally:
                self._sleeping = False

    async def flush(self) -> None:
        """Write the pending progress and log entries now (nothing if none is pending)."""
        if not self._dirty:
            return
        entries = self._entries
        dropped = self._dropped
        if dropped:
            entries.insert(
                self._drop_at,
                LogEntry(
                    timestamp=self._drop_time or self._clock.wall(),
                    level=LogLevel.INFO,
                    message=f"({dropped} messages dropped)",
                ),
            )
        self._entries = []
        self._dropped = 0
        self._kept = 0
        self._dirty = False
        if self.lease_lost:
            return  # the record belongs to a newer attempt now
        try:
            fence = {} if self._owner is None else {"expected_owner": self._owner}
            await self._store.update_progress(
                self.process_id, self._percent, self._message, entries, self._max_log, **fence
            )
        except LeaseLost as exc:
            self.lease_lost = True  # what was pending is dropped, never retried
            if self._on_lease_lost is not None:
                self._on_lease_lost(f"lease-lost: a progress write was refused ({exc})")
            return
        except BaseException:
            # Keep what was not written, so the next flush (or the final one) writes it.
            self._entries = entries + self._entries
            self._dirty = True
            raise
        self.writes += 1
        if self._on_flush is not None:
            self._on_flush(self.process_id)

    async def close(self) -> None:
        """Stop the flusher and write what is pending: the final flush."""
        await self._stop_flusher()
        await self.flush()

    async def close_into(self, fields: dict[str, Any]) -> None:
        """Stop the flusher; put a pending percent and message into ``fields`` (the run's
        terminal transition writes them, so the final flush costs no write of its own), or
        write pending log entries now, as :meth:`close` does."""
        await self._stop_flusher()
        if not self._dirty:
            return
        if self._entries or self._dropped:
            await self.flush()
            return
        fields["progress_percent"] = self._percent
        fields["progress_message"] = self._message
        self._dirty = False

    async def discard(self) -> None:
        """Stop the flusher and drop what is pending (the run lost its lease: the record
        belongs to another attempt now)."""
        await self._stop_flusher()
        self._entries = []
        self._dropped = 0
        self._dirty = False

    def detach(self) -> None:
        """Forget the callbacks (the run is over: they refer back to it)."""
        self._on_lease_lost = None

    def reopen_pending(self) -> None:
        """The terminal write that carried the final progress did not happen: mark it
        pending again, for a later :meth:`close`."""
        self._dirty = True

    async def _stop_flusher(self) -> None:
        self._closed = True
        task = self._task
        if task is not None and not task.done():
            if self._flushing:
                # Let the write in flight finish; the loop sees ``_closed`` and ends.
                assert self._wake is not None
                self._wake.set()
            else:
                task.cancel()
            await asyncio.wait({task})
