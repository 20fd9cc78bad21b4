"""Cancel a running process from another OS process over each bus; prints a markdown table.

    python bench/bench_remote_cancel.py [--repeats 3] [--trials 50] [--only redis,local]
                                        [--peers-python bench/.venv-cancel-peers/bin/python]
    python bench/bench_remote_cancel.py engine STORE BUS PREFIX VARIANT   # spawned, not by hand

Servers: ``BENCH_REDIS_URL`` / ``BENCH_PG_URL`` when set, otherwise throwaway servers started
from the installed binaries the way the test suite does (``tests/servers.py``). The peers
(``peers_cancel.py``: procrastinate, saq, arq) run in their own venv, on the same servers, in
the same run: every repeat runs every case once, round robin, so machine noise spreads.

What one trial measures (the method of the peer anchors): an engine process serves its
commands on the bus (``RemoteControl``); the driver launches the process over the bus, waits
until the job has stamped its start into a sink file, lets it run ``--cancel-after`` seconds,
takes ``t0 = time.monotonic()`` and sends ``RemoteClient.cancel``. The job's ``finally:``
stamps ``time.monotonic()`` (CLOCK_MONOTONIC is system-wide on Linux, so the stamps of two
processes compare); latency = that stamp - ``t0``. The driver reads the sink only after the
reply, so its polling never limits the number. Then it dismisses the process (the next trial
relaunches it). One warm-up trial per case is not counted.

Cases (each with both variants):

* ``forced``: ``cancel_grace=0`` and a job that never looks at its context (it awaits an
  event that never fires): the engine cancels its task at once.
* ``cooperative``: the default ``cancel_grace`` and a job that loops on
  ``ctx.should_continue()`` / ``await ctx.wait_cancelled()``: it returns by itself.

Buses: ``redis`` (engine on a SQLite store, Redis bus), ``postgres`` (a fresh PostgreSQL
database as the store and the bus), ``local`` (engine and client in one process on an
in-process bus and a SQLite store: the floor with no network between them).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve()
ROOT = HERE.parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "src"))

from stamp_sink import Sink  # noqa: E402
from tests.servers import throwaway_postgres, throwaway_redis  # noqa: E402

from taskwarden.abc import Bus  # noqa: E402
from taskwarden.bus import open_bus  # noqa: E402
from taskwarden.bus.local import LocalBus, LocalHub  # noqa: E402
from taskwarden.engine import Engine, ProcessContext, TaskInstance  # noqa: E402
from taskwarden.registry import OperationRegistry  # noqa: E402
from taskwarden.remote import RemoteClient, RemoteControl  # noqa: E402
from taskwarden.scope import Cancelable  # noqa: E402

PROCESS = "bench-sleeper"
TARGET_MS = 2.0
VARIANTS = ("forced", "cooperative")
BUSES = ("redis", "postgres", "local")
PEERS = (  # (peer, variant) run by peers_cancel.py
    ("procrastinate", "default"),
    ("procrastinate", "tuned"),
    ("saq", "default"),
    ("saq", "tuned"),
    ("arq", "default"),
    ("arq", "tuned"),
)
PEER_NOTES = {
    ("procrastinate", "default"): "PostgreSQL, NOTIFY; polling fallback 5 s",
    ("procrastinate", "tuned"): "PostgreSQL, abort/fetch polling 0.1 s",
    ("saq", "default"): "Redis, abort timer 1 s",
    ("saq", "tuned"): 'Redis, timers={"abort": 0.1}',
    ("arq", "default"): "Redis, poll_delay 0.5 s, allow_abort_jobs",
    ("arq", "tuned"): "Redis, poll_delay 0.01 s",
}


# ---------------------------------------------------------------------------- job side
_sink_fd: int | None = None
_runs = itertools.count()


def stamp(tag: str, seq: int) -> None:
    """Append ``<tag> <seq> <time.monotonic()>`` to the sink file (``BENCH_SINK``)."""
    global _sink_fd
    if _sink_fd is None:
        _sink_fd = os.open(os.environ["BENCH_SINK"], os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    os.write(_sink_fd, f"{tag} {seq} {time.monotonic():.7f}\n".encode())


async def forced_job(ctx: ProcessContext) -> None:
    """Never checks its context: only the forced cancel (grace 0) can stop it."""
    seq = next(_runs)
    stamp("S", seq)
    try:
        await asyncio.Event().wait()
    finally:
        stamp("E", seq)


async def cooperative_job(ctx: ProcessContext) -> None:
    """Polls ``should_continue()`` and sleeps on ``wait_cancelled()``: returns by itself."""
    seq = next(_runs)
    stamp("S", seq)
    try:
        while ctx.should_continue():
            await ctx.wait_cancelled()
    finally:
        stamp("E", seq)


def make_engine(store: str, variant: str) -> Engine:
    """An engine whose one definition is the variant's job."""
    job = forced_job if variant == "forced" else cooperative_job

    async def definitions(services: object) -> list[TaskInstance]:
        return [TaskInstance(execute=job, process_id=PROCESS, name="bench sleeper")]

    if variant == "forced":
        return Engine(
            store, get_task_definitions=definitions, registry=OperationRegistry(), cancel_grace=0.0
        )
    return Engine(store, get_task_definitions=definitions, registry=OperationRegistry())


