"""The worker fleet: processes that share a store, claim launches, and survive each other.

:class:`Worker` hosts an engine on a shared store; :func:`launch`, :func:`cancel`,
:func:`cancel_group` (a process tree), :func:`cancel_matching` (by filter) and
:func:`dismiss` work from any process that reaches the store, with or without the
definitions. Names are imported on first use, so a client that only launches does not
import the engine.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from taskwarden.worker.client import (
        BulkCancelResult,
        cancel,
        cancel_group,
        cancel_matching,
        cancel_topic,
        count_matching,
        dismiss,
        launch,
        wake_topic,
    )
    from taskwarden.worker.worker import Worker

__all__ = [
    "BulkCancelResult",
    "Worker",
    "cancel",
    "cancel_group",
    "cancel_matching",
    "cancel_topic",
    "count_matching",
    "dismiss",
    "launch",
    "wake_topic",
]


def __getattr__(name: str) -> Any:
    if name == "Worker":
        from taskwarden.worker.worker import Worker

        return Worker
    if name in __all__:
        from taskwarden.worker import client

        return getattr(client, name)
    raise AttributeError(f"module 'taskwarden.worker' has no attribute {name!r}")
