"""The REST routes: optio's under ``/api/processes``, taskwarden's own beside them."""

from __future__ import annotations

import asyncio
import builtins
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Body, Query, Request
from fastapi.responses import JSONResponse, StreamingResponse

from taskwarden.abc import Bus, Store
from taskwarden.api.broadcaster import Broadcaster
from taskwarden.api.commands import CommandRefused, Commands, Verb
from taskwarden.api.filters import MetadataPredicate, parse_filter, store_equalities
from taskwarden.api.responses import COMMAND, READ
from taskwarden.api.streams import STREAM_HEADERS, list_stream, parse_last_event_id, tree_stream
from taskwarden.documents import merged_log, page_of, process_document, run_document, tree_document
from taskwarden.errors import ConfigurationError
from taskwarden.model import OperationStatus
from taskwarden.processes import ProcessRecord, ProcessState, decode_cursor

__all__ = ["Service", "router"]

router = APIRouter(prefix="/api")

Limit = Annotated[int, Query(ge=1, le=100, description="page size, 1..100")]
Cursor = Annotated[str | None, Query(description="the nextCursor of the previous page")]
MaxDepth = Annotated[int | None, Query(ge=0, alias="maxDepth", description="levels below")]
Namespace = Annotated[str | None, Query(description="accepted for optio clients; ignored")]


@dataclass
class Service:
    """What the routes work with: one per app, on ``app.state.taskwarden``."""

    store: Store
    bus: Bus | None
    commands: Commands
    feed: Broadcaster
    keepalive: float = 15.0


def _service(request: Request) -> Service:
    service: Service = request.app.state.taskwarden
    return service


class NotFound(Exception):
    """A read of a process that does not exist: optio's 404 ``{message}``."""


async def _process(service: Service, process_id: str) -> ProcessRecord:
    record = await service.store.get(process_id)
    if record is None:
        raise NotFound(process_id)
    return record


def _reject_legacy(request: Request) -> None:
    if any(key.startswith("metadata.") for key in request.query_params):
        raise ConfigurationError(
            "Legacy 'metadata.*' query params are no longer supported; pass "
            'metadataFilter as URL-encoded JSON, e.g. metadataFilter={"team":"data"}'
        )


def _key(record: ProcessRecord) -> tuple[int, int, str]:
    return record.depth, record.order, record.process_id


# ---------------------------------------------------------------- optio's reads
@router.get("/processes", summary="List processes (optio's Paginated shape)")
async def list_processes(
    request: Request,
    cursor: Cursor = None,
    limit: Limit = 20,
    root_id: Annotated[str | None, Query(alias="rootId")] = None,
    state: Annotated[ProcessState | None, Query()] = None,
    metadata_filter: Annotated[str | None, Query(alias="metadataFilter")] = None,
    roots_only: Annotated[
        bool, Query(alias="rootsOnly", description="only processes without a parent")
    ] = False,
    search: Annotated[
        str | None,
        Query(max_length=200, description="text in the name or the id, ignoring case"),
    ] = None,
    database: Namespace = None,
    prefix: Namespace = None,
) -> dict[str, Any]:
    """Processes sorted by ``(depth, order, processId)``, keyset-paginated.

    Without a filter, or with one of plain equalities, the store pages and counts (indexed
    on SQL); a richer ``metadataFilter`` is evaluated here over the matching states.
    ``rootsOnly`` and ``search`` are taskwarden's additions (the dashboard's list).
    """
    _reject_legacy(request)
    predicate = parse_filter(metadata_filter)
    after: tuple[int, int, str] | None = None
    if cursor is not None:
        try:
            after = decode_cursor(cursor)
        except ValueError:
            raise ConfigurationError(
                f"cursor {cursor!r} does not parse: pass the nextCursor of a previous page"
            ) from None
    store = _service(request).store
    equal = store_equalities(metadata_filter)
    if equal is not None:
        # The page and the count are two queries: on a pool (PostgreSQL) they overlap.
        found, total = await asyncio.gather(
            store.list(
                state=state,
                root_id=root_id,
                metadata=equal,
                limit=limit + 1,
                cursor=cursor,
                roots_only=roots_only,
                search=search,
            ),
            store.count(
                state=state, root_id=root_id, metadata=equal, roots_only=roots_only, search=search
            ),
        )
        return {
            "items": [process_document(r) for r in found[:limit]],
            "nextCursor": found[limit - 1].cursor if len(found) > limit else None,
            "totalCount": total,
        }
    records = await store.list(state=state, root_id=root_id, roots_only=roots_only, search=search)
    matching = [r for r in records if predicate is None or predicate(r.metadata)]
    start = 0 if after is None else _first_after(matching, after)
    page = matching[start : start + limit]
    more = start + limit < len(matching)
    return {
        "items": [process_document(r) for r in page],
        "nextCursor": page[-1].cursor if more and page else None,
        "totalCount": len(matching),
    }


