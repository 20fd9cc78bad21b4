"""Real PostgreSQL and Redis servers for the test suite.

A server comes from ``TASKWARDEN_TEST_POSTGRES_URL`` / ``TASKWARDEN_TEST_REDIS_URL`` when set;
otherwise a throwaway one is started from the installed binaries on a free loopback port and
stopped at the end of the session. When neither is possible the tests that need it are
skipped, except under ``CI=true`` where a missing server fails the run.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _missing(what: str) -> None:
    message = (
        f"{what} is not available: set {what.upper().replace(' ', '_')} or install the server "
        "binaries (.ci/run installs them with apt-get)"
    )
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def _wait_for_port(port: int, deadline: float, proc: subprocess.Popen[bytes] | None) -> None:
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server on port {port} exited with {proc.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise RuntimeError(f"server on port {port} did not start in time")


def _pg_bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return candidates[-1] if candidates else None


def _as_postgres_user(cmd: list[str]) -> list[str]:
    """initdb and pg_ctl refuse to run as root: run them as the ``postgres`` user then."""
    if os.geteuid() != 0:
        return cmd
    return ["runuser", "-u", "postgres", "--", *cmd]


class PostgresServer:
    """A PostgreSQL server of the test's own, in a temporary folder: it can be restarted."""

    def __init__(self, pg_ctl: str, data: Path, root: Path, port: int) -> None:
        self.pg_ctl, self.data, self.root, self.port = pg_ctl, data, root, port
        self.url = f"postgresql://postgres@127.0.0.1:{port}/postgres"

    def _ctl(self, *args: str, check: bool = True) -> None:
        options = (
            f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off "
            "-c max_connections=200"
        )
        log = str(self.root / "log")
        subprocess.run(
            _as_postgres_user([self.pg_ctl, "-D", str(self.data), "-o", options, "-l", log, *args]),
            check=check,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def start(self) -> None:
        self._ctl("-w", "start")

    def stop(self, mode: str = "fast") -> None:
        self._ctl("-m", mode, "-w", "stop", check=False)

    def restart(self) -> None:
        """Stop (closing every connection) and start again on the same port and data."""
        self.stop()
        self.start()


@contextlib.contextmanager
def postgres_server() -> Iterator[PostgresServer | None]:
    """Start a PostgreSQL server in a temporary folder; yields it, or None without the
    binaries."""
    initdb, pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
    if initdb is None or pg_ctl is None:
        yield None
        return
    root = Path(tempfile.mkdtemp(prefix="taskwarden-pg-"))
    data = root / "data"
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
        root.chmod(0o755)
    subprocess.run(
        _as_postgres_user(
            [initdb, "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8"]
        ),
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    server = PostgresServer(pg_ctl, data, root, _free_port())
    server.start()
    try:
        yield server
    finally:
        server.stop("immediate")
        shutil.rmtree(root, ignore_errors=True)


@contextlib.contextmanager
def throwaway_postgres() -> Iterator[str | None]:
    """Start a PostgreSQL server in a temporary folder; yields its URL, or None."""
    with postgres_server() as server:
        yield None if server is None else server.url


@contextlib.contextmanager
def throwaway_redis() -> Iterator[str | None]:
    """Start a Redis server that keeps nothing on disk; yields its URL, or None."""
    binary = shutil.which("redis-server")
    if binary is None:
        yield None
        return
    port = _free_port()
    root = tempfile.mkdtemp(prefix="taskwarden-redis-")
    proc = subprocess.Popen(
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            root,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_for_port(port, time.monotonic() + 10, proc)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_server_url() -> Iterator[str]:
    """URL of a real PostgreSQL server (its ``postgres`` database) for this test session."""
    url = os.environ.get("TASKWARDEN_TEST_POSTGRES_URL")
    if url:
        yield url
        return
    with throwaway_postgres() as started:
        if started is None:
            _missing("taskwarden test postgres url")
        assert started is not None
        yield started


@pytest.fixture(scope="session")
def redis_server_url() -> Iterator[str]:
    """URL of a real Redis server for this test session."""
    url = os.environ.get("TASKWARDEN_TEST_REDIS_URL")
    if url:
        yield url
        return
    with throwaway_redis() as started:
        if started is None:
            _missing("taskwarden test redis url")
        assert started is not None
        yield started
