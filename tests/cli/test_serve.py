"""``taskwarden serve`` as an OS process: it prints the dashboard URL, serves the API and
the streams, hosts an engine with ``--app`` / ``--demo`` or none, and stops on SIGTERM
within seconds with a stream open; bad options are clean failures with the CLI's codes."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from taskwarden.cli.common import CommandError
from taskwarden.cli.serve import parse_tokens
from tests.cli.support import (
    BOUND,
    ROOT,
    LineReader,
    assert_clean_failure,
    cli_env,
    populate,
    run_cli,
    run_json,
    stop,
)

STOP_BOUND = 5.0
"""Seconds a SIGTERM may take to stop the server, streams open or not."""
DEMO_PROCESSES = {"ingest", "report", "flaky", "cleanup", "reindex"}


@dataclass
class Served:
    proc: subprocess.Popen[str]
    url: str
    stderr: LineReader

    def client(self, token: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=BOUND)

    def terminate(self, times: int = 1) -> float:
        """Send SIGTERM ``times``; return the seconds until the process exited, asserting
        it exited 0 with no traceback."""
        began = time.monotonic()
        for _ in range(times):
            self.proc.send_signal(signal.SIGTERM)
        assert self.proc.wait(timeout=BOUND) == 0, self.stderr.lines
        elapsed = time.monotonic() - began
        assert not any("Traceback" in line for line in self.stderr.rest()), self.stderr.lines
        return elapsed


@contextmanager
def serving(*args: str) -> Iterator[Served]:
    """``taskwarden serve --port 0 ARGS`` until it answers /healthz; killed at the end."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "taskwarden", "serve", "--port", "0", *args],
        cwd=ROOT,
        env=cli_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None
        lines = LineReader(proc.stderr)
        announced = lines.wait_for(lambda line: "dashboard at http://" in line)
        match = re.search(r"http://\S+/", announced)
        assert match is not None, announced
        served = Served(proc, match.group(0), lines)
        _wait_healthy(served.url)
        yield served
    finally:
        stop(proc)


