"""The dashboard's session cookie, ``/api/whoami``, the cross-site check and stream tickets.

Everything but a stream that opens goes through the ASGI transport in-process; a stream
that opens never ends, so those run against a real uvicorn on a loopback port.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from http.cookies import Morsel, SimpleCookie
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request

from taskwarden.api import create_app
from taskwarden.api.auth import Guard, Role
from taskwarden.api.signing import SESSION_COOKIE
from taskwarden.processes import ProcessRecord, ProcessState
from taskwarden.stores.memory import MemoryStore
from tests.api.test_streams import SSEClient, serving
from tests.engine_support import StateLog, started_engine, task

OPERATOR, VIEWER = "steer-0f9a7c", "look-2b4e81"
TOKENS = {OPERATOR: "operator", VIEWER: "viewer"}
STREAMS = {"/api/stream", "/api/processes/stream", "/api/processes/{process_id}/tree/stream"}
EVIL = "https://evil.example"


@pytest.fixture
async def store() -> AsyncIterator[MemoryStore]:
    async with MemoryStore() as opened:
        await opened.create(ProcessRecord(process_id="root", name="Root"))
        yield opened


def client_of(app: FastAPI, base: str = "http://tw") -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=base)


def session_cookie(response: httpx.Response) -> Morsel[str]:
    """The Set-Cookie of the session, parsed (fails when there is none)."""
    headers = [v for v in response.headers.get_list("set-cookie") if SESSION_COOKIE in v]
    assert len(headers) == 1, response.headers
    jar: SimpleCookie = SimpleCookie()
    jar.load(headers[0])
    return jar[SESSION_COOKIE]


def guard_of(app: FastAPI) -> Guard:
    guard: Guard = app.state.taskwarden_guard
    return guard


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


# ------------------------------------------------------------------ the cookie
async def test_sign_in_sets_an_httponly_strict_cookie_that_holds_no_token(
    store: MemoryStore,
) -> None:
    async with client_of(create_app(store, tokens=TOKENS)) as client:
        answer = await client.post("/api/session", json={"token": OPERATOR})
        assert answer.status_code == 200
        assert answer.json() == {"role": "operator", "expiresIn": 12 * 3600}
        cookie = session_cookie(answer)
        assert cookie["httponly"] is True
        assert cookie["samesite"].lower() == "strict"
        assert cookie["path"] == "/"
        assert cookie["max-age"] == str(12 * 3600)
        assert not cookie["secure"]  # plain http: a Secure cookie would never come back
        assert OPERATOR not in cookie.value and VIEWER not in cookie.value
        who = await client.get("/api/whoami")
        assert who.json() == {"role": "operator", "via": "session"}
        assert (await client.get("/api/processes")).status_code == 200


async def test_the_cookie_is_secure_over_https_and_its_age_is_configurable(
    store: MemoryStore,
) -> None:
    app = create_app(store, tokens=TOKENS, session_max_age=600)
    async with client_of(app, "https://tw") as client:
        answer = await client.post("/api/session", json={"token": VIEWER})
        assert answer.json() == {"role": "viewer", "expiresIn": 600}
        cookie = session_cookie(answer)
        assert cookie["secure"] is True and cookie["max-age"] == "600"
        assert (await client.get("/api/whoami")).json() == {"role": "viewer", "via": "session"}


async def test_a_mounted_app_scopes_the_cookie_to_its_path(store: MemoryStore) -> None:
    host = FastAPI()
    host.mount("/ops/tw", create_app(store, tokens=TOKENS))
    async with client_of(host) as client:
        answer = await client.post("/ops/tw/api/session", json={"token": OPERATOR})
        assert session_cookie(answer)["path"] == "/ops/tw"
        who = await client.get("/ops/tw/api/whoami")
        assert who.json() == {"role": "operator", "via": "session"}
        gone = await client.delete("/ops/tw/api/session")
        assert gone.status_code == 204
        assert session_cookie(gone)["path"] == "/ops/tw"
        assert (await client.get("/ops/tw/api/whoami")).status_code == 401


async def test_a_wrong_token_is_401_with_a_message_and_sets_nothing(store: MemoryStore) -> None:
    async with client_of(create_app(store, tokens=TOKENS)) as client:
        for body in ({"token": "guess"}, {"token": OPERATOR + "x"}):
            answer = await client.post("/api/session", json=body)
            assert answer.status_code == 401
            assert "not one this server accepts" in answer.json()["message"]
            assert "set-cookie" not in answer.headers
        assert (await client.post("/api/session", json={})).status_code == 400
        assert (await client.post("/api/session", json={"token": ""})).status_code == 400


async def test_a_tampered_expired_or_overlong_cookie_is_401(store: MemoryStore) -> None:
    app = create_app(store, tokens=TOKENS)
    async with client_of(app) as client:
        value = session_cookie(await client.post("/api/session", json={"token": OPERATOR})).value
        version, expires, mac = value.split(".")
        forged = {
            "mac": f"{version}.{expires}.{mac[:-2]}AA",
            "expiry": f"{version}.{int(expires) + 60}.{mac}",
            "version": f"s2.{expires}.{mac}",
            "garbage": "not-a-session",
        }
        for what, cookie in forged.items():
            client.cookies.set(SESSION_COOKIE, cookie)
            assert (await client.get("/api/whoami")).status_code == 401, what
        client.cookies.set(SESSION_COOKIE, value)
        assert (await client.get("/api/whoami")).status_code == 200
        guard = guard_of(app)
        now = guard.clock()
        guard.clock = lambda: now + 12 * 3600 + 1
        assert (await client.get("/api/whoami")).status_code == 401
    # A cookie signed for longer than this server allows is refused, not honoured.
    longer = create_app(store, tokens=TOKENS, session_max_age=48 * 3600)
    async with client_of(longer) as client:
        value = session_cookie(await client.post("/api/session", json={"token": OPERATOR})).value
    async with client_of(create_app(store, tokens=TOKENS)) as client:
        client.cookies.set(SESSION_COOKIE, value)
        assert (await client.get("/api/whoami")).status_code == 401


async def test_a_cookie_outlives_a_restart_but_not_its_token(store: MemoryStore) -> None:
    async with client_of(create_app(store, tokens=TOKENS)) as client:
        value = session_cookie(await client.post("/api/session", json={"token": OPERATOR})).value

    async def who(tokens: dict[str, str]) -> httpx.Response:
        async with client_of(create_app(store, tokens=tokens)) as client:
            client.cookies.set(SESSION_COOKIE, value)
            return await client.get("/api/whoami")

    assert (await who(TOKENS)).json() == {"role": "operator", "via": "session"}  # a restart
    assert (await who({VIEWER: "viewer"})).status_code == 401  # the token was removed
    assert (await who({OPERATOR: "viewer"})).json()["role"] == "viewer"  # the role is today's


async def test_sign_out_clears_the_cookie(store: MemoryStore) -> None:
    async with client_of(create_app(store, tokens=TOKENS)) as client:
        await client.post("/api/session", json={"token": OPERATOR})
        gone = await client.delete("/api/session")
        assert gone.status_code == 204
        cleared = session_cookie(gone)
        assert cleared["max-age"] == "0" and cleared.value == ""
        assert (await client.get("/api/whoami")).status_code == 401


async def test_sessions_need_tokens(store: MemoryStore) -> None:
    async with client_of(create_app(store)) as client:
        answer = await client.post("/api/session", json={"token": "anything"})
        assert answer.status_code == 404 and "tokens=" in answer.json()["message"]
        assert "set-cookie" not in answer.headers

    async with client_of(create_app(store, authenticate=lambda r: "viewer")) as client:
        answer = await client.post("/api/session", json={"token": "anything"})
        assert answer.status_code == 404
        assert "authenticate=" in answer.json()["message"]


async def test_whoami_names_the_credential(store: MemoryStore) -> None:
    async with client_of(create_app(store, tokens=TOKENS)) as client:
        refused = await client.get("/api/whoami")
        assert refused.status_code == 401 and refused.json() == {"message": "Unauthorized"}
        assert (await client.get("/api/whoami", headers=bearer("guess"))).status_code == 401
        for token, role in TOKENS.items():
            answer = await client.get("/api/whoami", headers=bearer(token))
            assert answer.json() == {"role": role, "via": "header"}
        await client.post("/api/session", json={"token": VIEWER})
        assert (await client.get("/api/whoami")).json() == {"role": "viewer", "via": "session"}
        # An explicit header decides, even over a valid cookie; a wrong one is refused.
        answer = await client.get("/api/whoami", headers=bearer(OPERATOR))
        assert answer.json() == {"role": "operator", "via": "header"}
        assert (await client.get("/api/whoami", headers=bearer("guess"))).status_code == 401
    async with client_of(create_app(store)) as client:
        assert (await client.get("/api/whoami")).json() == {"role": "operator", "via": "open"}

    def check(request: Request) -> Role | None:
        return "viewer" if request.headers.get("x-user") == "ann" else None

    async with client_of(create_app(store, authenticate=check)) as client:
        answer = await client.get("/api/whoami", headers={"x-user": "ann"})
        assert answer.json() == {"role": "viewer", "via": "authenticate"}
        assert (await client.get("/api/whoami")).status_code == 401


# ------------------------------------------------------------------ the cross-site check
CROSS_SITE = {
    "evil origin": {"Origin": EVIL},
    "null origin": {"Origin": "null"},
    "other port": {"Origin": "http://tw:8080"},
    "other scheme": {"Origin": "https://tw"},
    "cross-site fetch": {"Sec-Fetch-Site": "cross-site", "Origin": "http://tw"},
    "same-site fetch": {"Sec-Fetch-Site": "same-site"},
}
SAME_ORIGIN = {
    "same-origin fetch": {"Sec-Fetch-Site": "same-origin", "Origin": "http://tw"},
    "typed in": {"Sec-Fetch-Site": "none"},
    "own origin": {"Origin": "http://tw"},
    "own origin, default port": {"Origin": "http://TW:80"},
    "neither header (curl)": {},
}


@pytest.mark.parametrize("headers", CROSS_SITE.values(), ids=CROSS_SITE.keys())
async def test_cookie_writes_from_another_site_are_refused_and_change_nothing(
    headers: dict[str, str],
) -> None:
    async with started_engine(task("plain")) as engine:
        states = StateLog(engine)
        async with client_of(create_app(engine.store, engine=engine, tokens=TOKENS)) as client:
            await client.post("/api/session", json={"token": OPERATOR})
            for method, path in (
                ("POST", "/api/processes/plain/launch"),
                ("POST", "/api/stream-ticket"),
                ("POST", "/api/session"),
                ("DELETE", "/api/session"),
            ):
                answer = await client.request(
                    method, path, headers=headers, json={"token": OPERATOR}
                )
                assert answer.status_code == 403, (method, path)
                assert answer.json()["message"].startswith("cross-site request refused: ")
                assert "set-cookie" not in answer.headers
            record = await engine.store.get("plain")
            assert record is not None and record.state == ProcessState.IDLE
            assert states.changes == []
            # Reads are not writes: the cookie still reads from anywhere it is sent.
            assert (await client.get("/api/whoami", headers=headers)).status_code == 200


@pytest.mark.parametrize("headers", SAME_ORIGIN.values(), ids=SAME_ORIGIN.keys())
async def test_cookie_writes_from_the_same_origin_pass(headers: dict[str, str]) -> None:
    async with started_engine(task("plain")) as engine:
        states = StateLog(engine)
        async with client_of(create_app(engine.store, engine=engine, tokens=TOKENS)) as client:
            signed_in = await client.post("/api/session", json={"token": OPERATOR}, headers=headers)
            assert signed_in.status_code == 200
            launched = await client.post("/api/processes/plain/launch", headers=headers)
            assert launched.status_code == 200
            await states.wait_for("plain", ProcessState.DONE)
            ticket = await client.post("/api/stream-ticket", headers=headers)
            assert ticket.status_code == 200


async def test_a_bearer_header_is_exempt_from_the_cross_site_check() -> None:
    async with started_engine(task("plain")) as engine:
        states = StateLog(engine)
        async with client_of(create_app(engine.store, engine=engine, tokens=TOKENS)) as client:
            headers = {**bearer(OPERATOR), "Origin": EVIL, "Sec-Fetch-Site": "cross-site"}
            launched = await client.post("/api/processes/plain/launch", headers=headers)
            assert launched.status_code == 200
            await states.wait_for("plain", ProcessState.DONE)


async def test_an_open_api_refuses_cross_site_writes_too() -> None:
    """On an open API reaching it is the credential, one a browser has on any page."""
    async with started_engine(task("plain")) as engine:
        async with client_of(create_app(engine.store, engine=engine)) as client:
            answer = await client.post("/api/processes/plain/launch", headers={"Origin": EVIL})
            assert answer.status_code == 403
            assert "cross-site request refused" in answer.json()["message"]
            record = await engine.store.get("plain")
            assert record is not None and record.state == ProcessState.IDLE
            assert (await client.post("/api/processes/plain/launch")).status_code == 200


async def test_the_origin_is_compared_with_the_scheme_the_server_reports(
    store: MemoryStore,
) -> None:
    async with client_of(create_app(store, tokens=TOKENS), "https://tw.example") as client:
        await client.post("/api/session", json={"token": VIEWER})
        for origin, status in (("https://tw.example", 200), ("http://tw.example", 403)):
            answer = await client.post("/api/stream-ticket", headers={"Origin": origin})
            assert answer.status_code == status, origin


# ------------------------------------------------------------------ stream tickets
async def test_a_ticket_is_a_credential_on_exactly_the_event_streams(
    store: MemoryStore,
) -> None:
    """Every guarded GET of the schema, each with a fresh ticket: the streams open, the
    rest answer 401."""
    app = create_app(store, tokens=TOKENS, keepalive=1.0)
    paths = app.openapi()["paths"]
    guarded = sorted(
        p
        for p, methods in paths.items()
        if "get" in methods and "401" in methods["get"]["responses"]
    )
    assert set(guarded) >= STREAMS and len(guarded) > len(STREAMS) + 5
    async with (
        asyncio.timeout(30),
        serving(app) as base,
        httpx.AsyncClient(base_url=base, timeout=10) as client,
    ):
        for template in guarded:
            path = template.format(process_id="root", index=0)
            ticket = await _ticket(client)
            params = {"ticket": ticket, "topic": "processes"}
            async with client.stream("GET", path, params=params) as response:
                assert response.status_code == (200 if template in STREAMS else 401), path


async def test_a_viewer_may_get_a_ticket_and_a_stranger_may_not(store: MemoryStore) -> None:
    async with client_of(create_app(store, tokens=TOKENS)) as client:
        answer = await client.post("/api/stream-ticket", headers=bearer(VIEWER))
        assert answer.status_code == 200
        body = answer.json()
        assert body["expiresIn"] == 30 and set(body) == {"ticket", "expiresIn"}
        assert VIEWER not in body["ticket"]
        assert (await client.post("/api/stream-ticket")).status_code == 401
    async with client_of(create_app(store)) as client:
        answer = await client.post("/api/stream-ticket")
        assert answer.status_code == 404 and "no ticket" in answer.json()["message"]


async def _ticket(client: httpx.AsyncClient, token: str = VIEWER) -> str:
    answer = await client.post("/api/stream-ticket", headers=bearer(token))
    assert answer.status_code == 200
    ticket: str = answer.json()["ticket"]
    return ticket


async def _opens(client: httpx.AsyncClient, path: str, **params: Any) -> None:
    """GET the stream; it answers 200 and its first frame within the bound."""
    async with client.stream("GET", path, params=params) as response:
        assert response.status_code == 200, await response.aread()
        assert response.headers["content-type"].startswith("text/event-stream")
        assert (await SSEClient(response).next()).startswith("retry:")


@pytest.mark.parametrize(
    ("path", "params"),
    [
        ("/api/stream", {"topic": "processes"}),
        ("/api/processes/stream", {}),
        ("/api/processes/root/tree/stream", {}),
    ],
)
async def test_a_ticket_opens_a_stream_once(
    store: MemoryStore, path: str, params: dict[str, str]
) -> None:
    app = create_app(store, tokens=TOKENS, keepalive=1.0)
    async with (
        asyncio.timeout(20),
        serving(app) as base,
        httpx.AsyncClient(base_url=base, timeout=10) as client,
    ):
        assert (await client.get(path, params=params)).status_code == 401
        ticket = await _ticket(client)
        await _opens(client, path, **params, ticket=ticket)
        again = await client.get(path, params={**params, "ticket": ticket})
        assert again.status_code == 401 and again.json() == {"message": "Unauthorized"}


async def test_an_expired_or_forged_ticket_is_401(store: MemoryStore) -> None:
    app = create_app(store, tokens=TOKENS)
    guard = guard_of(app)
    async with client_of(app) as client:
        ticket = await _ticket(client)
        version, expires, ticket_id, role, mac = ticket.split(".")
        forged = [
            f"{version}.{expires}.{ticket_id}.operator.{mac}",  # a viewer's, made operator
            f"{version}.{int(expires) + 5}.{ticket_id}.{role}.{mac}",
            f"{version}.{expires}.{ticket_id}x.{role}.{mac}",
            f"{version}.{expires}.{ticket_id}.{role}.{mac[:-2]}AA",
            "t1.1.2.3",
        ]
        for value in forged:
            answer = await client.get("/api/processes/stream", params={"ticket": value})
            assert answer.status_code == 401, value
        now = guard.clock()
        guard.clock = lambda: now + 31
        answer = await client.get("/api/processes/stream", params={"ticket": ticket})
        assert answer.status_code == 401
    # Another server with other tokens does not take it either.
    async with client_of(create_app(store, tokens={"other": "viewer"})) as client:
        answer = await client.get("/api/processes/stream", params={"ticket": ticket})
        assert answer.status_code == 401


async def test_a_ticket_is_no_credential_on_other_routes(store: MemoryStore) -> None:
    app = create_app(store, tokens=TOKENS, keepalive=1.0)
    async with (
        asyncio.timeout(20),
        serving(app) as base,
        httpx.AsyncClient(base_url=base, timeout=10) as client,
    ):
        ticket = await _ticket(client, OPERATOR)
        for method, path in (
            ("GET", "/api/processes"),
            ("GET", "/api/whoami"),
            ("POST", "/api/processes/resync"),
            ("POST", "/api/stream-ticket"),
        ):
            answer = await client.request(method, path, params={"ticket": ticket})
            assert answer.status_code == 401, (method, path)
        await _opens(client, "/api/processes/stream", ticket=ticket)  # still unspent


async def test_a_ticket_carries_its_role_and_spent_ones_are_forgotten_when_they_expire(
    store: MemoryStore,
) -> None:
    app = create_app(store, tokens=TOKENS)
    guard = guard_of(app)
    async with client_of(app) as client:
        ticket = await _ticket(client, VIEWER)
        assert guard.signer.check_ticket(ticket, 30) is not None
        # Consumed by the guard directly: opening a stream here would never end.
        assert guard._spend(ticket) is not None
        assert guard._spend(ticket) is None
        assert len(guard.tickets) == 1
        now = guard.clock()
        guard.clock = lambda: now + 31
        await _ticket(client, OPERATOR)
        assert guard.tickets.spend("someone-else", int(now + 61))
        assert len(guard.tickets) == 1  # the expired entry went


async def test_with_authenticate_tickets_are_signed_by_the_process(store: MemoryStore) -> None:
    def check(request: Request) -> Role | None:
        return "operator" if request.headers.get("x-user") == "ann" else None

    app = create_app(store, authenticate=check, keepalive=1.0)
    async with (
        asyncio.timeout(20),
        serving(app) as base,
        httpx.AsyncClient(base_url=base, timeout=10) as client,
    ):
        answer = await client.post("/api/stream-ticket", headers={"x-user": "ann"})
        ticket = answer.json()["ticket"]
        assert ticket.split(".")[3] == "operator"
        await _opens(client, "/api/processes/stream", ticket=ticket)
        again = await client.get("/api/processes/stream", params={"ticket": ticket})
        assert again.status_code == 401
    other = create_app(store, authenticate=check)
    async with client_of(other) as client:
        answer = await client.get("/api/processes/stream", params={"ticket": ticket})
        assert answer.status_code == 401  # another process's key
