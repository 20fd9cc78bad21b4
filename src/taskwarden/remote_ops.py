"""Live operations (scopes) of other processes, over the bus: their tree, and cancel by id.

A process's :class:`~taskwarden.registry.OperationRegistry` knows what runs in it right
now: every scope, its progress and, once cancelled, why. :func:`serve_operations` answers
for one registry on the bus under a node name (a worker serves its incarnation);
:class:`OperationsClient` asks a node for its tree or cancels one of its operations::

    topics = await serve_operations(bus, engine.registry, node="vm:4242:77")
    ...
    client = OperationsClient(bus)
    tree = await client.tree("vm:4242:77")
    outcome = await client.cancel("vm:4242:77", "20261207-…", reason="stuck")

The JSON shapes are those of :func:`operation_document` and :func:`registry_document`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from taskwarden.abc import Bus, BusMessage
from taskwarden.model import CancelationReason, OperationContext
from taskwarden.registry import OperationNode, OperationRegistry

__all__ = [
    "OperationsClient",
    "cancel_operation",
    "node_token",
    "operation_document",
    "registry_document",
    "serve_operations",
]


def node_token(name: str) -> str:
    """``name`` as one bus topic token (dots, spaces and wildcards become ``_``)."""
    return re.sub(r"[.\s*>#+]", "_", name)


def _iso(stamp: float | None) -> str | None:
    return None if stamp is None else datetime.fromtimestamp(stamp, UTC).isoformat()


def operation_document(context: OperationContext) -> dict[str, Any]:
    """One live operation: id, name, kind, status, parent, times, progress, cancel."""
    return {
        "id": context.id,
        "name": context.name,
        "kind": context.kind,
        "status": context.status.value,
        "parentId": context.parent_id,
        "startedAt": _iso(context.start_time),
        "elapsed": round(context.elapsed_time, 6),
        "progress": {"percent": context.progress_percent, "message": context.progress_message},
        "cancelReason": None if context.cancel_reason is None else context.cancel_reason.value,
        "cancelMessage": context.cancel_message or None,
        "metadata": dict(context.metadata),
    }


def _node_document(node: OperationNode) -> dict[str, Any]:
    document = operation_document(node.context)
    document["children"] = [_node_document(child) for child in node.children]
    return document


def registry_document(registry: OperationRegistry) -> dict[str, Any]:
    """A registry's live operations as a forest, with counts by status."""
    stats = registry.stats()
    return {
        "operations": [_node_document(root) for root in registry.tree()],
        "active": stats.active,
        "byStatus": dict(stats.by_status),
    }


async def cancel_operation(
    registry: OperationRegistry, operation_id: str, reason: str | None = None
) -> dict[str, Any]:
    """Cancel one live operation of ``registry`` by id (its children go with it):
    ``{"ok": true, "operation": ...}`` or ``{"ok": false, "reason": "not-found"}``."""
    scope = registry.get_scope(operation_id)
    if scope is None:
        return {
            "ok": False,
            "reason": "not-found",
            "message": f"no live operation has the id {operation_id!r} (it may have ended)",
        }
    await scope.cancel(CancelationReason.MANUAL, reason or "cancelled from the API")
    return {"ok": True, "operation": operation_document(scope.context)}


async def serve_operations(
    bus: Bus, registry: OperationRegistry, *, node: str, prefix: str = "taskwarden"
) -> list[str]:
    """Answer ``<prefix>.ops.<node>.tree`` and ``.cancel`` requests for ``registry``;
    return the topics (to ``bus.unserve`` them)."""
    base = f"{prefix}.ops.{node_token(node)}"

    async def tree(_: BusMessage) -> Mapping[str, Any]:
        return {"ok": True, **registry_document(registry)}

    async def cancel(message: BusMessage) -> Mapping[str, Any]:
        args = message.payload
        operation_id = args.get("id")
        if not isinstance(operation_id, str):
            return {"ok": False, "reason": "invalid", "message": "id must be a string"}
        reason = args.get("reason")
        return await cancel_operation(
            registry, operation_id, reason if isinstance(reason, str) else None
        )

    topics = [f"{base}.tree", f"{base}.cancel"]
    await bus.serve(topics[0], tree)
    await bus.serve(topics[1], cancel)
    return topics


class OperationsClient:
    """Asks the nodes that :func:`serve_operations` for their live operations."""

    def __init__(self, bus: Bus, *, prefix: str = "taskwarden", timeout: float = 2.0) -> None:
        self.bus = bus
        self.prefix = prefix
        self.timeout = timeout

    async def tree(self, node: str) -> dict[str, Any]:
        """The node's :func:`registry_document` (raises the bus's errors: a node that does
        not answer raises :class:`~taskwarden.errors.RequestTimeout`)."""
        topic = f"{self.prefix}.ops.{node_token(node)}.tree"
        return dict(await self.bus.request(topic, {}, timeout=self.timeout))

    async def cancel(
        self, node: str, operation_id: str, reason: str | None = None
    ) -> dict[str, Any]:
        """Cancel one of the node's live operations (see :func:`cancel_operation`)."""
        topic = f"{self.prefix}.ops.{node_token(node)}.cancel"
        payload = {"id": operation_id, "reason": reason}
        return dict(await self.bus.request(topic, payload, timeout=self.timeout))
