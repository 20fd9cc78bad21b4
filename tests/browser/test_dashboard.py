"""The dashboard in a real browser: Debian's Chromium, driven by Selenium, on loopback."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from taskwarden.api import create_app
from taskwarden.engine import Engine, ProcessContext
from tests.browser.served import ServedLoop
from tests.engine_support import definitions, task

pytestmark = pytest.mark.browser


async def report(ctx: ProcessContext) -> None:
    ctx.log("info", "report starts")

    async def part(child: ProcessContext) -> None:
        child.report_progress(100, "part written")

    await ctx.run_child(part, "report.part1", "Part one")
    ctx.report_progress(50, "half way")
    gate: asyncio.Event = ctx.services["gate"]
    await gate.wait()


async def broken(ctx: ProcessContext) -> None:
    raise RuntimeError("the disk is full")


async def risky(ctx: ProcessContext) -> None:
    gate: asyncio.Event = ctx.services["gate"]
    await gate.wait()


WARNING = "This drops the search index & rebuilds it <for hours>"

# Installed before the page's own script: records every EventSource the page makes, and
# the most it ever had open at once (CONNECTING and OPEN count; CLOSED ones do not).
COUNT_EVENT_SOURCES = """
(() => {
  const Native = window.EventSource;
  const made = [];
  const open = () => made.filter((s) => s.readyState !== Native.CLOSED).length;
  window.__streams = { urls: [], maxOpen: 0, open };
  window.EventSource = class extends Native {
    constructor(url, init) {
      super(url, init);
      made.push(this);
      window.__streams.urls.push(String(url));
      window.__streams.maxOpen = Math.max(window.__streams.maxOpen, open());
    }
  };
})();
"""


class ServedEngine(ServedLoop):
    """An engine and the service on a loopback port, in a thread with its own loop."""

    def __init__(self, store_url: str) -> None:
        super().__init__()
        self.store_url = store_url

    async def start(self) -> int:
        self.gate = asyncio.Event()
        self.engine = Engine(
            self.store_url,
            get_task_definitions=definitions(
                task("report", report),
                task("broken", broken),
                task("idle-one"),
                task("risky", risky, warning=WARNING),
            ),
            services={"gate": self.gate},
            progress_flush_interval=0.0,
        )
        await self.engine.init()
        self.app = create_app(self.engine.store, engine=self.engine, coalesce=0.05)
        return await self.serve(self.app)

    async def stop(self) -> None:
        self.gate.set()
        await self.app.state.taskwarden.feed.close()
        await self.stop_serving()
        await self.engine.shutdown(timeout=5)

    async def subscribers(self) -> int:
        """How many streams the service's change feed is serving."""
        count: int = self.app.state.taskwarden.feed.subscribers
        return count

    async def state(self, process_id: str) -> str:
        """The process's state in the store."""
        record = await self.engine.store.get(process_id)
        assert record is not None
        return str(record.state)


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[ServedEngine, int]]:
    served = ServedEngine(f"sqlite:///{tmp_path / 'dash.db'}")
    try:
        port = served.call(served.start())
        yield served, port
    finally:
        served.close()


def test_the_dashboard_shows_and_steers_live_processes(
    served: tuple[ServedEngine, int], browser: Any
) -> None:
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.wait import WebDriverWait

    engine_host, port = served
    # A frame re-renders the rows: an element found just before may be gone when read.
    wait = WebDriverWait(browser, 15, ignored_exceptions=(StaleElementReferenceException,))
    browser.get(f"http://127.0.0.1:{port}/")

    def text_of(selector: str) -> str:
        return str(browser.find_element(By.CSS_SELECTOR, selector).text)

    def state_of(process_id: str) -> str:
        return text_of(f'#rows tr[data-id="{process_id}"] .state')

    def click_row(process_id: str) -> None:
        # Found afresh until the click lands: a frame may re-render the rows in between.
        wait.until(
            lambda _: (
                browser.find_element(By.CSS_SELECTOR, f'#rows tr[data-id="{process_id}"]').click()
                or True
            )
        )

    wait.until(lambda _: text_of("#connection") == "connected")
    wait.until(lambda _: len(browser.find_elements(By.CSS_SELECTOR, "#rows tr")) == 4)
    assert state_of("report") == "idle"
    assert "idle 4" in text_of('#counts [data-state="idle"]').replace("\n", " ")

    # Launched elsewhere (here: the engine), the change arrives live.
    engine_host.call(engine_host.engine.launch("broken"))
    wait.until(lambda _: state_of("broken") == "failed")
    wait.until(lambda _: text_of("#failures") == "1")

    # Open a tree, launch from the page, watch progress, children and the log arrive.
    click_row("report")
    wait.until(ec.visibility_of_element_located((By.ID, "detail")))
    wait.until(lambda _: text_of("#detail-title") == "report")
    browser.find_element(By.ID, "launch").click()
    wait.until(lambda _: state_of("report") == "running")
    wait.until(lambda _: "half way" in text_of('#tree li[data-id="report"] .message'))
    wait.until(lambda _: "part written" in text_of('#tree li[data-id="report.part1"] .message'))
    wait.until(lambda _: "report starts" in text_of("#log"))
    bar = browser.find_element(By.CSS_SELECTOR, '#tree li[data-id="report"] progress')
    assert bar.get_attribute("value") == "50"

    # A refused command says why.
    browser.find_element(By.ID, "close-detail").click()
    click_row("idle-one")
    wait.until(lambda _: text_of("#detail-title") == "idle-one")
    browser.execute_script("document.getElementById('dismiss').disabled = false")
    browser.find_element(By.ID, "dismiss").click()
    wait.until(lambda _: "not-dismissable" in text_of("#command-result"))

    # Paused, the list holds still; resumed, it catches up.
    browser.find_element(By.ID, "pause").click()
    engine_host.call(engine_host.engine.cancel("report"))
    wait.until(lambda _: text_of("#pending") == "updates waiting")
    assert state_of("report") == "running"
    browser.find_element(By.ID, "pause").click()
    wait.until(lambda _: state_of("report") == "cancelled")

    # Filters: by state, and the children toggle.
    browser.find_element(By.CSS_SELECTOR, '#state-filter option[value="failed"]').click()
    wait.until(
        lambda _: (
            [r.get_attribute("data-id") for r in browser.find_elements(By.CSS_SELECTOR, "#rows tr")]
            == ["broken"]
        )
    )


