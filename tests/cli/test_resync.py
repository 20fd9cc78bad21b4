"""``taskwarden resync`` as a subprocess on a real SQLite file and a real PostgreSQL
database: refused without the definitions, and with ``--app`` a report of what it
created, updated, recreated and removed, checked against the store."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from taskwarden import Application
from taskwarden.engine import ProcessContext, TaskInstance
from taskwarden.processes import ProcessRecord, ProcessState
from taskwarden.stores import open_store
from tests.cli.support import assert_clean_failure, cli_env, run_cli
from tests.store_support import temporary_database

APP = "tests.cli.test_resync:application"


async def _noop(ctx: ProcessContext) -> None:
    ctx.report_progress(100, "done")


def _task(process_id: str, **fields: Any) -> TaskInstance:
    fields.setdefault("name", process_id.title())
    return TaskInstance(execute=_noop, process_id=process_id, **fields)


async def _definitions(services: dict[str, Any]) -> list[TaskInstance]:
    """The definitions of the release named by ``$TW_RESYNC_RELEASE``."""
    release = os.environ.get("TW_RESYNC_RELEASE", "one")
    if release == "one":
        return [_task("alpha"), _task("beta"), _task("gamma", metadata={"team": "ops"})]
    if release == "two":
        return [
            _task("alpha", name="Alpha v2", warning="rewrites the index"),
            _task("beta"),
            _task("delta", metadata={"team": "ops"}),
        ]
    if release == "duplicate":
        return [_task("alpha"), _task("alpha")]
    raise RuntimeError("the configuration service is down")


application = Application(_definitions)
"""What ``--app tests.cli.test_resync:application`` loads."""


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty store of its own (the file or database exists, with no records)."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'tw.db'}"
        asyncio.run(_open(url))
        yield url
        return
    with temporary_database(request.getfixturevalue("postgres_server_url")) as url:
        asyncio.run(_open(url))
        yield url


async def _open(url: str, *records: ProcessRecord) -> None:
    async with open_store(url) as opened:
        for record in records:
            await opened.create(record)


def _resync(*args: str, store: str, release: str = "one") -> subprocess.CompletedProcess[str]:
    env = cli_env(TW_RESYNC_RELEASE=release)
    return run_cli("resync", "--app", APP, *args, store=store, env=env)


def _report(*args: str, store: str, release: str = "one") -> Any:
    done = _resync(*args, "--json", store=store, release=release)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def _records(url: str) -> dict[str, ProcessRecord]:
    async def read() -> dict[str, ProcessRecord]:
        async with open_store(url) as opened:
            return {record.process_id: record for record in await opened.list()}

    return asyncio.run(read())


def test_without_app_it_refuses_and_says_what_it_needs(tmp_path: Path) -> None:
    """Exit 1 with the reason no-engine and the two ways to get a resync; the store is
    not even opened (a missing SQLite file is not created)."""
    path = tmp_path / "never.db"
    done = run_cli("resync", "--clean", store=f"sqlite:///{path}")
    assert_clean_failure(done, 1)
    assert "refused (no-engine): a resync needs the task definitions" in done.stderr
    assert "--app PKG.MODULE:ATTR" in done.stderr and "POST /api/processes/resync" in done.stderr
    assert not path.exists()
    assert "    resync " in run_cli("--help").stdout


def test_a_bad_app_is_a_usage_error_and_a_missing_store_exit_69(tmp_path: Path) -> None:
    for reference, message in [
        ("no-colon", "is not of the form PKG.MODULE:ATTR"),
        ("tests.cli.nope:application", "cannot be imported"),
        ("tests.cli.test_resync:missing", "has no attribute 'missing'"),
        ("tests.cli.test_resync:APP", "names a str, not a taskwarden.Application"),
    ]:
        done = run_cli("resync", "--app", reference, store=f"sqlite:///{tmp_path / 'x.db'}")
        assert_clean_failure(done, 2)
        assert message in done.stderr, (reference, done.stderr)
    missing = _resync(store=f"sqlite:///{tmp_path / 'absent.db'}")
    assert_clean_failure(missing, 69)
    assert "there is no store" in missing.stderr
    refused = _resync(store="postgresql://postgres@127.0.0.1:1/none")
    assert_clean_failure(refused, 69)
    assert "cannot open the store" in refused.stderr


def test_resync_creates_then_updates_and_keeps_what_it_does_not_define(store: str) -> None:
    """A first resync creates a record per definition; a new release updates the changed
    definitions (naming the fields), creates the new one, and keeps the one it dropped
    unless --prune."""
    first = _report(store=store)
    assert first == {
        "clean": False,
        "prune": False,
        "created": ["alpha", "beta", "gamma"],
        "updated": [],
        "recreated": [],
        "removed": [],
        "unchanged": 0,
    }
    second = _report(store=store, release="two")
    assert second["created"] == ["delta"]
    assert second["updated"] == [{"processId": "alpha", "fields": ["name", "warning"]}]
    assert second["removed"] == [] and second["unchanged"] == 2  # beta, and gamma kept
    records = _records(store)
    assert records["alpha"].name == "Alpha v2"
    assert records["alpha"].warning == "rewrites the index"
    assert set(records) == {"alpha", "beta", "gamma", "delta"}
    pruned = _report("--prune", store=store, release="two")
    assert pruned["removed"] == ["gamma"] and pruned["unchanged"] == 3 and pruned["prune"]
    assert set(_records(store)) == {"alpha", "beta", "delta"}
    human = _resync(store=store, release="two")
    assert human.returncode == 0, human.stderr
    assert human.stdout == ""
    assert f"{APP}: 0 created, 0 updated, 0 recreated, 0 removed, 3 unchanged" in human.stderr


def test_clean_rebuilds_inactive_records_and_leaves_active_ones(store: str) -> None:
    """--clean deletes every record that is not active and creates it again from the
    definitions (recreated), removes the ones no definition declares, and leaves a
    running process alone; human output names each."""
    _report(store=store)
    asyncio.run(
        _open(store, ProcessRecord(process_id="busy", name="Busy", state=ProcessState.RUNNING))
    )
    done = _resync("--clean", store=store, release="two")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines == [
        "created    delta",
        "recreated  alpha",
        "recreated  beta",
        "removed    gamma",
    ]
    assert "1 created, 0 updated, 2 recreated, 1 removed, 1 unchanged" in done.stderr
    records = _records(store)
    assert set(records) == {"alpha", "beta", "delta", "busy"}
    assert records["busy"].state is ProcessState.RUNNING
    assert records["alpha"].name == "Alpha v2"


def test_metadata_limits_the_resync_to_matching_definitions(store: str) -> None:
    _report(store=store)
    scoped = _report("--metadata", "team=ops", store=store, release="two")
    assert scoped["created"] == ["delta"] and scoped["updated"] == []
    assert _records(store)["alpha"].name == "Alpha"  # outside the filter: not updated


def test_definitions_that_fail_refuse_with_the_reason_and_change_nothing(store: str) -> None:
    _report(store=store)
    before = _records(store)
    broken = _resync(store=store, release="down")
    assert_clean_failure(broken, 1)
    assert "refused (definitions-failed)" in broken.stderr
    assert "RuntimeError: the configuration service is down; nothing was changed" in broken.stderr
    duplicate = _resync(store=store, release="duplicate")
    assert_clean_failure(duplicate, 1)
    assert (
        "refused (invalid-definition)" in duplicate.stderr and "defined twice" in duplicate.stderr
    )
    assert _records(store) == before
