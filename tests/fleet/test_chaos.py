"""Worker OS processes killed, frozen and stopped mid-run, on SQLite and on PostgreSQL.

Each test starts real worker processes (``tests/fleet/worker_proc.py``, leases of 1 s
reaped every 0.25 s) and launches from this process, which has no definitions. Every
spawned process is killed in a ``finally``. Waits are bounded polls of the store.
"""

from __future__ import annotations

import asyncio
import collections
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import IO

import pytest

from taskwarden.abc import Store
from taskwarden.model import OperationStatus
from taskwarden.processes import ACTIVE_STATES, ProcessRecord, ProcessState
from taskwarden.stores import open_store
from taskwarden.worker import launch
from tests.store_support import postgres_database  # noqa: F401 (a fixture, found by name)

pytestmark = pytest.mark.slow

S = ProcessState
ROOT = Path(__file__).resolve().parents[2]
LEASE, REAPER = 1.0, 0.25


class WorkerProcess:
    """One ``worker_proc`` OS process and the incarnation it announced."""

    def __init__(self, url: str, prefix: str, log: Path) -> None:
        self.log_path = log
        self._log: IO[bytes] = log.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.fleet.worker_proc", url, prefix],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=self._log,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        self.incarnation = ""

    def wait_ready(self, timeout: float = 20.0) -> None:
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        line = self.proc.stdout.readline().decode()
        assert line.startswith("ready "), (line, self.stderr())
        assert time.monotonic() < deadline
        self.incarnation = line.split()[1]

    def stderr(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self._log.close()


class Fleet:
    """The worker processes of one test; every one is killed on exit."""

    def __init__(self, url: str, prefix: str, folder: Path) -> None:
        self.url, self.prefix, self.folder = url, prefix, folder
        self.workers: list[WorkerProcess] = []

    def spawn(self, count: int = 1) -> list[WorkerProcess]:
        fresh = [
            WorkerProcess(self.url, self.prefix, self.folder / f"w{len(self.workers) + i}.log")
            for i in range(count)
        ]
        self.workers += fresh
        for worker in fresh:
            worker.wait_ready()
        return fresh

    def owner(self, incarnation: str | None) -> WorkerProcess:
        [found] = [w for w in self.workers if w.incarnation == incarnation]
        return found

    def kill_all(self) -> None:
        for worker in self.workers:
            worker.kill()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def namespace(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, str]:
    prefix = f"c{uuid.uuid4().hex[:12]}"
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'chaos.db'}", prefix
    url: str = request.getfixturevalue("postgres_database")
    return url, prefix


@pytest.fixture
def fleet(namespace: tuple[str, str], tmp_path: Path) -> Iterator[Fleet]:
    fleet = Fleet(*namespace, tmp_path)
    try:
        yield fleet
    finally:
        fleet.kill_all()


@pytest.fixture
async def client(namespace: tuple[str, str], fleet: Fleet) -> AsyncIterator[Store]:
    url, prefix = namespace
    store = open_store(url, prefix=prefix)
    async with store:
        yield store


async def wait_state(
    store: Store,
    process_id: str,
    *states: ProcessState,
    timeout: float = 15.0,  # noqa: ASYNC109
) -> None:
    async with asyncio.timeout(timeout):
        while True:
            record = await store.get(process_id)
            if record is not None and record.state in states:
                return
            await asyncio.sleep(0.02)


async def wait_saved(
    store: Store,
    process_id: str,
    message: str,
    timeout: float = 15.0,  # noqa: ASYNC109
) -> ProcessRecord:
    """The record once it is running and its log holds ``message``."""
    async with asyncio.timeout(timeout):
        while True:
            record = await store.get(process_id)
            if (
                record is not None
                and record.state is S.RUNNING
                and any(entry.message == message for entry in record.log)
            ):
                return record
            await asyncio.sleep(0.02)


