"""The public contracts of taskwarden's pluggable backends.

Each abstract method's docstring states what every backend guarantees: atomicity, ordering,
delivery, and what it raises. Shared implementation code lives in the backends' ``base``
modules, never here.
"""

from __future__ import annotations

import builtins
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from types import TracebackType
from typing import Any, ClassVar, Self

from taskwarden.model import OperationStatus, RunRecord, WorkerRecord
from taskwarden.processes import LogEntry, ProcessRecord, ProcessState


@dataclass(frozen=True, slots=True, kw_only=True)
class BusMessage:
    """One message taken from a bus subscription (or handed to a request handler).

    ``payload`` is the decoded JSON object the publisher sent; treat it as read-only, the
    local bus hands the same object to every subscriber. ``received_at`` is the UTC wall time
    at which this process took the message off the wire.
    """

    topic: str
    payload: Mapping[str, Any]
    received_at: datetime


#: A request handler: takes the request, returns the reply payload (a JSON object).
RequestHandler = Callable[[BusMessage], Awaitable[Mapping[str, Any]]]


class BusSubscription(ABC):
    """A bounded stream of the messages whose topic matches one pattern.

    Use it as an async context manager (entering it makes the subscription active) and an
    async iterator::

        async with bus.subscribe("system.*.health") as sub:
            async for message in sub:
                ...

    Guarantees: every message published after ``__aenter__`` returns, while the bus is
    connected, is delivered (at most once). The buffer holds at most ``max_buffer`` messages;
    when a slow consumer lets it fill, the **oldest** buffered message is dropped and
    :attr:`dropped` counts it, so memory stays bounded and the consumer sees the most recent
    state. Iteration ends when the subscription or its bus is closed. A subscription has
    one consumer: iterate it from one task (make several subscriptions to fan out).
    """

    @property
    @abstractmethod
    def pattern(self) -> str:
        """The topic pattern this subscription matches."""

    @property
    @abstractmethod
    def dropped(self) -> int:
        """How many messages were dropped because the buffer was full."""

    @abstractmethod
    async def start(self) -> None:
        """Make the subscription active; on return, later publishes reach it. Idempotent."""

    @abstractmethod
    async def close(self) -> None:
        """Stop receiving, drop what is buffered and end iteration. Idempotent."""

    @abstractmethod
    async def __anext__(self) -> BusMessage:
        """Wait for the next message; ``StopAsyncIteration`` once closed."""

    def __aiter__(self) -> Self:
        """The subscription is its own iterator."""
        return self

    async def __aenter__(self) -> Self:
        """Start the subscription and return it."""
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Close the subscription."""
        await self.close()


class Bus(ABC):
    """Publish / subscribe for events and request / reply for commands, between processes.

    Topics are dot-separated tokens (``system.worker-1.health``). Patterns add two wildcards:
    ``*`` matches exactly one token and ``>`` (last token only) matches one or more trailing
    tokens, so ``system.*.health`` matches ``system.api.health`` but not ``system.health``,
    and ``system.>`` matches both ``system.api`` and ``system.api.health``.

    Delivery guarantees, the same on every backend:

    * **Events** (:meth:`publish` / :meth:`subscribe`) are *at most once*: a message reaches
      the subscriptions that were active when it was published and whose bus was connected.
      Messages published while a subscriber is disconnected are lost; the subscription
      itself survives the reconnection and keeps receiving afterwards.
    * **Ordering**: messages published by one bus instance, each ``publish`` awaited before
      the next, reach every subscription in publish order. There is no order across
      publishers.
    * **Requests** (:meth:`request` / :meth:`serve`): each request is handled by *exactly one*
      server among all the buses serving a matching pattern (never two), and its reply
      reaches only the requester. If that server dies before replying, the request is not
      handled again; the requester gets :class:`~taskwarden.errors.RequestTimeout` and may
      retry. Handlers should therefore be safe to call again (idempotent) when it matters.

    Payloads are JSON objects (``Mapping[str, Any]`` of JSON-able values). Use the bus as an
    async context manager, or call :meth:`open` and :meth:`close`.
    """

    @abstractmethod
    async def open(self) -> None:
        """Connect. Raises :class:`~taskwarden.errors.BusError` if the server is unreachable."""

    @abstractmethod
    async def close(self) -> None:
        """End every subscription and served pattern, then disconnect. Idempotent."""

    async def __aenter__(self) -> Self:
        """Open the bus and return it."""
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Close the bus."""
        await self.close()

    @abstractmethod
    async def publish(self, topic: str, payload: Mapping[str, Any]) -> None:
        """Send ``payload`` to every active subscription whose pattern matches ``topic``.

        At most once, ordered per publisher (see the class docstring). Returns once the
        message has been handed to the server (or, on the local bus, to the subscriptions'
        buffers); never waits for subscribers to consume it. Raises
        :class:`~taskwarden.errors.InvalidPayload` if the payload is not a JSON object,
        :class:`~taskwarden.errors.ConfigurationError` for a malformed topic (empty token or a
        wildcard), and :class:`~taskwarden.errors.BusError` if the server stays unreachable
        after a short retry.
        """

    @abstractmethod
    def subscribe(self, pattern: str, *, max_buffer: int = 1000) -> BusSubscription:
        """Return a subscription to the topics matching ``pattern``, not yet started.

        Enter it (``async with``) or call ``start()`` before relying on delivery. The buffer
        keeps at most ``max_buffer`` messages and drops the oldest on overflow (counted in
        ``dropped``). The subscription survives reconnections of the bus. Raises
        :class:`~taskwarden.errors.ConfigurationError` for a malformed pattern.
        """

    @abstractmethod
    async def request(
        self,
        topic: str,
        payload: Mapping[str, Any],
        *,
        # The timeout travels with the request so the server can skip expired ones.
        timeout: float = 5.0,  # noqa: ASYNC109
    ) -> Mapping[str, Any]:
        """Send a request to exactly one server of ``topic`` and return its reply payload.

        Raises :class:`~taskwarden.errors.RequestTimeout` if no reply arrives within
        ``timeout`` seconds, at once when the bus can tell that nothing serves ``topic``;
        :class:`~taskwarden.errors.RemoteHandlerError` if the handler raised (the message
        carries the remote error's type and text).
        """

    @abstractmethod
    async def serve(self, pattern: str, handler: RequestHandler) -> None:
        """Handle the requests whose topic matches ``pattern`` with ``handler``.

        When several buses (in one or many processes) serve matching patterns, each request
        goes to exactly one of them. Handlers run concurrently; an exception in a handler is
        sent back to the requester as :class:`~taskwarden.errors.RemoteHandlerError` and
        does not stop serving. Serving the same pattern twice on one bus replaces the handler.
        """

    @abstractmethod
    async def unserve(self, pattern: str) -> None:
        """Stop handling ``pattern`` on this bus; requests being handled finish. Idempotent."""


