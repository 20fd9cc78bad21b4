"""Who may call the API: two roles, as optio has them.

``viewer`` reads (every ``GET``, streams included); ``operator`` also commands (every other
method). Authentication is checked on every route, reads and streams included: a request
without a role gets 401, a viewer's write gets 403.

Pass ``tokens={"secret": "operator", ...}`` to accept bearer tokens (the
``Authorization: Bearer <token>`` header, or the ``taskwarden_token`` cookie, which a
browser's ``EventSource`` sends when it cannot set a header), or ``authenticate=`` for your
own check, a callable that takes the request and returns a role or None (it may be async).
With neither, the API is open: every caller is an operator. ``serve`` listens on 127.0.0.1
by default for that reason.
"""

from __future__ import annotations

import hmac
import inspect
from collections.abc import Awaitable, Callable, Mapping
from typing import Literal

from fastapi import HTTPException, Request

from taskwarden.errors import ConfigurationError

__all__ = ["Authenticate", "Role", "require_role", "resolve_authenticate"]

Role = Literal["viewer", "operator"]
ROLES: frozenset[str] = frozenset({"viewer", "operator"})
READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})

Authenticate = Callable[[Request], "Role | Awaitable[Role | None] | None"]
"""Takes the request, returns ``"viewer"``, ``"operator"`` or None (refused)."""


def _token_of(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return request.cookies.get("taskwarden_token")


def resolve_authenticate(
    tokens: Mapping[str, str] | None, authenticate: Authenticate | None
) -> Authenticate | None:
    """The check to run on every request, from ``create_app``'s arguments (None: open).

    Raises:
        ConfigurationError: both are given, or a token maps to an unknown role.
    """
    if tokens is not None and authenticate is not None:
        raise ConfigurationError("pass either tokens= or authenticate=, not both")
    if authenticate is not None:
        return authenticate
    if tokens is None:
        return None
    for role in tokens.values():
        if role not in ROLES:
            raise ConfigurationError(f"token role {role!r} is not 'viewer' or 'operator'")
    known = dict(tokens)

    def by_token(request: Request) -> Role | None:
        presented = _token_of(request)
        if presented is None:
            return None
        for token, role in known.items():
            # Compare every token in constant time, so timing does not reveal a prefix.
            if hmac.compare_digest(token.encode(), presented.encode()):
                return "operator" if role == "operator" else "viewer"
        return None

    return by_token


def require_role(check: Authenticate | None) -> Callable[[Request], Awaitable[None]]:
    """A FastAPI dependency that enforces ``check`` with optio's 401/403 answers."""

    async def dependency(request: Request) -> None:
        if check is None:
            return
        outcome = check(request)
        role = await outcome if inspect.isawaitable(outcome) else outcome
        if role not in ROLES:
            raise HTTPException(401, {"message": "Unauthorized"})
        if role == "viewer" and request.method not in READ_METHODS:
            raise HTTPException(403, {"message": "Forbidden"})

    return dependency
