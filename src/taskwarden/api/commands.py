"""Launch, cancel, dismiss and resync as the API runs them, with optio's refusals.

Launch, cancel and dismiss work from any server that reaches the store: a server that hosts
an engine runs the command on it when the engine has the process (its definition, or its
run); otherwise the command goes through the fleet's client (:mod:`taskwarden.worker.client`):
the store is written first, then the workers are told over the bus, and a worker that
serves the process claims the launch or runs the cancel. Resync needs definitions: it runs
on the server's engine, or over the bus on an engine that serves commands, else it is
refused with the reason ``no-engine`` (503). This module maps refusals' ``reason`` codes to
optio's reason strings and HTTP statuses.

Group and bulk cancels always write through the fleet's client (one compare-and-set per
process, wherever it runs); the server's own engine then starts the cancel of the runs it
holds at once, instead of at its next lease renewal.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from taskwarden.errors import TaskwardenError

if TYPE_CHECKING:
    from taskwarden.abc import Bus, Store
    from taskwarden.engine import Engine
    from taskwarden.processes import ProcessState
    from taskwarden.worker.client import BulkCancelResult, MetadataPredicate

__all__ = ["CommandRefused", "Commands", "Verb"]

Verb = Literal["launch", "cancel", "dismiss"]

# optio's reason strings and messages; taskwarden's own reasons keep their codes.
_NOT_FOUND = ("not-found", "Process not found", 404)
_REFUSALS: dict[tuple[str, str], tuple[str, str, int]] = {
    ("launch", "invalid-state"): ("not-launchable", "Process is not in a launchable state", 409),
    ("launch", "no-resume-support"): (
        "no-resume-support",
        "This task does not support resume",
        409,
    ),
    ("launch", "launch-blocked"): (
        "launch-blocked",
        "Launches matching this filter are currently blocked",
        409,
    ),
    ("cancel", "not-cancellable"): (
        "not-cancellable",
        "Process is not cancellable in its current state",
        409,
    ),
    ("cancel", "invalid-state"): (
        "not-cancellable",
        "Process is not cancellable in its current state",
        409,
    ),
    ("dismiss", "invalid-state"): ("not-dismissable", "Process is not in a dismissable state", 409),
}


class CommandRefused(Exception):
    """A command the engine (or the lack of one) refused: ``{reason, message}`` + status."""

    def __init__(self, reason: str, message: str, status: int) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.status = status


def _refusal(verb: str, reason: str | None, message: str | None) -> CommandRefused:
    if reason == "not-found":
        return CommandRefused(*_NOT_FOUND)
    mapped = _REFUSALS.get((verb, reason or ""))
    if mapped is not None:
        return CommandRefused(*mapped)
    status = 400 if reason in ("invalid-configuration", "invalid-payload") else 409
    if reason in ("timeout", "bus-error", "store-error"):
        status = 503
    return CommandRefused(reason or "error", message or "the command was refused", status)


@dataclass
class Commands:
    """Runs commands on the server's engine when it has the process, else through the
    store for the fleet's workers (see the module docstring)."""

    store: Store
    engine: Engine | None
    bus: Bus | None
    prefix: str = "taskwarden"
    timeout: float = 5.0

    def _no_engine(self) -> CommandRefused:
        return CommandRefused(
            "no-engine",
            "this server runs no engine and has no bus to reach one: start it with --app, "
            "or give it --bus to send commands to the workers",
            503,
        )

    def _on_engine(self, verb: Verb, process_id: str) -> bool:
        engine = self.engine
        if engine is None:
            return False
        if verb == "launch":
            return process_id in engine.served_process_ids
        if verb == "cancel":
            return process_id in engine.active_runs()
        return True

    async def run(self, verb: Verb, process_id: str) -> None:
        """Run ``verb`` on ``process_id``; raise :class:`CommandRefused` when refused."""
        try:
            if self.engine is not None and self._on_engine(verb, process_id):
                await getattr(self.engine, verb)(process_id)
                return
            from taskwarden.worker import client

            if verb == "launch":
                await client.launch(self.store, process_id, bus=self.bus, prefix=self.prefix)
            elif verb == "cancel":
                await client.cancel(
                    self.store, process_id, bus=self.bus, prefix=self.prefix, requested_by="api"
                )
            else:
                await client.dismiss(self.store, process_id)
        except TaskwardenError as exc:
            raise _refusal(verb, exc.reason, str(exc)) from None

    async def cancel_group(self, process_id: str, reason: str | None = None) -> None:
        """Cancel ``process_id`` and its descendants (see
        :func:`taskwarden.worker.client.cancel_group`); raise :class:`CommandRefused` when
        none of them can be cancelled."""
        from taskwarden.worker import client

        try:
            changed = await client.cancel_group(
                self.store,
                process_id,
                bus=self.bus,
                reason=reason,
                requested_by="api",
                prefix=self.prefix,
            )
        except TaskwardenError as exc:
            raise _refusal("cancel", exc.reason, str(exc)) from None
        await self._cancel_held(record.process_id for record in changed)

    async def cancel_matching(
        self,
        *,
        state: Collection[ProcessState | str] | None,
        root_id: str | None,
        predicate: MetadataPredicate | None,
        reason: str | None = None,
        limit: int | None = None,
    ) -> BulkCancelResult:
        """Cancel every scheduled or running process the filters match (see
        :func:`taskwarden.worker.client.cancel_matching`)."""
        from taskwarden.worker import client

        result = await client.cancel_matching(
            self.store,
            state=state,
            root_id=root_id,
            predicate=predicate,
            bus=self.bus,
            reason=reason,
            requested_by="api",
            limit=limit,
            prefix=self.prefix,
        )
        await self._cancel_held(result.cancelled)
        return result

    async def count_matching(
        self,
        *,
        state: Collection[ProcessState | str] | None,
        root_id: str | None,
        predicate: MetadataPredicate | None,
    ) -> int:
        """How many processes :meth:`cancel_matching` would take now (reads only)."""
        from taskwarden.worker import client

        return await client.count_matching(
            self.store, state=state, root_id=root_id, predicate=predicate
        )

    async def _cancel_held(self, process_ids: Iterable[str]) -> None:
        # The store has the request; the runs this server's engine holds start their
        # cancel now rather than at the next renewal.
        engine = self.engine
        if engine is None:
            return
        held = set(engine.held_runs)
        for process_id in process_ids:
            if process_id in held:
                await engine.cancel_local(process_id, "cancelled on request")

    async def resync(self, clean: bool, metadata_filter: Mapping[str, Any] | None) -> None:
        """Re-read the definitions (and with ``clean``, rebuild the records)."""
        if self.engine is not None:
            try:
                await self.engine.resync(clean=clean, metadata_filter=metadata_filter)
            except TaskwardenError as exc:
                raise _refusal("resync", exc.reason, str(exc)) from None
            return
        if self.bus is None:
            raise self._no_engine()
        from taskwarden.remote import RemoteClient

        client = RemoteClient(self.bus, prefix=self.prefix, timeout=self.timeout)
        try:
            result = await client.resync(clean=clean, metadata_filter=metadata_filter)
        except TaskwardenError as exc:
            raise _refusal("resync", exc.reason, str(exc)) from None
        if not result.ok:
            raise _refusal("resync", result.reason, result.message)
