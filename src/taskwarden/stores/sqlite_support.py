"""The SQLite store's machinery: its database thread and its row codecs.

:class:`DatabaseThread` owns one connection in one thread. Calls queue up there; the thread
takes everything waiting (up to ``max_batch``) and runs it as one batch in one transaction
(``BEGIN IMMEDIATE`` when the batch writes), then hands all the answers back to the event
loop in one wake-up. A call refused with a domain error (a
:class:`~taskwarden.errors.TaskwardenError`) must have written nothing, so it does not
disturb the others; a database error rolls the batch back and each call is retried alone,
so one bad call fails only itself.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import queue
import sqlite3
import threading
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from typing import Any, Final

from taskwarden.errors import StoreError, TaskwardenError
from taskwarden.processes import LogEntry
from taskwarden.stores.base import (
    decode_log,
    encode_dt,
    field_encoder,
    json_loads,
    record_decoder,
    retry_transient_sync,
    run_decoder,
    store_not_open,
)

__all__ = [
    "ALONE",
    "MAX_PARAMS",
    "READ",
    "STOP",
    "WRITE",
    "DatabaseThread",
    "Job",
    "chunks",
    "dt",
    "encode_field",
    "is_transient",
    "log_from_text",
    "placeholders",
    "record_from_row",
    "run_from_row",
]

logger = logging.getLogger("taskwarden.stores.sqlite")

READ: Final = 0
"""A call that only reads: ``fn(conn, *args)`` inside the batch transaction."""
WRITE: Final = 1
"""A call that writes: its batch runs under ``BEGIN IMMEDIATE``."""
ALONE: Final = 2
"""Runs outside any batch transaction, as ``fn(*args)`` (set-up)."""
STOP: Final = 3
"""Like ALONE, then the thread ends; later calls get StoreError."""

MAX_PARAMS = 500
"""Stay well under SQLite's bound-parameter limit."""

Outcome = tuple["Job", Any, BaseException | None]

_fromiso = datetime.fromisoformat


def dt(value: str | None) -> datetime | None:
    """A stored time (or None) as an aware datetime."""
    return None if value is None else _fromiso(value)


def log_from_text(text: str) -> tuple[LogEntry, ...]:
    """A stored log (JSON text) as entries."""
    return () if text == "[]" else decode_log(json_loads(text))


record_from_row = record_decoder(
    json=json_loads, boolean=bool, time=dt, required_time=_fromiso, log=log_from_text
)
"""A row in PROCESS_COLUMNS order as a record."""

encode_field = field_encoder(time=encode_dt, boolean=lambda value: 1 if value else 0)
"""One field's value as SQLite stores it."""

run_from_row = run_decoder(json=json_loads, time=dt, required_time=_fromiso)
"""A row in RUN_COLUMNS order as a run record."""


def is_transient(exc: BaseException) -> bool:
    """True for a busy or locked database: retrying later may succeed."""
    if not isinstance(exc, sqlite3.OperationalError):
        return False
    text = str(exc).lower()
    return "locked" in text or "busy" in text


def placeholders(count: int) -> str:
    """``?, ?, ...`` for ``count`` parameters."""
    return ", ".join("?" * count)


def chunks(items: Sequence[str]) -> Iterable[Sequence[str]]:
    """``items`` in slices small enough to bind as parameters."""
    for start in range(0, len(items), MAX_PARAMS):
        yield items[start : start + MAX_PARAMS]


@dataclasses.dataclass(slots=True)
class Job:
    """One queued call: what to run, with what, and where its answer goes."""

    kind: int
    fn: Callable[..., Any]
    args: tuple[Any, ...]
    future: asyncio.Future[Any] | None
    loop: asyncio.AbstractEventLoop | None


def _settle(outcomes: list[tuple[asyncio.Future[Any], Any, BaseException | None]]) -> None:
    for future, result, error in outcomes:
        if future.done():  # the caller gave up (cancelled); the write stands
            continue
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)


