"""A cancel from a process that does not run the task (``taskwarden.worker.cancel``):
what it writes, in what order, and what it leaves alone."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

from taskwarden.bus.local import LocalBus
from taskwarden.processes import ProcessRecord, ProcessState
from taskwarden.stores.memory import MemoryStore
from taskwarden.worker import cancel

S = ProcessState


class FlushingWorkerStore(MemoryStore):
    """A store where the running worker flushes its progress right after the cancel
    request is written, before the canceller's next write (the race a real fleet has)."""

    async def transition(
        self,
        process_id: str,
        expected_states: Collection[ProcessState],
        to_state: ProcessState,
        /,
        **kwargs: Any,
    ) -> ProcessRecord:
        record = await super().transition(process_id, expected_states, to_state, **kwargs)
        if to_state is S.CANCEL_REQUESTED:
            await self.update_progress(process_id, 77.0, "the worker's latest", [])
        return record


class WitnessBus(LocalBus):
    """Notes the log of ``job`` as it stands when each message is published."""

    def __init__(self, store: MemoryStore) -> None:
        super().__init__()
        self.store = store
        self.seen: list[tuple[str, list[str]]] = []

    async def publish(self, topic: str, payload: Mapping[str, Any]) -> None:
        record = await self.store.get("job")
        assert record is not None
        self.seen.append((topic, [e.message for e in record.log]))
        await super().publish(topic, payload)


async def test_the_cancel_notice_goes_out_before_the_log_and_the_log_keeps_the_progress() -> None:
    """The request is written, the workers are told, then who asked is appended to the
    log without overwriting the progress the worker flushed in between."""
    store = FlushingWorkerStore()
    bus = WitnessBus(store)
    async with store, bus:
        await store.create(ProcessRecord(process_id="job", name="job"))
        await store.transition("job", [S.IDLE], S.SCHEDULED)
        await store.transition("job", [S.SCHEDULED], S.RUNNING, lease_owner="w1")
        await store.update_progress("job", 10.0, "early", [])
        requested = await cancel(store, "job", bus=bus, reason="wrong input", requested_by="ops")
        assert requested.state is S.CANCEL_REQUESTED
        record = await store.get("job")
        assert record is not None
        assert (record.progress_percent, record.progress_message) == (77.0, "the worker's latest")
        assert [e.message for e in record.log] == ["cancel requested: wrong input (by ops)"]
        assert bus.seen == [("taskwarden.control.cancel", [])]  # told before the log write
