"""Helpers for the CLI tests: run ``taskwarden`` as a subprocess, fill a store with a real
engine, and read a child's output lines against a deadline."""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any

from taskwarden.engine import Engine, ProcessContext, TaskInstance
from taskwarden.registry import OperationRegistry

ROOT = Path(__file__).resolve().parents[2]
BOUND = 20.0
"""Seconds any single wait on a child process may take before the test fails."""


def cli_env(**extra: str) -> dict[str, str]:
    """The environment of a CLI subprocess: no inherited store, a wide plain console."""
    env = {k: v for k, v in os.environ.items() if k not in ("TASKWARDEN_STORE", "NO_COLOR")}
    env["COLUMNS"] = "220"
    env["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(ROOT / "src"), str(ROOT), env.get("PYTHONPATH")])
    )
    env.update(extra)
    return env


def run_cli(
    *args: str,
    store: str | None = None,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m taskwarden ARGS [--store STORE]`` to its end and capture its output."""
    command = [sys.executable, "-m", "taskwarden", *args]
    if store is not None:
        command += ["--store", store]
    return subprocess.run(
        command,
        capture_output=True,
        text=True,
        cwd=cwd or ROOT,
        env=env if env is not None else cli_env(),
        timeout=60,
        check=False,
    )


def run_json(*args: str, store: str) -> Any:
    """Run a command with ``--json``; assert it succeeded and printed only JSON."""
    done = run_cli(*args, "--json", store=store)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    return json.loads(done.stdout)


def assert_clean_failure(done: subprocess.CompletedProcess[str], code: int) -> None:
    """The command failed with ``code``, a message on stderr, nothing on stdout and no
    traceback."""
    assert done.returncode == code, (done.returncode, done.stdout, done.stderr)
    assert "Traceback" not in done.stderr
    assert done.stderr.strip()
    assert done.stdout == ""


class LineReader:
    """Collects a child's stream line by line in a thread, so a test can wait for a line
    with a deadline instead of sleeping."""

    def __init__(self, stream: IO[str]) -> None:
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._thread = threading.Thread(target=self._pump, args=(stream,), daemon=True)
        self._thread.start()

    def _pump(self, stream: IO[str]) -> None:
        try:
            for line in stream:
                self._queue.put(line.rstrip("\n"))
        except (ValueError, OSError):  # closed by stop() while reading: the end
            pass
        self._queue.put(None)

    def wait_for(self, predicate: Callable[[str], bool], timeout: float = BOUND) -> str:
        """The first line (read so far or next) for which ``predicate`` holds."""
        for line in self.lines:
            if predicate(line):
                return line
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no matching line within {timeout}s; got {self.lines}")
            try:
                item = self._queue.get(timeout=remaining)
            except queue.Empty:
                continue
            if item is None:
                raise AssertionError(f"the stream ended without a matching line: {self.lines}")
            self.lines.append(item)
            if predicate(item):
                return item

    def rest(self, timeout: float = BOUND) -> list[str]:
        """Every line, once the stream has ended."""
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "the stream did not end"
        while True:
            line = self._queue.get_nowait()
            if line is None:
                return self.lines
            self.lines.append(line)


def stop(proc: subprocess.Popen[str]) -> None:
    """Kill a child process if it still runs, reap it, and close its pipes."""
    if proc.poll() is None:
        proc.kill()
    proc.wait(timeout=BOUND)
    for stream in (proc.stdin, proc.stdout, proc.stderr):
        if stream is not None:
            stream.close()


# -- the records the command tests read ----------------------------------------------


async def _report(ctx: ProcessContext) -> None:
    ctx.log("info", "collecting figures")
    ctx.report_progress(50, "half way")
    ctx.log("warning", "slow disk", {"disk": "sda"})
    ctx.report_progress(100, "report ready")


async def _broken(ctx: ProcessContext) -> None:
    ctx.report_progress(30, "copying")
    raise RuntimeError("disk full: free space on /data")


async def _leaf(ctx: ProcessContext) -> None:
    ctx.log("info", f"{ctx.process_id} loading")
    ctx.report_progress(100, f"{ctx.process_id} loaded")


async def _bad_leaf(ctx: ProcessContext) -> None:
    ctx.log("error", "row 7 is malformed")
    raise ValueError("bad row 7")


async def _shard_a(ctx: ProcessContext) -> None:
    await ctx.run_child(_leaf, "ingest/a/x", "Part X")
    ctx.report_progress(100, "shard a loaded")


async def _ingest(ctx: ProcessContext) -> None:
    ctx.log("info", "ingest starting")
    await ctx.run_child(_shard_a, "ingest/a", "Shard A")
    await ctx.run_child(_bad_leaf, "ingest/b", "Shard B", survive_failure=True)
    ctx.report_progress(100, "ingest finished")


async def _sweep(ctx: ProcessContext) -> None:
    ctx.report_progress(100, "swept")


TASKS = [
    TaskInstance(
        execute=_report,
        process_id="report",
        name="Monthly report",
        metadata={"team": "finance", "tier": 1},
    ),
    TaskInstance(
        execute=_broken,
        process_id="broken",
        name="Broken copy",
        metadata={"team": "ops", "tier": 2, "urgent": True},
    ),
    TaskInstance(
        execute=_ingest,
        process_id="ingest",
        name="Nightly ingest",
        metadata={"team": "data", "tier": 2},
    ),
    TaskInstance(
        execute=_sweep,
        process_id="housekeeping",
        name="Housekeeping",
        special=True,
        metadata={"team": "ops"},
    ),
    TaskInstance(
        execute=_sweep,
        process_id="waiting",
        name="Never run",
        metadata={"team": "data", "ratio": 0.5},
    ),
]
VISIBLE = ["broken", "ingest", "report", "waiting", "ingest/a", "ingest/b", "ingest/a/x"]
"""The non-special processes in store order (depth, order, id)."""


LAUNCHES = ("report", "report", "broken", "ingest", "housekeeping")


async def populate(url: str, launches: Sequence[str] = LAUNCHES) -> None:
    """Fill the store at ``url`` with a real engine: report done twice (with progress, a
    warning and data), broken failed, ingest done with a failed child and a grandchild,
    housekeeping special and done, waiting never launched (idle)."""

    async def definitions(services: object) -> list[TaskInstance]:
        return list(TASKS)

    engine = Engine(
        url,
        get_task_definitions=definitions,
        registry=OperationRegistry(),
        progress_flush_interval=0.0,
        engine_id="populating-engine",
    )
    await engine.init()
    try:
        for process_id in launches:
            await engine.launch_and_wait(process_id)
    finally:
        await engine.shutdown(timeout=5.0)
