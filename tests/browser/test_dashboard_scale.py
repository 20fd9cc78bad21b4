"""The dashboard over 10,000 processes: a page at a time, live, and quick to first render."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from taskwarden.processes import ProcessRecord, ProcessState
from taskwarden.stores import open_store
from tests.browser.test_dashboard import ServedEngine

pytestmark = pytest.mark.browser

ROOTS = 2_500  # each with three children: 10,000 records, and the engine's own four

# Installed before the page's script: when the list first shows rows, in ms since the
# navigation started (the browser's own clock, not the test's polling).
TIME_FIRST_ROWS = """
new MutationObserver((_, observer) => {
  const rows = document.getElementById("rows");
  if (rows && rows.children.length) {
    window.__firstRows = performance.now();
    observer.disconnect();
  }
}).observe(document, { childList: true, subtree: true });
"""


async def _seed(url: str) -> None:
    # Ad hoc: the engine's start-up resync keeps them (it removes undefined processes).
    async with open_store(url) as store:
        for i in range(ROOTS):
            root = f"batch-{i:05d}"
            state = ProcessState.FAILED if i % 50 == 0 else ProcessState.IDLE
            await store.create(
                ProcessRecord(process_id=root, name=f"Batch {i}", state=state, adhoc=True)
            )
            for c in range(3):
                await store.create(
                    ProcessRecord(
                        process_id=f"{root}.c{c}",
                        name=f"Part {c}",
                        parent_id=root,
                        root_id=root,
                        depth=1,
                        order=c,
                        adhoc=True,
                    )
                )


@pytest.fixture
def crowded(tmp_path: Path) -> Iterator[tuple[ServedEngine, int]]:
    url = f"sqlite:///{tmp_path / 'crowded.db'}"
    asyncio.run(_seed(url))
    served = ServedEngine(url)
    try:
        port = served.call(served.start())
        yield served, port
    finally:
        served.close()


def test_ten_thousand_processes_load_a_page_at_a_time_and_stay_live(
    crowded: tuple[ServedEngine, int], browser: Any
) -> None:
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.wait import WebDriverWait

    served, port = crowded
    wait = WebDriverWait(browser, 20, ignored_exceptions=(StaleElementReferenceException,))

    def text_of(selector: str) -> str:
        return str(browser.find_element(By.CSS_SELECTOR, selector).text)

    def row_ids() -> list[str]:
        # One script, so a re-render between finding the rows and reading them is harmless.
        ids: list[str] = browser.execute_script(
            "return [...document.querySelectorAll('#rows tr')].map((row) => row.dataset.id);"
        )
        return ids

    browser.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": TIME_FIRST_ROWS})
    browser.get(f"http://127.0.0.1:{port}/")
    wait.until(lambda _: len(row_ids()) == 50)
    first_render = browser.execute_script("return window.__firstRows;")
    paint = browser.execute_script(
        "const p = performance.getEntriesByName('first-contentful-paint')[0];"
        "return p ? p.startTime : null;"
    )
    total = ROOTS + 4  # roots only: the seeded batches and the engine's four definitions
    assert text_of("#page-info") == f"page 1 of {-(-total // 50)} · {total} processes"
    wait.until(lambda _: "idle 9954" in text_of('#counts [data-state="idle"]').replace("\n", " "))
    assert text_of("#failures") == "50"

    # What the page read: one page of the list, never the whole store.
    reads = browser.execute_script(
        "return performance.getEntriesByType('resource')"
        ".filter((e) => e.name.includes('api/processes'))"
        ".map((e) => [e.name, e.transferSize]);"
    )
    assert reads and all("limit=50" in name for name, _ in reads), reads
    assert all(size < 200_000 for _, size in reads), reads
    loaded = browser.execute_script(
        "return performance.getEntriesByType('resource')"
        ".filter((e) => !e.name.includes('api/'))"
        ".reduce((n, e) => n + e.transferSize, performance.getEntriesByType('navigation')[0]"
        ".transferSize);"
    )
    print(
        f"\n10,000 processes: first contentful paint "
        f"{'n/a' if paint is None else f'{paint:.0f}'} ms, first rows "
        f"{first_render:.0f} ms after navigation; page and assets {loaded:,} bytes, "
        f"list page {reads[0][1]:,} bytes"
    )

    # Pages walk forward and back by cursor.
    first_page = row_ids()
    browser.find_element(By.ID, "next").click()
    wait.until(lambda _: text_of("#page-info").startswith("page 2 of"))
    wait.until(lambda _: row_ids() != first_page and len(row_ids()) == 50)
    assert not set(row_ids()) & set(first_page)
    second_page = row_ids()

    # A change to a row on the page shows in place, written by another writer of the store.
    shown, neighbour = second_page[7], second_page[8]
    browser.execute_script(
        "window.__kept = document.querySelector(`#rows tr[data-id='${arguments[0]}']`);",
        neighbour,
    )
    served.call(served.engine.store.update_progress(shown, 40, "moving along"))
    wait.until(lambda _: "moving along" in text_of(f'#rows tr[data-id="{shown}"]'))
    assert row_ids() == second_page  # nothing moved under the reader
    # Only the changed row was drawn again: its neighbour is the same element.
    assert browser.execute_script("return window.__kept.isConnected;") is True

    browser.find_element(By.ID, "prev").click()
    wait.until(lambda _: row_ids() == first_page)

    # The server filters: a search and the state, over every page.
    search = browser.find_element(By.ID, "search")
    search.send_keys("batch-01234")
    wait.until(lambda _: row_ids() == ["batch-01234"])
    browser.find_element(By.CSS_SELECTOR, "#show-children").click()
    wait.until(lambda _: len(row_ids()) == 4)
    search.send_keys(Keys.CONTROL, "a")
    search.send_keys(Keys.BACKSPACE)  # clear() sends no input event
    browser.find_element(By.CSS_SELECTOR, "#show-children").click()
    browser.find_element(By.CSS_SELECTOR, '#state-filter option[value="failed"]').click()
    wait.until(lambda _: text_of("#page-info") == "page 1 of 1 · 50 processes")
