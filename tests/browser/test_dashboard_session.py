"""Signing in to the dashboard in a real browser: the form posts the token to
``api/session``, the server sets an HttpOnly cookie the page cannot read, ``api/whoami``
gives the role, and "Sign out" clears the cookie and shows the form again."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from taskwarden.api import create_app
from taskwarden.api.signing import SESSION_COOKIE
from taskwarden.processes import ProcessRecord
from taskwarden.stores.memory import MemoryStore
from tests.browser.served import ServedLoop

pytestmark = pytest.mark.browser

OPERATOR, VIEWER = "steer-5d1c0e", "look-93ab27"


class ServedApp(ServedLoop):
    """The service over a memory store with two tokens, on a loopback port, in a thread
    with its own event loop."""

    async def start(self) -> int:
        self.store = MemoryStore()
        await self.store.open()
        await self.store.create(ProcessRecord(process_id="report", name="Report"))
        self.app = create_app(
            self.store, tokens={OPERATOR: "operator", VIEWER: "viewer"}, coalesce=0.05
        )
        return await self.serve(self.app)

    async def stop(self) -> None:
        await self.app.state.taskwarden.feed.close()
        await self.stop_serving()
        await self.store.close()


@pytest.fixture
def port() -> Iterator[int]:
    served = ServedApp()
    try:
        yield served.call(served.start())
    finally:
        served.close()


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
