"""``taskwarden launch | cancel | dismiss | workers`` as subprocesses, with a real worker
process serving the store (SQLite file and PostgreSQL), and the CLI holding no definitions:
single, group (``--group``) and bulk (filters) cancels, and ``ps --sort``."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from typing import Any

import pexpect  # type: ignore[import-untyped]  # no stubs are installed
import pytest

from taskwarden import Application
from taskwarden.engine import ProcessContext, TaskInstance
from taskwarden.processes import ProcessRecord, ProcessState
from taskwarden.stores import open_store
from tests.cli.support import (
    BOUND,
    ROOT,
    assert_clean_failure,
    cli_env,
    populate,
    run_cli,
    run_json,
)
from tests.store_support import (
    postgres_database,  # noqa: F401 (a fixture, found by name)
    temporary_database,
)

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
        for table in ("processes", "runs", "schema_version", "workers", "scope_ids", "scopes"):
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


# ---------------------------------------------------------------- cancel --group
async def _leaf(ctx: ProcessContext) -> None:
    ctx.report_progress(10, "waiting")
    await ctx.wait_cancelled()


async def _branch(ctx: ProcessContext) -> None:
    await ctx.run_child(_leaf, f"{ctx.process_id}/x", "leaf x")


async def _tree(ctx: ProcessContext) -> None:
    async with ctx.parallel_group(max_concurrency=2) as group:
        await group.spawn(_branch, f"{ctx.process_id}/a", "branch a")
        await group.spawn(_leaf, f"{ctx.process_id}/b", "leaf b")


async def _tree_tasks(services: dict[str, Any]) -> list[TaskInstance]:
    return [TaskInstance(execute=_tree, process_id=f"tree-{n}", name=f"Tree {n}") for n in range(5)]


tree_application = Application(_tree_tasks)
"""What ``taskwarden worker --app tests.cli.test_control:tree_application`` serves:
``tree-N`` runs ``tree-N/a`` (which runs ``tree-N/a/x``) and ``tree-N/b``, all waiting
until cancelled."""


def _members(root: str) -> list[str]:
    return [root, f"{root}/a", f"{root}/b", f"{root}/a/x"]


@pytest.fixture(
    scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def tree_store(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """A store of its own served by ``taskwarden worker --app ...:tree_application``."""
    with contextlib.ExitStack() as stack:
        if request.param == "sqlite":
            url = f"sqlite:///{tmp_path_factory.mktemp('trees') / 'tw.db'}"
        else:
            server = request.getfixturevalue("postgres_server_url")
            url = stack.enter_context(temporary_database(server, "tw_trees"))
        asyncio.run(_create(url))
        log = stack.enter_context((tmp_path_factory.mktemp("tree-worker") / "w.log").open("wb"))
        app = "tests.cli.test_control:tree_application"
        options = ["--store", url, "--lease", "1.5", "--drain", "0.5"]
        proc = subprocess.Popen(
            [sys.executable, "-m", "taskwarden", "worker", "--app", app, *options],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=log,
            env=cli_env(),
        )
        try:
            asyncio.run(_until_served(url, "tree-0"))
            yield url
        finally:
            proc.kill()
            proc.wait(timeout=10)


async def _create(url: str) -> None:
    async with open_store(url):
        pass  # opening makes the file and the tables


async def _until_served(url: str, process_id: str) -> None:
    async with open_store(url) as store, asyncio.timeout(BOUND):
        while True:
            if any(process_id in w.process_ids for w in await store.list_workers()):
                return
            await asyncio.sleep(0.05)


def _wait_states(store: str, ids: list[str], *states: str) -> None:
    async def wait() -> None:
        async with open_store(store) as opened, asyncio.timeout(BOUND):
            while True:
                records = [await opened.get(pid) for pid in ids]
                if all(r is not None and r.state in states for r in records):
                    return
                await asyncio.sleep(0.02)

    asyncio.run(wait())


def test_cancel_group_wait_follows_the_whole_tree_to_cancelled(tree_store: str) -> None:
    """The root's cancel is recorded (its reason in the log) and the worker stops the
    whole tree; --wait returns once no process of the group is active, and, as for a
    single cancel, exits 1 because the root did not end done."""
    run_json("launch", "tree-1", store=tree_store)
    _wait_states(tree_store, _members("tree-1"), "running")
    done = run_cli(
        "cancel",
        "tree-1",
        "--group",
        "--wait",
        "--reason",
        "wrong shard",
        "--json",
        store=tree_store,
    )
    assert done.returncode == 1, done.stderr
    document = json.loads(done.stdout)
    assert set(document) == {"root", "changed", "group"}
    assert document["root"]["processId"] == "tree-1"
    assert document["root"]["status"]["state"] == "cancelled"
    assert document["root"]["status"]["error"] is None
    assert "cancel requested: wrong shard (by cli)" in [
        e["message"] for e in document["root"]["log"]
    ]
    assert [d["processId"] for d in document["changed"]] == ["tree-1"]
    assert document["changed"][0]["status"]["state"] == "cancelled"
    assert document["group"] == [  # the root first, then store order
        {"processId": pid, "state": "cancelled"} for pid in _members("tree-1")
    ]


def test_cancel_group_in_human_form_and_its_refusals(tree_store: str) -> None:
    """Without --wait it says what was recorded and that the rest stops with it; a group
    with nothing left to cancel exits 1 with the reason; an unknown id exits 3; --group
    without an ID is a usage error."""
    run_json("launch", "tree-2", store=tree_store)
    _wait_states(tree_store, _members("tree-2"), "running")
    done = run_cli("cancel", "tree-2", "--group", store=tree_store)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["cancel requested for tree-2: cancel_requested"]
    assert "cancel recorded for 1 of the 4 processes of the group of 'tree-2'" in done.stderr
    _wait_states(tree_store, _members("tree-2"), "cancelled")
    again = run_cli("cancel", "tree-2", "--group", store=tree_store)
    assert_clean_failure(again, 1)
    assert "refused (not-cancellable)" in again.stderr and "cancelled" in again.stderr
    assert_clean_failure(run_cli("cancel", "ghost", "--group", store=tree_store), 3)
    usage = run_cli("cancel", "--group", store=tree_store)
    assert_clean_failure(usage, 2)
    assert "--group needs the ID" in usage.stderr


# ---------------------------------------------------------------- bulk cancel by filter
def _run_stdin(
    *args: str, store: str, answer: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the CLI with stdin a pipe (not a terminal), holding ``answer`` if given."""
    return subprocess.run(
        [sys.executable, "-m", "taskwarden", *args, "--store", store],
        input=answer or "",
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=cli_env(),
        timeout=60,
        check=False,
    )