def _first_after(records: builtins.list[ProcessRecord], after: tuple[int, int, str]) -> int:
    for position, record in enumerate(records):
        if _key(record) > after:
            return position
    return len(records)


@router.get("/processes/stream", summary="Live list of processes (SSE)")
async def stream_processes(
    request: Request,
    metadata_filter: Annotated[str | None, Query(alias="metadataFilter")] = None,
    last_event_id: Annotated[str | None, Query(alias="lastEventId")] = None,
    database: Namespace = None,
    prefix: Namespace = None,
) -> StreamingResponse:
    """``update`` frames with the whole filtered list, the first one a snapshot."""
    _reject_legacy(request)
    predicate: MetadataPredicate | None = parse_filter(metadata_filter)
    service = _service(request)
    await service.feed.start()
    seen = parse_last_event_id(request.headers.get("last-event-id"), last_event_id)
    return StreamingResponse(
        list_stream(service.feed, predicate, last_event_id=seen, keepalive=service.keepalive),
        media_type="text/event-stream",
        headers=STREAM_HEADERS,
    )


@router.get("/processes/{process_id}", summary="One process, by id", responses=READ)
async def get_process(
    request: Request, process_id: str, database: Namespace = None, prefix: Namespace = None
) -> dict[str, Any]:
    """The process document (404 ``{message}`` when there is none)."""
    return process_document(await _process(_service(request), process_id))


@router.get(
    "/processes/{process_id}/tree", summary="A process with its children, nested", responses=READ
)
async def get_tree(
    request: Request,
    process_id: str,
    max_depth: MaxDepth = None,
    database: Namespace = None,
    prefix: Namespace = None,
) -> dict[str, Any]:
    """The process with ``children`` nested recursively, sorted by ``order``."""
    service = _service(request)
    record = await _process(service, process_id)
    return await tree_document(service.store, record, max_depth=max_depth)


@router.get("/processes/{process_id}/log", summary="A process's log, paginated", responses=READ)
async def get_log(
    request: Request,
    process_id: str,
    cursor: Cursor = None,
    limit: Limit = 20,
    database: Namespace = None,
    prefix: Namespace = None,
) -> dict[str, Any]:
    """Log entries oldest first; the cursor is an offset, as in optio."""
    record = await _process(_service(request), process_id)
    return page_of([entry.to_document() for entry in record.log], cursor, limit)


@router.get(
    "/processes/{process_id}/tree/log", summary="The merged log of a subtree", responses=READ
)
async def get_tree_log(
    request: Request,
    process_id: str,
    cursor: Cursor = None,
    limit: Limit = 20,
    max_depth: MaxDepth = None,
    database: Namespace = None,
    prefix: Namespace = None,
) -> dict[str, Any]:
    """Entries of the process and its descendants by time, with processId/processLabel."""
    service = _service(request)
    record = await _process(service, process_id)
    return page_of(await merged_log(service.store, record, max_depth=max_depth), cursor, limit)


