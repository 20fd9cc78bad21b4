"""``taskwarden top``: the live view on a pseudo-terminal (panels drawn from a store that a
real worker process serves, ``q`` and Ctrl-C quit with exit 0 and the terminal restored, a
bus change redraws before the interval), ``--once`` and ``--once --json``, usage errors and
the unreachable store; and the sampler's bounds and throughput over an in-process engine.

The module is also the application of the worker process the tests start
(``taskwarden worker --app tests.cli.test_top:application``).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import re
import signal
import socket
import subprocess
import sys
import termios
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pexpect  # type: ignore[import-untyped]  # no stubs are installed
import pytest

from taskwarden import Application
from taskwarden.cli.common import redact
from taskwarden.cli.top_panels import Sampler
from taskwarden.engine import Engine, ProcessContext, TaskInstance
from taskwarden.processes import ProcessState
from taskwarden.registry import OperationRegistry
from taskwarden.stores import open_store
from tests.cli.support import (
    BOUND,
    ROOT,
    LineReader,
    assert_clean_failure,
    cli_env,
    run_cli,
    run_json,
    stop,
)
from tests.store_support import temporary_database

# -- the application the worker process serves ---------------------------------------


async def crunch(ctx: ProcessContext) -> None:
    ctx.report_progress(42, "crunching shard 3 of 7")
    await ctx.wait_cancelled()


async def explode(ctx: ProcessContext) -> None:
    raise RuntimeError(f"boom on run {ctx.run_number}: the disk is on fire")


async def hello(ctx: ProcessContext) -> None:
    ctx.report_progress(100, "hello")


async def _tasks(services: object) -> list[TaskInstance]:
    return [
        TaskInstance(execute=crunch, process_id="crunch", name="Crunch"),
        TaskInstance(execute=explode, process_id="explode", name="Explode"),
        TaskInstance(execute=hello, process_id="hello", name="Hello"),
    ]


application = Application(_tasks)

# -- the store the command tests watch -----------------------------------------------


@dataclass(frozen=True, slots=True)
class Watched:
    """A store served by the worker ``top-worker``: ``crunch`` running at 42%,
    ``explode`` failed, ``hello`` done; ``bus`` is the workers' bus (PostgreSQL only)."""

    store: str
    bus: str | None


def _wait_until_crunching(store: str) -> None:
    """Until ``crunch`` is at 42% and the worker's record counts the run (it is renewed
    every third of the lease)."""

    async def wait() -> None:
        async with open_store(store) as opened, asyncio.timeout(BOUND):
            while True:
                record = await opened.get("crunch")
                workers = await opened.list_workers()
                if (
                    record is not None
                    and record.progress_percent == 42
                    and [worker.runs for worker in workers] == [1]
                ):
                    return
                await asyncio.sleep(0.05)

    asyncio.run(wait())