async def test_kill_9_of_a_worker_mid_run_is_resolved_by_each_policy(
    fleet: Fleet, client: Store
) -> None:
    """Ten trials: a worker is SIGKILLed while it runs a process; another worker resolves
    the run within lease + reaper interval (+1 s): ``fail`` records it failed naming the
    lost worker, ``retry`` and ``resume`` finish it on a survivor. Nothing stays active,
    nothing completes twice."""
    fleet.spawn(2)
    policies = ["fail", "retry", "resume"]
    recoveries: list[float] = []
    for trial in range(10):
        policy = policies[trial % 3]
        process_id = f"{policy}-{trial}"
        await launch(client, process_id)
        # The kill comes once the first attempt's checkpoint is in the store: a resume
        # keeps what the lost attempt saved, not what it had yet to flush.
        record = await wait_saved(client, process_id, "first attempt started")
        victim = fleet.owner(record.lease_owner)
        victim.kill()
        killed_at = time.monotonic()
        if policy == "fail":
            await wait_state(client, process_id, S.FAILED)
        else:
            await wait_state(client, process_id, S.DONE)
        recoveries.append(time.monotonic() - killed_at)
        fleet.workers.remove(victim)
        fleet.spawn(1)
        final = await client.get(process_id)
        assert final is not None
        runs = await client.query_history(process_id=process_id)
        completed = [r for r in runs if r.status is OperationStatus.COMPLETED]
        lost = [r for r in runs if r.status is OperationStatus.FAILED]
        assert len(lost) == 1 and "worker-lost" in (lost[0].error or "")
        assert victim.incarnation in (lost[0].error or "")
        if policy == "fail":
            assert completed == [] and final.error is not None
            assert victim.incarnation in final.error
        else:
            assert len(completed) == 1 and final.lost_count == 1
            assert final.progress_message == "finished on a survivor"
            messages = [entry.message for entry in final.log]
            if policy == "resume":  # what the lost attempt saved is still there
                assert "first attempt started" in messages
            else:
                assert "first attempt started" not in messages
    assert await client.list(state=ACTIVE_STATES) == []
    assert max(recoveries) <= LEASE + REAPER + 1.0 + 0.5, recoveries


async def test_a_frozen_worker_loses_its_run_and_writes_nothing_when_it_wakes(
    fleet: Fleet, client: Store
) -> None:
    """SIGSTOP past the lease: another worker takes the run over under ``retry`` and
    finishes it. On SIGCONT the frozen worker's renewal shows the loss; it cancels its
    copy with ``lease-lost`` and its writes are refused: exactly one completion."""
    [frozen] = fleet.spawn(1)
    await launch(client, "retry-0")
    await wait_state(client, "retry-0", S.RUNNING)
    os.kill(frozen.proc.pid, signal.SIGSTOP)
    try:
        fleet.spawn(1)
        await wait_state(client, "retry-0", S.DONE)
    finally:
        os.kill(frozen.proc.pid, signal.SIGCONT)
    async with asyncio.timeout(15):
        while "lease-lost" not in frozen.stderr():  # noqa: ASYNC110 - another process's log
            await asyncio.sleep(0.05)
    await launch(client, "fail-1")  # the woken worker still works
    await wait_state(client, "fail-1", S.RUNNING)
    record = await client.get("retry-0")
    assert record is not None and record.state is S.DONE and record.lost_count == 1
    runs = await client.query_history(process_id="retry-0")
    assert sorted(str(r.status) for r in runs) == ["completed", "failed"]


async def test_sigterm_drains_a_worker_and_its_record_goes(fleet: Fleet, client: Store) -> None:
    """SIGTERM: the worker stops claiming, hands back what does not finish within its
    drain deadline (scheduled again, no owner, the attempt cancelled in the history),
    removes its worker record and exits 0."""
    [worker] = fleet.spawn(1)
    await launch(client, "fail-0")
    await wait_state(client, "fail-0", S.RUNNING)
    assert [w.incarnation for w in await client.list_workers()] == [worker.incarnation]
    started = time.monotonic()
    worker.proc.send_signal(signal.SIGTERM)
    assert worker.proc.wait(timeout=15) == 0, worker.stderr()
    assert time.monotonic() - started < 2.0 + 0.5 + 3.0  # drain + grace + start-up slack
    record = await client.get("fail-0")
    assert record is not None and record.state is S.SCHEDULED and record.lease_owner is None
    [handed] = await client.query_history(process_id="fail-0")
    assert handed.status is OperationStatus.CANCELLED
    assert await client.list_workers() == []
    await launch(client, "fail-1")
    again = await client.get("fail-1")
    assert again is not None and again.state is S.SCHEDULED  # nobody left to claim it


