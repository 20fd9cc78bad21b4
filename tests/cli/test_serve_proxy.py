"""``taskwarden serve`` behind a reverse proxy: which X-Forwarded-Proto it believes (and so
whether the session cookie is Secure and which Origin is its own), ``--root-path`` for a
proxy that serves it under a prefix, the session's lifetime; bad values are usage errors."""

from __future__ import annotations

import asyncio
from http.cookies import SimpleCookie
from pathlib import Path

import httpx
import pytest

from taskwarden.cli.common import CommandError
from taskwarden.cli.serve import root_path
from tests.cli.support import assert_clean_failure, populate, run_cli
from tests.cli.test_serve import serving

HTTPS = {"X-Forwarded-Proto": "https", "X-Forwarded-For": "203.0.113.7"}


@pytest.fixture
def store(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'tw.db'}"
    asyncio.run(populate(url, launches=()))
    return url


def sign_in(client: httpx.Client, headers: dict[str, str]) -> httpx.Response:
    return client.post("/api/session", json={"token": "op"}, headers=headers)


def cookie_of(response: httpx.Response) -> SimpleCookie:
    assert response.status_code == 200, response.text
    jar: SimpleCookie = SimpleCookie()
    jar.load(response.headers["set-cookie"])
    return jar


def test_https_from_a_trusted_proxy_gets_a_secure_cookie_and_its_origin(store: str) -> None:
    """By default the loopback proxy's X-Forwarded-Proto is believed: the cookie is Secure,
    the https origin is the server's own, and the plain http one is another site."""
    with (
        serving("--store", store, "--token", "op:operator", "--session-max-age", "600") as served,
        served.client() as client,
    ):
        host = httpx.URL(served.url).netloc.decode()
        answer = sign_in(client, {**HTTPS, "Origin": f"https://{host}"})
        assert answer.json() == {"role": "operator", "expiresIn": 600}
        cookie = cookie_of(answer)["taskwarden_session"]
        assert cookie["secure"] is True and cookie["max-age"] == "600"
        refused = sign_in(client, {**HTTPS, "Origin": f"http://{host}"})
        assert refused.status_code == 403
        assert refused.json()["message"].startswith("cross-site request refused")
        plain = cookie_of(sign_in(client, {}))["taskwarden_session"]
        assert not plain["secure"]


@pytest.mark.parametrize("options", [["--forwarded-allow-ips", "10.9.8.7"], ["--no-proxy-headers"]])
def test_forwarded_headers_from_anyone_else_are_ignored(store: str, options: list[str]) -> None:
    """From a client that is not an allowed proxy, X-Forwarded-Proto changes nothing: no
    Secure cookie, and the https origin it claims is not the server's."""
    with (
        serving("--store", store, "--token", "op:operator", *options) as served,
        served.client() as client,
    ):
        cookie = cookie_of(sign_in(client, HTTPS))["taskwarden_session"]
        assert not cookie["secure"]
        host = httpx.URL(served.url).netloc.decode()
        assert sign_in(client, {**HTTPS, "Origin": f"https://{host}"}).status_code == 403


def test_a_root_path_scopes_the_cookie_for_a_proxy_that_strips_the_prefix(store: str) -> None:
    """With --root-path /ops/tw the proxy sends /api/... (prefix stripped): the cookie's
    Path is the prefix, and the dashboard and the API answer."""
    with (
        serving("--store", store, "--token", "op:operator", "--root-path", "/ops/tw/") as served,
        served.client() as client,
    ):
        assert "for a proxy that serves it at /ops/tw/" in served.stderr.lines[0]
        cookie = cookie_of(sign_in(client, {}))["taskwarden_session"]
        assert cookie["path"] == "/ops/tw"
        page = client.get("/")
        assert page.status_code == 200 and "static/app.js" in page.text
        client.cookies.clear()
        client.cookies.set("taskwarden_session", cookie.value)
        assert client.get("/api/whoami").json() == {"role": "operator", "via": "session"}


def test_root_path_is_normalised_or_refused() -> None:
    assert root_path("") == "" and root_path("/") == ""
    assert root_path("/ops/tw/") == "/ops/tw"
    for bad in ("ops", "/a b", "/x?y=1", "/x#y"):
        with pytest.raises(CommandError, match="not a path prefix"):
            root_path(bad)


@pytest.mark.parametrize(
    ("options", "says"),
    [
        (["--root-path", "taskwarden"], "not a path prefix"),
        (["--session-max-age", "0"], "positive number of seconds"),
        (["--session-max-age", "soon"], "number of seconds"),
    ],
)
def test_bad_proxy_options_are_usage_errors(tmp_path: Path, options: list[str], says: str) -> None:
    done = run_cli("serve", "--demo", *options, store=f"sqlite:///{tmp_path / 'tw.db'}")
    assert_clean_failure(done, 2)
    assert says in done.stderr
