"""taskwarden's routes for what runs right now: live operations (scopes) and supervised tasks.

* ``GET /api/operations``: the live operations of this server process and, over the bus,
  of every worker that has a record in the store (each answers for its own registry; a
  worker that does not answer is listed with ``ok: false`` and why). ``?worker=`` narrows
  it to one node (``local`` for this process, or a worker's incarnation).
* ``POST /api/operations/{id}/cancel``: cancel one live operation by id, here or on
  ``?worker=``; ``reason`` is recorded as its cancel message.
* ``GET /api/supervisor``: the supervised tasks' health and statistics, when the server
  was given a supervisor.
"""

from __future__ import annotations

import asyncio
import dataclasses
from dataclasses import dataclass
from datetime import datetime
from enum import Enum
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Request

from taskwarden.abc import Bus, Store
from taskwarden.api.commands import CommandRefused
from taskwarden.api.responses import COMMAND, READ
from taskwarden.registry import OperationRegistry
from taskwarden.remote_ops import OperationsClient, cancel_operation, registry_document

if TYPE_CHECKING:
    from taskwarden.supervisor import Supervisor

__all__ = ["LiveView", "operations_router"]

operations_router = APIRouter(prefix="/api", tags=["operations"])

LOCAL = "local"


@dataclass(slots=True, kw_only=True)
class LiveView:
    """What the live routes read: this process's registry, the bus to reach the workers,
    and the supervisor if the server has one (``app.state.taskwarden_live``)."""

    store: Store
    registry: OperationRegistry
    bus: Bus | None = None
    prefix: str = "taskwarden"
    supervisor: Supervisor | None = None
    timeout: float = 2.0


def _view(request: Request) -> LiveView:
    view: LiveView = request.app.state.taskwarden_live
    return view


async def _node(view: LiveView, node: str, name: str | None) -> dict[str, Any]:
    if view.bus is None:
        return {"node": node, "name": name, "ok": False, "error": "no bus to reach it"}
    client = OperationsClient(view.bus, prefix=view.prefix, timeout=view.timeout)
    try:
        answer = await client.tree(node)
    except Exception as exc:  # a worker without a bus, gone, or slow: say so, list the rest
        return {"node": node, "name": name, "ok": False, "error": str(exc) or type(exc).__name__}
    return {"node": node, "name": name, **answer}


@operations_router.get(
    "/operations", summary="Live operations, here and on every worker", responses=READ
)
async def list_operations(
    request: Request,
    worker: Annotated[str | None, Query(description="'local' or a worker incarnation")] = None,
) -> dict[str, Any]:
    view = _view(request)
    items: list[dict[str, Any]] = []
    if worker in (None, LOCAL):
        items.append(
            {"node": LOCAL, "name": "this server", "ok": True, **registry_document(view.registry)}
        )
    if worker != LOCAL:
        records = {w.incarnation: w.name for w in await view.store.list_workers()}
        if worker is not None and worker not in records:
            raise HTTPException(
                404, {"message": f"no worker record has the incarnation {worker!r}"}
            )
        wanted = [worker] if worker is not None else sorted(records)
        items += await asyncio.gather(*(_node(view, node, records[node]) for node in wanted))
    return {"items": items}


@operations_router.post(
    "/operations/{operation_id}/cancel",
    summary="Cancel a live operation",
    responses={**COMMAND, 504: COMMAND[409]},
)
async def cancel_live_operation(
    request: Request,
    operation_id: str,
    worker: Annotated[str | None, Query(description="'local' or a worker incarnation")] = None,
    reason: Annotated[str | None, Query(max_length=500)] = None,
) -> dict[str, Any]:
    view = _view(request)
    if worker in (None, LOCAL):
        outcome = await cancel_operation(view.registry, operation_id, reason)
    elif view.bus is None:
        raise CommandRefused(
            "no-bus", "this server has no bus: it can cancel only its own operations", 409
        )
    else:
        client = OperationsClient(view.bus, prefix=view.prefix, timeout=view.timeout)
        try:
            outcome = await client.cancel(worker, operation_id, reason)
        except Exception as exc:
            raise CommandRefused(
                "worker-unreachable", f"worker {worker!r} did not answer: {exc}", 504
            ) from exc
    if not outcome.get("ok"):
        status = 404 if outcome.get("reason") == "not-found" else 409
        raise CommandRefused(str(outcome.get("reason")), str(outcome.get("message")), status)
    return dict(outcome["operation"])


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, tuple | list):
        return [_plain(item) for item in value]
    if isinstance(value, dict):
        return {str(key): _plain(item) for key, item in value.items()}
    return value


@operations_router.get(
    "/supervisor", summary="Supervised tasks: health and statistics", responses=READ
)
async def supervisor_tasks(request: Request) -> dict[str, Any]:
    supervisor = _view(request).supervisor
    if supervisor is None:
        raise HTTPException(
            404, {"message": "this server has no supervisor (create_app(supervisor=...))"}
        )
    tasks = []
    for name in supervisor.task_names():
        health, metrics = supervisor.get_task_health(name), supervisor.get_task_metrics(name)
        if health is not None and metrics is not None:
            tasks.append({"name": name, "health": _plain(health), "metrics": _plain(metrics)})
    return {"statistics": supervisor.get_task_statistics(), "tasks": tasks}
