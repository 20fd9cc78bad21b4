"""The error answers the routes declare in the OpenAPI schema, in optio's two shapes.

Bad input is a 400 ``{message}`` (the app's handler for FastAPI's validation errors), never
FastAPI's default 422, so :func:`declare_errors` removes the 422 it adds to each operation.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel

__all__ = ["COMMAND", "COMMON", "NO_SESSIONS", "OPEN", "READ", "SESSION", "declare_errors"]


class Message(BaseModel):
    """A refused read or bad input: what was wrong and what to do."""

    message: str


class Refusal(BaseModel):
    """A refused command: optio's reason code and a message."""

    reason: str
    message: str


def _message(description: str) -> dict[str, Any]:
    return {"model": Message, "description": description}


OPEN: dict[int | str, dict[str, Any]] = {400: _message("Bad input: the message says what")}
"""Every route without a token check."""

COMMON: dict[int | str, dict[str, Any]] = {
    **OPEN,
    401: _message("No token, or an unknown one"),
    403: _message("The token's role may not do this"),
    503: _message("The store is unavailable"),
}
"""Every route behind the token check."""

READ: dict[int | str, dict[str, Any]] = {404: _message("No such process (or run, or node)")}
"""Reads of one thing."""

COMMAND: dict[int | str, dict[str, Any]] = {
    404: {"model": Refusal, "description": "No such process or operation"},
    409: {"model": Refusal, "description": "Refused in the current state; reason says why"},
}
"""Commands: optio's ``{reason, message}`` refusals."""

SESSION: dict[int | str, dict[str, Any]] = {
    **OPEN,
    401: _message("The token is not one this server accepts; nothing was set"),
    403: _message("Cross-site request refused"),
    404: _message("This server has no tokens, so no sessions"),
}
"""Signing in: reachable without a role, refused cross-site."""

NO_SESSIONS: dict[int | str, dict[str, Any]] = {
    404: _message("This server is open: its streams need no ticket"),
}
"""Stream tickets on an open server."""


def declare_errors(app: FastAPI) -> None:
    """Make ``app.openapi()`` declare the 400s the app sends instead of FastAPI's 422s."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title,
                version=app.version,
                summary=app.summary,
                routes=app.routes,
            )
            for methods in schema.get("paths", {}).values():
                for operation in methods.values():
                    operation.get("responses", {}).pop("422", None)
            schemas = schema.get("components", {}).get("schemas", {})
            for unused in ("HTTPValidationError", "ValidationError"):
                schemas.pop(unused, None)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