def probe(label: str) -> None:
    """Profile mode: stamp ``P <label> <time.monotonic()>`` into the sink."""
    global _sink_fd
    if _sink_fd is None:
        _sink_fd = os.open(os.environ["BENCH_SINK"], os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    os.write(_sink_fd, f"P {label.replace(' ', '_')} {time.monotonic():.7f}\n".encode())


def install_probes(engine: Engine, bus: Bus) -> None:
    """Stamp the steps of a cancel: the request handler, each store call, each publish,
    the scope's cancel (``--profile``: the breakdown of where the time goes)."""

    def timed(obj: Any, name: str, label: Callable[..., str]) -> None:
        original = getattr(obj, name)

        async def wrapper(*args: Any, **kwargs: Any) -> Any:
            text = label(*args, **kwargs)
            probe(f"{text}>")
            try:
                result = await original(*args, **kwargs)
            except Exception as exc:
                probe(f"{text}!{type(exc).__name__}")
                raise
            probe(f"{text}<")
            return result

        setattr(obj, name, wrapper)

    def transition_label(pid: str, expected: Any, to: Any, *a: Any, **k: Any) -> str:
        names = "|".join(sorted(str(s) for s in expected))
        return f"store.transition:{names}->{to}"

    timed(engine.store, "get", lambda *a, **k: "store.get")
    timed(engine.store, "transition", transition_label)
    timed(bus, "publish", lambda topic, *a, **k: f"bus.publish:{topic.rsplit('.', 1)[-1]}")
    serve = bus.serve

    async def serve_probed(pattern: str, handler: Any) -> None:
        verb = pattern.rsplit(".", 1)[-1]

        async def probed(message: Any) -> Any:
            probe(f"handler:{verb}>")
            try:
                return await handler(message)
            finally:
                probe(f"handler:{verb}<")

        await serve(pattern, probed)

    bus.serve = serve_probed  # type: ignore[method-assign]
    cancel_sync = Cancelable.cancel_sync
    if getattr(cancel_sync, "probed", False):
        return

    def cancel_probed(self: Cancelable, *args: Any, **kwargs: Any) -> bool:
        probe("scope.cancel_sync")
        return cancel_sync(self, *args, **kwargs)

    cancel_probed.probed = True  # type: ignore[attr-defined]
    Cancelable.cancel_sync = cancel_probed  # type: ignore[method-assign]


async def engine_main(store: str, bus_url: str, prefix: str, variant: str) -> None:
    """The engine process: serve commands until SIGTERM."""
    engine = make_engine(store, variant)
    await engine.init()
    async with open_bus(bus_url) as bus:
        if os.environ.get("BENCH_PROFILE"):
            install_probes(engine, bus)
        async with RemoteControl(engine, bus, prefix=prefix):
            print("ready", flush=True)
            await engine.run()


# ---------------------------------------------------------------------------- driver side
@dataclass
class Outcome:
    """Latencies of one case in one repeat."""

    latencies_ms: list[float] = field(default_factory=list)
    failed: int = 0
    error: str | None = None
    timelines: list[list[tuple[str, float]]] = field(default_factory=list)


def pct(values: list[float], p: float) -> float | None:
    """The nearest-rank percentile (the peer-bench definition)."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


async def settle(client: RemoteClient) -> None:
    """Dismiss the ended run so the next trial can launch it again."""
    deadline = time.monotonic() + 30
    while True:
        result = await client.dismiss(PROCESS)
        if result.ok:
            return
        if result.reason != "invalid-state" or time.monotonic() > deadline:
            raise RuntimeError(f"dismiss failed: {result}")
        await asyncio.sleep(0.002)


async def cancel_trials(
    client: RemoteClient, sink: Sink, trials: int, cancel_after: float, profile: bool = False
) -> Outcome:
    """Launch, let it run, cancel, read the job's end stamp; one warm-up trial first."""
    outcome = Outcome()
    for seq in range(trials + 1):
        launched = await client.launch(PROCESS)
        if not launched.ok:
            raise RuntimeError(f"launch failed: {launched}")
        if not await sink.wait_for("S", seq, 30, 0.002):
            raise RuntimeError("the job did not start within 30 s")
        await asyncio.sleep(cancel_after)
        sink.poll()
        sink.probes.clear()
        t0 = time.monotonic()
        cancelled = await client.cancel(PROCESS)
        replied = time.monotonic()
        ended = await sink.wait_for("E", seq, 15, 0.001)
        if not cancelled.ok or not ended:
            outcome.failed += seq > 0
        elif seq > 0:
            outcome.latencies_ms.append((sink.ends[seq] - t0) * 1e3)
            if profile:
                await asyncio.sleep(0.02)  # the run's own end settles (its writes, events)
                sink.poll()
                marks = [*sink.probes, ("job.finally", sink.ends[seq]), ("client.reply", replied)]
                outcome.timelines.append(
                    sorted(((name, (ts - t0) * 1e3) for name, ts in marks), key=lambda m: m[1])
                )
        await settle(client)
    return outcome


@contextlib.asynccontextmanager
async def engine_process(
    store: str, bus_url: str, prefix: str, variant: str, sink: Path, profile: bool
) -> AsyncIterator[None]:
    """Start ``engine_main`` in its own OS process; stop it with SIGTERM."""
    env = dict(os.environ, BENCH_SINK=str(sink), PYTHONUNBUFFERED="1")
    if profile:
        env["BENCH_PROFILE"] = "1"
    log = sink.with_suffix(".engine.log").open("wb")
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(HERE),
        "engine",
        store,
        bus_url,
        prefix,
        variant,
        stdout=asyncio.subprocess.PIPE,
        stderr=log,
        env=env,
    )
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 60)
        if line.strip() != b"ready":
            raise RuntimeError(f"engine did not start; see {log.name}")
        yield
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), 30)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        log.close()


