"""``taskwarden worker --app`` as an OS process: serves launches made by the CLI, shows in
``workers``, drains on SIGTERM; a bad ``--app`` is a usage error."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

from tests.cli.support import (
    BOUND,
    ROOT,
    LineReader,
    assert_clean_failure,
    cli_env,
    run_cli,
    run_json,
)


def test_a_worker_process_serves_the_cli_and_drains_on_sigterm(tmp_path: Path) -> None:
    store = f"sqlite:///{tmp_path / 'tw.db'}"
    command = [
        sys.executable,
        "-m",
        "taskwarden",
        "worker",
        "--app",
        "tests.fleet.app_module:application",
        "--store",
        store,
        "--name",
        "cli-worker",
        "--lease",
        "1.5",
        "--drain",
        "1",
    ]
    proc = subprocess.Popen(
        command,
        cwd=ROOT,
        env=cli_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None
        lines = LineReader(proc.stderr)
        lines.wait_for(lambda line: "serves 2 processes" in line)
        done = run_json("launch", "hello", "--wait", "--interval", "0.05", store=store)
        assert done["progress"]["message"] == "hello from the fleet"
        [worker] = run_json("workers", store=store)
        assert worker["name"] == "cli-worker" and worker["status"] == "ok"
        assert worker["processIds"] == ["hello", "long"]
        run_json("launch", "long", store=store)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=BOUND) == 0
        assert run_json("workers", store=store) == []
        long = run_json("tree", "long", store=store)
        assert long["status"]["state"] in ("cancelled", "scheduled")
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=BOUND)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


def test_a_bad_app_is_a_usage_error(tmp_path: Path) -> None:
    store = f"sqlite:///{tmp_path / 'tw.db'}"
    done = run_cli("worker", "--app", "tests.fleet.app_module:missing", store=store)
    assert_clean_failure(done, 2)
    assert "has no attribute 'missing'" in done.stderr
    form = run_cli("worker", "--app", "nonsense", store=store)
    assert_clean_failure(form, 2)
    assert "PKG.MODULE:ATTR" in form.stderr
