"""Who may call the API: two roles, as optio has them, and where the role comes from.

``viewer`` reads (every ``GET``, streams included); ``operator`` also commands (every other
method). Authentication is checked on every route, reads and streams included: a request
without a role gets 401, a viewer's write gets 403.

With ``tokens={"secret": "operator", ...}`` a request's role comes from, in this order:

1. the ``Authorization: Bearer <token>`` header (``via: "header"``); a wrong one is a 401,
   whatever else the request carries;
2. on the event-stream routes only (``GET``, path ending in ``/stream``), a ``?ticket=``
   from ``POST /api/stream-ticket``: single use, 30 seconds (``via: "ticket"``); a spent,
   expired or forged ticket is a 401; on any other route the parameter is ignored;
3. the dashboard's session cookie from ``POST /api/session`` (``via: "session"``), see
   :mod:`taskwarden.api.signing`.

With ``authenticate=`` the role comes from your callable (it takes the request and returns a
role or None; it may be async; ``via: "authenticate"``), or from a ticket on a stream route.
With neither, the API is open: every caller is an operator (``via: "open"``). ``serve``
listens on 127.0.0.1 by default for that reason.

The cross-site check: a write (any method but GET, HEAD, OPTIONS) whose credential a
browser attaches by itself (the session cookie; or none at all, on an open API, whose
"credential" is being able to reach it) is refused with 403 ``{"message": "cross-site
request refused: ..."}`` unless ``Sec-Fetch-Site`` is ``same-origin`` or ``none``, or, when
a browser sends no ``Sec-Fetch-Site``, its ``Origin`` is the server's own (the scheme the
ASGI server reports, so behind a trusted proxy the one it forwarded, and the ``Host``
header). A request with neither header is not a browser's and passes. A request with an
``Authorization`` header is exempt: no page can make a browser send one cross-site without
the server's CORS consent. ``authenticate=`` apps are not checked (your callable knows
whether its credential is ambient; :func:`cross_site_reason` is there to call).
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Literal
from urllib.parse import urlsplit

from fastapi import HTTPException, Request

from taskwarden.api.signing import SESSION_COOKIE, Signer, TicketBook
from taskwarden.errors import ConfigurationError

__all__ = [
    "Authenticate",
    "Guard",
    "Identity",
    "Role",
    "Via",
    "cross_site_reason",
    "is_stream_route",
    "own_origin",
    "refuse_cross_site",
    "resolve_authenticate",
]

Role = Literal["viewer", "operator"]
Via = Literal["header", "session", "ticket", "authenticate", "open"]
ROLES: frozenset[str] = frozenset({"viewer", "operator"})
READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
AMBIENT: frozenset[str] = frozenset({"session", "open"})
"""Credentials a browser sends by itself, so a cross-site page could make it send them."""

SESSION_MAX_AGE = 12 * 3600.0
"""Seconds a session cookie lasts by default."""
TICKET_LIFETIME = 30
"""Seconds a stream ticket lasts."""

Authenticate = Callable[[Request], "Role | Awaitable[Role | None] | None"]
"""Takes the request, returns ``"viewer"``, ``"operator"`` or None (refused)."""


@dataclass(frozen=True, slots=True)
class Identity:
    """A caller's role and the credential it came from."""

    role: Role
    via: Via
    token: str | None = None
    """The token behind a header or session credential (it signs that caller's tickets)."""


def resolve_authenticate(
    tokens: Mapping[str, str] | None, authenticate: Authenticate | None
) -> Mapping[str, Role] | None:
    """The tokens with their checked roles, from ``create_app``'s arguments.

    Raises:
        ConfigurationError: both are given, or a token maps to an unknown role.
    """
    if tokens is not None and authenticate is not None:
        raise ConfigurationError("pass either tokens= or authenticate=, not both")
    if tokens is None:
        return None
    checked: dict[str, Role] = {}
    for token, role in tokens.items():
        if role not in ROLES:
            raise ConfigurationError(f"token role {role!r} is not 'viewer' or 'operator'")
        if not token:
            raise ConfigurationError("a token is empty: give each role a non-empty secret")
        checked[token] = "operator" if role == "operator" else "viewer"
    return checked


def is_stream_route(request: Request) -> bool:
    """Whether the request was routed to an event stream: a GET whose route's path ends in
    ``/stream`` (``/api/stream``, ``/api/processes/stream``, ``.../tree/stream``)."""
    route = request.scope.get("route")
    path = getattr(route, "path", "")
    return request.method == "GET" and isinstance(path, str) and path.endswith("/stream")


def _origin(scheme: str, netloc: str) -> tuple[str, str, int | None] | None:
    """``(scheme, host, port)`` with the default port filled in; None when it is malformed."""
    try:
        parts = urlsplit(f"//{netloc}")
        port = parts.port
    except ValueError:
        return None
    if not parts.hostname:
        return None
    scheme = scheme.lower()
    default = {"http": 80, "https": 443}.get(scheme)
    return scheme, parts.hostname.lower(), default if port is None else port


