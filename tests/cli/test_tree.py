"""``taskwarden tree ID``: the rich tree with per-node state, progress, message and error;
``--depth``; ``--json`` is the API's tree document; exit 3 for an unknown process."""

from __future__ import annotations

from typing import Any

from tests.cli.support import assert_clean_failure, run_cli, run_json


def test_tree_draws_each_node_with_state_progress_message_and_error(store: str) -> None:
    done = run_cli("tree", "ingest", store=store)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 4
    root, shard_a, part_x, shard_b = lines
    assert root.startswith("Nightly ingest (ingest) done")
    assert "100%" in root and "ingest finished" in root
    assert shard_a.startswith("├── Shard A (ingest/a) done") and "shard a loaded" in shard_a
    assert part_x.startswith("│   └── Part X (ingest/a/x) done")
    assert shard_b.startswith("└── Shard B (ingest/b) failed")
    assert "error: ValueError: bad row 7" in shard_b
    assert "\x1b[" not in done.stdout


def test_tree_depth_limits_the_levels_shown(store: str) -> None:
    one = run_cli("tree", "ingest", "--depth", "1", store=store)
    assert one.returncode == 0, one.stderr
    assert "Shard A" in one.stdout and "Shard B" in one.stdout
    assert "Part X" not in one.stdout
    alone = run_cli("tree", "ingest", "--depth", "0", store=store)
    assert alone.stdout.splitlines() == [alone.stdout.splitlines()[0]]
    assert_clean_failure(run_cli("tree", "ingest", "--depth", "-1", store=store), 2)


def _shape(doc: dict[str, Any]) -> dict[str, Any]:
    return {
        doc["processId"]: (doc["status"]["state"], [_shape(child) for child in doc["children"]])
    }


def test_tree_json_is_the_nested_tree_document(store: str) -> None:
    doc = run_json("tree", "ingest", store=store)
    assert _shape(doc) == {
        "ingest": (
            "done",
            [
                {"ingest/a": ("done", [{"ingest/a/x": ("done", [])}])},
                {"ingest/b": ("failed", [])},
            ],
        )
    }
    assert doc["_id"] == "ingest" and doc["name"] == "Nightly ingest"
    assert doc["progress"] == {"percent": 100.0, "message": "ingest finished"}
    shard_b = doc["children"][1]
    assert shard_b["status"]["error"] == "ValueError: bad row 7"
    assert (shard_b["parentId"], shard_b["rootId"], shard_b["depth"]) == ("ingest", "ingest", 1)
    shallow = run_json("tree", "ingest", "--depth", "1", store=store)
    assert [child["children"] for child in shallow["children"]] == [[], []]


def test_tree_of_a_subtree_starts_at_that_process(store: str) -> None:
    doc = run_json("tree", "ingest/a", store=store)
    assert doc["processId"] == "ingest/a"
    assert [child["processId"] for child in doc["children"]] == ["ingest/a/x"]


def test_tree_of_an_unknown_process_exits_3(store: str) -> None:
    done = run_cli("tree", "nope", "--json", store=store)
    assert_clean_failure(done, 3)
    assert "no process 'nope'" in done.stderr and "taskwarden ps" in done.stderr