async def _queue(url: str, batch: str, ids: list[str], **fields: Any) -> None:
    """Records nobody serves, launched (scheduled), with ``metadata={"batch": batch}``."""
    from taskwarden.worker.client import launch

    async with open_store(url) as store:
        for process_id in ids:
            await store.create(
                ProcessRecord(
                    process_id=process_id, name=process_id, metadata={"batch": batch}, **fields
                )
            )
            await launch(store, process_id)


def _states(url: str, ids: list[str]) -> dict[str, str]:
    async def read() -> dict[str, str]:
        async with open_store(url) as store:
            return {pid: str((await store.get(pid)).state) for pid in ids}  # type: ignore[union-attr]

    return asyncio.run(read())


def test_bulk_cancel_refuses_bad_forms_and_unconfirmed_runs_and_changes_nothing(
    fleet_store: str,
) -> None:
    """No ID and no filter, an ID with filters, --wait with filters, a state that cannot
    be cancelled: usage errors (2). Filters off a terminal without --yes: exit 1 with the
    count and what to pass. The matching records stay scheduled."""
    ids = ["nightly-1", "nightly-2"]
    asyncio.run(_queue(fleet_store, "nightly", ids))
    for args, message in [
        ((), "give the ID of a process to cancel, or filters"),
        (("nightly-1", "--state", "scheduled"), "not both"),
        (("--metadata", "batch=nightly", "--wait"), "--wait follows one process"),
        (("--state", "done,failed"), "matches nothing to cancel"),
        (("--state", "sideways"), "unknown state"),
    ]:
        done = run_cli("cancel", *args, store=fleet_store)
        assert_clean_failure(done, 2)
        assert message in done.stderr, (args, done.stderr)
    unconfirmed = _run_stdin("cancel", "--metadata", "batch=nightly", store=fleet_store)
    assert_clean_failure(unconfirmed, 1)
    assert "refused (confirmation-needed): 2 processes match; pass --yes" in unconfirmed.stderr
    assert _states(fleet_store, ids) == {pid: "scheduled" for pid in ids}


def test_bulk_cancel_with_yes_cancels_the_matches_and_reports_refusals(
    fleet_store: str,
) -> None:
    """--json prints {matched, cancelled, refused}; a match defined cancellable=False is
    refused (exit 1) and left alone, as are records that do not match every filter."""
    asyncio.run(_queue(fleet_store, "weekly", ["weekly-1", "weekly-2"]))
    asyncio.run(_queue(fleet_store, "weekly", ["weekly-locked"], cancellable=False))
    asyncio.run(_queue(fleet_store, "monthly", ["monthly-1"]))
    done = run_cli(
        "cancel",
        "--metadata",
        "batch=weekly",
        "--state",
        "scheduled",
        "--yes",
        "--json",
        "--reason",
        "holiday",
        store=fleet_store,
    )
    assert done.returncode == 1, done.stderr
    document = json.loads(done.stdout)
    assert document == {
        "matched": 3,
        "cancelled": ["weekly-1", "weekly-2"],
        "refused": [
            {
                "processId": "weekly-locked",
                "reason": "not-cancellable",
                "message": "process 'weekly-locked' is defined with cancellable=False",
            }
        ],
    }
    assert _states(fleet_store, ["weekly-1", "weekly-2", "weekly-locked", "monthly-1"]) == {
        "weekly-1": "cancelled",
        "weekly-2": "cancelled",
        "weekly-locked": "scheduled",
        "monthly-1": "scheduled",
    }
    human = run_cli("cancel", "--metadata", "batch=monthly", "-y", store=fleet_store)
    assert human.returncode == 0, human.stderr
    assert human.stdout.splitlines() == ["cancelled monthly-1"]
    assert "1 of 1 matching processes cancelled" in human.stderr
    nothing = run_json("cancel", "--metadata", "batch=monthly", "--yes", store=fleet_store)
    assert nothing == {"matched": 0, "cancelled": [], "refused": []}


