"""The JSON shapes the REST API and the CLI's ``--json`` share, built from store records.

One module owns them so that ``taskwarden ps --json`` and ``GET /api/processes`` cannot
drift apart. The process document is :meth:`ProcessRecord.to_document` (seed 004's shape,
which optio's UI reads) with ``_id`` added; trees nest it under ``children``; a run of the
history is :func:`run_document`. Every function here reads the store only through the
:class:`~taskwarden.abc.Store` contract, so each works on every backend.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from taskwarden.errors import ConfigurationError

if TYPE_CHECKING:
    from taskwarden.abc import Store
    from taskwarden.model import RunRecord
    from taskwarden.processes import ProcessRecord

__all__ = [
    "merged_log",
    "page_of",
    "process_document",
    "run_document",
    "tree_document",
]


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.astimezone(UTC).isoformat()


def process_document(record: ProcessRecord) -> dict[str, Any]:
    """A process as the API and CLI show it: seed 004's document with optio's ``_id``.

    ``_id`` is the process id: taskwarden has no second, internal id, and optio clients
    address a process by either.
    """
    return {"_id": record.process_id, **record.to_document()}


def run_document(run: RunRecord) -> dict[str, Any]:
    """One run of the history, camelCase, times as ISO-8601 strings."""
    return {
        "index": run.index,
        "processId": run.process_id,
        "runNumber": run.run_number,
        "operationId": run.operation_id,
        "name": run.name,
        "kind": run.kind,
        "status": str(run.status),
        "startedAt": _iso(run.started_at),
        "endedAt": _iso(run.ended_at),
        "duration": run.duration,
        "result": run.result,
        "error": run.error,
        "traceback": run.traceback,
        "cancelReason": None if run.cancel_reason is None else str(run.cancel_reason),
        "cancelMessage": run.cancel_message,
        "parentId": run.parent_id,
        "metadata": run.metadata,
    }


async def _subtree(
    store: Store, root: ProcessRecord, max_depth: int | None
) -> tuple[list[ProcessRecord], dict[str | None, list[ProcessRecord]]]:
    """The records of ``root``'s subtree (``root`` first) and their children by parent id.

    One query for the whole tree (every node shares ``root_id``), then a walk in memory.
    """
    if max_depth is not None and max_depth < 0:
        raise ConfigurationError(f"maxDepth must be 0 or more, got {max_depth}")
    family = await store.list(root_id=root.root_id)
    by_parent: dict[str | None, list[ProcessRecord]] = defaultdict(list)
    for record in family:
        by_parent[record.parent_id].append(record)
    for siblings in by_parent.values():
        siblings.sort(key=lambda r: (r.order, r.process_id))
    nodes = [root]
    frontier = [root]
    while frontier:
        following: list[ProcessRecord] = []
        for node in frontier:
            if max_depth is not None and node.depth - root.depth >= max_depth:
                continue
            following.extend(by_parent.get(node.process_id, ()))
        nodes.extend(following)
        frontier = following
    return nodes, by_parent


async def tree_document(
    store: Store, record: ProcessRecord, *, max_depth: int | None = None
) -> dict[str, Any]:
    """``record``'s document with its ``children`` nested, sorted by ``order``.

    ``max_depth`` counts levels below ``record`` (0: no children); None means all.
    """
    nodes, by_parent = await _subtree(store, record, max_depth)
    included = {node.process_id for node in nodes}

    def build(node: ProcessRecord) -> dict[str, Any]:
        doc = process_document(node)
        doc["children"] = [
            build(child)
            for child in by_parent.get(node.process_id, ())
            if child.process_id in included
        ]
        return doc

    return build(record)


async def merged_log(
    store: Store, record: ProcessRecord, *, max_depth: int | None = None
) -> list[dict[str, Any]]:
    """The log entries of ``record`` and its descendants, oldest first.

    Each entry carries ``processId`` and ``processLabel`` (the process's name), as optio's
    ``tree/log`` route gives them. Entries with the same timestamp keep tree order.
    """
    nodes, _ = await _subtree(store, record, max_depth)
    entries: list[tuple[datetime, int, dict[str, Any]]] = []
    for position, node in enumerate(nodes):
        for entry in node.log:
            doc = entry.to_document()
            doc["processId"] = node.process_id
            doc["processLabel"] = node.name
            entries.append((entry.timestamp, position, doc))
    entries.sort(key=lambda item: (item[0], item[1]))
    return [doc for _, _, doc in entries]


def page_of(items: Sequence[Any], cursor: str | None, limit: int) -> dict[str, Any]:
    """An optio ``Paginated`` page of a list by offset: ``{items, nextCursor, totalCount}``.

    The cursor is the stringified offset, as optio's log routes use.

    Raises:
        ConfigurationError: the cursor is not an offset this function produced.
    """
    start = 0
    if cursor is not None:
        try:
            start = int(cursor)
        except ValueError:
            raise ConfigurationError(
                f"cursor {cursor!r} does not parse: pass the nextCursor of a previous page"
            ) from None
        if start < 0:
            raise ConfigurationError(f"cursor {cursor!r} is negative: pass a nextCursor")
    end = start + limit
    return {
        "items": list(items[start:end]),
        "nextCursor": str(end) if end < len(items) else None,
        "totalCount": len(items),
    }