def own_origin(request: Request) -> str:
    """The server's origin as the app sees it: the ASGI scheme and the ``Host`` header."""
    return f"{request.url.scheme}://{request.headers.get('host', '')}"


def cross_site_reason(request: Request) -> str | None:
    """Why ``request`` looks like a cross-site browser request, or None when it does not.

    ``Sec-Fetch-Site`` decides when present (``same-origin`` and ``none``, typed or
    bookmarked, pass; ``same-site`` does not: a sibling subdomain is another site for
    this purpose); else ``Origin`` must be the server's own; with neither, it passes.
    """
    site = request.headers.get("sec-fetch-site")
    if site is not None:
        if site.strip().lower() in ("same-origin", "none"):
            return None
        return (
            f"Sec-Fetch-Site is {site!r}: writes are taken from this server's own pages "
            "only (or with an Authorization header)"
        )
    origin = request.headers.get("origin")
    if origin is None:
        return None
    scheme, sep, netloc = origin.strip().partition("://")
    mine = _origin(request.url.scheme, request.headers.get("host", ""))
    theirs = _origin(scheme, netloc.rstrip("/")) if sep else None
    if theirs is not None and theirs == mine:
        return None
    return (
        f"Origin {origin!r} is not this server's ({own_origin(request)}); behind a proxy, "
        "forward the Host header and X-Forwarded-Proto (see docs/deployment.md)"
    )


def _bearer(request: Request) -> str | None:
    header = request.headers.get("authorization")
    if header is None:
        return None
    scheme, _, value = header.partition(" ")
    return value.strip() if scheme.lower() == "bearer" else ""


class Guard:
    """The API's door: finds a request's :class:`Identity` and enforces the rules above.

    Args:
        tokens: the checked tokens (from :func:`resolve_authenticate`), or None.
        authenticate: the host's own check, or None.
        session_max_age: how long a session cookie lasts, in seconds.
        ticket_lifetime: how long a stream ticket lasts, in seconds.
    """

    def __init__(
        self,
        *,
        tokens: Mapping[str, Role] | None,
        authenticate: Authenticate | None,
        session_max_age: float = SESSION_MAX_AGE,
        ticket_lifetime: int = TICKET_LIFETIME,
    ) -> None:
        if session_max_age <= 0 or ticket_lifetime <= 0:
            raise ConfigurationError(
                "session_max_age and the ticket lifetime must be positive numbers of seconds"
            )
        self.tokens = tokens
        self.authenticate = authenticate
        self.session_max_age = session_max_age
        self.ticket_lifetime = ticket_lifetime
        self.clock: Callable[[], float] = time.time
        """The time in seconds; tests replace it to move time on."""
        self.signer = Signer(tokens, clock=self._now)
        self.tickets = TicketBook(clock=self._now)

    def _now(self) -> float:
        return self.clock()

    @property
    def open(self) -> bool:
        """Whether the API is open (neither tokens nor ``authenticate``)."""
        return self.tokens is None and self.authenticate is None

    async def identify(self, request: Request) -> Identity | None:
        """The caller's identity, or None when it has no (valid) credential."""
        if self.open:
            return Identity("operator", "open")
        presented = _bearer(request)
        if presented is not None and self.tokens is not None:
            role = self.signer.role_of_token(presented) if presented else None
            return None if role is None else Identity(role, "header", presented)
        ticket = request.query_params.get("ticket")
        if ticket is not None and is_stream_route(request):
            return self._spend(ticket)
        if self.authenticate is not None:
            outcome = self.authenticate(request)
            role = await outcome if inspect.isawaitable(outcome) else outcome
            return Identity(role, "authenticate") if role in ROLES else None
        cookie = request.cookies.get(SESSION_COOKIE)
        if cookie is not None:
            checked = self.signer.check_session(cookie, self.session_max_age)
            if checked is not None:
                return Identity(checked[0], "session", checked[1])
        return None

    def _spend(self, ticket: str) -> Identity | None:
        checked = self.signer.check_ticket(ticket, self.ticket_lifetime)
        if checked is None:
            return None
        ticket_id, expires, role = checked
        return Identity(role, "ticket") if self.tickets.spend(ticket_id, expires) else None

    def require(self, write_role: Role = "operator") -> Callable[[Request], Awaitable[None]]:
        """A FastAPI dependency: 401 without an identity, 403 for a cross-site write by an
        ambient credential, 403 for a write by a role below ``write_role``. It leaves the
        identity in ``request.state.taskwarden_identity``."""

        async def dependency(request: Request) -> None:
            identity = await self.identify(request)
            if identity is None:
                raise HTTPException(401, {"message": "Unauthorized"})
            if request.method not in READ_METHODS:
                if identity.via in AMBIENT:
                    refuse_cross_site(request)
                if identity.role == "viewer" and write_role == "operator":
                    raise HTTPException(403, {"message": "Forbidden"})
            request.state.taskwarden_identity = identity

        return dependency


def refuse_cross_site(request: Request) -> None:
    """Raise the 403 of the cross-site check when :func:`cross_site_reason` finds one."""
    reason = cross_site_reason(request)
    if reason is not None:
        raise HTTPException(403, {"message": f"cross-site request refused: {reason}"})