@router.get("/processes/{process_id}/tree/stream", summary="Live tree and log (SSE)")
async def stream_tree(
    request: Request,
    process_id: str,
    max_depth: MaxDepth = None,
    last_event_id: Annotated[str | None, Query(alias="lastEventId")] = None,
    database: Namespace = None,
    prefix: Namespace = None,
) -> StreamingResponse:
    """``update`` frames with the subtree's rows, ``log`` with new entries, ``log-clear``."""
    service = _service(request)
    await _process(service, process_id)
    await service.feed.start()
    seen = parse_last_event_id(request.headers.get("last-event-id"), last_event_id)
    return StreamingResponse(
        tree_stream(
            service.feed,
            process_id,
            max_depth,
            last_event_id=seen,
            keepalive=service.keepalive,
        ),
        media_type="text/event-stream",
        headers=STREAM_HEADERS,
    )


# ---------------------------------------------------------------- optio's commands
# Declared before the routes with a process id: "/processes/cancel" is the bulk cancel,
# and a process named "cancel" is still cancelled at "/processes/cancel/cancel".
@router.post("/processes/cancel", summary="Cancel every process a filter matches")
async def cancel_matching(
    request: Request,
    confirm: Annotated[
        bool, Query(description="must be true; without it the answer is a 400 with the count")
    ] = False,
    state: Annotated[
        builtins.list[str] | None,
        Query(description="scheduled and/or running (repeat it, or a comma list)"),
    ] = None,
    root_id: Annotated[str | None, Query(alias="rootId")] = None,
    metadata_filter: Annotated[str | None, Query(alias="metadataFilter")] = None,
    reason: Annotated[str | None, Query(max_length=1000, description="kept in each log")] = None,
    limit: Annotated[int | None, Query(ge=1, description="cancel at most this many")] = None,
    database: Namespace = None,
    prefix: Namespace = None,
) -> JSONResponse:
    """Cancel the scheduled or running processes that match every filter (the list's
    ``state``, ``rootId`` and ``metadataFilter``; at least one). Without ``confirm=true``
    nothing is changed: a 400 names how many would be cancelled."""
    _reject_legacy(request)
    predicate = parse_filter(metadata_filter)
    states = [part.strip() for value in state or () for part in value.split(",") if part.strip()]
    commands = _service(request).commands
    filters: dict[str, Any] = {"state": states or None, "root_id": root_id, "predicate": predicate}
    if not confirm:
        matched = await commands.count_matching(**filters)
        return JSONResponse(
            {
                "reason": "confirmation-needed",
                "message": f"this filter matches {matched} cancellable "
                f"process{'' if matched == 1 else 'es'}: repeat the request with confirm=true "
                "to cancel them",
                "matched": matched,
            },
            status_code=400,
        )
    result = await commands.cancel_matching(**filters, reason=reason, limit=limit)
    return JSONResponse(result.to_document())


async def _command(request: Request, verb: Verb, process_id: str) -> dict[str, Any]:
    service = _service(request)
    if await service.store.get(process_id) is None:
        raise CommandRefused("not-found", "Process not found", 404)
    await service.commands.run(verb, process_id)
    return process_document(await _process(service, process_id))


@router.post("/processes/{process_id}/launch", summary="Launch a process", responses=COMMAND)
async def launch(
    request: Request,
    process_id: str,
    body: Annotated[dict[str, Any] | None, Body()] = None,
    database: Namespace = None,
    prefix: Namespace = None,
) -> dict[str, Any]:
    """Launch; the answer is the process after the command (``scheduled`` or later)."""
    if body and body.get("resume"):
        raise CommandRefused(
            "no-resume-support",
            "This task does not support resume: taskwarden resumes runs itself "
            "(TaskInstance(resumable=True)) when a worker is lost",
            409,
        )
    return await _command(request, "launch", process_id)


@router.post(
    "/processes/{process_id}/cancel", summary="Cancel a process (or its group)", responses=COMMAND
)
async def cancel(
    request: Request,
    process_id: str,
    group: Annotated[
        bool, Query(description="also cancel every descendant of the process, across the fleet")
    ] = False,
    database: Namespace = None,
    prefix: Namespace = None,
) -> dict[str, Any]:
    """Cancel a scheduled or running process; with ``group=true``, the process and every
    descendant (written on the group's top-most cancellable processes, which stop what is
    below them). The answer is the process after the command."""
    if not group:
        return await _command(request, "cancel", process_id)
    service = _service(request)
    if await service.store.get(process_id) is None:
        raise CommandRefused("not-found", "Process not found", 404)
    await service.commands.cancel_group(process_id)
    return process_document(await _process(service, process_id))


