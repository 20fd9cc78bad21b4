"""``taskwarden history``: runs from the store newest first, its filters, ``--show INDEX``
with the error and traceback, the run documents of ``--json``, and exit codes."""

from __future__ import annotations

from typing import Any

from tests.cli.support import assert_clean_failure, run_cli, run_json

ORDER = ["housekeeping", "ingest", "ingest/b", "ingest/a", "ingest/a/x", "broken", "report"]


def _processes(runs: list[dict[str, Any]]) -> list[str]:
    return [run["processId"] for run in runs]


def _run_of(store: str, process_id: str) -> dict[str, Any]:
    [run] = run_json("history", "--process", process_id, store=store)
    assert isinstance(run, dict)
    return run


def test_history_lists_runs_newest_first(store: str) -> None:
    done = run_cli("history", store=store)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].split() == ["INDEX", "PROCESS", "RUN", "STATUS", "STARTED", "(UTC)",
                                "DURATION", "ERROR"]  # fmt: skip
    rows = [line.split() for line in lines[2:]]
    assert [row[1] for row in rows] == [*ORDER, "report"]
    indexes = [int(row[0]) for row in rows]
    assert indexes == sorted(indexes, reverse=True) and len(set(indexes)) == 8
    broken = next(line for line in lines if " broken " in line)
    assert "failed" in broken and "RuntimeError: disk full: free space on /data" in broken
    assert "8 runs" in done.stderr and "--show INDEX" in done.stderr


def test_history_json_gives_run_documents(store: str) -> None:
    runs = run_json("history", store=store)
    assert _processes(runs) == [*ORDER, "report"]
    broken = runs[ORDER.index("broken")]
    assert broken["status"] == "failed" and broken["kind"] == "process"
    assert broken["error"] == "RuntimeError: disk full: free space on /data"
    assert "Traceback (most recent call last)" in broken["traceback"]
    assert broken["runNumber"] == 1 and broken["name"] == "broken"
    assert broken["startedAt"] <= broken["endedAt"]
    assert broken["metadata"] == {"team": "ops", "tier": 2, "urgent": True}
    assert runs[0]["status"] == "completed" and runs[0]["error"] is None


def test_history_filters_by_process_status_since_and_limit(store: str) -> None:
    reports = run_json("history", "--process", "report", store=store)
    assert [run["runNumber"] for run in reports] == [2, 1]
    failed = run_json("history", "--status", "failed", store=store)
    assert _processes(failed) == ["ingest/b", "broken"]
    assert len(run_json("history", "--since", "1h", store=store)) == 8
    assert len(run_json("history", "--since", "2000-01-01", store=store)) == 8
    assert run_json("history", "--since", "2999-01-01T00:00:00", store=store) == []
    assert _processes(run_json("history", "--limit", "2", store=store)) == ORDER[:2]
    assert run_json("history", "--process", "never-ran", store=store) == []


def test_history_show_prints_one_run_with_error_and_traceback(store: str) -> None:
    index = _run_of(store, "broken")["index"]
    done = run_cli("history", "--show", str(index), store=store)
    assert done.returncode == 0, done.stderr
    fields = dict(line.split(":", 1) for line in done.stdout.splitlines()[:10] if ":" in line)
    assert fields["index"].strip() == str(index)
    assert fields["process"].strip() == "broken"
    assert fields["status"].strip() == "failed"
    assert fields["error"].strip() == "RuntimeError: disk full: free space on /data"
    traceback = done.stdout.split("traceback:", 1)[1]
    assert "Traceback (most recent call last)" in traceback
    assert 'raise RuntimeError("disk full: free space on /data")' in traceback


def test_history_show_json_is_one_run_document(store: str) -> None:
    run = _run_of(store, "ingest/b")
    shown = run_json("history", "--show", str(run["index"]), store=store)
    assert shown == run
    assert shown["error"] == "ValueError: bad row 7" and shown["status"] == "failed"


def test_history_show_of_a_missing_run_exits_3(store: str) -> None:
    done = run_cli("history", "--show", "9999", store=store)
    assert_clean_failure(done, 3)
    assert "no run with index 9999" in done.stderr


def test_history_rejects_a_bad_since_or_status(store: str) -> None:
    since = run_cli("history", "--since", "yesterday", store=store)
    assert_clean_failure(since, 2)
    assert "30m, 1h, 2d, 2026-12-01" in since.stderr
    assert_clean_failure(run_cli("history", "--status", "exploded", store=store), 2)