# -- Store -------------------------------------------------------------------------------


class Store(ABC):
    """Where process records and run history persist: the only I/O of the process engine.

    Methods are domain verbs, each one atomic on its own: a caller never sees half of a
    change, and two callers (tasks, threads, OS processes or machines sharing one database)
    never both win a compare-and-set. Every write sets the record's ``updated_at`` from the
    store's clock.

    Life cycle: :meth:`open` (connects and applies the schema migrations), the verbs,
    :meth:`close`; or ``async with store:``. A verb called on a store that is not open
    raises :class:`~taskwarden.errors.StoreError`. Driver errors are wrapped in
    ``StoreError`` (or its subclass ``SchemaError``) with the cause chained; transient ones
    after which nothing was committed (a busy database, a refused connection, a
    serialization failure) are retried a few times first.

    Cancellation: cancelling a task that awaits a verb does not undo the verb; it may
    still commit after the ``CancelledError`` (the SQLite thread and the PostgreSQL
    statement run on). Re-read the record when the outcome matters.

    Time: lease decisions use the wall time of the store's
    :class:`~taskwarden.clock.Clock` (``clock=`` in the constructor, a ``SystemClock`` by
    default), so tests move time with a ``FakeClock`` instead of sleeping. Backends call
    ``clock.wall()``, never ``datetime.now`` directly.
    """

    executes_in_order: ClassVar[bool] = False
    """True when the store runs verbs in the order they are called, so a caller may issue a
    verb that depends on an earlier one before the earlier one's answer is back (the engine
    then sends a run's start right behind its launch). Backends that run calls on several
    connections at once leave it False."""

    # -- life cycle -------------------------------------------------------------------

    @abstractmethod
    async def open(self) -> None:
        """Connect and bring the schema up to date; a no-op on a store that is open.

        Migrations are versioned (a ``<prefix>_schema_version`` table) and applied in
        order, each once, even when several processes open one database at the same time.

        Raises:
            SchemaError: the database was migrated by a newer taskwarden than this one
                (its version is higher than the highest this code knows), or a migration
                failed.
            StoreError: the database cannot be reached or opened.
        """

    @abstractmethod
    async def close(self) -> None:
        """Release connections and threads; a no-op on a store that is not open.

        Writes already acknowledged are durable; the store can be opened again.
        """

    async def __aenter__(self) -> Self:
        """Open the store and return it."""
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Close the store."""
        await self.close()

    # -- definitions ------------------------------------------------------------------

    @abstractmethod
    async def create(
        self, record: ProcessRecord, *, parent_owner: str | None = None
    ) -> ProcessRecord:
        """Insert a new process record as given and return it as stored.

        The store sets ``updated_at``; everything else is kept as given (``created_at``
        included). Atomic: of two concurrent creates of one id, exactly one succeeds.

        With ``parent_owner``, the insert is fenced: it happens only if the record's
        parent is leased by ``parent_owner`` at that moment (checked in the same
        transaction), so a worker that lost its lease cannot add children to a newer
        attempt.

        Raises:
            InvalidDefinition: a record with this ``process_id`` exists, or a value cannot
                be stored (``params``, ``metadata`` and log ``data`` must be JSON values).
            LeaseLost: ``parent_owner`` was given and does not hold the parent's lease.
        """

    @abstractmethod
    async def update_definition(self, process_id: str, /, **fields: Any) -> ProcessRecord:
        """Change definition fields of a process and return the updated record.

        Only the fields in :data:`~taskwarden.processes.DEFINITION_FIELDS` (name,
        description, params, metadata, order, cancellable, adhoc, ephemeral, special,
        warning, schedule, resumable) may be given; runtime state (state, status, progress,
        log, lease, run number) is never touched, whatever state the process is in.
        Atomic (one write).

        Raises:
            ProcessNotFound: no record has this id.
            InvalidDefinition: a field is not a definition field, or a value cannot be
                stored.
        """

    # -- queries ----------------------------------------------------------------------

    @abstractmethod
    async def get(self, process_id: str) -> ProcessRecord | None:
        """The record with this id, or None. Reads committed state only."""

    @abstractmethod
    async def list(
        self,
        *,
        state: ProcessState | Collection[ProcessState] | None = None,
        root_id: str | None = None,
        parent_id: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        limit: int | None = None,
        cursor: str | None = None,
        roots_only: bool = False,
        search: str | None = None,
    ) -> builtins.list[ProcessRecord]:
        """Records matching every given filter, sorted by ``(depth, order, process_id)``.

        Filters combine with AND: ``state`` (one state or any of several), ``root_id``,
        ``parent_id``, and ``metadata``, where each ``key: value`` pair must equal the
        record's ``metadata[key]`` (values are str, int, float or bool; a bool matches only
        a bool, a number only a number); ``roots_only`` keeps processes without a parent;
        ``search`` keeps those whose name or id contains the text, ignoring case (ASCII
        case on SQLite).

        Pagination is by keyset: pass the :attr:`~ProcessRecord.cursor` of the last record
        of a page as ``cursor`` to get the records strictly after it; records created or
        deleted meanwhile neither shift nor repeat the others. ``limit=None`` returns all.

        Raises:
            ConfigurationError: a malformed cursor, a negative limit, or a metadata value
                of another type.
        """

    async def count(
        self,
        *,
        state: ProcessState | Collection[ProcessState] | None = None,
        root_id: str | None = None,
        parent_id: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        roots_only: bool = False,
        search: str | None = None,
    ) -> int:
        """How many records :meth:`list` would return with these filters and no limit.

        The SQL backends count in the database; this default lists and counts.

        Raises:
            ConfigurationError: as for :meth:`list`.
        """
        found = await self.list(
            state=state,
            root_id=root_id,
            parent_id=parent_id,
            metadata=metadata,
            roots_only=roots_only,
            search=search,
        )
        return len(found)

    async def get_many(self, process_ids: Collection[str]) -> dict[str, ProcessRecord]:
        """The records with these ids, by id; missing ones are left out.

        The SQL backends read them in one query; this default calls :meth:`get` for each.
        """
        found: dict[str, ProcessRecord] = {}
        for process_id in process_ids:
            record = await self.get(process_id)
            if record is not None:
                found[process_id] = record
        return found

    async def changed_since(self, since: datetime) -> builtins.list[ProcessRecord]:
        """The records whose ``updated_at`` is at or after ``since`` (every write sets it),
        oldest change first. A reader that polls with an overlap sees every change; a
        deleted record is not in it (compare :meth:`count`).

        The SQL backends read an index; this default lists every record.
        """
        found = [r for r in await self.list() if r.updated_at >= since]
        found.sort(key=lambda r: (r.updated_at, r.process_id))
        return found

    @abstractmethod
    async def children(self, process_id: str) -> builtins.list[ProcessRecord]:
        """The direct children of a process (``parent_id == process_id``), sorted by
        ``(order, process_id)``; empty when it has none or does not exist."""

    # -- deletion ---------------------------------------------------------------------

    @abstractmethod
    async def delete(
        self,
        process_id: str,
        *,
        only_if_states: Collection[ProcessState] | None = None,
        descendants: bool = False,
    ) -> bool:
        """Delete a record; return True if it was deleted.

        With ``only_if_states`` the record is deleted only while its state is one of them
        (checked and deleted atomically); otherwise False is returned and nothing changes.
        With ``descendants=True`` its whole subtree goes in the same transaction. A missing
        record returns False (never raises).
        """

    @abstractmethod
    async def delete_descendants(
        self, process_id: str, *, only_if_states: Collection[ProcessState] | None = None
    ) -> int:
        """Delete every descendant of a process (children, their children, ...), keeping
        the process itself; return how many records were deleted. Atomic.

        With ``only_if_states``, only while the process itself is in one of them, checked
        in the same statement (0 otherwise): a launch that clears the previous run's
        children after its ``scheduled`` write passes ``{scheduled}``, so it can never
        delete the children of a run that a worker claimed and started meanwhile."""

    # -- state changes ----------------------------------------------------------------

    @abstractmethod
    async def transition(
        self,
        process_id: str,
        expected_states: Collection[ProcessState],
        to_state: ProcessState,
        /,
        *,
        expected_owner: str | None = None,
        expected_fields: Mapping[str, bool | None] | None = None,
        run: RunRecord | None = None,
        **fields: Any,
    ) -> ProcessRecord:
        """Compare-and-set the state: one atomic write, returning the new record.

        If the record's state is one of ``expected_states`` (and, when ``expected_owner``
        is given, its ``lease_owner`` equals it, and each of ``expected_fields`` has the
        value given: ``parent_id`` None for a root only, ``cancellable`` True or False),
        the state becomes ``to_state`` and the
        ``fields`` (only :data:`~taskwarden.processes.RUNTIME_FIELDS`: error, status
        times, duration, progress, log, run_number, lease) are set in the same write.
        Of any number of concurrent callers expecting the same state, exactly one wins.

        The store also maintains, unless the field is given explicitly:

        - a transition into ``running`` increments ``run_number``;
        - a transition into ``idle`` or an END state clears ``lease_owner`` and
          ``lease_expires_at``.

        With ``run``, the finished run is appended to the history in the same transaction,
        only if the compare-and-set wins (what :meth:`record_run` would do, without a second
        round trip); its ``process_id`` and ``run_number``, when None, are taken from the
        record.

        Raises:
            InvalidTransition: before any I/O if some ``expected -> to_state`` edge is not
                in :data:`~taskwarden.processes.TRANSITIONS`, or ``expected_states`` is
                empty, or ``expected_fields`` names another field; after the read if the
                record is in another state, held by another owner or has another value of
                an expected field (``current`` names the state found).
            ProcessNotFound: no record has this id.
            InvalidDefinition: a field is not a runtime field.
        """

    @abstractmethod
    async def update_progress(
        self,
        process_id: str,
        percent: float | None,
        message: str | None,
        log_entries: Sequence[LogEntry] = (),
        max_log: int = 1000,
        *,
        expected_owner: str | None = None,
    ) -> None:
        """Set ``progress_percent`` and ``progress_message`` and append ``log_entries`` to
        the log, keeping only its newest ``max_log`` entries: one atomic write, whatever
        the state. Entries keep the order given, after the ones stored. With
        ``expected_owner`` the write is fenced: it happens only while that owner holds the
        process's lease.

        Raises:
            ProcessNotFound: no record has this id.
            LeaseLost: ``expected_owner`` was given and does not hold the lease; nothing
                was written.
        """

    @abstractmethod
    async def append_log(
        self, process_id: str, log_entries: Sequence[LogEntry], max_log: int = 1000
    ) -> None:
        """Append ``log_entries`` to the log, keeping its newest ``max_log`` entries, and
        leave the progress alone: one atomic write, whatever the state (what a process
        that does not run the task writes, e.g. who asked for a cancel, without
        overwriting the percent and message the running worker flushes meanwhile).

        Raises:
            ProcessNotFound: no record has this id.
        """

    # -- leases (distributed workers) -------------------------------------------------

    @abstractmethod
    async def claim(
        self,
        worker: str,
        lease_seconds: float,
        limit: int = 1,
        *,
        process_ids: Collection[str] | None = None,
        start: bool = False,
    ) -> builtins.list[ProcessRecord]:
        """Take up to ``limit`` ``scheduled`` processes that have no live lease (only among
        ``process_ids`` when given: a worker claims what it has definitions for).

        With ``start`` each taken record also starts in the same write: its state becomes
        ``running``, ``run_number`` is incremented, ``running_since`` is now and
        ``next_attempt_at`` and ``error`` are cleared (what a ``scheduled -> running``
        transition by the claimer would write, one statement and round trip less per run).

        A lease is live while ``lease_owner`` is set and ``lease_expires_at`` is after the
        store clock's now, or is None (a hold without expiry, e.g. an engine keeping a child
        it runs in-process; it lasts until released or the process ends). Each
        taken record gets ``lease_owner = worker`` and ``lease_expires_at = now +
        lease_seconds`` (the record's own ``lease_seconds`` instead when its task overrides
        the lease), atomically, so two concurrent claimers (tasks, processes or
        machines) never take the same process (``FOR UPDATE SKIP LOCKED`` on PostgreSQL: a
        claimer skips rows another is taking instead of waiting). The oldest scheduled
        (by ``updated_at``, then ``process_id``) come first; the result keeps that order.
        A process scheduled with a live lease is never claimed, nor one without a lease
        whose ``next_attempt_at`` (a retry's due time) is after now.
        """

    @abstractmethod
    async def renew_leases(
        self, worker: str, process_ids: Collection[str], lease_seconds: float
    ) -> builtins.list[str]:
        """Extend to ``now + lease_seconds`` (a record's own ``lease_seconds`` when set) the
        leases ``worker`` still holds on active processes among ``process_ids``; return the
        ids renewed (in no particular order). An id missing from the result was lost
        (expired and recovered, or ended): the worker must stop working on it. Atomic."""

    @abstractmethod
    async def renew_held(
        self, worker: str, lease_seconds: float
    ) -> builtins.list[tuple[str, ProcessState]]:
        """Extend to ``now + lease_seconds`` (a record's own ``lease_seconds`` when set)
        every lease ``worker`` holds on an active process, in one statement whatever their
        number, and return ``(process_id, state)`` of each. A run the worker has that is
        missing was lost (its lease expired and was reaped); a ``cancel_requested`` state
        is a cancel whose notification may have been lost. ``updated_at`` is left alone: a
        renewal is not a change of the process."""

    @abstractmethod
    async def put_worker(self, worker: WorkerRecord) -> None:
        """Insert or replace the record of one worker incarnation."""

    @abstractmethod
    async def list_workers(self) -> builtins.list[WorkerRecord]:
        """Every worker record, by name then incarnation."""

    @abstractmethod
    async def remove_worker(self, incarnation: str) -> bool:
        """Delete a worker record (a worker leaving cleanly); False when there was none."""

    @abstractmethod
    async def release(self, worker: str, process_ids: Collection[str]) -> builtins.list[str]:
        """Clear the leases ``worker`` holds on ``process_ids``; return the ids released.
        Leases held by other workers are left alone. Atomic."""

    @abstractmethod
    @abstractmethod
    async def expired_leases(
        self, now: datetime | None = None, limit: int = 100
    ) -> builtins.list[ProcessRecord]:
        """The active processes whose lease expired at ``now`` (default: the store clock),
        oldest expiry first, lease owner and expiry as they are: what a reaper resolves.
        Reads only; the reaper's own compare-and-set (expecting the state and the dead
        owner) decides, so two reapers never resolve one run twice."""

    @abstractmethod
    async def mark_cron_tick(self, process_id: str, tick: datetime) -> bool:
        """Record that the cron fire time ``tick`` was taken: True for exactly one caller
        per tick, even with several engines on one store (a compare-and-set on
        ``last_cron_tick``, which only moves forward). False when this or a later tick was
        marked already.

        Raises:
            ProcessNotFound: no record has this id.
        """

    # -- history ----------------------------------------------------------------------

    @abstractmethod
    async def record_run(self, run: RunRecord) -> RunRecord:
        """Append a finished run to the history and return it with ``index`` set to its
        position (unique, increasing in the order runs were recorded). The history is
        independent of process records: deleting a process keeps its runs."""

    @abstractmethod
    async def query_history(
        self,
        *,
        process_id: str | None = None,
        name: str | None = None,
        status: OperationStatus | None = None,
        since: datetime | None = None,
        limit: int | None = None,
        until: datetime | None = None,
        before: int | None = None,
    ) -> builtins.list[RunRecord]:
        """Recorded runs matching every given filter, newest (highest ``index``) first.

        ``since`` keeps runs that started at or after it, ``until`` those that started
        before it; ``before`` keeps the runs whose ``index`` is lower (pass the last index
        of a page for the next one); ``limit=None`` returns all.
        """
