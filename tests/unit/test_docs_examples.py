"""Code in the README, the docs and the docstrings runs, so it cannot drift."""

from __future__ import annotations

import contextlib
import doctest
import importlib
import io
import pkgutil
import re
from pathlib import Path

import pytest

import taskwarden

ROOT = Path(__file__).resolve().parents[2]
RUNNABLE_DOCS = [
    "README.md",
    "docs/quickstart.md",
    "docs/history.md",
    "docs/supervisor.md",
    "docs/stores.md",
    "docs/heartbeats.md",
    "docs/fleet.md",
    "docs/api.md",
]
BLOCK = re.compile(r"```python\n(.*?)```", re.DOTALL)
# A block right after this comment serves until stopped (it needs a real server or waits
# for ever), so the test cannot run it; it is still read by people, so it stays.
SKIP = "<!-- docs-test: skip -->"


def _blocks() -> list[tuple[str, int, str]]:
    found = []
    for doc in RUNNABLE_DOCS:
        text = (ROOT / doc).read_text(encoding="utf-8")
        for number, match in enumerate(BLOCK.finditer(text)):
            if text[: match.start()].rstrip().endswith(SKIP):
                continue
            found.append((doc, number, match.group(1)))
    return found


@pytest.mark.parametrize(("doc", "number", "code"), _blocks())
def test_documented_example_runs(doc: str, number: int, code: str) -> None:
    namespace: dict[str, object] = {"__name__": f"example_{number}"}
    with contextlib.redirect_stdout(io.StringIO()):
        exec(compile(code, f"{doc}[{number}]", "exec"), namespace)


def _modules() -> list[str]:
    names = []
    for info in pkgutil.walk_packages(taskwarden.__path__, "taskwarden."):
        if info.name.endswith("__main__"):
            continue
        names.append(info.name)
    return names


@pytest.mark.parametrize("module_name", _modules())
def test_docstring_examples_run(module_name: str) -> None:
    module = importlib.import_module(module_name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0
