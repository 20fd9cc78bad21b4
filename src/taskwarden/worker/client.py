"""Launch and cancel from any process that reaches the store: no definitions needed.

An API server, a CLI or another worker calls these. Each writes the store first (one
compare-and-set, so the record is the truth even if nothing else arrives), then tells the
workers over the bus when there is one. A worker that misses the message still finds the
work: a launch at its next claim poll (about 1 s), a cancel at its next lease renewal
(about 10 s).
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

from taskwarden.abc import Bus, Store
from taskwarden.errors import (
    BusError,
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

__all__ = ["cancel", "cancel_topic", "dismiss", "launch", "wake_topic"]

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
    record = await store.get(process_id)
    if record is None:
        raise ProcessNotFound(process_id)
    if record.parent_id is not None:
        raise ProcessNotFound(
            process_id,
            f"process {process_id!r} is a child of {record.parent_id!r}: launch its root "
            f"{record.root_id!r} instead",
        )
    scheduled = await store.transition(process_id, LAUNCHABLE_STATES, S.SCHEDULED, **_RESET)
    if scheduled.run_number > 0:
        await store.delete_descendants(process_id)
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
    for _ in range(5):
        record = await store.get(process_id)
        if record is None:
            raise ProcessNotFound(process_id)
        if not record.cancellable:
            raise NotCancellable(
                process_id, f"process {process_id!r} is defined with cancellable=False"
            )
        if record.state not in CANCELLABLE_STATES:
            raise NotCancellable(
                process_id,
                f"process {process_id!r} is {record.state}: only scheduled or running "
                "processes can be cancelled",
            )
        try:
            if record.state is S.SCHEDULED:
                return await store.transition(
                    process_id, {S.SCHEDULED}, S.CANCELLED, stopped_at=utcnow()
                )
            requested = await store.transition(process_id, {S.RUNNING}, S.CANCEL_REQUESTED)
        except InvalidTransition:
            continue  # it moved on meanwhile (started, ended): decide again
        text = "cancel requested" + (f": {reason}" if reason else "")
        if requested_by:
            text += f" (by {requested_by})"
        entry = LogEntry(timestamp=utcnow(), level=LogLevel.INFO, message=text)
        with contextlib.suppress(ProcessNotFound):
            await store.update_progress(
                process_id, requested.progress_percent, requested.progress_message, [entry]
            )
        payload = {"process_id": process_id, "origin": requested_by or "client"}
        if reason:
            payload["reason"] = reason
        await _notify(bus, cancel_topic(prefix), payload)
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
    await store.delete_descendants(process_id)
    return idle
