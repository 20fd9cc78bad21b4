"""Launch and cancel from any process that reaches the store: no definitions needed.

An API server, a CLI or another worker calls these. Each writes the store first (one
compare-and-set, so the record is the truth even if nothing else arrives), then tells the
workers over the bus when there is one. A worker that misses the message still finds the
work: a launch at its next claim poll (about 1 s), a cancel at its next lease renewal
(about 10 s).

:func:`cancel_group` cancels a process with its descendants, :func:`cancel_matching` every
process a filter matches; both page through :meth:`Store.list` with keyset cursors, so a
big store is never read in one go.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

from taskwarden.abc import Bus, Store
from taskwarden.errors import (
    BusError,
    ConfigurationError,
    InvalidTransition,
    NotCancellable,
    ProcessNotFound,
)
from taskwarden.processes import (
    CANCELLABLE_STATES,
    DISMISSABLE_STATES,
    LAUNCHABLE_STATES,
    LogEntry,
    LogLevel,
    ProcessRecord,
    ProcessState,
    utcnow,
)

__all__ = [
    "BulkCancelResult",
    "CancelRefusal",
    "cancel",
    "cancel_group",
    "cancel_matching",
    "cancel_topic",
    "cancellable_filter",
    "count_matching",
    "dismiss",
    "launch",
    "wake_topic",
]

logger = logging.getLogger("taskwarden.worker")

S = ProcessState

_RESET: dict[str, Any] = {
    "error": None,
    "running_since": None,
    "done_at": None,
    "duration": None,
    "failed_at": None,
    "stopped_at": None,
    "progress_percent": None,
    "progress_message": None,
    "log": (),
    "lost_count": 0,
    "lease_owner": None,
    "lease_expires_at": None,
}
_ROOT: dict[str, bool | None] = {"parent_id": None}
"""A launch's guard: only a root is launched (children run through their parent)."""
_CANCELLABLE: dict[str, bool | None] = {"cancellable": True}
"""A cancel's guard: a process defined ``cancellable=False`` is never cancelled."""


def wake_topic(prefix: str = "taskwarden") -> str:
    """The bus topic that tells workers a launch is waiting to be claimed."""
    return f"{prefix}.control.wake"


def cancel_topic(prefix: str = "taskwarden") -> str:
    """The bus topic that tells the worker running a process to cancel it now (the topic
    :class:`~taskwarden.remote.RemoteControl` watches)."""
    return f"{prefix}.control.cancel"


async def _notify(bus: Bus | None, topic: str, payload: dict[str, str]) -> None:
    if bus is None:
        return
    try:
        await bus.publish(topic, payload)
    except BusError as exc:
        # The store has the truth: the workers' polls and renewals find it anyway.
        logger.warning("notifying %s failed (the workers will find it by polling): %s", topic, exc)


async def launch(
    store: Store, process_id: str, *, bus: Bus | None = None, prefix: str = "taskwarden"
) -> ProcessRecord:
    """Queue a run of ``process_id`` for whichever worker has its definition.

    The record becomes ``scheduled`` with no owner (a compare-and-set from ``idle``,
    ``done``, ``failed`` or ``cancelled``); a previous run's children are removed; the
    workers are woken over ``bus``. Returns the scheduled record.

    Raises:
        ProcessNotFound: no such process, or it is a child (children run through their
            parent).
        InvalidTransition: it is scheduled or running already (``current`` says which).
    """
    try:
        # One compare-and-set, no read first: it also checks that this is a root.
        scheduled = await store.transition(
            process_id, LAUNCHABLE_STATES, S.SCHEDULED, expected_fields=_ROOT, **_RESET
        )
    except InvalidTransition:
        record = await store.get(process_id)
        if record is None:
            raise ProcessNotFound(process_id) from None
        if record.parent_id is not None:
            raise ProcessNotFound(
                process_id,
                f"process {process_id!r} is a child of {record.parent_id!r}: launch its root "
                f"{record.root_id!r} instead",
            ) from None
        raise
    if scheduled.run_number > 0:
        # Only while still unclaimed: a worker may have started the new run (and made its
        # children) since the write above.
        await store.delete_descendants(process_id, only_if_states={S.SCHEDULED})
    await _notify(bus, wake_topic(prefix), {"process_id": process_id})
    return scheduled