def _wait_healthy(url: str) -> None:
    deadline = time.monotonic() + BOUND
    while True:
        try:
            if httpx.get(f"{url}healthz", timeout=1.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, f"{url}healthz did not answer within {BOUND}s"
        time.sleep(0.05)


def _poll(client: httpx.Client, path: str, done: Any) -> Any:
    """GET ``path`` until ``done(document)`` holds, within :data:`BOUND` seconds."""
    deadline = time.monotonic() + BOUND
    while True:
        document = client.get(path).json()
        if done(document):
            return document
        assert time.monotonic() < deadline, f"{path} never got there: {document}"
        time.sleep(0.05)


def _frames(lines: Iterator[str]) -> Iterator[dict[str, str]]:
    """SSE frames as ``{field: value}`` (comments dropped), until the stream ends."""
    fields: dict[str, str] = {}
    for line in lines:
        if not line:
            if fields:
                yield fields
            fields = {}
        elif not line.startswith(":"):
            name, _, value = line.partition(":")
            fields[name] = value.removeprefix(" ")


@pytest.mark.slow
def test_serve_demo_lists_streams_and_stops_on_sigterm_with_a_stream_open(
    tmp_path: Path,
) -> None:
    """The demo serves its processes (some launched at start); SIGTERM ends an open
    stream with its shutdown frame and the server exits 0 within a few seconds."""
    with serving("--demo", "--store", f"sqlite:///{tmp_path / 'tw.db'}") as served:
        with served.client() as client:
            assert client.get("/readyz").json()["status"] == "ok"
            assert "<html" in client.get("/").text.lower()
            page = client.get("/api/processes", params={"limit": 100}).json()
            roots = {doc["processId"] for doc in page["items"] if doc["depth"] == 0}
            assert roots == DEMO_PROCESSES
            _poll(
                client,
                "/api/processes/ingest",
                lambda doc: doc["status"]["state"] in ("running", "done"),
            )
            with client.stream("GET", "/api/processes/stream") as response:
                assert response.status_code == 200
                assert response.headers["content-type"].startswith("text/event-stream")
                frames = _frames(response.iter_lines())
                assert next(frames) == {"retry": "3000"}
                snapshot = next(frames)
                assert "id" in snapshot
                first = json.loads(snapshot["data"])
                assert first["type"] == "update"
                assert {doc["processId"] for doc in first["processes"]} >= DEMO_PROCESSES
                stopped_in = served.terminate()
                rest = [json.loads(f["data"]) for f in frames if "data" in f]
        assert rest and rest[-1] == {"type": "shutdown"}
        assert stopped_in < STOP_BOUND, stopped_in
        assert any("stopped in" in line for line in served.stderr.lines)


@pytest.mark.slow
def test_serve_app_hosts_an_engine_that_runs_api_and_cli_launches(tmp_path: Path) -> None:
    """With --app the server's embedded worker runs a launch from the API and one from
    another process (the CLI), and appears among the workers."""
    store = f"sqlite:///{tmp_path / 'tw.db'}"
    with serving("--app", "tests.cli.serve_app:application", "--store", store) as served:
        assert "an engine for tests.cli.serve_app:application" in served.stderr.lines[0]
        with served.client() as client:
            launched = client.post("/api/processes/greet/launch")
            assert launched.status_code == 200, launched.text
            done = _poll(
                client,
                "/api/processes/greet",
                lambda doc: doc["status"]["state"] == "done",
            )
            assert done["progress"]["message"] == "hello from serve"
            [worker] = client.get("/api/workers").json()["items"]
            assert worker["processIds"] == ["greet"] and worker["status"] == "ok"
        again = run_json("launch", "greet", "--wait", "--interval", "0.05", store=store)
        assert again["status"]["state"] == "done"
        # `timeout` and some supervisors signal twice: still a clean stop.
        assert served.terminate(times=2) < STOP_BOUND


@pytest.mark.slow
def test_serve_without_an_engine_reads_and_refuses_resync_with_no_engine(
    tmp_path: Path,
) -> None:
    """Without --app the server reads the store, checks tokens and roles, and refuses a
    resync with the reason no-engine (503): nothing in it has definitions."""
    store = f"sqlite:///{tmp_path / 'tw.db'}"
    asyncio.run(populate(store, launches=("report",)))
    with serving("--store", store, "--token", "op:operator", "--token", "view:viewer") as served:
        assert "no engine" in served.stderr.lines[0]
        with served.client() as anonymous:
            assert anonymous.get("/api/processes").status_code == 401
            assert anonymous.get("/healthz").status_code == 200
        with served.client("view") as viewer:
            page = viewer.get("/api/processes").json()
            assert "report" in {doc["processId"] for doc in page["items"]}
            assert viewer.post("/api/processes/resync").status_code == 403
        with served.client("op") as operator:
            refused = operator.post("/api/processes/resync")
            assert refused.status_code == 503
            assert refused.json()["reason"] == "no-engine"
        assert served.terminate() < STOP_BOUND


@pytest.mark.parametrize(
    ("app", "says"),
    [
        ("tests.cli.serve_app:missing", "has no attribute 'missing'"),
        ("nonsense", "PKG.MODULE:ATTR"),
        ("tests.cli.nowhere:application", "cannot be imported"),
        ("tests.cli.serve_app:plain_function", "Application("),
    ],
)
def test_a_bad_app_is_a_usage_error_that_says_what_is_wrong(
    tmp_path: Path, app: str, says: str
) -> None:
    done = run_cli("serve", "--app", app, "--port", "0", store=f"sqlite:///{tmp_path / 'tw.db'}")
    assert_clean_failure(done, 2)
    assert says in done.stderr
    assert not (tmp_path / "tw.db").exists()


@pytest.mark.parametrize(
    ("options", "says"),
    [
        (["--demo", "--app", "tests.cli.serve_app:application"], "exclusive"),
        (["--token", "s3cret:admin"], "'viewer' or 'operator'"),
        (["--demo", "--host", "0.0.0.0"], "without a token"),
        (["--demo", "--port", "70000"], "0..65535"),
    ],
)
def test_bad_options_are_usage_errors(tmp_path: Path, options: list[str], says: str) -> None:
    done = run_cli("serve", *options, store=f"sqlite:///{tmp_path / 'tw.db'}")
    assert_clean_failure(done, 2)
    assert says in done.stderr


def test_a_port_in_use_is_a_usage_error_naming_the_port(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        done = run_cli("serve", "--demo", "--port", port, store=f"sqlite:///{tmp_path / 'x.db'}")
    assert_clean_failure(done, 2)
    assert f"127.0.0.1:{port}" in done.stderr and "--port" in done.stderr


def test_an_unreachable_store_exits_69(tmp_path: Path) -> None:
    """A pure client refuses a SQLite file that does not exist; a demo whose store cannot
    be opened says so; both exit 69 with no traceback."""
    missing = run_cli("serve", "--port", "0", store=f"sqlite:///{tmp_path / 'none.db'}")
    assert_clean_failure(missing, 69)
    assert "does not exist" in missing.stderr
    nowhere = f"sqlite:///{tmp_path / 'no' / 'such' / 'folder' / 'tw.db'}"
    unreachable = run_cli("serve", "--demo", "--port", "0", store=nowhere)
    assert_clean_failure(unreachable, 69)
    assert "cannot reach the store" in unreachable.stderr


def test_tokens_come_from_options_and_the_environment() -> None:
    env = {"TASKWARDEN_TOKEN": "env-op", "TASKWARDEN_VIEWER_TOKEN": "env-view"}
    tokens = parse_tokens(["a:b:viewer", "x:operator"], env)
    assert tokens == {
        "env-op": "operator",
        "env-view": "viewer",
        "a:b": "viewer",
        "x": "operator",
    }
    with pytest.raises(CommandError) as caught:
        parse_tokens(["no-role"], {})
    assert caught.value.code == 2
