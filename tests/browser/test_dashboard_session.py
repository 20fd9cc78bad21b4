"""Signing in to the dashboard in a real browser: the form posts the token to
``api/session``, the server sets an HttpOnly cookie the page cannot read, ``api/whoami``
gives the role, and "Sign out" clears the cookie and shows the form again."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import threading
from collections.abc import Coroutine, Iterator
from concurrent.futures import Future
from typing import Any, TypeVar

import pytest
import uvicorn

from taskwarden.api import create_app
from taskwarden.api.signing import SESSION_COOKIE
from taskwarden.processes import ProcessRecord
from taskwarden.stores.memory import MemoryStore

pytestmark = pytest.mark.browser

T = TypeVar("T")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
OPERATOR, VIEWER = "steer-5d1c0e", "look-93ab27"


class ServedApp:
    """The service over a memory store with two tokens, on a loopback port, in a thread
    with its own event loop."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.server: uvicorn.Server | None = None
        self.serving: asyncio.Task[None] | None = None

    def call(self, coro: Coroutine[Any, Any, T]) -> T:
        future: Future[T] = asyncio.run_coroutine_threadsafe(coro, self.loop)
        return future.result(timeout=30)

    async def start(self) -> int:
        self.store = MemoryStore()
        await self.store.open()
        await self.store.create(ProcessRecord(process_id="report", name="Report"))
        self.app = create_app(
            self.store, tokens={OPERATOR: "operator", VIEWER: "viewer"}, coalesce=0.05
        )
        self.server = uvicorn.Server(uvicorn.Config(self.app, log_level="warning"))
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        self.serving = asyncio.create_task(self.server.serve(sockets=[sock]))
        async with asyncio.timeout(10):
            while not self.server.started:  # noqa: ASYNC110 - uvicorn offers no event
                await asyncio.sleep(0.01)
        return port

    async def stop(self) -> None:
        await self.app.state.taskwarden.feed.close()
        if self.server is not None and self.serving is not None:
            self.server.should_exit = True
            await self.serving
        await self.store.close()

    def close(self) -> None:
        try:
            self.call(self.stop())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(timeout=10)
            self.loop.close()


@pytest.fixture
def port() -> Iterator[int]:
    served = ServedApp()
    try:
        yield served.call(served.start())
    finally:
        served.close()


@pytest.fixture
def browser() -> Iterator[Any]:
    if CHROMIUM is None or CHROMEDRIVER is None:
        if os.environ.get("CI") == "true":
            pytest.fail("chromium and chromium-driver are needed (apt-get install them)")
        pytest.skip("chromium and chromium-driver are not installed")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def test_sign_in_with_a_wrong_then_the_right_token_and_sign_out(port: int, browser: Any) -> None:
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.wait import WebDriverWait

    wait = WebDriverWait(browser, 15, ignored_exceptions=(StaleElementReferenceException,))

    def shown(element_id: str) -> bool:
        return bool(browser.find_element(By.ID, element_id).is_displayed())

    def text_of(selector: str) -> str:
        return str(browser.find_element(By.CSS_SELECTOR, selector).text)

    def sign_in(token: str) -> None:
        field = browser.find_element(By.ID, "token")
        field.clear()
        field.send_keys(token)
        browser.find_element(By.CSS_SELECTOR, "#login-form button[type=submit]").click()

    browser.get(f"http://127.0.0.1:{port}/")
    wait.until(lambda _: shown("login"))
    assert not shown("sign-out")
    assert browser.find_elements(By.CSS_SELECTOR, "#rows tr") == []

    sign_in("not-the-token")
    wait.until(lambda _: "not one this server accepts" in text_of("#login-result"))
    assert shown("login")
    assert not any(c["name"] == SESSION_COOKIE for c in browser.get_cookies())

    sign_in(OPERATOR)
    wait.until(lambda _: not shown("login"))
    wait.until(lambda _: text_of("#connection") == "connected")
    wait.until(lambda _: len(browser.find_elements(By.CSS_SELECTOR, "#rows tr")) == 1)
    wait.until(lambda _: shown("sign-out"))
    assert "read-only" not in str(browser.find_element(By.TAG_NAME, "body").get_attribute("class"))
    assert text_of("#login-result") == ""
    (cookie,) = [c for c in browser.get_cookies() if c["name"] == SESSION_COOKIE]
    assert cookie["httpOnly"] is True and cookie["sameSite"] == "Strict"
    assert OPERATOR not in cookie["value"]
    # The page's script cannot read the session, let alone the token.
    assert browser.execute_script("return document.cookie") == ""

    browser.find_element(By.ID, "sign-out").click()
    wait.until(lambda _: shown("login"))
    wait.until(lambda _: not any(c["name"] == SESSION_COOKIE for c in browser.get_cookies()))
    assert not shown("sign-out")
    browser.refresh()  # and a reload stays signed out
    wait.until(lambda _: shown("login"))


def test_a_viewer_signs_in_without_the_controls(port: int, browser: Any) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.wait import WebDriverWait

    wait = WebDriverWait(browser, 15)
    browser.get(f"http://127.0.0.1:{port}/")
    wait.until(lambda _: browser.find_element(By.ID, "login").is_displayed())
    browser.find_element(By.ID, "token").send_keys(VIEWER)
    browser.find_element(By.CSS_SELECTOR, "#login-form button[type=submit]").click()
    wait.until(lambda _: browser.find_element(By.ID, "connection").text == "connected")
    wait.until(lambda _: browser.find_element(By.ID, "sign-out").is_displayed())
    body = browser.find_element(By.TAG_NAME, "body")
    assert "read-only" in str(body.get_attribute("class"))
    assert not browser.find_element(By.ID, "resync").is_displayed()
