"""The dashboard's session, ``/api/whoami`` and stream tickets.

- ``POST /api/session`` ``{"token": "..."}``: checks the token (constant time) and sets the
  session cookie (HttpOnly, SameSite=Strict, Path = the app's root path, Secure when the
  request came over https, as the ASGI server reports it); answers ``{"role",
  "expiresIn"}``. A wrong token is a 401 that sets nothing; an app without ``tokens=``
  answers 404 (no sessions there). Reachable without a role, but cross-site checked.
- ``DELETE /api/session``: clears the cookie (204), cross-site checked.
- ``GET /api/whoami``: ``{"role", "via"}``; 401 without a credential, like every read.
- ``POST /api/stream-ticket``: any role; ``{"ticket", "expiresIn"}``, a ticket the event
  streams take once as ``?ticket=`` (404 on an open API: its streams need none).

The values are described in :mod:`taskwarden.api.signing`, the rules in
:mod:`taskwarden.api.auth`.
"""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from taskwarden.api.auth import Guard, Identity, Role, Via, refuse_cross_site
from taskwarden.api.responses import NO_SESSIONS, SESSION
from taskwarden.api.signing import SESSION_COOKIE

__all__ = ["identity_router", "session_router"]

session_router = APIRouter(prefix="/api", tags=["auth"])
"""Routes reachable without a role: the way to get one, and to drop it."""

identity_router = APIRouter(prefix="/api", tags=["auth"])
"""Routes for any role (viewers may POST for a ticket): mount behind ``Guard.require``."""


class SignIn(BaseModel):
    """The token to sign in with."""

    token: str = Field(min_length=1, max_length=4096)


class SessionAnswer(BaseModel):
    """A signed-in session: its role and seconds to live."""

    role: Role
    expiresIn: int


class WhoAmI(BaseModel):
    """The caller's role and the credential it came from."""

    role: Role
    via: Via


class Ticket(BaseModel):
    """A single-use ticket for one event stream, as ``?ticket=``."""

    ticket: str
    expiresIn: int


def _guard(request: Request) -> Guard:
    guard: Guard = request.app.state.taskwarden_guard
    return guard


def _cookie_path(request: Request) -> str:
    """The app's root: the mount path (or uvicorn's ``--root-path``), else ``/``."""
    root = str(request.scope.get("root_path", "")).rstrip("/")
    return root or "/"


@session_router.post(
    "/session", summary="Sign in: set the dashboard's session cookie", responses=SESSION
)
async def sign_in(request: Request, body: SignIn) -> JSONResponse:
    """Set the session cookie for a valid token; a wrong one is 401 and sets nothing."""
    refuse_cross_site(request)
    guard = _guard(request)
    if guard.tokens is None:
        raise HTTPException(404, {"message": _no_sessions(guard)})
    role = guard.signer.role_of_token(body.token)
    if role is None:
        raise HTTPException(
            401,
            {
                "message": "that token is not one this server accepts: check it (serve "
                "--token, $TASKWARDEN_TOKEN, $TASKWARDEN_VIEWER_TOKEN) and try again"
            },
        )
    max_age = int(guard.session_max_age)
    answer = JSONResponse({"role": role, "expiresIn": max_age})
    answer.set_cookie(
        SESSION_COOKIE,
        guard.signer.session(body.token, guard.session_max_age),
        max_age=max_age,
        path=_cookie_path(request),
        secure=request.url.scheme == "https",
        httponly=True,
        samesite="strict",
    )
    return answer


@session_router.delete(
    "/session",
    status_code=204,
    response_class=Response,
    summary="Sign out: clear the session cookie",
    responses={403: SESSION[403]},
)
async def sign_out(request: Request) -> Response:
    """Clear the session cookie (the browser's copy: the value is stateless, see the
    deployment guide for revoking)."""
    refuse_cross_site(request)
    answer = Response(status_code=204)
    answer.delete_cookie(
        SESSION_COOKIE,
        path=_cookie_path(request),
        secure=request.url.scheme == "https",
        httponly=True,
        samesite="strict",
    )
    return answer


def _no_sessions(guard: Guard) -> str:
    if guard.authenticate is not None:
        return (
            "this server checks requests with its own authenticate= callable: sessions "
            "need tokens= (create_app(tokens=...) or serve --token)"
        )
    return (
        "this server is open (no tokens): there is nothing to sign in to; sessions need "
        "tokens= (create_app(tokens=...) or serve --token)"
    )


@identity_router.get("/whoami", summary="The caller's role and credential")
async def whoami(request: Request) -> WhoAmI:
    """``{"role", "via"}``: ``via`` is header, session, authenticate or open."""
    identity: Identity = request.state.taskwarden_identity
    return WhoAmI(role=identity.role, via=identity.via)


@identity_router.post(
    "/stream-ticket", summary="A single-use ticket for an event stream", responses=NO_SESSIONS
)
async def stream_ticket(request: Request) -> Ticket:
    """A ticket for the caller's role, taken once by a ``GET .../stream?ticket=`` within
    ``expiresIn`` seconds, so a client that cannot set headers (``EventSource``) never puts
    a long-lived token in a URL."""
    guard = _guard(request)
    if guard.open:
        raise HTTPException(
            404, {"message": "this server is open (no tokens): its streams need no ticket"}
        )
    identity: Identity = request.state.taskwarden_identity
    # Signed with the caller's token (header or session), so any replica with the same
    # tokens takes it; with authenticate=, with this process's key.
    token = identity.token if guard.tokens is not None else None
    lifetime = guard.ticket_lifetime
    return Ticket(ticket=guard.signer.ticket(identity.role, lifetime, token), expiresIn=lifetime)
