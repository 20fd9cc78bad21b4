"""``taskwarden logs ID``: the log and the merged subtree log, as lines or entry
documents; ``--follow`` streaming a run that progresses in another OS process, as lines or
JSON lines, ending with the run or with Ctrl-C (exit 0, no traceback)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.cli.support import (
    BOUND,
    ROOT,
    LineReader,
    assert_clean_failure,
    cli_env,
    run_cli,
    run_json,
    stop,
)
from tests.store_support import temporary_database

FOLLOW = [sys.executable, "-m", "taskwarden", "logs"]


def test_logs_prints_the_process_log_oldest_first(store: str) -> None:
    done = run_cli("logs", "report", store=store)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert [line.split(None, 2)[1:] for line in lines][:1] == [["info", "collecting figures"]]
    warning = next(line for line in lines if "slow disk" in line)
    assert warning.split()[1] == "warning" and warning.endswith('slow disk {"disk": "sda"}')
    assert lines[-1].endswith("report ready")
    stamps = [line.split()[0] for line in lines]
    assert stamps == sorted(stamps)


def test_logs_json_is_the_list_of_entry_documents(store: str) -> None:
    entries = run_json("logs", "report", store=store)
    [report] = [p for p in run_json("ps", store=store)["items"] if p["processId"] == "report"]
    assert entries == report["log"]
    warning = next(entry for entry in entries if entry["message"] == "slow disk")
    assert warning["level"] == "warning" and warning["data"] == {"disk": "sda"}
    assert set(entries[0]) == {"timestamp", "level", "message"}


def test_logs_tree_merges_the_subtree_log_with_process_labels(store: str) -> None:
    entries = run_json("logs", "ingest", "--tree", store=store)
    assert [(entry["processId"], entry["message"]) for entry in entries] == [
        ("ingest", "ingest starting"),
        ("ingest/a/x", "ingest/a/x loading"),
        ("ingest/a/x", "ingest/a/x loaded"),
        ("ingest/a", "shard a loaded"),
        ("ingest/b", "row 7 is malformed"),
        ("ingest", "ingest finished"),
    ]
    assert entries[1]["processLabel"] == "Part X"
    assert [entry["timestamp"] for entry in entries] == sorted(e["timestamp"] for e in entries)
    human = run_cli("logs", "ingest", "--tree", store=store)
    assert human.returncode == 0, human.stderr
    malformed = next(line for line in human.stdout.splitlines() if "malformed" in line)
    assert malformed.split(None, 2)[1:] == ["error", "[Shard B] row 7 is malformed"]
    own = run_json("logs", "ingest", store=store)
    assert [entry["message"] for entry in own] == ["ingest starting", "ingest finished"]


def test_logs_of_an_empty_log_and_of_an_unknown_process(store: str) -> None:
    assert run_json("logs", "waiting", store=store) == []
    empty = run_cli("logs", "waiting", store=store)
    assert empty.returncode == 0 and empty.stdout == ""
    assert "the log is empty" in empty.stderr
    missing = run_cli("logs", "nope", "--follow", store=store)
    assert_clean_failure(missing, 3)
    assert "no process 'nope'" in missing.stderr
    assert_clean_failure(run_cli("logs", "report", "-f", "--interval", "0", store=store), 2)


def test_follow_of_an_ended_process_prints_its_log_and_exits(store: str) -> None:
    done = run_cli("logs", "broken", "-f", "--json", store=store)
    assert done.returncode == 0, done.stderr
    [entry] = [json.loads(line) for line in done.stdout.splitlines()]
    assert entry["message"] == "copying"


@pytest.fixture
def sigint_delivered() -> Iterator[None]:
    """Let the child hear SIGINT. A shell starts a background job (``cmd &`` without job
    control, as some CI runners do) with SIGINT ignored, an ignored signal stays ignored
    across exec, and Python then neither raises KeyboardInterrupt nor lets asyncio catch
    it: the CLI would rightly keep running. A handled signal is reset to the default at
    exec, so handling it here gives the child an ordinary Ctrl-C."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


@pytest.mark.usefixtures("sigint_delivered")
def test_ctrl_c_ends_a_follow_with_exit_0_and_no_traceback(store: str) -> None:
    follow = subprocess.Popen(
        [*FOLLOW, "waiting", "-f", "--interval", "0.05", "--store", store],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env=cli_env(),
    )
    try:
        assert follow.stderr is not None
        errors = LineReader(follow.stderr)
        errors.wait_for(lambda line: line.startswith("following 'waiting'"))
        follow.send_signal(signal.SIGINT)
        assert follow.wait(timeout=BOUND) == 0
        assert "Traceback" not in "\n".join(errors.rest())
    finally:
        stop(follow)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def fresh_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty store of its own for the following engine."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'follow.db'}"
        return
    with temporary_database(request.getfixturevalue("postgres_server_url"), "tw_follow") as url:
        yield url


@pytest.mark.parametrize("as_json", [False, True], ids=["lines", "json-lines"])
def test_follow_streams_a_run_progressing_in_another_process(
    fresh_store: str, tmp_path: Path, as_json: bool
) -> None:
    gates = tmp_path / "gates"
    gates.mkdir()
    engine = subprocess.Popen(
        [sys.executable, "-m", "tests.cli.follow_engine_proc", fresh_store, str(gates)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env=cli_env(),
    )
    follow: subprocess.Popen[str] | None = None
    try:
        assert engine.stdout is not None
        LineReader(engine.stdout).wait_for(lambda line: line == "running follow-engine")
        [running] = run_json("ps", "--state", "scheduled,running", store=fresh_store)["items"]
        assert running["processId"] == "stream"
        follow = subprocess.Popen(
            [*FOLLOW, "stream", "-f", "--interval", "0.05", "--store", fresh_store]
            + (["--json"] if as_json else []),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
            env=cli_env(),
        )
        assert follow.stdout is not None
        out = LineReader(follow.stdout)

        def message(line: str) -> str:
            if as_json:
                entry = json.loads(line)
                assert set(entry) >= {"timestamp", "level", "message"}
                return str(entry["message"])
            return line.split(None, 2)[2]

        def starts(text: str) -> Callable[[str], bool]:
            return lambda line: message(line).startswith(text)

        out.wait_for(starts("step 1"))
        # The run is held at gate 1: while it waits, the worker is shown and nothing of
        # step 2 can have been printed.
        [held] = run_json("ps", "--state", "running", store=fresh_store)["items"]
        assert held["leaseOwner"] == "follow-engine"
        assert held["progress"] == {"percent": 25.0, "message": "at step 1"}
        assert not any("step 2" in line for line in out.lines)
        for step in (1, 2, 3):
            (gates / f"go-{step}").touch()
            following = f"step {step + 1}" if step < 3 else "all steps done"
            out.wait_for(starts(following))
        assert follow.wait(timeout=BOUND) == 0
        messages = [message(line) for line in out.rest()]
        steps = [m for m in messages if m.startswith("step") or m == "all steps done"]
        assert [m.split(" {")[0] for m in steps] == ["step 1", "step 2", "step 3", "all steps done"]
        if as_json:
            data = [json.loads(line).get("data") for line in out.lines]
            assert [d for d in data if d] == [{"step": 1}, {"step": 2}, {"step": 3}]
        assert len(out.lines) == len(set(out.lines))  # no entry printed twice
        assert engine.wait(timeout=BOUND) == 0
    finally:
        if follow is not None:
            stop(follow)
        stop(engine)
