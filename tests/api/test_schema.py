"""schemathesis over ``create_app``'s OpenAPI schema, in-process through the ASGI transport.

Every operation of the schema, except the event streams (they never end), gets
``MAX_EXAMPLES`` generated requests, valid and invalid ones, against an app on a SQLite
store with an engine and a few finished, failed and running processes. Two properties:
no request gets a server error (5xx), and every answer is one the schema declares (its
status, content type, headers and body schema).

The schema is read from a fresh app per test: schemathesis's pytest plugin ends the app's
lifespan at each test's teardown, and the lifespan owns the store and the engine.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from fastapi import FastAPI
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.specs.openapi.schemas import OpenApiSchema

from taskwarden.api import create_app
from taskwarden.engine import Engine, ProcessContext
from taskwarden.processes import ProcessState
from taskwarden.registry import OperationRegistry
from taskwarden.stores import open_store
from taskwarden.stores.memory import MemoryStore
from tests.engine_support import StateLog, definitions, task

S = ProcessState

MAX_EXAMPLES = 20
"""Generated requests per operation and property: enough to reach every parameter's edge
cases, few enough that the module runs in well under a minute."""

STREAMS = frozenset(
    {"/api/processes/stream", "/api/processes/{process_id}/tree/stream", "/api/stream"}
)
"""Server-sent event routes: their responses never end, so they are tested against a real
server in ``test_streams.py`` instead."""


def _operations() -> list[str]:
    paths: dict[str, dict[str, Any]] = create_app(MemoryStore()).openapi()["paths"]
    return sorted(
        f"{method.upper()} {path}"
        for path, methods in paths.items()
        for method in methods
        if path not in STREAMS
    )


OPERATIONS = _operations()


async def parent(ctx: ProcessContext) -> None:
    ctx.log("info", "parent starts")
    ctx.report_progress(50, "children next")

    async def child(c: ProcessContext) -> None:
        c.log("warning", "child works")
        c.report_progress(100, "child done")

    await ctx.run_child(child, "parent/a", "Child A")


async def fails(ctx: ProcessContext) -> None:
    ctx.log("error", "about to fail")
    raise RuntimeError("disk full")


async def runs(ctx: ProcessContext) -> None:
    ctx.report_progress(10, "running until cancelled")
    await ctx.wait_cancelled()


TASKS = [
    task("parent", parent, metadata={"team": "data", "tier": 1}),
    task("fails", fails, metadata={"team": "ops"}),
    task("runs", runs, metadata={"team": "data"}),
    task("plain", metadata={"team": "web"}),
]


def _app(path: Path) -> FastAPI:
    """The app over a SQLite store and an engine that its own lifespan opens and closes
    (the lifespan runs in schemathesis's event loop thread, where the requests run)."""
    store = open_store(f"sqlite:///{path}")
    engine = Engine(
        store,
        get_task_definitions=definitions(*TASKS),
        registry=OperationRegistry(),
        cancel_grace=0.5,
        shutdown_timeout=2.0,
    )
    app = create_app(store, engine=engine)
    serve = app.router.lifespan_context

    @contextlib.asynccontextmanager
    async def lifespan(served: FastAPI) -> AsyncIterator[None]:
        await store.open()
        try:
            await engine.init()
            states = StateLog(engine)
            for process_id in ("parent", "fails", "runs"):
                await engine.launch(process_id)
            await states.wait_for("parent", S.DONE)
            await states.wait_for("fails", S.FAILED)
            await states.wait_for("runs", S.RUNNING)
            async with serve(served):
                yield
        finally:
            await asyncio.wait_for(engine.shutdown(), 10)
            await store.close()

    app.router.lifespan_context = lifespan
    return app


@pytest.fixture
def api_schema(tmp_path: Path) -> OpenApiSchema:
    """The schema, read from a fresh app (whose lifespan the plugin ends after the test)."""
    return schemathesis.openapi.from_asgi("/openapi.json", _app(tmp_path / "api.db"))


def _exercise(schema: OpenApiSchema, label: str, checks: list[Callable[..., Any]]) -> None:
    """Send ``MAX_EXAMPLES`` generated requests (valid and invalid) to ``label``; every
    answer must pass ``checks``."""
    method, _, path = label.partition(" ")
    operation = schema[path][method]
    strategy = st.one_of(
        operation.as_strategy(schemathesis.GenerationMode.POSITIVE),
        operation.as_strategy(schemathesis.GenerationMode.NEGATIVE),
    )

    @settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )
    @given(case=strategy)
    def run(case: schemathesis.Case[Any]) -> None:
        case.call_and_validate(checks=checks)

    run()


def test_the_excluded_routes_are_the_event_streams() -> None:
    """The excluded paths are the three streams of the schema, and every other operation is
    exercised."""
    paths = create_app(MemoryStore()).openapi()["paths"]
    assert paths.keys() >= STREAMS
    assert len(OPERATIONS) == sum(len(m) for p, m in paths.items() if p not in STREAMS)


@pytest.mark.slow
@pytest.mark.parametrize("label", OPERATIONS)
def test_no_request_gets_a_server_error(api_schema: OpenApiSchema, label: str) -> None:
    """Whatever the input, valid or not, no operation answers 5xx."""
    _exercise(api_schema, label, [not_a_server_error])


@pytest.mark.slow
@pytest.mark.parametrize("label", OPERATIONS)
def test_every_answer_is_one_the_schema_declares(api_schema: OpenApiSchema, label: str) -> None:
    """Each answer's status, content type, headers and body are what the schema declares."""
    _exercise(
        api_schema,
        label,
        [
            status_code_conformance,
            content_type_conformance,
            response_headers_conformance,
            response_schema_conformance,
        ],
    )