async def cancel(
    store: Store,
    process_id: str,
    *,
    bus: Bus | None = None,
    reason: str | None = None,
    requested_by: str | None = None,
    prefix: str = "taskwarden",
) -> ProcessRecord:
    """Cancel ``process_id`` wherever it runs.

    A scheduled process becomes ``cancelled`` at once. A running one becomes
    ``cancel_requested``, its log says why and who asked, and the worker that runs it is
    told over ``bus`` (it starts the cancel ladder within milliseconds); without a bus, or
    if the message is lost, the worker sees the request at its next lease renewal.
    Returns the record after the write.

    Raises:
        ProcessNotFound: no such process.
        NotCancellable: defined ``cancellable=False``, or neither scheduled nor running.
    """
    return await _cancel_one(
        store, process_id, bus=bus, reason=reason, requested_by=requested_by, prefix=prefix
    )


async def _cancel_one(
    store: Store,
    process_id: str,
    *,
    bus: Bus | None,
    reason: str | None,
    requested_by: str | None,
    prefix: str,
) -> ProcessRecord:
    """:func:`cancel`'s write: a running process is asked at once (one compare-and-set
    that also checks ``cancellable``); else decide from a fresh read, and again when the
    state moved meanwhile."""
    state: ProcessState = S.RUNNING  # the common case first: no read before the write
    for _ in range(5):
        try:
            if state is S.SCHEDULED:
                return await store.transition(
                    process_id,
                    {S.SCHEDULED},
                    S.CANCELLED,
                    expected_fields=_CANCELLABLE,
                    stopped_at=utcnow(),
                )
            requested = await store.transition(
                process_id, {S.RUNNING}, S.CANCEL_REQUESTED, expected_fields=_CANCELLABLE
            )
        except InvalidTransition:
            # Not running (or not cancellable, or it moved on meanwhile): look, decide again.
            record = await store.get(process_id)
            if record is None:
                raise ProcessNotFound(process_id) from None
            if not record.cancellable:
                raise NotCancellable(
                    process_id, f"process {process_id!r} is defined with cancellable=False"
                ) from None
            if record.state not in CANCELLABLE_STATES:
                raise NotCancellable(
                    process_id,
                    f"process {process_id!r} is {record.state}: only scheduled or running "
                    "processes can be cancelled",
                ) from None
            state = record.state
            continue
        requested_at = utcnow()
        payload = {"process_id": process_id, "origin": requested_by or "client"}
        if reason:
            payload["reason"] = reason
        # The request is in the store: tell the worker now, then log who asked. The log
        # write appends only, so it cannot overwrite the progress the worker flushes.
        await _notify(bus, cancel_topic(prefix), payload)
        text = "cancel requested" + (f": {reason}" if reason else "")
        if requested_by:
            text += f" (by {requested_by})"
        entry = LogEntry(timestamp=requested_at, level=LogLevel.INFO, message=text)
        with contextlib.suppress(ProcessNotFound):
            await store.append_log(process_id, [entry])
        return requested
    raise NotCancellable(process_id, f"process {process_id!r} kept changing state; retry")


async def dismiss(store: Store, process_id: str) -> ProcessRecord:
    """Reset a done, failed or cancelled process to ``idle``: the run's fields (times,
    error, progress, log) are cleared and its descendants deleted. Returns the record.

    Raises:
        ProcessNotFound: no such process.
        InvalidTransition: it is not done, failed or cancelled (``current`` says what).
    """
    record = await store.get(process_id)
    if record is None:
        raise ProcessNotFound(process_id)
    if record.state not in DISMISSABLE_STATES:
        raise InvalidTransition(process_id, record.state, S.IDLE)
    fields = {k: v for k, v in _RESET.items() if not k.startswith("lease_")}
    idle = await store.transition(process_id, DISMISSABLE_STATES, S.IDLE, **fields)
    await store.delete_descendants(process_id, only_if_states={S.IDLE})
    return idle


# ---------------------------------------------------------------- groups and filters
_PAGE = 100
"""Records per :meth:`Store.list` read when walking a tree or a filter."""

_CANCEL_UNDER_WAY = frozenset({S.CANCEL_REQUESTED, S.CANCELLING, S.CANCELLED})

MetadataPredicate = Callable[[Mapping[str, Any]], bool]
"""Takes a process's metadata, says whether it matches (the API's ``metadataFilter``)."""