@router.post(
    "/processes/{process_id}/dismiss", summary="Reset a finished process to idle", responses=COMMAND
)
async def dismiss(
    request: Request, process_id: str, database: Namespace = None, prefix: Namespace = None
) -> dict[str, Any]:
    """Reset a done, failed or cancelled process to idle."""
    return await _command(request, "dismiss", process_id)


@router.post("/processes/resync", status_code=202, summary="Re-read the task definitions")
async def resync(
    request: Request,
    body: Annotated[dict[str, Any] | None, Body()] = None,
    database: Namespace = None,
    prefix: Namespace = None,
) -> dict[str, Any]:
    """Re-read the definitions; with ``clean``, rebuild the records ("nuke and resync")."""
    body = body or {}
    clean = body.get("clean", False)
    if not isinstance(clean, bool):
        raise ConfigurationError("clean must be true or false")
    metadata = body.get("metadataFilter")
    if metadata is not None and not isinstance(metadata, dict):
        raise ConfigurationError("metadataFilter must be an object of metadata key: value")
    await _service(request).commands.resync(clean, metadata)
    return {"message": "Nuke and resync requested" if clean else "Resync requested"}


# ---------------------------------------------------------------- taskwarden's routes
def _since(value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise ConfigurationError(
            f"since {value!r} is not an ISO-8601 time, e.g. 2026-12-01 or 2026-12-01T08:00Z"
        ) from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


@router.get("/history", summary="Finished runs, newest first")
async def history(
    request: Request,
    process_id: Annotated[str | None, Query(alias="processId")] = None,
    name: str | None = None,
    status: OperationStatus | None = None,
    since: Annotated[str | None, Query(description="ISO-8601 time")] = None,
    until: Annotated[str | None, Query(description="ISO-8601 time")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
    cursor: Annotated[str | None, Query(description="the nextCursor of the previous page")] = None,
) -> dict[str, Any]:
    """Runs from the store's history with their errors and tracebacks, newest first,
    ``{items, nextCursor}``: pass ``nextCursor`` as ``cursor`` for the next page (runs
    recorded meanwhile do not shift the pages)."""
    before: int | None = None
    if cursor is not None:
        if not cursor.isdigit():
            raise ConfigurationError(
                f"cursor {cursor!r} does not parse: pass the nextCursor of a previous page"
            )
        before = int(cursor)
    runs = await _service(request).store.query_history(
        process_id=process_id,
        name=name,
        status=status,
        since=_since(since),
        until=_since(until),
        before=before,
        limit=limit + 1,
    )
    more = len(runs) > limit
    runs = runs[:limit]
    last = runs[-1].index if runs else None
    return {
        "items": [run_document(run) for run in runs],
        "nextCursor": str(last) if more and last is not None else None,
    }


@router.get("/history/{index}", summary="One run of the history", responses=READ)
async def history_run(request: Request, index: int) -> JSONResponse:
    """The run with this index (404 ``{message}`` when there is none)."""
    found = await _service(request).store.query_history(before=index + 1, limit=1)
    if found and found[0].index == index:
        return JSONResponse(run_document(found[0]))
    return JSONResponse({"message": f"Run {index} not found"}, status_code=404)


# ---------------------------------------------------------------- the fleet
@router.get("/workers", summary="The fleet's workers, from their records in the store")
async def workers(
    request: Request,
    stale_after: Annotated[
        float,
        Query(alias="staleAfter", gt=0, description="seconds without renewal before stale"),
    ] = 30.0,
) -> dict[str, Any]:
    """Every worker record: name, incarnation, host, pid, start and last renewal, runs
    held, slots, the process ids it serves, and ``ok`` / ``stale`` from the renewal age."""
    now = datetime.now(UTC)
    records = await _service(request).store.list_workers()
    return {"items": [worker.to_document(now, stale_after) for worker in records]}
