"""``taskwarden ps``: the table, the Paginated JSON page, filters, keyset pages, and
usage errors, on SQLite and PostgreSQL records made by a real engine."""

from __future__ import annotations

from typing import Any

from tests.cli.support import VISIBLE, assert_clean_failure, run_cli, run_json


def _row(stdout: str, process_id: str) -> str:
    [line] = [line for line in stdout.splitlines() if line.split()[:1] == [process_id]]
    return line


def _ids(page: dict[str, Any]) -> list[str]:
    return [item["processId"] for item in page["items"]]


def test_ps_prints_state_progress_worker_and_since_and_hides_special(store: str) -> None:
    done = run_cli("ps", store=store)
    assert done.returncode == 0, done.stderr
    header = done.stdout.splitlines()[0].split()
    assert header == ["ID", "NAME", "STATE", "PROGRESS", "MESSAGE", "WORKER", "SINCE"]
    assert "housekeeping" not in done.stdout
    broken = _row(done.stdout, "broken")
    assert "failed" in broken and "30%" in broken
    assert "RuntimeError: disk full: free space on /data" in broken
    assert broken.rstrip().endswith("ago")
    report = _row(done.stdout, "report")
    assert "done" in report and "100%" in report and "report ready" in report
    assert _row(done.stdout, "waiting").split()[3] == "idle"
    assert "\x1b[" not in done.stdout  # plain text off a terminal
    assert "7 of 7 processes" in done.stderr and "--all" in done.stderr


def test_ps_all_includes_special_processes(store: str) -> None:
    done = run_cli("ps", "--all", store=store)
    assert done.returncode == 0, done.stderr
    assert "swept" in _row(done.stdout, "housekeeping")
    assert "8 of 8 processes" in done.stderr


def test_ps_json_is_a_paginated_page_of_process_documents(store: str) -> None:
    page = run_json("ps", store=store)
    assert set(page) == {"items", "nextCursor", "totalCount"}
    assert page["totalCount"] == 7 and page["nextCursor"] is None
    assert _ids(page) == VISIBLE
    docs = {item["processId"]: item for item in page["items"]}
    broken = docs["broken"]
    assert broken["_id"] == "broken" and broken["name"] == "Broken copy"
    assert broken["status"]["state"] == "failed"
    assert broken["status"]["error"] == "RuntimeError: disk full: free space on /data"
    assert broken["status"]["failedAt"] is not None
    assert broken["progress"] == {"percent": 30.0, "message": "copying"}
    assert broken["metadata"] == {"team": "ops", "tier": 2, "urgent": True}
    assert broken["leaseOwner"] is None and broken["runNumber"] == 1
    report = docs["report"]
    assert report["runNumber"] == 2 and report["status"]["state"] == "done"
    assert [entry["message"] for entry in report["log"]][-2:] == ["slow disk", "report ready"]
    child = docs["ingest/a/x"]
    assert (child["parentId"], child["rootId"], child["depth"]) == ("ingest/a", "ingest", 2)


def test_ps_pages_by_keyset_cursor_without_repeats(store: str) -> None:
    seen: list[str] = []
    cursor: str | None = None
    pages = 0
    while True:
        args = ["ps", "--limit", "3"] + ([] if cursor is None else ["--cursor", cursor])
        page = run_json(*args, store=store)
        assert page["totalCount"] == 7
        assert len(page["items"]) <= 3
        seen += _ids(page)
        pages += 1
        cursor = page["nextCursor"]
        if cursor is None:
            break
        assert cursor == "{depth}:{order}:{processId}".format(**page["items"][-1])
    assert seen == VISIBLE and pages == 3


def test_ps_human_mode_prints_the_next_cursor_on_stderr(store: str) -> None:
    done = run_cli("ps", "--limit", "2", store=store)
    assert done.returncode == 0, done.stderr
    assert "next page: --cursor 0:0:ingest" in done.stderr
    assert "--cursor" not in done.stdout
    rows = [line.split()[0] for line in done.stdout.splitlines()[2:] if line.strip()]
    assert rows == ["broken", "ingest"]


def test_ps_filters_by_state_repeated_or_comma_separated(store: str) -> None:
    assert _ids(run_json("ps", "--state", "failed", store=store)) == ["broken", "ingest/b"]
    both = run_json("ps", "--state", "failed", "--state", "idle", store=store)
    assert _ids(both) == ["broken", "waiting", "ingest/b"]
    comma = run_json("ps", "--state", "failed,idle", store=store)
    assert _ids(comma) == _ids(both)


def test_ps_filters_by_root(store: str) -> None:
    page = run_json("ps", "--root", "ingest", store=store)
    assert _ids(page) == ["ingest", "ingest/a", "ingest/b", "ingest/a/x"]
    assert page["totalCount"] == 4


def test_ps_metadata_filters_are_anded_and_typed(store: str) -> None:
    assert _ids(run_json("ps", "--metadata", "tier=2", store=store)) == ["broken", "ingest"]
    anded = run_json("ps", "--metadata", "tier=2", "--metadata", "team=data", store=store)
    assert _ids(anded) == ["ingest"]
    assert _ids(run_json("ps", "--metadata", "urgent=true", store=store)) == ["broken"]
    assert _ids(run_json("ps", "--metadata", "ratio=0.5", store=store)) == ["waiting"]
    ops = run_json("ps", "--metadata", "team=ops", "--all", store=store)
    assert _ids(ops) == ["broken", "housekeeping"]


def test_ps_json_prints_an_empty_page_when_nothing_matches(store: str) -> None:
    page = run_json("ps", "--metadata", "team=nobody", store=store)
    assert page == {"items": [], "nextCursor": None, "totalCount": 0}


def test_ps_rejects_an_unknown_state_listing_the_valid_ones(store: str) -> None:
    done = run_cli("ps", "--state", "done,bogus", store=store)
    assert_clean_failure(done, 2)
    assert "unknown state 'bogus'" in done.stderr
    for state in ("idle", "scheduled", "running", "cancel_requested", "done", "cancelled"):
        assert state in done.stderr


def test_ps_rejects_malformed_metadata_limit_and_cursor(store: str) -> None:
    assert_clean_failure(run_cli("ps", "--metadata", "novalue", store=store), 2)
    assert_clean_failure(run_cli("ps", "--limit", "0", store=store), 2)
    bad_cursor = run_cli("ps", "--cursor", "garbage", store=store)
    assert_clean_failure(bad_cursor, 2)
    assert "cursor 'garbage'" in bad_cursor.stderr
