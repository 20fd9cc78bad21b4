"""``create_app``: the taskwarden service as an ASGI app to run or to mount."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Mapping
from typing import TYPE_CHECKING, Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from taskwarden.api.auth import SESSION_MAX_AGE, Authenticate, Guard, resolve_authenticate
from taskwarden.api.broadcaster import Broadcaster
from taskwarden.api.commands import CommandRefused, Commands
from taskwarden.api.health import Metrics, health_router, metrics_router
from taskwarden.api.multiplex import stream_router
from taskwarden.api.operations import LiveView, operations_router
from taskwarden.api.responses import COMMON, OPEN, declare_errors
from taskwarden.api.routes import NotFound, Service, router
from taskwarden.api.session import identity_router, session_router
from taskwarden.api.web import web_router
from taskwarden.errors import ConfigurationError, StoreError
from taskwarden.registry import OperationRegistry

if TYPE_CHECKING:
    from taskwarden.abc import Bus, Store
    from taskwarden.engine import Engine
    from taskwarden.supervisor import Supervisor

__all__ = ["create_app"]


def create_app(
    store: Store,
    *,
    bus: Bus | None = None,
    engine: Engine | None = None,
    tokens: Mapping[str, str] | None = None,
    authenticate: Authenticate | None = None,
    prefix: str = "taskwarden",
    poll_interval: float = 0.1,
    coalesce: float = 0.25,
    keepalive: float = 15.0,
    supervisor: Supervisor | None = None,
    registry: OperationRegistry | None = None,
    session_max_age: float = SESSION_MAX_AGE,
) -> FastAPI:
    """The service over ``store``: optio's REST routes and streams, taskwarden's own.

    Args:
        store: where the processes and their history are; it must be open, and it stays
            the caller's to close.
        bus: other workers' change events and the path for commands when ``engine`` is
            None; without a bus, the app polls the store every ``poll_interval`` seconds
            (one query per server, whatever the number of clients).
        engine: an engine in this process; commands run on it and its changes reach the
            streams at once.
        tokens: bearer tokens and their roles (``"viewer"`` or ``"operator"``); or
        authenticate: your own check (see :mod:`taskwarden.api.auth`). Neither: open.
        coalesce: each process is sent at most once per this many seconds: its change
            after a quiet spell goes out at once, its changes within the window after
            that together at the window's end; other processes are not held back.
        keepalive: idle seconds before a stream sends a keepalive comment.
        supervisor: a supervisor in this process: ``GET /api/supervisor`` shows its tasks.
        registry: whose live operations ``/api/operations`` shows for this process
            (default: the engine's, else the process-wide registry).
        session_max_age: seconds a dashboard session (``POST /api/session``) lasts.

    The app's change feed starts with the first stream (or at the app's startup when it
    is run, not mounted) and stops at its shutdown; a host that mounts the app and has
    its own lifespan can call ``app.state.taskwarden.feed.close()`` when it stops.

    Raises:
        ConfigurationError: conflicting or invalid auth settings (or a session max age
            that is not positive).
    """
    guard = Guard(
        tokens=resolve_authenticate(tokens, authenticate),
        authenticate=authenticate,
        session_max_age=session_max_age,
    )
    feed = Broadcaster(
        store,
        bus=bus,
        engine=engine,
        prefix=prefix,
        poll_interval=poll_interval,
        coalesce=coalesce,
    )
    service = Service(
        store=store,
        bus=bus,
        commands=Commands(store=store, engine=engine, bus=bus, prefix=prefix),
        feed=feed,
        keepalive=keepalive,
    )

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await feed.start()
        try:
            yield
        finally:
            await feed.close()

    app = FastAPI(
        title="taskwarden",
        summary="The control plane for async work: processes, runs, live updates.",
        version="0.1.0",
        lifespan=lifespan,
    )
    app.state.taskwarden = service
    if registry is None:
        registry = engine.registry if engine is not None else OperationRegistry.get_instance()
    app.state.taskwarden_live = LiveView(
        store=store, registry=registry, bus=bus, prefix=prefix, supervisor=supervisor
    )
    app.state.taskwarden_metrics = Metrics(feed)
    app.state.taskwarden_guard = guard
    checked = [Depends(guard.require())]
    app.include_router(router, dependencies=checked, responses=COMMON)
    app.include_router(operations_router, dependencies=checked, responses=COMMON)
    app.include_router(stream_router, dependencies=checked, responses=COMMON)
    app.include_router(session_router)
    app.include_router(
        identity_router, dependencies=[Depends(guard.require("viewer"))], responses=COMMON
    )
    app.include_router(health_router, responses=OPEN)
    app.include_router(metrics_router, dependencies=checked, responses=COMMON)
    app.include_router(web_router)
    _install_error_handlers(app)
    declare_errors(app)
    return app


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(NotFound)
    async def not_found(_: Request, exc: NotFound) -> JSONResponse:
        return JSONResponse({"message": "Process not found"}, status_code=404)

    @app.exception_handler(CommandRefused)
    async def refused(_: Request, exc: CommandRefused) -> JSONResponse:
        return JSONResponse({"reason": exc.reason, "message": exc.message}, exc.status)

    @app.exception_handler(ConfigurationError)
    async def bad_input(_: Request, exc: ConfigurationError) -> JSONResponse:
        return JSONResponse({"message": str(exc)}, status_code=400)

    @app.exception_handler(StoreError)
    async def store_down(_: Request, exc: StoreError) -> JSONResponse:
        return JSONResponse({"message": f"the store is unavailable: {exc}"}, status_code=503)

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"message": _describe(exc.errors())}, status_code=400)

    # Starlette's class: FastAPI raises it too (a body that does not parse, for one).
    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        detail = exc.detail if isinstance(exc.detail, dict) else {"message": str(exc.detail)}
        return JSONResponse(detail, status_code=exc.status_code, headers=exc.headers)


def _describe(errors: Any) -> str:
    """One sentence per invalid parameter: where it is and what was wrong."""
    parts = []
    for error in errors:
        where = ".".join(str(p) for p in error.get("loc", ()) if p not in ("query", "body"))
        parts.append(f"{where or 'request'}: {error.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request"
