"""Wake-ups over PostgreSQL NOTIFY, for workers on a PostgreSQL store with no bus.

The store's trigger (schema version 5) notifies in the writer's own transaction, whoever
the writer is (a CLI, the API server, another worker, a psql session):

- ``<prefix>_processes_wake`` when a process becomes ``scheduled`` with no lease owner (a
  launch or a retry for the fleet);
- ``<prefix>_processes_cancel`` with the process id when a cancel is requested.

:class:`NotifyListener` holds one connection that LISTENs on both and calls the worker
back. A lost connection is opened again with backoff; the worker also wakes then, since
notifications sent while it was away are gone (the claim poll and the lease renewal
would find the work anyway, only later).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Callable
from typing import Any

__all__ = ["NotifyListener", "notify_channels"]

logger = logging.getLogger("taskwarden.worker")


def notify_channels(prefix: str) -> tuple[str, str]:
    """``(wake, cancel)``: the channels the trigger of ``prefix``'s tables notifies."""
    return f"{prefix}_processes_wake", f"{prefix}_processes_cancel"


class NotifyListener:
    """LISTEN on a store's wake and cancel channels (see the module docstring).

    ``on_wake()`` is called for every wake notification, ``on_cancel(process_id)`` for
    every cancel request, both on the event loop's thread.
    """

    def __init__(
        self,
        dsn: str,
        prefix: str,
        *,
        on_wake: Callable[[], None],
        on_cancel: Callable[[str], None],
        name: str = "taskwarden-worker",
    ) -> None:
        self.dsn = dsn
        self.wake_channel, self.cancel_channel = notify_channels(prefix)
        self._on_wake = on_wake
        self._on_cancel = on_cancel
        self._name = name[:63]
        self._task: asyncio.Task[None] | None = None
        self._connected = asyncio.Event()
        self.reconnects = 0
        """How many times the listening connection was opened again after a loss."""

    async def start(self, timeout: float = 10.0) -> None:  # noqa: ASYNC109
        """Connect and LISTEN; return once listening (or after ``timeout`` seconds, with
        the connection still being retried in the background)."""
        self._task = asyncio.get_running_loop().create_task(
            self._keep_listening(), name="taskwarden-notify"
        )
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._connected.wait()

    @property
    def listening(self) -> bool:
        """True while the connection LISTENs."""
        return self._connected.is_set()

    async def close(self) -> None:
        """Stop listening and close the connection."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _keep_listening(self) -> None:
        import asyncpg

        delay = 0.1
        while True:
            lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            conn: Any = None
            try:
                conn = await asyncpg.connect(
                    self.dsn, server_settings={"application_name": self._name}
                )
                conn.add_termination_listener(functools.partial(_mark_lost, lost))
                await conn.add_listener(self.wake_channel, self._notified)
                await conn.add_listener(self.cancel_channel, self._notified)
                self._connected.set()
                delay = 0.1
                self._on_wake()  # what was notified while it connected is not lost
                await lost
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                logger.warning(
                    "listening for NOTIFY wake-ups failed (retrying in %.1f s): %s", delay, exc
                )
            finally:
                self._connected.clear()
                if conn is not None:
                    with contextlib.suppress(Exception):
                        await asyncio.shield(conn.close(timeout=1))
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)
            self.reconnects += 1

    def _notified(self, _conn: object, _pid: int, channel: str, payload: str) -> None:
        if channel == self.wake_channel:
            self._on_wake()
        elif payload:
            self._on_cancel(payload)


def _mark_lost(lost: asyncio.Future[None], _conn: object) -> None:
    if not lost.done():
        lost.set_result(None)
