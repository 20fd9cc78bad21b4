"""Module-level functions over a default :class:`Engine`, as seed 004 (optio-core) has them.

``await init(store="sqlite:///app.db", get_task_definitions=get_tasks)`` creates the default
engine; the other functions act on it. Applications that want several engines, or no
global state, use :class:`Engine` directly: it has the same methods.

The default engine is hosted by a :class:`~taskwarden.worker.Worker`, of the same kind as
the fleet's (``taskwarden worker``): it keeps a worker record, holds leases that it renews,
claims the launches other processes make (the CLI, the API server, the dashboard) and
hears their cancels, and resolves by their policies the runs of a dead predecessor. What
differs is the seed's: no limit on concurrent runs unless ``max_concurrency`` is given,
the bus's remote commands served, undefined records pruned on resync, and
:func:`shutdown` cancelling the runs (records ended) instead of handing them back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import threading
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from taskwarden.abc import Bus, Store
from taskwarden.engine.definitions import TaskInstance
from taskwarden.engine.engine import Engine, GetTaskDefinitions
from taskwarden.errors import ConfigurationError
from taskwarden.processes import ProcessRecord, ProcessState

if TYPE_CHECKING:
    from taskwarden.worker.worker import Worker

logger = logging.getLogger("taskwarden.engine")

__all__ = [
    "adhoc_define",
    "adhoc_delete",
    "block_launches",
    "cancel",
    "cancel_group",
    "cancel_group_and_wait",
    "dismiss",
    "get_engine",
    "get_process",
    "get_remote_control",
    "init",
    "launch",
    "launch_and_wait",
    "list_processes",
    "resync",
    "run",
    "shutdown",
    "unblock_launches",
]

_engine: Engine | None = None
_worker: Worker | None = None  # the worker hosting the default engine


def get_engine() -> Engine:
    """The default engine made by :func:`init`.

    Raises:
        ConfigurationError: :func:`init` was not called (or the engine was shut down).
    """
    if _engine is None:
        raise ConfigurationError(
            "taskwarden is not initialized: await taskwarden.init(store=..., "
            "get_task_definitions=...) first"
        )
    return _engine


async def init(
    store: Store | str | None = None,
    prefix: str = "taskwarden",
    redis_url: str | None = None,
    services: dict[str, Any] | None = None,
    get_task_definitions: GetTaskDefinitions | None = None,
    *,
    bus: Bus | str | None = None,
    **options: Any,
) -> None:
    """Create and start the default engine; call it before any other function.

    Args:
        store: a store URL (``sqlite:///path.db``, ``postgresql://...``, ``memory://``) or
            a :class:`~taskwarden.abc.Store`; default ``TASKWARDEN_STORE`` or
            ``sqlite://`` (``./taskwarden.db``).
        prefix: the namespace of the store's tables and of the bus topics.
        redis_url: the seed's spelling of ``bus="redis://..."``.
        services: passed to every task as ``ctx.services``.
        get_task_definitions: ``async (services, metadata_filter) -> list[TaskInstance]``,
            called on init and resync.
        bus: a bus URL (``redis://...``, ``postgresql://...``) or an open
            :class:`~taskwarden.abc.Bus`; default ``TASKWARDEN_BUS``. With a bus the engine
            takes remote commands, publishes its state changes and its heartbeat (see
            :class:`taskwarden.remote.RemoteControl`, returned by :func:`get_remote_control`).
        options: further :class:`Engine` options (``max_concurrency``, ``cancel_grace``...)
            and :class:`~taskwarden.worker.Worker` ones (``name``, ``lease_seconds``,
            ``poll_interval``...). An explicit ``engine_id`` is the worker's incarnation:
            give each start its own.

    The engine is hosted by a worker of the fleet's kind (see the module docstring). A
    previous default engine that is still running is shut down first.
    """
    # Imported here: the worker package sits above the engine.
    from taskwarden.worker.worker import Worker

    global _engine, _worker
    if _worker is not None and not _worker.stopped.is_set():
        await _worker.stop(hand_back=False)
    _engine = _worker = None
    if store is None:
        store = os.environ.get("TASKWARDEN_STORE") or "sqlite://"
    bus = bus or redis_url or os.environ.get("TASKWARDEN_BUS") or None
    concurrency = options.pop("max_concurrency", None)
    worker = Worker(
        store,
        prefix=prefix,
        services=services,
        get_task_definitions=get_task_definitions,
        bus=bus,
        concurrency=concurrency,
        serve_commands=True,
        prune_undefined=True,
        incarnation=options.pop("engine_id", None),
        **options,
    )
    try:
        await worker.start()
    except BaseException:
        await worker.stop(hand_back=False)
        raise
    _worker, _engine = worker, worker.engine


def get_remote_control() -> Any:
    """The :class:`~taskwarden.remote.RemoteControl` of the default engine (the seed's
    ``rpc_server``): register application commands on it. None without a bus."""
    return None if _worker is None else _worker.remote


async def run() -> None:
    """Run the cron scheduler and block until :func:`shutdown` (SIGTERM / SIGINT too)."""
    get_engine()
    worker = _worker
    assert worker is not None
    loop = asyncio.get_running_loop()
    installed: list[int] = []
    stopping: list[asyncio.Task[None]] = []

    def on_signal(signum: int) -> None:
        logger.info("received %s: shutting down", signal.Signals(signum).name)
        if not stopping:
            stopping.append(loop.create_task(shutdown()))

    if threading.current_thread() is threading.main_thread():
        for signum in (int(signal.SIGTERM), int(signal.SIGINT)):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(signum, on_signal, signum)
                installed.append(signum)
    try:
        await worker.stopped.wait()
        if stopping:
            await stopping[0]
    finally:
        for signum in installed:
            loop.remove_signal_handler(signum)


async def shutdown() -> None:
    """Stop intake and the scheduler, cancel running processes (waiting up to 5 s) and
    leave every record terminal."""
    global _engine, _worker
    get_engine()
    worker = _worker
    assert worker is not None
    await worker.stop(hand_back=False)
    if _worker is worker:
        _engine = _worker = None


async def launch(process_id: str) -> None:
    """Launch a process in the background and return at once."""
    await get_engine().launch(process_id)


async def launch_and_wait(process_id: str) -> None:
    """Launch a process and wait until it is done, failed or cancelled."""
    await get_engine().launch_and_wait(process_id)


async def cancel(process_id: str) -> None:
    """Cancel a scheduled or running process."""
    await get_engine().cancel(process_id)


async def dismiss(process_id: str) -> None:
    """Reset a done, failed or cancelled process to idle and delete its descendants."""
    await get_engine().dismiss(process_id)


async def resync(clean: bool = False, metadata_filter: Mapping[str, Any] | None = None) -> None:
    """Re-run the task generator and sync the definitions with the store."""
    await get_engine().resync(clean=clean, metadata_filter=metadata_filter)


async def get_process(process_id: str) -> ProcessRecord | None:
    """The record of a process, or None (``proc["status"]["state"]`` works as in the seed)."""
    return await get_engine().get_process(process_id)


async def list_processes(
    state: str | ProcessState | None = None,
    root_id: str | None = None,
    metadata: Mapping[str, Any] | None = None,
    limit: int | None = None,
    cursor: str | None = None,
) -> list[ProcessRecord]:
    """Processes matching the filters, sorted by depth, order, then id."""
    return await get_engine().list_processes(
        state=state, root_id=root_id, metadata=metadata, limit=limit, cursor=cursor
    )


async def adhoc_define(
    task: TaskInstance, parent_id: str | None = None, ephemeral: bool = False
) -> ProcessRecord:
    """Create an idle ad-hoc process at runtime and return its record."""
    return await get_engine().adhoc_define(task, parent_id=parent_id, ephemeral=ephemeral)


async def adhoc_delete(process_id: str) -> None:
    """Delete an ad-hoc process and its descendants."""
    await get_engine().adhoc_delete(process_id)


def block_launches() -> None:
    """Refuse launches until :func:`unblock_launches`."""
    get_engine().block_launches()


def unblock_launches() -> None:
    """Accept launches again."""
    get_engine().unblock_launches()


async def cancel_group(metadata: Mapping[str, Any]) -> list[str]:
    """Cancel every cancellable active process whose metadata matches; return their ids."""
    return await get_engine().cancel_group(metadata)


async def cancel_group_and_wait(metadata: Mapping[str, Any]) -> list[str]:
    """:func:`cancel_group`, then wait for those runs to end."""
    return await get_engine().cancel_group_and_wait(metadata)