async def test_three_workers_race_for_1000_launches_and_run_each_once(
    fleet: Fleet, client: Store
) -> None:
    """Launch → claim → run across three OS processes: every process runs exactly once,
    the work is shared, and SQLite never reports "database is locked"."""
    fleet.spawn(3)
    ids = [f"quick-{n}" for n in range(1000)]
    for process_id in ids:
        await launch(client, process_id)
    try:
        async with asyncio.timeout(120):
            while len(await client.list(state=[S.DONE])) < len(ids):  # noqa: ASYNC110
                await asyncio.sleep(0.1)
    except TimeoutError:
        states = collections.Counter(str(r.state) for r in await client.list())
        logs = "\n".join(w.stderr()[-2000:] for w in fleet.workers)
        workers = await client.list_workers()
        pytest.fail(f"not all done after 120 s: {dict(states)}; workers {workers}\n{logs}")
    runs = await client.query_history(limit=5000)
    assert sorted(r.process_id or "" for r in runs) == sorted(ids)
    assert all(r.status is OperationStatus.COMPLETED and r.run_number == 1 for r in runs)
    assert await client.list(state=ACTIVE_STATES) == []
    for worker in fleet.workers:
        log = worker.stderr()
        assert "database is locked" not in log and "Traceback" not in log, log


@pytest.mark.postgres
@pytest.mark.parametrize("outage", ["restart", "longer-than-the-lease"])
async def test_a_postgresql_restart_mid_run_loses_no_terminal_state(
    tmp_path: Path, outage: str
) -> None:
    """The test's own PostgreSQL server is restarted while two workers hold runs. The
    workers reconnect by themselves. After a quick restart each held run is kept or
    resolved by its policy; after an outage longer than the lease the workers have
    stopped their runs, and the reaper resolves them by policy (``retry`` finishes,
    ``fail`` fails). Nothing finished is lost, and launches made afterwards run."""
    from tests.servers import postgres_server

    with postgres_server() as server:
        if server is None:
            if os.environ.get("CI") == "true":
                pytest.fail("initdb and pg_ctl are needed for the restart test")
            pytest.skip("no PostgreSQL binaries to start a server of the test's own")
        prefix = f"c{uuid.uuid4().hex[:12]}"
        fleet = Fleet(server.url, prefix, tmp_path)
        try:
            fleet.spawn(2)
            async with open_store(server.url, prefix=prefix) as client:
                for n in range(20):
                    await launch(client, f"quick-{n}")
                for process_id in ("retry-0", "fail-0"):
                    await launch(client, process_id)
                    await wait_state(client, process_id, S.RUNNING)
                async with asyncio.timeout(30):
                    while len(await client.list(state=[S.DONE])) < 20:  # noqa: ASYNC110
                        await asyncio.sleep(0.05)
            if outage == "restart":
                server.restart()
            else:
                server.stop()
                await asyncio.sleep(2 * LEASE)  # the fault: down for two leases
                server.start()
            async with open_store(server.url, prefix=prefix) as client:
                done = {r.process_id for r in await client.list(state=[S.DONE])}
                assert {f"quick-{n}" for n in range(20)} <= done  # nothing finished is lost
                # Held on, or resolved by policy: retry finishes on a worker, fail fails.
                kept = (S.RUNNING,) if outage == "restart" else ()
                await wait_state(client, "retry-0", *kept, S.DONE, timeout=20)
                await wait_state(client, "fail-0", *kept, S.FAILED, timeout=20)
                for n in range(20, 40):
                    await launch(client, f"quick-{n}")
                async with asyncio.timeout(30):
                    for n in range(20, 40):
                        await wait_state(client, f"quick-{n}", S.DONE)
                for process_id in ("retry-0", "fail-0"):
                    record = await client.get(process_id)
                    assert record is not None
                    if record.state is S.RUNNING:  # kept: a live worker renews its lease
                        assert record.lease_owner in {w.incarnation for w in fleet.workers}
                    runs = await client.query_history(process_id=process_id)
                    assert sum(r.status is OperationStatus.COMPLETED for r in runs) <= 1
                    if outage != "restart":  # stopped by their workers, resolved by policy
                        assert "worker-lost" in (runs[-1].error or ""), runs
                        assert record.state is (S.DONE if process_id == "retry-0" else S.FAILED)
                assert all(w.proc.poll() is None for w in fleet.workers)
        finally:
            fleet.kill_all()
