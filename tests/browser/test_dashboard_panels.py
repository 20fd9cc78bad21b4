"""The dashboard's panels in a real browser, with real data: workers, history, the live
operations tree, supervised tasks, bulk cancel, the role, and escaping."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from taskwarden import Cancelable
from taskwarden.api import create_app
from taskwarden.engine import Engine, ProcessContext, TaskInstance
from taskwarden.model import WorkerRecord
from taskwarden.supervisor import Supervisor
from tests.browser.test_dashboard import ServedEngine
from tests.engine_support import definitions, task

pytestmark = pytest.mark.browser

XSS = "<img src=x onerror=alert(1)>"
XSS_ERROR = "<script>window.__pwned = 1</script> & <b>bold</b>"
PROCESS_IDS = ("slow", "broken", "xss", "bulk-a", "bulk-b")

# Installed before the page's own script: any alert() an injected tag could call is seen.
WATCH_ALERTS = "window.__alerts = []; window.alert = (m) => window.__alerts.push(String(m));"


async def slow(ctx: ProcessContext) -> None:
    ctx.report_progress(40, "crawling page 4")
    async with Cancelable(name="slow.fetch", kind="scope"):
        await ctx.wait_cancelled()


async def broken(ctx: ProcessContext) -> None:
    raise RuntimeError("the disk is full")


async def hostile(ctx: ProcessContext) -> None:
    raise ValueError(XSS_ERROR)


async def waits(ctx: ProcessContext) -> None:
    await ctx.wait_cancelled()


class ServedPanels(ServedEngine):
    """The service with two tokens, worker records, and optionally a supervisor."""

    def __init__(self, store_url: str, *, supervised: bool) -> None:
        super().__init__(store_url)
        self.supervised = supervised

    async def start(self) -> int:
        self.gate = asyncio.Event()
        self.engine = Engine(
            self.store_url,
            get_task_definitions=definitions(
                task("slow", slow),
                task("broken", broken),
                TaskInstance(execute=hostile, process_id="xss", name=XSS),
                task("bulk-a", waits),
                task("bulk-b", waits),
            ),
            progress_flush_interval=0.0,
            cancel_grace=0.5,
        )
        await self.engine.init()
        now = datetime.now(UTC)
        for name, renewed, served in (
            ("w-live", now, PROCESS_IDS),
            ("w-gone", now - timedelta(minutes=10), ()),
        ):
            await self.engine.store.put_worker(
                WorkerRecord(
                    incarnation=f"host:{len(name)}:{name}",
                    name=name,
                    host="host",
                    pid=len(name),
                    started_at=now - timedelta(hours=1),
                    renewed_at=renewed,
                    runs=0,
                    concurrency=4,
                    process_ids=served,
                )
            )
        supervisor = None
        if self.supervised:
            supervisor = Supervisor()
            supervisor.record_run("sync-users", 0.25)
            supervisor.record_run("sync-users", 0.5, RuntimeError("the directory timed out"))
        self.app = create_app(
            self.engine.store,
            engine=self.engine,
            coalesce=0.05,
            tokens={"op-token": "operator", "view-token": "viewer"},
            supervisor=supervisor,
        )
        return await self.serve(self.app)


def _serve(tmp_path: Path, *, supervised: bool) -> Iterator[tuple[ServedPanels, int]]:
    served = ServedPanels(f"sqlite:///{tmp_path / 'panels.db'}", supervised=supervised)
    try:
        port = served.call(served.start())
        yield served, port
    finally:
        served.close()


@pytest.fixture
def supervised(tmp_path: Path) -> Iterator[tuple[ServedPanels, int]]:
    yield from _serve(tmp_path, supervised=True)


@pytest.fixture
def unsupervised(tmp_path: Path) -> Iterator[tuple[ServedPanels, int]]:
    yield from _serve(tmp_path, supervised=False)


class Page:
    """The dashboard in the browser: signed in, with waits that ignore re-renders."""

    def __init__(self, browser: Any, port: int, token: str) -> None:
        from selenium.common.exceptions import (
            ElementClickInterceptedException,
            StaleElementReferenceException,
        )
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support.wait import WebDriverWait

        self.browser = browser
        self.by = By
        # Panels re-render on frames and polls: an element found just before may be gone.
        self.wait = WebDriverWait(
            browser,
            15,
            ignored_exceptions=(StaleElementReferenceException, ElementClickInterceptedException),
        )
        browser.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": WATCH_ALERTS})
        browser.get(f"http://127.0.0.1:{port}/")
        self.until(lambda: self.one("#login").is_displayed())
        self.one("#token").send_keys(token)
        self.one("#login-form button").click()
        self.until(lambda: self.text("#connection") == "connected")

    def scroll_to(self, selector: str) -> None:
        """Bring a panel into view: the operations are polled only while they show."""
        self.browser.execute_script("arguments[0].scrollIntoView()", self.one(selector))

    def one(self, selector: str) -> Any:
        return self.browser.find_element(self.by.CSS_SELECTOR, selector)

    def all(self, selector: str) -> list[Any]:
        return list(self.browser.find_elements(self.by.CSS_SELECTOR, selector))

    def text(self, selector: str) -> str:
        return str(self.one(selector).text)

    def until(self, condition: Callable[[], Any]) -> Any:
        return self.wait.until(lambda _: condition())

    def click(self, selector: str) -> None:
        """Found afresh until the click lands: a re-render may replace it in between."""
        self.until(lambda: self.one(selector).click() or True)

    def operation(self, name: str, status: str) -> str | None:
        """The id of the live operation shown with this name and status, if any."""
        found: str | None = self.browser.execute_script(
            """
            const item = [...document.querySelectorAll("#ops-tree li[data-op-id]")].find((li) =>
              li.querySelector(":scope > .node > b").textContent === arguments[0] &&
              li.querySelector(":scope > .node > .status").textContent === arguments[1]);
            return item ? item.dataset.opId : null;
            """,
            name,
            status,
        )
        return found

    def requested(self, path: str) -> bool:
        """Whether the page has had an answer from ``path``."""
        return bool(
            self.browser.execute_script(
                "return performance.getEntriesByType('resource')"
                ".some((e) => new URL(e.name).pathname === arguments[0])",
                path,
            )
        )

    def shown(self, selector: str) -> bool:
        found = self.all(selector)
        return bool(found) and bool(found[0].is_displayed())

    @contextlib.contextmanager
    def screenshot_on_failure(self, folder: Path) -> Iterator[None]:
        try:
            yield
        except BaseException:
            self.browser.save_screenshot(str(folder / "dashboard.png"))
            raise


def test_the_panels_show_workers_history_operations_and_supervised_tasks(
    supervised: tuple[ServedPanels, int], browser: Any, tmp_path: Path
) -> None:
    host, port = supervised
    page = Page(browser, port, "op-token")
    with page.screenshot_on_failure(tmp_path):
        # Workers: ok and stale, with when each was last seen.
        live = '#worker-rows tr[data-incarnation="host:6:w-live"]'
        gone = '#worker-rows tr[data-incarnation="host:6:w-gone"]'
        page.until(lambda: page.text(f"{live} .worker") == "ok")
        assert page.text(gone).startswith("w-gone") and page.text(f"{gone} .worker") == "stale"
        assert page.text(f"{live} .last-seen").endswith(" ago")
        assert "1 ok · 1 stale" in page.text("#workers-summary")

        # Supervised tasks: the server has a supervisor, so the panel shows its task.
        page.until(lambda: page.shown('#supervisor-rows tr[data-task="sync-users"]'))
        assert "the directory timed out" in page.text('#supervisor-rows tr[data-task="sync-users"]')

        # A failed run reaches the history and the overview; a click shows its traceback.
        host.call(host.engine.launch("broken"))
        row = "#history-rows tr:has(.status-failed)"
        page.until(lambda: "the disk is full" in page.text(row))
        assert "broken #1" in page.text(row)
        page.click(row)
        page.until(lambda: page.shown("#run-detail"))
        assert page.text("#run-error") == "RuntimeError: the disk is full"
        assert "Traceback (most recent call last)" in page.text("#run-traceback")
        assert 'raise RuntimeError("the disk is full")' in page.text("#run-traceback")
        page.until(lambda: "broken" in page.text("#recent-failures"))
        page.until(lambda: page.text("#throughput") == "1")

        # The live operations tree: the running process's scope, and the scope its code
        # opened below it, with progress.
        host.call(host.engine.launch("slow"))
        page.scroll_to("#operations")
        op_id = page.until(lambda: page.operation("slow", "running"))
        node = page.one(f'#ops-tree li[data-op-id="{op_id}"] > .node')
        assert "crawling page 4" in node.text and "process" in node.text
        assert node.find_element(page.by.CSS_SELECTOR, "progress").get_attribute("value") == "40"
        inner = page.until(lambda: page.operation("slow.fetch", "running"))
        assert page.all(f'#ops-tree li[data-op-id="{op_id}"] li[data-op-id="{inner}"]')
        # The worker records without a bus to reach them are listed as unreachable.
        assert "unreachable" in page.text('#ops-tree li[data-node="host:6:w-live"]')

        # Cancel the operation from the tree, with a reason.
        page.click(f'#ops-tree li[data-op-id="{op_id}"] > .node .op-cancel')
        page.until(lambda: page.one("#ask").is_displayed())
        assert "slow" in page.text("#ask-text") and page.one("#ask-reason").is_displayed()
        page.one("#ask-reason").send_keys("stuck on a lock")
        page.one("#ask-ok").click()
        page.until(lambda: page.text("#ops-result") == "cancel sent: slow")
        page.until(lambda: host.call(host.state("slow")) == "cancelled")
        cancelled = "#history-rows tr:has(.status-cancelled)"
        page.until(lambda: "stuck on a lock" in page.text(cancelled))
        page.until(lambda: not page.all(f'#ops-tree li[data-op-id="{op_id}"]'))

        # The history filters by process and status.
        page.one("#history-process").send_keys("broken\n")
        page.until(lambda: [r.text for r in page.all("#history-rows tr small")] == ["broken #1"])
        assert browser.execute_script("return window.__alerts") == []


def test_bulk_cancel_names_the_count_and_asks_for_a_reason(
    supervised: tuple[ServedPanels, int], browser: Any, tmp_path: Path
) -> None:
    host, port = supervised
    page = Page(browser, port, "op-token")
    with page.screenshot_on_failure(tmp_path):
        for process_id in ("bulk-a", "bulk-b"):
            host.call(host.engine.launch(process_id))
        page.one('#state-filter option[value="running"]').click()
        page.until(lambda: len(page.all("#rows tr")) == 2)

        # Declined: nothing is sent.
        page.click("#bulk-cancel")
        page.until(lambda: page.one("#ask").is_displayed())
        assert page.text("#ask-text").startswith("Cancel 2 running processes?")
        assert page.text("#ask-ok") == "Cancel 2 processes"
        page.one("#ask-cancel").click()
        page.until(lambda: page.text("#list-result") == "bulk cancel not sent: not confirmed")
        assert host.call(host.state("bulk-a")) == "running"

        # Confirmed with a reason: both are cancelled, and the reason is in their logs.
        page.click("#bulk-cancel")
        page.until(lambda: page.one("#ask").is_displayed())
        page.one("#ask-reason").send_keys("rollback")
        page.one("#ask-ok").click()
        page.until(lambda: page.text("#list-result") == "cancelled 2 of 2")
        page.until(
            lambda: {host.call(host.state(p)) for p in ("bulk-a", "bulk-b")} == {"cancelled"}
        )
        record = host.call(host.engine.store.get("bulk-a"))
        assert record is not None and any("rollback" in entry.message for entry in record.log)

        # A state that cannot be cancelled, or a search the route cannot filter by: off.
        page.one('#state-filter option[value="failed"]').click()
        page.until(lambda: not page.one("#bulk-cancel").is_enabled())
        page.one('#state-filter option[value=""]').click()
        page.until(lambda: page.one("#bulk-cancel").is_enabled())
        page.one("#search").send_keys("bulk")
        page.until(lambda: not page.one("#bulk-cancel").is_enabled())


def test_an_xss_name_and_error_render_as_text_everywhere(
    supervised: tuple[ServedPanels, int], browser: Any, tmp_path: Path
) -> None:
    host, port = supervised
    page = Page(browser, port, "op-token")
    with page.screenshot_on_failure(tmp_path):
        host.call(host.engine.launch("xss"))
        page.until(lambda: page.text('#rows tr[data-id="xss"] .state') == "failed")
        assert page.text('#rows tr[data-id="xss"] td').startswith(XSS)
        page.until(lambda: XSS_ERROR in page.text("#history-rows tr"))
        page.until(lambda: XSS_ERROR in page.text("#recent-failures"))
        page.click('#rows tr[data-id="xss"]')
        page.until(lambda: page.text("#detail-title") == XSS)
        page.until(lambda: XSS_ERROR in page.text("#tree"))
        page.click("#history-rows tr")
        page.until(lambda: page.text("#run-error") == f"ValueError: {XSS_ERROR}")
        assert not page.all("main img, main script")
        assert not [b for b in page.all("b") if b.text == "bold"]
        assert browser.execute_script("return [window.__alerts, window.__pwned]") == [[], None]


def test_a_viewer_sees_the_panels_without_controls_and_no_supervisor_panel(
    unsupervised: tuple[ServedPanels, int], browser: Any, tmp_path: Path
) -> None:
    host, port = unsupervised
    page = Page(browser, port, "view-token")
    with page.screenshot_on_failure(tmp_path):
        host.call(host.engine.launch("slow"))
        page.until(lambda: page.text('#rows tr[data-id="slow"] .state') == "running")
        page.until(lambda: page.shown('#worker-rows tr[data-incarnation="host:6:w-live"]'))
        page.scroll_to("#operations")
        page.until(lambda: page.all('#ops-tree li[data-node="local"] li[data-op-id]'))
        assert page.all("#ops-tree .op-cancel")  # drawn, but hidden from a viewer
        assert not any(button.is_displayed() for button in page.all("#ops-tree .op-cancel"))
        assert not page.shown("#bulk-cancel") and not page.shown("#resync")
        page.click('#rows tr[data-id="slow"]')
        page.until(lambda: page.text("#detail-title") == "slow")
        for control in ("#launch", "#cancel", "#dismiss", "#cancel-group"):
            assert not page.shown(control), control
        assert page.shown("#runs-of")
        # No supervisor in this server: its panel stays hidden.
        page.until(lambda: page.requested("/api/supervisor"))
        assert not page.shown("#supervisor")


def test_the_first_page_load_is_small_and_revalidates(
    unsupervised: tuple[ServedPanels, int],
) -> None:
    _, port = unsupervised
    base = f"http://127.0.0.1:{port}"
    page = httpx.get(f"{base}/")
    names = ["style.css", "app.js", "util.js", "history.js", "fleet.js"]
    for name in names:
        assert f"static/{name}" in page.text
    assets = [httpx.get(f"{base}/static/{name}") for name in names]
    assert all(asset.status_code == 200 for asset in assets)
    assert len(page.content) + sum(len(asset.content) for asset in assets) < 300_000
    again = httpx.get(f"{base}/static/app.js", headers={"If-None-Match": assets[1].headers["etag"]})
    assert again.status_code == 304 and again.content == b""
    assert httpx.get(f"{base}/static/__init__.py").status_code == 404
