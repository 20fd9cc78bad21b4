"""A cancel from a process that does not run the task (``taskwarden.worker.cancel``):
what it writes, in what order, and what it leaves alone."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

import pytest

from taskwarden.bus.local import LocalBus
from taskwarden.errors import InvalidTransition, NotCancellable, ProcessNotFound
from taskwarden.processes import ProcessRecord, ProcessState
from taskwarden.stores.memory import MemoryStore
from taskwarden.worker import cancel, launch

S = ProcessState


class CountingStore(MemoryStore):
    """Notes the name of each verb called that reads or writes a process."""

    def __init__(self, *, worker_flushes_after_cancel: bool = False) -> None:
        super().__init__()
        self.calls: list[str] = []
        self.worker_flushes_after_cancel = worker_flushes_after_cancel
        """The running worker flushes its progress right after the cancel request is
        written, before the canceller's next write (the race a real fleet has)."""

    async def get(self, process_id: str) -> ProcessRecord | None:
        self.calls.append("get")
        return await super().get(process_id)

    async def transition(
        self,
        process_id: str,
        expected_states: Collection[ProcessState],
        to_state: ProcessState,
        /,
        **kwargs: Any,
    ) -> ProcessRecord:
        self.calls.append("transition")
        record = await super().transition(process_id, expected_states, to_state, **kwargs)
        if self.worker_flushes_after_cancel and to_state is S.CANCEL_REQUESTED:
            await self.update_progress(process_id, 77.0, "the worker's latest", [])
        return record

    async def append_log(self, process_id: str, log_entries: Any, max_log: int = 1000) -> None:
        self.calls.append("append_log")
        await super().append_log(process_id, log_entries, max_log)


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
    store = CountingStore(worker_flushes_after_cancel=True)
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


async def test_a_client_launch_and_cancel_refuse_clearly_in_one_write_when_they_can() -> None:
    """A launch of a child and a cancel of a non-cancellable or ended process are refused
    with the typed error and a message; a running process is asked to cancel in one
    write, a scheduled one is cancelled at once; nothing refused is changed."""
    store = CountingStore()
    async with store:
        await store.create(ProcessRecord(process_id="root", name="root"))
        await store.create(
            ProcessRecord(process_id="kid", name="kid", parent_id="root", root_id="root", depth=1)
        )
        await store.create(ProcessRecord(process_id="fixed", name="fixed", cancellable=False))
        with pytest.raises(ProcessNotFound, match="'kid' is a child of 'root': launch its root"):
            await launch(store, "kid")
        with pytest.raises(ProcessNotFound):
            await launch(store, "ghost")
        store.calls.clear()
        scheduled = await launch(store, "root")
        assert scheduled.state is S.SCHEDULED and store.calls == ["transition"]
        with pytest.raises(InvalidTransition):
            await launch(store, "root")
        cancelled = await cancel(store, "root")
        assert cancelled.state is S.CANCELLED
        await launch(store, "root")
        await store.transition("root", [S.SCHEDULED], S.RUNNING)
        store.calls.clear()
        requested = await cancel(store, "root", reason="stop")
        assert requested.state is S.CANCEL_REQUESTED
        assert store.calls == ["transition", "append_log"]  # no read before the write
        await store.transition("fixed", [S.IDLE], S.SCHEDULED)
        await store.transition("fixed", [S.SCHEDULED], S.RUNNING)
        with pytest.raises(NotCancellable, match="cancellable=False"):
            await cancel(store, "fixed")
        with pytest.raises(NotCancellable, match="only scheduled or running"):
            await cancel(store, "kid")
        with pytest.raises(ProcessNotFound):
            await cancel(store, "ghost")
        for pid, state in (("kid", S.IDLE), ("fixed", S.RUNNING)):
            record = await store.get(pid)
            assert record is not None and record.state is state