async def fresh_database(server_url: str) -> str:
    import asyncpg

    name = f"tw_cancel_{uuid.uuid4().hex[:10]}"
    conn = await asyncpg.connect(server_url)
    try:
        await conn.execute(f"CREATE DATABASE {name}")
    finally:
        await conn.close()
    return server_url.rsplit("/", 1)[0] + "/" + name


async def drop_database(server_url: str, url: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(server_url)
    try:
        await conn.execute(f"DROP DATABASE IF EXISTS {url.rsplit('/', 1)[1]} WITH (FORCE)")
    finally:
        await conn.close()


async def drop_redis_keys(url: str, prefix: str) -> None:
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(url)
    try:
        keys = [key async for key in client.scan_iter(match=f"{prefix}:*")]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


async def run_taskwarden(bus: str, variant: str, args: argparse.Namespace, tmp: Path) -> Outcome:
    """One case of taskwarden in one repeat."""
    tag = uuid.uuid4().hex[:8]
    sink = Sink(tmp / f"tw_{bus}_{variant}_{tag}.sink")
    os.environ["BENCH_SINK"] = str(sink.path)
    prefix = f"bench{tag}"
    if bus == "local":
        global _sink_fd, _runs
        _sink_fd = None
        _runs = itertools.count()
        hub = LocalHub()
        engine = make_engine(f"sqlite:///{tmp / f'local_{tag}.db'}", variant)
        await engine.init()
        server_bus = LocalBus(hub)
        if args.profile:
            install_probes(engine, server_bus)
        try:
            async with (
                server_bus,
                LocalBus(hub) as client_bus,
                RemoteControl(engine, server_bus, prefix=prefix),
            ):
                client = RemoteClient(client_bus, prefix=prefix, timeout=15)
                return await cancel_trials(
                    client, sink, args.trials, args.cancel_after, args.profile
                )
        finally:
            await engine.shutdown()
            if _sink_fd is not None:
                os.close(_sink_fd)
                _sink_fd = None
    if bus == "redis":
        store, bus_url = f"sqlite:///{tmp / f'redis_{tag}.db'}", args.redis_url
        cleanup = None
    else:
        store = bus_url = await fresh_database(args.pg_url)
        cleanup = store
    try:
        async with (
            engine_process(store, bus_url, prefix, variant, sink.path, args.profile),
            open_bus(bus_url) as client_bus,
        ):
            client = RemoteClient(client_bus, prefix=prefix, timeout=15)
            return await cancel_trials(client, sink, args.trials, args.cancel_after, args.profile)
    finally:
        if cleanup is not None:
            await drop_database(args.pg_url, cleanup)
        else:
            await drop_redis_keys(bus_url, prefix)


def run_peer(peer: str, variant: str, args: argparse.Namespace, tmp: Path) -> Outcome:
    """One peer case in one repeat: ``peers_cancel.py`` in the peers' venv."""
    cmd = [
        args.peers_python,
        str(HERE.parent / "peers_cancel.py"),
        "bench",
        "--peer",
        peer,
        "--variant",
        variant,
        "--trials",
        str(args.trials),
        "--cancel-after",
        str(args.cancel_after),
        "--redis-url",
        args.redis_url or "",
        "--pg-url",
        args.pg_url or "",
        "--tmpdir",
        str(tmp),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=1800, check=False)
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("{")]
    if done.returncode != 0 or not lines:
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        return Outcome(error=f"exit {done.returncode}: {' / '.join(tail)}"[:300])
    data = json.loads(lines[-1])
    PEER_VERSIONS.update(data.get("versions", {}))
    return Outcome(
        latencies_ms=data["latencies_ms"], failed=data["failed"], error=data.get("error")
    )