def test_assets_are_served_from_the_package_and_others_are_not(
    served: tuple[ServedEngine, int],
) -> None:
    import httpx

    _, port = served
    base = f"http://127.0.0.1:{port}"
    page = httpx.get(f"{base}/")
    assert page.status_code == 200 and "static/app.js" in page.text
    script = httpx.get(f"{base}/static/app.js")
    assert script.headers["content-type"].startswith("text/javascript")
    assert "EventSource" in script.text
    assert httpx.get(f"{base}/static/../__init__.py").status_code == 404
    assert httpx.get(f"{base}/static/secret.txt").status_code == 404


def test_the_page_holds_one_event_stream_and_asks_before_risky_commands(
    served: tuple[ServedEngine, int], browser: Any
) -> None:
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.wait import WebDriverWait

    engine_host, port = served
    # A frame re-renders the rows: an element found just before may be gone when read.
    wait = WebDriverWait(browser, 15, ignored_exceptions=(StaleElementReferenceException,))
    browser.execute_cdp_cmd(
        "Page.addScriptToEvaluateOnNewDocument", {"source": COUNT_EVENT_SOURCES}
    )
    browser.get(f"http://127.0.0.1:{port}/")

    def text_of(selector: str) -> str:
        return str(browser.find_element(By.CSS_SELECTOR, selector).text)

    def state_of(process_id: str) -> str:
        return text_of(f'#rows tr[data-id="{process_id}"] .state')

    def click_row(process_id: str) -> None:
        # Found afresh until the click lands: a frame may re-render the rows in between.
        wait.until(
            lambda _: (
                browser.find_element(By.CSS_SELECTOR, f'#rows tr[data-id="{process_id}"]').click()
                or True
            )
        )

    def open_process(process_id: str) -> None:
        click_row(process_id)
        wait.until(lambda _: text_of("#detail-title") == process_id)

    wait.until(lambda _: text_of("#connection") == "connected")
    wait.until(lambda _: len(browser.find_elements(By.CSS_SELECTOR, "#rows tr")) == 4)

    # Looking at one process after another: the list and the tree share one stream.
    for process_id in ("report", "broken", "risky"):
        open_process(process_id)
    streams = browser.execute_script(
        "return {urls: __streams.urls, maxOpen: __streams.maxOpen, open: __streams.open()}"
    )
    assert streams["maxOpen"] == 1 and streams["open"] == 1
    assert streams["urls"] == [
        "api/stream?topic=changes",
        "api/stream?topic=changes&topic=tree%3Areport",
        "api/stream?topic=changes&topic=tree%3Abroken",
        "api/stream?topic=changes&topic=tree%3Arisky",
    ]
    resources = browser.execute_script(
        "return performance.getEntriesByType('resource').map((e) => e.name)"
    )
    # optio's own streams, one connection each, are never opened by the page.
    assert not [url for url in resources if "/processes/stream" in url or "/tree/stream" in url]
    wait.until(lambda _: engine_host.call(engine_host.subscribers()) == 1)

    # A process with a warning: the launch asks first, and a refusal sends nothing.
    assert text_of("#warning") == WARNING  # shown as text, and before any launch
    browser.find_element(By.ID, "launch").click()
    alert = wait.until(ec.alert_is_present())
    assert WARNING in alert.text and "Launch risky?" in alert.text
    alert.dismiss()
    wait.until(lambda _: text_of("#command-result") == "launch not sent: not confirmed")
    assert engine_host.call(engine_host.state("risky")) == "idle"
    browser.find_element(By.ID, "launch").click()
    wait.until(ec.alert_is_present()).accept()
    wait.until(lambda _: state_of("risky") == "running")
    assert text_of("#command-result") == ""

    # A cancel always asks.
    wait.until(ec.element_to_be_clickable((By.ID, "cancel"))).click()
    alert = wait.until(ec.alert_is_present())
    assert alert.text == "Cancel risky?"
    alert.dismiss()
    wait.until(lambda _: text_of("#command-result") == "cancel not sent: not confirmed")
    assert engine_host.call(engine_host.state("risky")) == "running"
    browser.find_element(By.ID, "cancel").click()
    wait.until(ec.alert_is_present()).accept()
    wait.until(lambda _: state_of("risky") == "cancelled")

    # A process without a warning launches at once: no dialog stands in the way.
    open_process("idle-one")
    assert not browser.find_element(By.ID, "warning").is_displayed()
    browser.find_element(By.ID, "launch").click()
    wait.until(lambda _: state_of("idle-one") == "done")
    assert browser.execute_script("return __streams.maxOpen") == 1