class DatabaseThread:
    """One SQLite connection served by one thread; see the module docstring.

    ``conn`` is set by the first (ALONE) call, which connects; ``describe`` names the
    database in error messages.
    """

    def __init__(self, *, describe: str, max_batch: int) -> None:
        self.describe = describe
        self.conn: sqlite3.Connection | None = None
        self._max_batch = max(1, max_batch)
        self._queue: queue.SimpleQueue[list[Job]] = queue.SimpleQueue()
        # Calls made during one event-loop iteration, queued together at its end.
        self._gathering: dict[asyncio.AbstractEventLoop, list[Job]] = {}
        self._thread = threading.Thread(
            target=self._serve, name=f"taskwarden-sqlite:{describe}", daemon=True
        )
        self._stopping = False
        self.transactions = 0
        """Batch transactions committed so far (for tests and benchmarks)."""

    def start(self) -> None:
        """Start serving."""
        self._thread.start()

    def submit(self, kind: int, fn: Callable[..., Any], *args: Any) -> asyncio.Future[Any]:
        """Queue a call; its answer (or error) arrives on the calling loop's future."""
        if self._stopping:
            raise store_not_open()
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        gathering = self._gathering.get(loop)
        if gathering is None:
            # Queued at the end of this loop iteration with every call made in it, so
            # they share a transaction: handed over one by one, the thread would wake
            # for the first and commit it alone while the loop still makes the others.
            gathering = self._gathering[loop] = []
            loop.call_soon(self._hand_over, loop)
        gathering.append(Job(kind, fn, args, future, loop))
        return future

    def _hand_over(self, loop: asyncio.AbstractEventLoop) -> None:
        jobs = self._gathering.pop(loop, None)
        if jobs:
            self._queue.put(jobs)

    async def stop(self, final: Callable[[], None]) -> None:
        """Run what is queued, then ``final()`` (closing the connection), then end."""
        if self._stopping:
            return
        done = self.submit(STOP, final)
        self._stopping = True
        try:
            await done
        finally:
            await asyncio.to_thread(self._thread.join)

    def _serve(self) -> None:
        """The thread's loop: take what is queued, run it, hand the results back."""
        get, get_nowait = self._queue.get, self._queue.get_nowait
        while True:
            batch = get()
            while len(batch) < self._max_batch:
                try:
                    batch.extend(get_nowait())
                except queue.Empty:
                    break
            stop = any(job.kind == STOP for job in batch)
            try:
                outcomes = self._process(batch)
            except BaseException as exc:
                # Never let the thread die silently: every caller would wait forever.
                logger.exception("internal error in the SQLite store thread")
                error = StoreError(f"internal error in the SQLite store thread: {exc!r}")
                outcomes = [(job, None, error) for job in batch]
            self._deliver(outcomes)
            if stop:
                return

    def _process(self, batch: list[Job]) -> list[tuple[Job, Any, BaseException | None]]:
        outcomes: list[tuple[Job, Any, BaseException | None]] = []
        group: list[Job] = []
        stop = False
        for job in batch:
            if stop:
                outcomes.append((job, None, StoreError("the store was closed")))
            elif job.kind in (ALONE, STOP):
                outcomes.extend(self._run_group(group))
                group = []
                outcomes.append(self._run_alone(job))
                stop = job.kind == STOP
            else:
                group.append(job)
        outcomes.extend(self._run_group(group))
        return outcomes

    def _deliver(self, outcomes: list[tuple[Job, Any, BaseException | None]]) -> None:
        by_loop: dict[asyncio.AbstractEventLoop, list[Any]] = {}
        for job, result, error in outcomes:
            if job.future is not None and job.loop is not None:
                by_loop.setdefault(job.loop, []).append((job.future, result, error))
        for loop, items in by_loop.items():
            try:
                loop.call_soon_threadsafe(_settle, items)
            except RuntimeError:  # the loop is closed: nobody waits for these any more
                logger.debug("dropped %d store results for a closed event loop", len(items))

    def _wrap(self, exc: BaseException) -> BaseException:
        if isinstance(exc, sqlite3.Error):
            wrapped = StoreError(f"SQLite store {self.describe} failed: {exc}")
            wrapped.__cause__ = exc
            return wrapped
        return exc

    def _run_alone(self, job: Job) -> tuple[Job, Any, BaseException | None]:
        try:
            return job, job.fn(*job.args), None
        except Exception as exc:
            return job, None, self._wrap(exc)

    def _run_group(self, jobs: list[Job]) -> list[tuple[Job, Any, BaseException | None]]:
        if not jobs:
            return []
        try:
            return retry_transient_sync(lambda: self._transaction(jobs), is_transient=is_transient)
        except Exception as exc:
            if len(jobs) == 1:
                return [(jobs[0], None, self._wrap(exc))]
            # Isolate the culprit: every other call of the batch still gets its answer.
            return [outcome for job in jobs for outcome in self._run_group([job])]

    def _transaction(self, jobs: list[Job]) -> list[tuple[Job, Any, BaseException | None]]:
        conn = self.conn
        assert conn is not None
        writes = any(job.kind == WRITE for job in jobs)
        conn.execute("BEGIN IMMEDIATE" if writes else "BEGIN")
        try:
            outcomes: list[tuple[Job, Any, BaseException | None]] = []
            for job in jobs:
                try:
                    outcomes.append((job, job.fn(conn, *job.args), None))
                except TaskwardenError as exc:  # refused before writing anything
                    outcomes.append((job, None, exc))
            conn.execute("COMMIT")
            self.transactions += 1
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        return outcomes
