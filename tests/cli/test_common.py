"""What every reading command shares: where the store is found, the unreachable store
(exit 69, never a traceback, never a new empty SQLite file), fast imports, and output that
stays plain without a colour terminal."""

from __future__ import annotations

import json
import os
import pty
import select
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.cli.support import BOUND, ROOT, assert_clean_failure, cli_env, run_cli

READ_COMMANDS = [["ps"], ["tree", "x"], ["history"], ["logs", "x"]]


@pytest.mark.parametrize("command", READ_COMMANDS, ids=lambda c: c[0])
def test_a_missing_sqlite_file_is_reported_and_not_created(
    command: list[str], tmp_path: Path
) -> None:
    path = tmp_path / "absent.db"
    done = run_cli(*command, store=f"sqlite:///{path}")
    assert_clean_failure(done, 69)
    assert "there is no store at" in done.stderr and "--store" in done.stderr
    assert not path.exists()


def test_a_sqlite_path_in_a_missing_folder_is_unreachable(tmp_path: Path) -> None:
    done = run_cli("ps", "--json", store=f"sqlite:///{tmp_path / 'no' / 'such' / 'tw.db'}")
    assert_clean_failure(done, 69)
    assert not (tmp_path / "no").exists()


@pytest.mark.parametrize("command", READ_COMMANDS, ids=lambda c: c[0])
def test_a_refusing_postgresql_server_is_unreachable_and_the_password_hidden(
    command: list[str],
) -> None:
    done = run_cli(*command, "--json", store="postgresql://tw:s3cret@127.0.0.1:1/tw")
    assert_clean_failure(done, 69)
    assert "cannot open the store at postgresql://tw:***@127.0.0.1:1/tw" in done.stderr
    assert "s3cret" not in done.stderr
    assert "server is running" in done.stderr


def test_an_unknown_store_scheme_is_a_usage_error() -> None:
    done = run_cli("ps", store="mongodb://localhost")
    assert_clean_failure(done, 2)
    assert "sqlite:///path" in done.stderr


def test_the_store_comes_from_the_environment(store: str) -> None:
    done = run_cli("ps", "--json", env=cli_env(TASKWARDEN_STORE=store))
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["totalCount"] == 7


def test_the_default_store_is_taskwarden_db_in_the_current_folder(
    store: str, tmp_path: Path
) -> None:
    missing = run_cli("ps", cwd=tmp_path)
    assert_clean_failure(missing, 69)
    assert "sqlite:///taskwarden.db" in missing.stderr
    assert not (tmp_path / "taskwarden.db").exists()
    if store.startswith("sqlite:///"):
        shutil.copy(store.removeprefix("sqlite:///"), tmp_path / "taskwarden.db")
        here = run_cli("ps", "--json", cwd=tmp_path)
        assert here.returncode == 0, here.stderr
        assert json.loads(here.stdout)["totalCount"] == 7


def _imported_by(argv: list[str]) -> set[str]:
    script = (
        "import sys\n"
        "from taskwarden.cli import main\n"
        "try:\n"
        f"    main({argv!r})\n"
        "except SystemExit:\n"
        "    pass\n"
        "print('MODULES', ' '.join(m for m in ('rich', 'asyncpg', 'taskwarden.stores.sqlite')"
        " if m in sys.modules), file=sys.stderr)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        env=cli_env(),
        cwd=ROOT,
        timeout=60,
        check=True,
    )
    [line] = [line for line in done.stderr.splitlines() if line.startswith("MODULES")]
    return set(line.split()[1:])


def test_help_imports_neither_rich_nor_the_store_drivers() -> None:
    assert _imported_by(["--help"]) == set()
    assert _imported_by(["ps", "--help"]) == set()


def test_ps_imports_only_the_driver_of_its_store(store: str) -> None:
    backend = "taskwarden.stores.sqlite" if store.startswith("sqlite") else "asyncpg"
    assert _imported_by(["ps", "--store", store]) == {"rich", backend}


def _through_a_terminal(store: str, **env: str) -> bytes:
    """The stdout of ``ps`` run on a pseudo-terminal (so rich sees a terminal)."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "taskwarden", "ps", "--store", store],
        stdout=slave,
        stderr=subprocess.DEVNULL,
        env=cli_env(TERM="xterm-256color", **env),
        cwd=ROOT,
    )
    os.close(slave)
    output = b""
    deadline = time.monotonic() + BOUND
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.2)
            if ready:
                try:
                    chunk = os.read(master, 65536)
                except OSError:  # the child closed the terminal
                    break
                if not chunk:
                    break
                output += chunk
            elif proc.poll() is not None:
                break
        assert proc.wait(timeout=BOUND) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
    return output


def test_no_color_keeps_terminal_output_plain(store: str) -> None:
    styled = _through_a_terminal(store)
    plain = _through_a_terminal(store, NO_COLOR="1")
    assert b"\x1b[" in styled  # the check below would mean nothing without styles
    assert b"\x1b[" not in plain
    assert b"broken" in plain and b"failed" in plain
