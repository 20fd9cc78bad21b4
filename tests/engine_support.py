"""Helpers for the engine tests: engines on real stores, and waiting without sleeping."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

from taskwarden.abc import Store
from taskwarden.engine import Engine, ProcessContext, TaskInstance
from taskwarden.processes import LogEntry, ProcessRecord, ProcessState
from taskwarden.registry import OperationRegistry
from taskwarden.stores.memory import MemoryStore

Execute = Callable[[ProcessContext], Awaitable[None]]


class CountingStore(MemoryStore):
    """A memory store that counts progress writes per process."""

    def __init__(self) -> None:
        super().__init__()
        self.progress_writes: dict[str, int] = {}

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
        self.progress_writes[process_id] = self.progress_writes.get(process_id, 0) + 1
        await super().update_progress(
            process_id, percent, message, log_entries, max_log, expected_owner=expected_owner
        )


async def noop(ctx: ProcessContext) -> None:
    """A task that does nothing."""


def task(process_id: str, execute: Execute = noop, **kwargs: Any) -> TaskInstance:
    """A TaskInstance named after its id."""
    return TaskInstance(execute=execute, process_id=process_id, name=process_id, **kwargs)


def definitions(*tasks: TaskInstance) -> Callable[..., Awaitable[list[TaskInstance]]]:
    """A get_task_definitions function that returns ``tasks`` (a mutable list)."""
    current = list(tasks)

    async def get_tasks(
        services: dict[str, Any], metadata_filter: Any = None
    ) -> list[TaskInstance]:
        return list(current)

    get_tasks.current = current  # type: ignore[attr-defined]
    return get_tasks


@asynccontextmanager
async def started_engine(
    *tasks: TaskInstance,
    store: Store | None = None,
    **options: Any,
) -> AsyncIterator[Engine]:
    """An initialized engine on ``store`` (a fresh MemoryStore by default), shut down after."""
    options.setdefault("registry", OperationRegistry())
    options.setdefault("cancel_grace", 0.05)
    options.setdefault("abandon_after", 0.1)
    options.setdefault("progress_flush_interval", 0.0)
    engine = Engine(
        store if store is not None else MemoryStore(),
        get_task_definitions=definitions(*tasks),
        **options,
    )
    await engine.init()
    try:
        yield engine
    finally:
        await engine.shutdown(timeout=2.0)


class StateLog:
    """Records every committed state change an engine announces, and waits for one."""

    def __init__(self, engine: Engine) -> None:
        self.changes: list[tuple[str, ProcessState]] = []
        self._changed = asyncio.Event()
        engine.on_change.append(self)

    def __call__(self, record: ProcessRecord) -> None:
        self.changes.append((record.process_id, record.state))
        self._changed.set()

    def states(self, process_id: str) -> list[ProcessState]:
        """The states ``process_id`` went through, in order."""
        return [state for pid, state in self.changes if pid == process_id]

    async def wait_for(
        self,
        process_id: str,
        states: ProcessState | Sequence[ProcessState],
        timeout: float = 5.0,  # noqa: ASYNC109
        count: int = 1,
    ) -> None:
        """Wait until ``process_id`` reached one of ``states`` (``count`` times)."""
        wanted = {states} if isinstance(states, ProcessState) else set(states)
        async with asyncio.timeout(timeout):
            while sum(pid == process_id and s in wanted for pid, s in self.changes) < count:
                self._changed.clear()
                await self._changed.wait()


async def wait_until(condition: Callable[[], bool], timeout: float = 5.0) -> None:  # noqa: ASYNC109
    """Yield to the loop until ``condition()`` holds (bounded; never sleeps for time)."""
    async with asyncio.timeout(timeout):
        while not condition():  # noqa: ASYNC110 - polls in-memory state, yielding only
            await asyncio.sleep(0)
