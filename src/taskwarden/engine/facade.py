"""Module-level functions over a default :class:`Engine`, as seed 004 (optio-core) has them.

``await init(store="sqlite:///app.db", get_task_definitions=get_tasks)`` creates the default
engine; the other functions act on it. Applications that want several engines, or no
global state, use :class:`Engine` directly: it has the same methods.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from taskwarden.abc import Bus, Store
from taskwarden.engine.definitions import TaskInstance
from taskwarden.engine.engine import Engine, GetTaskDefinitions
from taskwarden.errors import ConfigurationError
from taskwarden.processes import ProcessRecord, ProcessState

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
_remote: Any = None  # the RemoteControl serving the default engine, when it has a bus
_bus: Any = None  # the bus the facade opened from a URL (closed on shutdown)


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
        options: further :class:`Engine` options (``max_concurrency``, ``cancel_grace``...).

    A previous default engine that is still running is shut down first.
    """
    global _engine
    if _engine is not None and _engine.state.value in ("created", "started"):
        await _stop_remote()
        await _engine.shutdown()
    if store is None:
        store = os.environ.get("TASKWARDEN_STORE") or "sqlite://"
    engine = Engine(
        store,
        prefix=prefix,
        services=services,
        get_task_definitions=get_task_definitions,
        **options,
    )
    await engine.init()
    _engine = engine
    bus = bus or redis_url or os.environ.get("TASKWARDEN_BUS") or None
    if bus is not None:
        await _start_remote(engine, bus, prefix)


async def _start_remote(engine: Engine, bus: Bus | str, prefix: str) -> None:
    # Imported here: remote control sits above the engine and is only loaded when used.
    from taskwarden.bus import open_bus
    from taskwarden.remote import RemoteControl

    global _remote, _bus
    if isinstance(bus, str):
        bus = _bus = open_bus(bus)
        await bus.open()
    _remote = RemoteControl(engine, bus, prefix=prefix)
    await _remote.start()


def get_remote_control() -> Any:
    """The :class:`~taskwarden.remote.RemoteControl` of the default engine (the seed's
    ``rpc_server``): register application commands on it. None without a bus."""
    return _remote


async def _stop_remote() -> None:
    global _remote, _bus
    remote, _remote = _remote, None
    bus, _bus = _bus, None
    if remote is not None:
        await remote.stop()
    if bus is not None:
        await bus.close()


async def run() -> None:
    """Run the cron scheduler and block until :func:`shutdown` (SIGTERM / SIGINT too)."""
    await get_engine().run()


async def shutdown() -> None:
    """Stop intake and the scheduler, cancel running processes (waiting up to 5 s) and
    leave every record terminal."""
    global _engine
    engine = get_engine()
    await _stop_remote()
    await engine.shutdown()
    if _engine is engine:
        _engine = None


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