PEER_VERSIONS: dict[str, str] = {}


@contextlib.contextmanager
def server(
    env: str, start: Callable[[], contextlib.AbstractContextManager[str | None]]
) -> Iterator[tuple[str | None, str]]:
    """The server named by ``env``, else a throwaway one (None when it cannot start)."""
    if os.environ.get(env):
        yield os.environ[env], f"{env}"
        return
    with start() as url:
        yield url, "throwaway"


def timeline(outcomes: list[Outcome]) -> list[str]:
    """Median offset (ms from the request) of each step, the n-th occurrence of a label
    counted as its own step; steps seen in fewer than half of the trials are left out."""
    offsets: dict[tuple[str, int], list[float]] = defaultdict(list)
    trials = 0
    for outcome in outcomes:
        for marks in outcome.timelines:
            trials += 1
            seen: dict[str, int] = defaultdict(int)
            for name, ms in marks:
                offsets[(name, seen[name])].append(ms)
                seen[name] += 1
    steps = sorted(
        (
            (statistics.median(v), name, n)
            for (name, n), v in offsets.items()
            if len(v) * 2 >= trials
        ),
    )
    rows = ["| step | at ms (median) | since previous step |", "|---|---:|---:|"]
    previous = 0.0
    for at, name, n in steps:
        rows.append(f"| {name}{f' #{n + 1}' if n else ''} | {at:.3f} | {at - previous:+.3f} |")
        previous = at
    return rows


