"""``taskwarden launch | cancel | dismiss | workers`` as subprocesses, with a real worker
process serving the store (SQLite file and PostgreSQL), and the CLI holding no definitions."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator

import pytest

from taskwarden.processes import ProcessRecord, ProcessState
from taskwarden.stores import open_store
from tests.cli.support import ROOT, assert_clean_failure, cli_env, run_cli, run_json
from tests.store_support import postgres_database  # noqa: F401 (a fixture, found by name)

S = ProcessState


@pytest.fixture(
    scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def fleet_store(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """A store served by one worker process (``tests/fleet/worker_proc.py``), plus a
    ``warned`` process that nobody serves."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('control') / 'tw.db'}"
    else:
        base = request.getfixturevalue("postgres_database")
        url = base
    prefix = "taskwarden"
    if request.param == "postgres":
        # The module's database is shared by both params' runs: a fresh namespace each.
        asyncio.run(_drop_prefix(url, prefix))
    log = (tmp_path_factory.mktemp("worker") / "worker.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.fleet.worker_proc", url, prefix],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=log,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().startswith(b"ready ")
        asyncio.run(_add_warned(url))
        yield url
    finally:
        proc.kill()
        proc.wait(timeout=10)
        if proc.stdout is not None:
            proc.stdout.close()
        log.close()


async def _drop_prefix(url: str, prefix: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(url)
    try:
        for table in ("processes", "runs", "schema_version", "workers"):
            await conn.execute(f"DROP TABLE IF EXISTS {prefix}_{table}")
    finally:
        await conn.close()


async def _add_warned(url: str) -> None:
    async with open_store(url) as store:
        if await store.get("warned") is None:
            await store.create(
                ProcessRecord(process_id="warned", name="Warned", warning="deletes everything")
            )


def test_launch_wait_follows_a_run_on_the_worker_to_done(fleet_store: str) -> None:
    """Launched from a process with no definitions, run by the worker; --wait exits 0 on
    done and --json prints the final document."""
    document = run_json("launch", "quick-1", "--wait", "--interval", "0.05", store=fleet_store)
    assert document["processId"] == "quick-1"
    assert document["status"]["state"] == "done"
    assert document["progress"]["message"] == "done"
    human = run_cli("launch", "quick-2", "--wait", store=fleet_store)
    assert human.returncode == 0, human.stderr
    assert human.stdout.strip() == "quick-2: done"


def test_cancel_reaches_the_run_on_the_worker_and_wait_exits_1(fleet_store: str) -> None:
    """A running process is cancelled on the worker that holds it (found at its renewal,
    no bus); --wait ends when it is cancelled, with exit code 1 (not done)."""
    launched = run_json("launch", "fail-3", store=fleet_store)
    assert launched["status"]["state"] == "scheduled"
    _wait_state(fleet_store, "fail-3", "running")
    done = run_cli(
        "cancel", "fail-3", "--reason", "wrong input", "--wait", "--json", store=fleet_store
    )
    assert done.returncode == 1, done.stderr
    final = json.loads(done.stdout)
    assert final["status"]["state"] == "cancelled"
    messages = [entry["message"] for entry in final["log"]]
    assert "cancel requested: wrong input (by cli)" in messages


def test_refusals_exit_1_with_the_reason_and_unknown_ids_exit_3(fleet_store: str) -> None:
    run_json("launch", "quick-3", "--wait", store=fleet_store)
    refused = run_cli("cancel", "quick-3", store=fleet_store)
    assert_clean_failure(refused, 1)
    assert "refused (not-cancellable)" in refused.stderr and "done" in refused.stderr
    run_json("launch", "fail-4", store=fleet_store)
    again = run_cli("launch", "fail-4", store=fleet_store)
    assert_clean_failure(again, 1)
    assert "refused (invalid-state)" in again.stderr
    run_cli("cancel", "fail-4", store=fleet_store)
    assert_clean_failure(run_cli("launch", "nope", store=fleet_store), 3)
    assert_clean_failure(run_cli("cancel", "nope", store=fleet_store), 3)
    assert_clean_failure(run_cli("dismiss", "nope", store=fleet_store), 3)


def test_a_warning_needs_yes_and_an_unserved_launch_says_so(fleet_store: str) -> None:
    """Off a terminal a task's warning refuses without --yes; with it, the launch is
    queued and the CLI says no live worker serves it; a queued launch cancels at once."""
    refused = run_cli("launch", "warned", store=fleet_store)
    assert_clean_failure(refused, 1)
    assert "confirmation-needed" in refused.stderr and "deletes everything" in refused.stderr
    queued = run_cli("launch", "warned", "--yes", store=fleet_store)
    assert queued.returncode == 0, queued.stderr
    assert "launched warned: scheduled" in queued.stdout
    assert "no live worker serves 'warned'" in queued.stderr
    cancelled = run_json("cancel", "warned", store=fleet_store)
    assert cancelled["status"]["state"] == "cancelled"
    idle = run_json("dismiss", "warned", store=fleet_store)
    assert idle["status"]["state"] == "idle" and idle["status"]["stoppedAt"] is None
    assert_clean_failure(run_cli("dismiss", "warned", store=fleet_store), 1)


def test_workers_lists_the_live_worker_in_both_forms(fleet_store: str) -> None:
    [worker] = run_json("workers", store=fleet_store)
    assert worker["status"] == "ok" and worker["secondsSince"] < 30
    assert worker["pid"] > 0 and worker["concurrency"] == 10
    assert "quick-1" in worker["processIds"] and worker["incarnation"].count(":") == 2
    for key in ("name", "host", "startedAt", "renewedAt", "runs"):
        assert key in worker
    human = run_cli("workers", store=fleet_store)
    assert human.returncode == 0, human.stderr
    header, row = human.stdout.splitlines()[:2]
    assert header.split()[:4] == ["NAME", "STATUS", "RENEWED", "HOST"]
    assert " ok " in f" {row} "


def test_an_unreachable_bus_exits_69(fleet_store: str) -> None:
    done = run_cli(
        "launch",
        "quick-9",
        store=fleet_store,
        env=cli_env(TASKWARDEN_BUS=f"redis://127.0.0.1:1/{uuid.uuid4().int % 16}"),
    )
    assert_clean_failure(done, 69)
    assert "cannot reach the bus" in done.stderr


def _wait_state(store: str, process_id: str, state: str) -> None:
    async def wait() -> None:
        async with open_store(store) as opened, asyncio.timeout(20):
            while True:
                record = await opened.get(process_id)
                if record is not None and record.state == state:
                    return
                await asyncio.sleep(0.02)

    asyncio.run(wait())


def test_help_lists_the_steering_commands() -> None:
    done = run_cli("--help")
    for command in ("launch", "cancel", "dismiss", "workers"):
        assert f"    {command} " in done.stdout
