"""Every python block of docs/processes.md runs as written (so the guide cannot drift)."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import pytest

from taskwarden.registry import OperationRegistry

GUIDE = Path(__file__).resolve().parents[2] / "docs" / "processes.md"
BLOCKS = re.findall(r"```python\n(.*?)```", GUIDE.read_text(encoding="utf-8"), re.DOTALL)


@pytest.mark.parametrize("number", range(len(BLOCKS)))
def test_process_guide_example_runs(number: int) -> None:
    previous = OperationRegistry._instance
    OperationRegistry.set_instance(OperationRegistry())
    try:
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            exec(compile(BLOCKS[number], f"processes.md[{number}]", "exec"), {"__name__": "ex"})
    finally:
        OperationRegistry.set_instance(previous)
    assert "Traceback" not in out.getvalue()