def fmt(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def git_revision() -> str:
    def git(*argv: str) -> str:
        done = subprocess.run(["git", *argv], cwd=ROOT, capture_output=True, text=True, check=False)
        return done.stdout.strip()

    rev = git("rev-parse", "--short", "HEAD") or "unknown"
    dirty = git("diff", "--name-only", "HEAD", "--", "src").split()
    if dirty:
        rev += f" (uncommitted changes in {', '.join(dirty)})"
    return rev


def report(
    results: dict[tuple[str, str, str], list[Outcome]],
    cases: list[tuple[str, str, str]],
    args: argparse.Namespace,
    servers: dict[str, str],
) -> str:
    out = [
        "# Cross-process cancel latency",
        "",
        f"taskwarden {git_revision()}, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
        f"Python {platform.python_version()}, {os.cpu_count()} CPUs; "
        f"{args.trials} trials per case (after 1 warm-up), {args.repeats} repeats, "
        f"cancel {args.cancel_after * 1000:g} ms after the job started. "
        f"Servers: Redis {servers['redis']}, PostgreSQL {servers['postgres']}.",
    ]
    if PEER_VERSIONS:
        out.append(
            "Peers: " + ", ".join(f"{k} {v}" for k, v in sorted(PEER_VERSIONS.items())) + "."
        )
    out += [
        "",
        "request -> the running job's `finally:` (ms; median over repeats of each repeat's "
        "p50 / p99; the p50 range is min-max over repeats)",
        "",
        "| system | bus / store | variant | p50 ms | p99 ms | p50 range | failed | target |",
        "|---|---|---|---:|---:|---|---:|---|",
    ]
    for case in cases:
        system, where, variant = case
        outcomes = results.get(case, [])
        p50s = [v for o in outcomes if (v := pct(o.latencies_ms, 50)) is not None]
        p99s = [v for o in outcomes if (v := pct(o.latencies_ms, 99)) is not None]
        p50 = statistics.median(p50s) if p50s else None
        p99 = statistics.median(p99s) if p99s else None
        span = f"{fmt(min(p50s))}-{fmt(max(p50s))}" if p50s else "-"
        failed = sum(o.failed for o in outcomes)
        errors = sorted({o.error for o in outcomes if o.error})
        target = ""
        if system == "taskwarden" and where.startswith("redis"):
            target = "PASS (<= 2 ms)" if p50 is not None and p50 <= TARGET_MS else "MISS (> 2 ms)"
        if errors:
            target = (target + " " + "; ".join(errors)).strip()[:200]
        out.append(
            f"| {system} | {where} | {variant} | {fmt(p50)} | {fmt(p99)} | {span} | "
            f"{failed} | {target} |"
        )
    out += [
        "",
        "taskwarden variants: `forced` = `cancel_grace=0`, a job that never checks its context; "
        "`cooperative` = default grace, a job on `should_continue()` / `wait_cancelled()`. "
        "`local` = engine and client in one process on the in-process bus (the floor).",
        "Peers: " + "; ".join(f"{p} {v}: {note}" for (p, v), note in PEER_NOTES.items()) + ".",
    ]
    if args.profile:
        for case in cases:
            outcomes = results.get(case, [])
            if any(o.timelines for o in outcomes):
                out += ["", f"### Profile: {' '.join(case)}", "", *timeline(outcomes)]
    return "\n".join(out)


async def drive(args: argparse.Namespace) -> None:
    only = set(args.only.split(",")) if args.only else None
    tmp = Path(tempfile.mkdtemp(prefix="tw_remote_cancel_"))
    with (
        server("BENCH_REDIS_URL", throwaway_redis) as (redis_url, redis_how),
        server("BENCH_PG_URL", throwaway_postgres) as (pg_url, pg_how),
    ):
        args.redis_url, args.pg_url = redis_url, pg_url
        servers = {
            "redis": f"{redis_how} ({redis_url})" if redis_url else "unavailable",
            "postgres": f"{pg_how} ({pg_url})" if pg_url else "unavailable",
        }
        print(f"# servers: {servers}", file=sys.stderr, flush=True)
        where = {
            "redis": "redis / sqlite",
            "postgres": "postgres / postgres",
            "local": "local / sqlite",
        }
        cases: list[tuple[str, str, str]] = []
        for bus in BUSES:
            if only and bus not in only:
                continue
            if (bus == "redis" and not redis_url) or (bus == "postgres" and not pg_url):
                continue
            cases += [("taskwarden", where[bus], variant) for variant in VARIANTS]
        peer_where = {"procrastinate": "postgres", "saq": "redis", "arq": "redis"}
        if args.peers_python:
            for peer, variant in PEERS:
                if only and peer not in only:
                    continue
                if (peer_where[peer] == "redis" and not redis_url) or (
                    peer_where[peer] == "postgres" and not pg_url
                ):
                    continue
                cases.append((peer, peer_where[peer], variant))
        results: dict[tuple[str, str, str], list[Outcome]] = defaultdict(list)
        for repeat in range(args.repeats):
            for case in cases:
                system, at, variant = case
                started = time.monotonic()
                try:
                    if system == "taskwarden":
                        bus = next(b for b, w in where.items() if w == at)
                        outcome = await run_taskwarden(bus, variant, args, tmp)
                    else:
                        outcome = await asyncio.to_thread(run_peer, system, variant, args, tmp)
                except Exception as exc:
                    outcome = Outcome(error=f"{type(exc).__name__}: {exc}"[:300])
                results[case].append(outcome)
                print(
                    f"# repeat {repeat + 1}/{args.repeats} {system} {at} {variant}: "
                    f"p50 {fmt(pct(outcome.latencies_ms, 50))} ms, "
                    f"p99 {fmt(pct(outcome.latencies_ms, 99))} ms, failed {outcome.failed}"
                    + (f", error {outcome.error}" if outcome.error else "")
                    + f" ({time.monotonic() - started:.1f} s)",
                    file=sys.stderr,
                    flush=True,
                )
    print(report(results, cases, args, servers))


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "engine":
        asyncio.run(engine_main(*sys.argv[2:6]))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--trials", type=int, default=50)
    parser.add_argument("--cancel-after", type=float, default=0.05)
    parser.add_argument(
        "--profile",
        action="store_true",
        help="stamp every step of the cancel in the engine and print the median timeline",
    )
    parser.add_argument(
        "--only", default="", help="comma list of buses (redis,postgres,local) and peers"
    )
    parser.add_argument(
        "--peers-python",
        default=str(HERE.parent / ".venv-cancel-peers" / "bin" / "python"),
        help="the interpreter with procrastinate, saq and arq ('' skips the peers)",
    )
    args = parser.parse_args()
    if args.peers_python and not os.path.exists(args.peers_python):
        print(f"# no {args.peers_python}: the peers are skipped", file=sys.stderr)
        args.peers_python = ""
    asyncio.run(drive(args))


if __name__ == "__main__":
    main()
