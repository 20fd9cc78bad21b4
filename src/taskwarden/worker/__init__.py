"""The worker fleet: processes that share a store, claim launches, and survive each other.

:class:`Worker` hosts an engine on a shared store; :func:`launch` and :func:`cancel` work
from any process that reaches the store, with or without the definitions.
"""

from __future__ import annotations

from taskwarden.worker.client import cancel, cancel_topic, launch, wake_topic
from taskwarden.worker.worker import Worker

__all__ = ["Worker", "cancel", "cancel_topic", "launch", "wake_topic"]