@pytest.fixture(
    scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def watched(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Watched]:
    """A fresh store (a SQLite file, or a PostgreSQL database whose bus the worker uses)
    served by ``taskwarden worker --app tests.cli.test_top:application``, in the state
    :class:`Watched` describes; the worker is killed and the database dropped after."""
    with contextlib.ExitStack() as cleanup:
        if request.param == "sqlite":
            store, bus = f"sqlite:///{tmp_path_factory.mktemp('top') / 'tw.db'}", None
        else:
            server = request.getfixturevalue("postgres_server_url")
            store = cleanup.enter_context(temporary_database(server, "tw_top"))
            bus = store
        command = [sys.executable, "-m", "taskwarden", "worker", "--app"]
        command += ["tests.cli.test_top:application", "--store", store, "--name", "top-worker"]
        command += ["--lease", "3", "--drain", "0"] + (["--bus", bus] if bus else [])
        worker = subprocess.Popen(
            command, cwd=ROOT, env=cli_env(), stderr=subprocess.PIPE, text=True
        )
        cleanup.callback(stop, worker)
        assert worker.stderr is not None
        LineReader(worker.stderr).wait_for(lambda line: "serves 3 processes" in line)
        hello = run_cli("launch", "hello", "--wait", "--interval", "0.05", store=store)
        assert hello.returncode == 0, hello.stderr
        failed = run_cli("launch", "explode", "--wait", "--interval", "0.05", store=store)
        assert failed.returncode == 1, failed.stderr
        run_json("launch", "crunch", store=store)
        _wait_until_crunching(store)
        yield Watched(store, bus)


def _spawn_top(*args: str, program: str | None = None, **env: str) -> pexpect.spawn:
    """``taskwarden top ARGS`` on a 40 x 200 pseudo-terminal (stdin and stdout both); all
    it writes is kept in ``child.logfile_read``. With ``program``, a ``sh -c`` script runs
    instead, with the command as ``"$@"``."""
    environment = cli_env(TERM="xterm-256color", **env)
    environment.pop("COLUMNS")  # the terminal's own size, as a user has it
    command = [sys.executable, "-m", "taskwarden", "top", *args]
    if program is not None:
        command = ["sh", "-c", program, "sh", *command]
    child = pexpect.spawn(
        command[0],
        command[1:],
        cwd=str(ROOT),
        env=environment,
        dimensions=(40, 200),
        encoding="utf-8",
        codec_errors="replace",
        timeout=BOUND,
    )
    child.logfile_read = io.StringIO()
    return child


def _written(child: pexpect.spawn) -> str:
    return str(child.logfile_read.getvalue())


def _lflag(child: pexpect.spawn) -> int:
    """The terminal's local modes (ICANON, ECHO...), as the child set them."""
    return int(termios.tcgetattr(child.child_fd)[3])


@contextlib.contextmanager
def _top(*args: str, program: str | None = None, **env: str) -> Iterator[pexpect.spawn]:
    child = _spawn_top(*args, program=program, **env)
    try:
        yield child
    finally:
        if child.isalive():
            child.terminate(force=True)
        child.close()


# -- one frame -----------------------------------------------------------------------


def test_once_prints_the_four_panels_with_the_running_failed_and_worker_lines(
    watched: Watched,
) -> None:
    done = run_cli("top", "--once", store=watched.store)
    assert done.returncode == 0, done.stderr
    assert "\x1b[" not in done.stdout  # plain off a terminal
    lines = done.stdout.splitlines()
    assert lines[0].startswith("taskwarden top") and redact(watched.store) in lines[0]
    for title in ("Running (1)", "Recent failures", "Workers", "Throughput"):
        assert any(title in line for line in lines), title
    [running] = [line.split() for line in lines if " crunch " in line]
    assert running[1:3] == ["crunch", "running"] and "42%" in running
    assert "crunching shard 3 of 7" in " ".join(running)
    assert running[-4] == "top-worker"  # the lease owner's name, not its incarnation
    [failure] = [line for line in lines if " explode " in line]
    assert "RuntimeError: boom on run " in failure and "the disk is on fire" in failure
    [worker] = [line.split() for line in lines if " ok " in line]
    assert worker[1:4] == ["top-worker", "ok", f"{socket.gethostname()}/{worker[3].split('/')[-1]}"]
    assert worker[4] == "1"  # the run it holds
    [minute] = [line for line in lines if "last minute" in line]
    assert " done, " in minute and " failed, " in minute


def test_once_json_is_one_document_of_the_panels_data(watched: Watched) -> None:
    document = run_json("top", "--once", store=watched.store)
    assert set(document) == {"takenAt", "running", "failures", "workers", "throughput"}
    [crunching] = document["running"]["items"]
    assert crunching["processId"] == "crunch" and crunching["status"]["state"] == "running"
    assert crunching["progress"] == {"percent": 42.0, "message": "crunching shard 3 of 7"}
    assert document["running"]["more"] is False
    latest = document["failures"][0]
    assert latest["processId"] == "explode" and latest["status"] == "failed"
    assert latest["error"].startswith("RuntimeError: boom on run ")
    [worker] = document["workers"]
    assert worker["name"] == "top-worker" and worker["status"] == "ok" and worker["runs"] == 1
    assert worker["incarnation"] == crunching["leaseOwner"]
    flow = document["throughput"]
    assert flow["window"] == 60 and flow["interval"] is None and flow["atLeast"] is False
    assert flow["done"] >= 1 and flow["failed"] >= 1
    assert flow["finished"] == flow["done"] + flow["failed"] + flow["cancelled"]


# -- the live view -------------------------------------------------------------------


_COLOURS = re.compile(r"\x1b\[(?:[0-9;]*;)?(?:3[0-9]|9[0-7])[;m]")


@pytest.mark.slow
@pytest.mark.parametrize(
    ("key", "no_color"), [("q", ""), ("\x03", "1")], ids=["q", "ctrl-c-no-color"]
)
def test_the_live_view_draws_the_panels_and_a_key_quits_with_the_terminal_restored(
    watched: Watched, key: str, no_color: str
) -> None:
    with _top("--store", watched.store, "-i", "0.2", NO_COLOR=no_color) as child:
        for text in ("Running (1)", "crunch", "crunching shard 3 of 7", "42%"):
            child.expect_exact(text)
        for text in ("Recent failures", "boom on run ", "Workers", "top-worker", "Throughput"):
            child.expect_exact(text)
        during = _lflag(child)
        assert not during & termios.ICANON and not during & termios.ECHO  # cbreak
        child.send(key)
        child.expect(pexpect.EOF, timeout=5)
        after = _lflag(child)
        assert after & termios.ICANON and after & termios.ECHO  # as it was
        child.close()
        written = _written(child)
        assert child.exitstatus == 0, written
        assert written.rstrip().endswith("\x1b[?1049l")  # left the alternate screen last
        assert "Traceback" not in written
        assert bool(_COLOURS.search(written)) is not bool(no_color)


@pytest.mark.slow
def test_without_a_terminal_on_stdin_keys_are_not_read_and_sigterm_ends_it(
    watched: Watched,
) -> None:
    with _top("--store", watched.store, "-i", "0.2", program='exec "$@" </dev/null') as child:
        child.expect_exact("Throughput")
        child.send("q")
        child.expect_exact("Throughput")  # still drawing: stdin is not the terminal
        child.expect_exact("Throughput")
        assert child.isalive()
        child.kill(signal.SIGTERM)
        child.expect(pexpect.EOF, timeout=5)
        child.close()
        assert child.exitstatus == 0, _written(child)


@pytest.mark.slow
def test_a_change_on_the_bus_redraws_before_the_interval(watched: Watched) -> None:
    if watched.bus is None:
        pytest.skip("the SQLite fleet runs without a bus")
    runs = run_json("history", "--process", "explode", store=watched.store)
    next_run = max(run["runNumber"] for run in runs) + 1
    with _top("--store", watched.store, "--bus", watched.bus, "-i", "60") as child:
        child.expect_exact("and on bus events")
        child.expect_exact("Throughput")  # the first frame is drawn
        failed = run_cli(
            "launch",
            "explode",
            "--wait",
            "--interval",
            "0.05",
            "--bus",
            watched.bus,
            store=watched.store,
        )
        assert failed.returncode == 1, failed.stderr
        # Long before the next poll (60 s): only the bus's change events can tell it.
        child.expect_exact(f"boom on run {next_run}", timeout=10)
        child.send("q")
        child.expect(pexpect.EOF, timeout=5)
        child.close()
        assert child.exitstatus == 0


# -- errors --------------------------------------------------------------------------


def test_usage_errors_exit_2_before_the_store_is_read(tmp_path: Path) -> None:
    store = f"sqlite:///{tmp_path / 'absent.db'}"
    piped = run_cli("top", store=store)
    assert_clean_failure(piped, 2)
    assert "not a terminal" in piped.stderr and "--once" in piped.stderr
    assert "add --once" in run_cli("top", "--json", store=store).stderr
    assert_clean_failure(run_cli("top", "--once", "-i", "0", store=store), 2)


def test_an_unreachable_store_exits_69_with_a_message(tmp_path: Path) -> None:
    absent = tmp_path / "absent.db"
    missing = run_cli("top", "--once", store=f"sqlite:///{absent}")
    assert_clean_failure(missing, 69)
    assert "there is no store at" in missing.stderr and not absent.exists()
    refused = run_cli("top", "--once", "--json", store="postgresql://tw:s3cret@127.0.0.1:1/tw")
    assert_clean_failure(refused, 69)
    assert "cannot open the store at postgresql://tw:***@127.0.0.1:1/tw" in refused.stderr
    assert "s3cret" not in refused.stderr


@pytest.mark.slow
def test_the_live_view_of_an_unreachable_store_or_bus_exits_69_on_a_sane_terminal(
    tmp_path: Path,
) -> None:
    with _top("--store", f"sqlite:///{tmp_path / 'absent.db'}") as child:
        child.expect_exact("there is no store at")
        child.expect(pexpect.EOF)
        child.close()
        assert child.exitstatus == 69 and "Traceback" not in _written(child)
    store = asyncio.run(_empty_store(tmp_path / "tw.db"))
    with _top("--store", store, "--bus", "redis://127.0.0.1:1/0") as child:
        child.expect_exact("cannot reach the bus at redis://127.0.0.1:1/0")
        child.expect(pexpect.EOF)
        assert "\x1b[?1049h" not in _written(child)  # never entered the alternate screen
        flags = _lflag(child)
        assert flags & termios.ICANON and flags & termios.ECHO
        child.close()
        assert child.exitstatus == 69


async def _empty_store(path: Path) -> str:
    url = f"sqlite:///{path}"
    async with open_store(url):
        pass
    return url


# -- the sampler ---------------------------------------------------------------------


async def test_the_sampler_reads_a_bounded_page_and_counts_the_runs_between_samples() -> None:
    """30 runs held by an embedded engine (a lease owner with no worker record) show as a
    page of 10 with more to come; once they end, the next sample counts 30 done since the
    last, and a burst larger than the history batch is a lower bound until the batch grows."""
    gate, all_started, started = asyncio.Event(), asyncio.Event(), [0]

    async def hold(ctx: ProcessContext) -> None:
        ctx.report_progress(10, "held")
        started[0] += 1
        if started[0] == 30:
            all_started.set()
        await gate.wait()

    async def tick(ctx: ProcessContext) -> None:
        ctx.report_progress(100, "tick")

    held = [TaskInstance(execute=hold, process_id=f"hold-{n:02}", name="Hold") for n in range(30)]
    ticks = [TaskInstance(execute=tick, process_id=f"tick-{n:03}", name="Tick") for n in range(150)]

    async def definitions(services: object) -> list[TaskInstance]:
        return held + ticks

    engine = Engine(
        "memory://",
        get_task_definitions=definitions,
        registry=OperationRegistry(),
        progress_flush_interval=0.0,
        engine_id="embedded-engine",
    )
    await engine.init()
    try:
        for task in held:
            await engine.launch(task.process_id)
        await asyncio.wait_for(all_started.wait(), BOUND)
        sampler = Sampler(engine.store)
        first = await sampler.sample(running_limit=10)
        assert [r.process_id for r in first.running] == [t.process_id for t in held[:10]]
        assert first.more_running and {r.state for r in first.running} == {ProcessState.RUNNING}
        [owner] = first.workers
        assert (owner.name, owner.status, owner.runs) == ("embedded-engine", "unknown", 10)
        assert first.throughput.interval is None and sum(first.throughput.minute.values()) == 0

        gate.set()
        for task in held:
            await engine.wait(task.process_id)
        second = await sampler.sample(running_limit=10)
        assert second.running == [] and not second.more_running and second.workers == []
        assert second.throughput.interval is not None and second.throughput.interval > 0
        assert dict(second.throughput.recent) == {"done": 30, "failed": 0, "cancelled": 0}
        assert second.throughput.minute["done"] == 30 and not second.throughput.minute_at_least

        for task in ticks:
            await engine.launch_and_wait(task.process_id)
        burst = await sampler.sample()
        assert burst.throughput.minute["done"] == 100 and burst.throughput.minute_at_least
        assert burst.throughput.recent["done"] == 100 and burst.throughput.recent_at_least
        grown = await sampler.sample()
        assert grown.throughput.minute["done"] == 180 and not grown.throughput.minute_at_least
        assert grown.throughput.recent["done"] == 0
    finally:
        await engine.shutdown(timeout=5.0)