async def _pages(
    store: Store,
    *,
    state: Collection[ProcessState] | None = None,
    root_id: str | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> AsyncIterator[ProcessRecord]:
    """Every record matching the filters in store order, one bounded page at a time.

    The keyset cursor is ``(depth, order, id)``, which a state change does not move, so a
    caller may cancel what it was given before the next page is read."""
    cursor: str | None = None
    while True:
        page = await store.list(
            state=state, root_id=root_id, metadata=metadata, limit=_PAGE, cursor=cursor
        )
        for record in page:
            yield record
        if len(page) < _PAGE:
            return
        cursor = page[-1].cursor


async def cancel_group(
    store: Store,
    process_id: str,
    *,
    bus: Bus | None = None,
    reason: str | None = None,
    requested_by: str | None = None,
    prefix: str = "taskwarden",
) -> list[ProcessRecord]:
    """Cancel ``process_id`` and every descendant it has, wherever they run.

    The cancel is recorded as :func:`cancel` records it (``scheduled`` becomes
    ``cancelled`` at once, ``running`` becomes ``cancel_requested`` with the reason in the
    log, and the worker is told over ``bus``) on the top-most processes of the group that
    can take it: the process itself when it is cancellable, else each highest descendant
    that is. Everything below a cancelled process is covered by that cancel: children
    run in their parent's scope on its worker, so the worker stops the whole subtree, and
    the parent still ends ``cancelled``. Writing each descendant as well would let the
    worker cancel a child before its parent's cancel reaches it (it takes requests in no
    set order), and the parent would then end ``failed`` with ``ChildProcessCancelled``.

    Descendants already on their way to ``cancelled``, ended ones and those defined
    ``cancellable=False`` are not written (the last are still stopped by an ancestor's
    cancel, as with :func:`cancel`).

    Returns the records it changed, after the write, top-most first (by depth).

    Raises:
        ProcessNotFound: no such process.
        NotCancellable: nothing in the group could be cancelled (the message is the
            process's own reason).
    """
    root = await store.get(process_id)
    if root is None:
        raise ProcessNotFound(process_id)
    options: dict[str, Any] = {
        "bus": bus,
        "reason": reason,
        "requested_by": requested_by,
        "prefix": prefix,
    }
    try:
        return [await _cancel_one(store, process_id, **options)]
    except NotCancellable as exc:
        refusal = exc  # a cancellable=False or ended process may have cancellable children
    current = await store.get(process_id)
    if current is None or current.state in _CANCEL_UNDER_WAY:
        raise refusal  # its own cancel, under way, covers the group
    changed: list[ProcessRecord] = []
    members = {process_id}
    covered: set[str] = set()
    # The tree is listed from its root; the depth order puts every parent before its
    # children, so one pass finds the descendants of a process anywhere in it.
    async for record in _pages(store, root_id=root.root_id or process_id):
        if record.parent_id not in members:
            continue
        members.add(record.process_id)
        if record.parent_id in covered or record.state in _CANCEL_UNDER_WAY:
            covered.add(record.process_id)
            continue
        if not record.cancellable or record.state not in CANCELLABLE_STATES:
            continue
        try:
            changed.append(await _cancel_one(store, record.process_id, **options))
        except (NotCancellable, ProcessNotFound):
            continue  # it ended, or its cancel started, meanwhile
        covered.add(record.process_id)
    if not changed:
        raise refusal
    return changed


@dataclass(frozen=True, slots=True, kw_only=True)
class CancelRefusal:
    """A process a bulk cancel matched but could not cancel, and why (a reason code)."""

    process_id: str
    reason: str
    message: str

    def to_document(self) -> dict[str, str]:
        """``{"processId", "reason", "message"}``."""
        return {"processId": self.process_id, "reason": self.reason, "message": self.message}


@dataclass(slots=True, kw_only=True)
class BulkCancelResult:
    """What :func:`cancel_matching` did: every match is either cancelled or refused."""

    matched: int = 0
    cancelled: list[str] = field(default_factory=list)
    refused: list[CancelRefusal] = field(default_factory=list)

    def to_document(self) -> dict[str, Any]:
        """``{"matched": N, "cancelled": [ids], "refused": [{processId, reason, message}]}``,
        the shape of ``POST /api/processes/cancel`` and ``taskwarden cancel --json``."""
        return {
            "matched": self.matched,
            "cancelled": list(self.cancelled),
            "refused": [refusal.to_document() for refusal in self.refused],
        }


def cancellable_filter(
    state: ProcessState | str | Collection[ProcessState | str] | None,
    *,
    metadata: Mapping[str, Any] | None = None,
    root_id: str | None = None,
    predicate: MetadataPredicate | None = None,
) -> frozenset[ProcessState]:
    """The states a bulk cancel reads: the given ones that can be cancelled (``scheduled``,
    ``running``), or both when no state is given.

    Raises:
        ConfigurationError: no filter at all (cancelling everything is never a default),
            an unknown state, or only states that cannot be cancelled.
    """
    if state is None and not metadata and root_id is None and predicate is None:
        raise ConfigurationError(
            "a bulk cancel needs a filter: a state, metadata or a root id (cancelling "
            "every process is never a default)"
        )
    if state is None:
        return CANCELLABLE_STATES
    given = [state] if isinstance(state, str) else list(state)
    try:
        states = {ProcessState(value) for value in given}
    except ValueError:
        valid = ", ".join(s.value for s in ProcessState)
        raise ConfigurationError(f"unknown state in {given!r}: use {valid}") from None
    chosen = frozenset(states & CANCELLABLE_STATES)
    if not chosen:
        named = ", ".join(sorted(s.value for s in states))
        raise ConfigurationError(
            f"state {named} matches nothing to cancel: only scheduled or running processes "
            "can be cancelled"
        )
    return chosen


async def _matching(
    store: Store,
    states: frozenset[ProcessState],
    root_id: str | None,
    metadata: Mapping[str, Any] | None,
    predicate: MetadataPredicate | None,
) -> AsyncIterator[ProcessRecord]:
    async for record in _pages(store, state=states, root_id=root_id, metadata=metadata or None):
        if predicate is None or predicate(record.metadata):
            yield record


async def count_matching(
    store: Store,
    *,
    state: ProcessState | str | Collection[ProcessState | str] | None = None,
    metadata: Mapping[str, Any] | None = None,
    root_id: str | None = None,
    predicate: MetadataPredicate | None = None,
) -> int:
    """How many processes :func:`cancel_matching` with the same filters would match now
    (what a confirmation names). Reads only, a page at a time.

    Raises:
        ConfigurationError: as :func:`cancellable_filter`.
    """
    states = cancellable_filter(state, metadata=metadata, root_id=root_id, predicate=predicate)
    count = 0
    async for _ in _matching(store, states, root_id, metadata, predicate):
        count += 1
    return count


async def cancel_matching(
    store: Store,
    *,
    state: ProcessState | str | Collection[ProcessState | str] | None = None,
    metadata: Mapping[str, Any] | None = None,
    root_id: str | None = None,
    predicate: MetadataPredicate | None = None,
    bus: Bus | None = None,
    reason: str | None = None,
    requested_by: str | None = None,
    limit: int | None = None,
    prefix: str = "taskwarden",
) -> BulkCancelResult:
    """Cancel every scheduled or running process that matches all the filters, as
    :func:`cancel` does each one, in store order (parents before their children).

    Filters: ``state`` (``scheduled``, ``running`` or both; default both), ``metadata``
    (each ``key: value`` equal, in the store), ``root_id`` (one tree), ``predicate`` (a
    test of the metadata, such as the API's ``metadataFilter``). At least one is needed.
    ``limit`` caps how many matches are taken (a confirmation's count, say). The store is
    read a page at a time with keyset cursors, never all at once.

    A match below a process this call cancelled (its parent, or its root) is not written
    but counted as cancelled: the worker stops it with its ancestor, which still ends
    ``cancelled`` (see :func:`cancel_group` for why it must not be cancelled on its own).
    Any other match that cannot be cancelled (defined ``cancellable=False``, its parent
    already being cancelled, or it moved on meanwhile) is refused with its reason code.

    Raises:
        ConfigurationError: no filter, an unknown state, only states that cannot be
            cancelled, or ``limit`` below 1; nothing is changed.
    """
    states = cancellable_filter(state, metadata=metadata, root_id=root_id, predicate=predicate)
    if limit is not None and limit < 1:
        raise ConfigurationError(f"limit must be 1 or more, got {limit}")
    result = BulkCancelResult()
    covered: set[str] = set()  # what this call cancelled, and what that covers
    async for record in _matching(store, states, root_id, metadata, predicate):
        if limit is not None and result.matched >= limit:
            break
        result.matched += 1
        process_id = record.process_id
        if record.parent_id in covered or record.root_id in covered:
            result.cancelled.append(process_id)
            covered.add(process_id)
            continue
        if record.parent_id is not None:
            parent = await store.get(record.parent_id)
            if parent is not None and parent.state in _CANCEL_UNDER_WAY:
                message = (
                    f"process {process_id!r} stops with its parent {parent.process_id!r}, "
                    f"which is {parent.state} already"
                )
                result.refused.append(
                    CancelRefusal(process_id=process_id, reason="not-cancellable", message=message)
                )
                continue
        try:
            await _cancel_one(
                store,
                process_id,
                bus=bus,
                reason=reason,
                requested_by=requested_by,
                prefix=prefix,
            )
        except (NotCancellable, ProcessNotFound) as exc:
            result.refused.append(
                CancelRefusal(process_id=process_id, reason=exc.reason, message=str(exc))
            )
            continue
        result.cancelled.append(process_id)
        covered.add(process_id)
    return result