def test_bulk_cancel_asks_on_a_terminal_naming_the_count(fleet_store: str) -> None:
    """On a terminal it asks "Cancel N processes? [y/N]": no cancels nothing (exit 1),
    yes cancels them."""
    ids = ["tty-1", "tty-2", "tty-3"]
    asyncio.run(_queue(fleet_store, "tty", ids))
    for answer, code, state in (("n", 1, "scheduled"), ("y", 0, "cancelled")):
        child = pexpect.spawn(
            sys.executable,
            ["-m", "taskwarden", "cancel", "--metadata", "batch=tty", "--store", fleet_store],
            cwd=str(ROOT),
            env=cli_env(),
            encoding="utf-8",
            timeout=BOUND,
        )
        try:
            child.expect_exact("Cancel 3 processes? [y/N] ")
            child.sendline(answer)
            child.expect(pexpect.EOF)
        finally:
            child.close()
        assert child.exitstatus == code, child.before
        assert _states(fleet_store, ids) == {pid: state for pid in ids}
        if code:
            assert "refused (not-confirmed): nothing was cancelled" in str(child.before)


def test_bulk_cancel_reaches_running_processes_on_the_worker(fleet_store: str) -> None:
    """--state running with --root takes one running tree only; its worker ends it
    cancelled, and the other running process goes on."""
    for process_id in ("fail-30", "fail-31"):
        run_json("launch", process_id, store=fleet_store)
    _wait_state(fleet_store, "fail-30", "running")
    _wait_state(fleet_store, "fail-31", "running")
    document = run_json(
        "cancel", "--state", "running", "--root", "fail-30", "--yes", store=fleet_store
    )
    assert document == {"matched": 1, "cancelled": ["fail-30"], "refused": []}
    _wait_state(fleet_store, "fail-30", "cancelled")
    assert _states(fleet_store, ["fail-31"]) == {"fail-31": "running"}
    run_cli("cancel", "fail-31", store=fleet_store)


# ---------------------------------------------------------------- ps --sort
@pytest.fixture(
    scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def populated(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """A store of its own, filled by a real engine (``tests.cli.support.populate``)."""
    with contextlib.ExitStack() as stack:
        if request.param == "sqlite":
            url = f"sqlite:///{tmp_path_factory.mktemp('sorted') / 'tw.db'}"
        else:
            server = request.getfixturevalue("postgres_server_url")
            url = stack.enter_context(temporary_database(server, "tw_sorted"))
        asyncio.run(populate(url))
        yield url


def test_ps_sort_orders_the_page_by_a_field_either_way(populated: str) -> None:
    """--sort=FIELD and --sort=-FIELD order the page; the next page's cursor is still
    the store order's; an unknown field is a usage error."""
    by_name = run_json("ps", "--sort", "name", store=populated)
    names = [item["name"] for item in by_name["items"]]
    assert names == sorted(names) and len(names) == 7
    newest = run_json("ps", "--sort=-created", store=populated)
    created = [item["createdAt"] for item in newest["items"]]
    assert created == sorted(created, reverse=True)
    by_state = run_json("ps", "--sort=state", store=populated)
    states = [item["status"]["state"] for item in by_state["items"]]
    assert states == ["idle", "done", "done", "done", "done", "failed", "failed"]
    paged = run_json("ps", "--sort=-id", "--limit", "3", store=populated)
    assert [i["processId"] for i in paged["items"]] == ["report", "ingest", "broken"]
    assert paged["nextCursor"] == "0:0:report"  # the page's last record in store order
    human = run_cli("ps", "--sort=-id", "--limit", "3", store=populated)
    assert human.returncode == 0, human.stderr
    rows = [line.split()[0] for line in human.stdout.splitlines()[2:] if line.strip()]
    assert rows == ["report", "ingest", "broken"]
    bad = run_cli("ps", "--sort", "colour", store=populated)
    assert_clean_failure(bad, 2)
    assert "unknown sort field 'colour'" in bad.stderr and "--sort=-updated" in bad.stderr
