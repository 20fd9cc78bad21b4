#!/usr/bin/env python3
"""The service's benchmarks (issue 8): event latency, store load, endpoints, dashboard weight.

    python bench/bench_service.py latency --store sqlite|postgres --clients 1|10|100
    python bench/bench_service.py queries --store sqlite|postgres --clients 1|100
    python bench/bench_service.py endpoints --store sqlite|postgres [--bus redis]
    python bench/bench_service.py weight
    python bench/bench_service.py run [--repeats 3]     # every case, interleaved: the table

Every case runs a real server, ``taskwarden serve`` without ``--app`` (a pure client of the
store and the bus, through ``service_server.py``, which counts its store calls), on a
loopback port, and a real worker OS process (``service_worker.py``) where one is needed.
The SSE clients are raw asyncio sockets in this process, all on ``/api/stream?topic=
processes`` (the dashboard's stream). SQLite runs without a bus; PostgreSQL with a Redis bus.

* ``latency``: 20 processes in the worker report progress every 1.2-2.0 s (random) for
  20 s; the worker stamps ``time.monotonic()`` when each progress write has committed;
  each client stamps when the frame carrying that message arrives. p50 and p99 over every
  (client, message) pair.
* ``queries``: 100 processes report every 0.2-0.3 s; over a 12 s window after a 5 s
  warm-up: the server's store calls per second, PostgreSQL's committed transactions and
  scans of the processes table per second (the whole database: worker and server), the
  worker's progress writes per second, the frames each client received, resyncs.
* ``endpoints``: 100,000 process records (1,000 trees of 1 + 9 + 90 nodes, 5% failed)
  inserted in bulk; p50 of ``GET /api/processes?limit=20`` with and without
  ``state=failed``, a 100-node ``/tree`` and one process, sequential on one keep-alive
  connection; the server's start time and RSS.
* ``weight``: the bytes of ``/`` and the assets it names, as served (and gzipped, for
  reference).

Servers: ``BENCH_PG_URL`` (default ``postgresql://postgres@127.0.0.1:5432/postgres``; each
case creates a fresh database and drops it) and ``BENCH_REDIS_URL`` (default
``redis://127.0.0.1:6379/0``; each case a fresh key prefix, whose keys it deletes; never
FLUSHDB).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gzip
import json
import os
import platform
import posixpath
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT / "src"))

from service_http import HOST, Http, connected  # noqa: E402
from service_seed import seed_postgres, seed_sqlite  # noqa: E402

PG_URL = os.environ.get("BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
URL_RE = re.compile(r"dashboard at http://[^:/]+:(\d+)/")
ASSET_RE = re.compile(r'(?:src|href)="([^"#]+)"')
IMPORT_RE = re.compile(r"""(?:from|import\()\s*["'](\.{1,2}/[^"']+)["']""")


def pct(values: list[float], p: float) -> float | None:
    """The ``p``-th percentile (nearest rank) of ``values``, or None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(p / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]


# --------------------------------------------------------------------------- namespaces
class Namespace:
    """A fresh store (a SQLite file or a PostgreSQL database) and, with ``bus``, a fresh
    Redis key prefix; both removed on exit."""

    def __init__(self, store: str, bus: str, tmp: Path) -> None:
        self.store = store
        self.db = ""
        tag = f"{os.getpid()}_{uuid.uuid4().hex[:8]}"
        if store == "sqlite":
            self.url = f"sqlite:///{tmp / 'service.db'}"
        else:
            self.db = f"twsvc_{tag}"
            self.url = PG_URL.rpartition("/")[0] + "/" + self.db
        self.redis_prefix = f"twsvc_{tag}" if bus == "redis" else ""
        sep = "&" if "?" in REDIS_URL else "?"
        self.bus_url = f"{REDIS_URL}{sep}prefix={self.redis_prefix}" if self.redis_prefix else ""

    async def __aenter__(self) -> Namespace:
        if self.db:
            import asyncpg

            admin = await asyncpg.connect(PG_URL)
            try:
                await admin.execute(f"CREATE DATABASE {self.db}")
            finally:
                await admin.close()
        from taskwarden.stores import open_store

        async with open_store(self.url):  # the schema, so a pure-client server may open it
            pass
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.db:
            import asyncpg

            admin = await asyncpg.connect(PG_URL)
            try:
                await admin.execute(f"DROP DATABASE IF EXISTS {self.db} WITH (FORCE)")
            finally:
                await admin.close()
        if self.redis_prefix:
            import redis.asyncio as aioredis

            client = aioredis.from_url(REDIS_URL)
            try:
                keys = [key async for key in client.scan_iter(match=f"{self.redis_prefix}:*")]
                if keys:
                    await client.delete(*keys)
            finally:
                await client.aclose()


# --------------------------------------------------------------------------- processes
def _read(path: Path) -> str:
    try:
        return path.read_text()
    except FileNotFoundError:
        return ""


def _rss_mb(pid: int) -> float | None:
    for line in _read(Path(f"/proc/{pid}/status")).splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return None


def _stop(proc: subprocess.Popen[Any] | None, grace: float = 15.0) -> None:
    """SIGTERM, then SIGKILL after ``grace`` seconds; always reaped."""
    if proc is None:
        return
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
    proc.wait(10)


class Server:
    """``taskwarden serve`` (no ``--app``) on a free loopback port, store calls counted."""

    def __init__(self, ns: Namespace, tmp: Path, *, coalesce: float | None = None) -> None:
        self.ns = ns
        self.log = tmp / "server.log"
        self.calls_file = tmp / "server-calls.json"
        self.coalesce = coalesce
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.started = 0.0

    def start(self) -> None:
        cmd = [sys.executable, str(HERE / "service_server.py"), "serve", "--store", self.ns.url,
               "--port", "0", "--host", HOST]  # fmt: skip
        if self.ns.bus_url:
            cmd += ["--bus", self.ns.bus_url]
        env = {**os.environ, "BENCH_STORE_CALLS": str(self.calls_file), "PYTHONUNBUFFERED": "1"}
        env.pop("TASKWARDEN_TOKEN", None)
        env.pop("TASKWARDEN_VIEWER_TOKEN", None)
        if self.coalesce is not None:
            env["BENCH_COALESCE"] = str(self.coalesce)
        self.started = time.monotonic()
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)

    async def wait_ready(self, within: float) -> float:
        """Seconds from the start to a 200 from ``/readyz``."""
        assert self.proc is not None
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited: {_read(self.log)[-2000:]}")
            if not self.port:
                found = URL_RE.search(_read(self.log))
                self.port = int(found.group(1)) if found else 0
            if self.port:
                with contextlib.suppress(OSError):
                    status, _ = await Http(self.port).get_once("/readyz")
                    if status == 200:
                        return time.monotonic() - self.started
            await asyncio.sleep(0.05)
        raise RuntimeError(f"the server was not ready within {within} s: {_read(self.log)[-2000:]}")

    def calls(self) -> tuple[float, dict[str, int]]:
        """The counter file's time stamp and the server's store calls by method so far."""
        data = json.loads(_read(self.calls_file) or '{"t": 0, "calls": {}}')
        return float(data["t"]), {k: int(v) for k, v in data["calls"].items()}

    def stop(self) -> None:
        _stop(self.proc)


class WorkerProcess:
    """``service_worker.py``: ``n`` processes that report progress, commits stamped."""

    def __init__(self, ns: Namespace, tmp: Path, *, n: int, every: tuple[float, float],
                 duration: float) -> None:  # fmt: skip
        self.sink = tmp / "commits.sink"
        self.log = tmp / "worker.log"
        self.cmd = [sys.executable, str(HERE / "service_worker.py"), "--store", ns.url,
                    "--n", str(n), "--every", str(every[0]), str(every[1]),
                    "--duration", str(duration), "--sink", str(self.sink)]  # fmt: skip
        if ns.bus_url:
            self.cmd += ["--bus", ns.bus_url]
        self.proc: subprocess.Popen[str] | None = None

    def start(self) -> None:
        self.sink.write_bytes(b"")
        with self.log.open("w") as err:
            self.proc = subprocess.Popen(
                self.cmd, stdout=subprocess.PIPE, stderr=err, text=True,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )  # fmt: skip

    async def wait_ready(self, within: float) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(self.proc.stdout.readline), within)
        if not line.startswith("ready"):
            raise RuntimeError(f"the worker did not start: {_read(self.log)[-2000:]}")

    def commits(self) -> dict[str, float]:
        """Each progress message and when its write returned (committed)."""
        out: dict[str, float] = {}
        for line in _read(self.sink).splitlines():
            key, _, stamp = line.partition(" ")
            if stamp:
                out.setdefault(key, float(stamp))
        return out

    def stop(self) -> None:
        _stop(self.proc)
        if self.proc is not None and self.proc.stdout is not None:
            self.proc.stdout.close()


async def launch_all(ns: Namespace, n: int) -> None:
    """Launch ``rep-0`` .. ``rep-<n-1>`` through the store, as ``taskwarden launch`` does."""
    from taskwarden.bus import open_bus
    from taskwarden.stores import open_store
    from taskwarden.worker import launch

    bus = open_bus(ns.bus_url) if ns.bus_url else None
    if bus is not None:
        await bus.open()
    try:
        async with open_store(ns.url) as store:
            for i in range(n):
                await launch(store, f"rep-{i}", bus=bus)
    finally:
        if bus is not None:
            await bus.close()


# --------------------------------------------------------------------------- cases
@contextlib.asynccontextmanager
async def _worker_and_server(
    ns: Namespace,
    tmp: Path,
    *,
    n: int,
    every: tuple[float, float],
    duration: float,
    coalesce: float | None = None,
) -> AsyncIterator[tuple[WorkerProcess, Server]]:
    """A reporting worker process and a server, both ready; both stopped on exit."""
    worker = WorkerProcess(ns, tmp, n=n, every=every, duration=duration)
    server = Server(ns, tmp, coalesce=coalesce)
    try:
        worker.start()
        await worker.wait_ready(60)
        server.start()
        await server.wait_ready(60)
        yield worker, server
    finally:
        server.stop()
        worker.stop()


async def case_latency(args: argparse.Namespace) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="twsvc-"))
    bus = "redis" if args.store == "postgres" else ""
    n, duration = args.processes, args.duration
    try:
        async with (
            Namespace(args.store, bus, tmp) as ns,
            _worker_and_server(
                ns, tmp, n=n, every=(1.2, 2.0), duration=duration, coalesce=args.coalesce
            ) as (worker, server),
        ):
            async with connected(
                server.port,
                args.clients,
                track=True,
                max_seconds=duration + 60,
                topic=args.topic,
            ) as clients:
                await launch_all(ns, n)
                await asyncio.sleep(duration + 3.0)
            commits = worker.commits()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    lat = [
        (at - commits[key]) * 1e3
        for c in clients
        for key, at in c.arrivals.items()
        if key in commits
    ]
    seen = sum(1 for c in clients for key in c.arrivals if key in commits)
    return {
        "commits": len(commits),
        "samples": len(lat),
        "seen_pct": 100.0 * seen / max(1, len(commits) * len(clients)),
        "p50_ms": pct(lat, 50),
        "p99_ms": pct(lat, 99),
        "max_ms": max(lat) if lat else None,
    }


async def _pg_counters(ns: Namespace) -> tuple[float, int, int]:
    import asyncpg

    conn = await asyncpg.connect(ns.url)
    try:
        xact = await conn.fetchval(
            "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()"
        )
        scans = await conn.fetchval(
            "SELECT COALESCE(seq_scan, 0) + COALESCE(idx_scan, 0) FROM pg_stat_user_tables "
            "WHERE relname = 'taskwarden_processes'"
        )
    finally:
        await conn.close()
    return time.monotonic(), int(xact), int(scans or 0)


def _metric(text: str, name: str) -> float | None:
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    return None


async def case_queries(args: argparse.Namespace) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="twsvc-"))
    bus = "redis" if args.store == "postgres" else ""
    n, warmup, window = 100, args.warmup, args.window
    duration = warmup + window + 3.0
    result: dict[str, Any] = {}
    try:
        async with (
            Namespace(args.store, bus, tmp) as ns,
            _worker_and_server(ns, tmp, n=n, every=(0.2, 0.3), duration=duration) as (
                worker,
                server,
            ),
            connected(
                server.port,
                args.clients,
                track=False,
                max_seconds=duration + 60,
                topic=args.topic,
            ) as clients,
        ):
            await launch_all(ns, n)
            await asyncio.sleep(warmup)
            t0, calls0 = server.calls()
            writes0 = len(_read(worker.sink).splitlines())
            frames0 = [c.frames for c in clients]
            pg0 = await _pg_counters(ns) if ns.db else None
            await asyncio.sleep(window)
            t1, calls1 = server.calls()
            writes1 = len(_read(worker.sink).splitlines())
            frames1 = [c.frames for c in clients]
            pg1 = await _pg_counters(ns) if ns.db else None
            _, metrics = await Http(server.port).get_once("/metrics")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    span = t1 - t0
    by_method = {k: (calls1[k] - calls0.get(k, 0)) / span for k in calls1}
    result["server_calls_per_s"] = sum(by_method.values())
    result["server_calls"] = {k: round(v, 1) for k, v in by_method.items() if v}
    result["writes_per_s"] = (writes1 - writes0) / window
    per_client = [(b - a) / window for a, b in zip(frames0, frames1, strict=True)]
    result["frames_per_client_s"] = statistics.median(per_client)
    result["min_frames_per_client_s"] = min(per_client)
    text = metrics.decode()
    result["resyncs"] = _metric(text, "taskwarden_sse_resyncs")
    result["sse_clients"] = _metric(text, "taskwarden_sse_clients")
    if pg0 is not None and pg1 is not None:
        dt = pg1[0] - pg0[0]
        result["pg_xact_per_s"] = (pg1[1] - pg0[1]) / dt
        result["pg_scans_per_s"] = (pg1[2] - pg0[2]) / dt
    return result


def _endpoints(records: int) -> dict[str, str]:
    root = f"root-{records // 200:05d}"  # a tree in the middle of the store
    return {
        "list": "/api/processes?limit=20",
        "list_failed": "/api/processes?limit=20&state=failed",
        "tree": f"/api/processes/{root}/tree",
        "get": f"/api/processes/{root}",
    }


async def case_endpoints(args: argparse.Namespace) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="twsvc-"))
    n = args.records
    endpoints = _endpoints(n)
    result: dict[str, Any] = {}
    try:
        async with Namespace(args.store, args.bus, tmp) as ns:
            t0 = time.monotonic()
            if ns.db:
                await seed_postgres(ns.url, n)
            else:
                await asyncio.to_thread(seed_sqlite, ns.url.removeprefix("sqlite:///"), n)
            result["seed_s"] = time.monotonic() - t0
            server = Server(ns, tmp)
            try:
                server.start()
                result["ready_s"] = await server.wait_ready(300)
                assert server.proc is not None
                result["rss_mb"] = _rss_mb(server.proc.pid)
                http = Http(server.port)
                samples: dict[str, list[float]] = {name: [] for name in endpoints}
                for name, path in endpoints.items():  # warm-up, and the answers' shape
                    status, body = await http.get(path)
                    if status != 200:
                        raise RuntimeError(f"{path}: {status} {body[:200]!r}")
                    doc = json.loads(body)
                    if "totalCount" in doc:
                        result[f"{name}_total"] = doc["totalCount"]
                    if name == "tree":
                        result["tree_nodes"] = _count_nodes(doc)
                    result[f"{name}_bytes"] = len(body)
                deadline = time.monotonic() + args.budget
                for _ in range(args.rounds):  # interleaved rounds, bounded in time too
                    for name, path in endpoints.items():
                        began = time.perf_counter()
                        status, _ = await http.get(path)
                        samples[name].append((time.perf_counter() - began) * 1e3)
                        assert status == 200, (path, status)
                    if time.monotonic() > deadline:
                        break
                await http.close()
            finally:
                server.stop()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    for name, values in samples.items():
        result[f"{name}_p50_ms"] = pct(values, 50)
        result[f"{name}_n"] = len(values)
    return result


def _count_nodes(doc: dict[str, Any]) -> int:
    return 1 + sum(_count_nodes(child) for child in doc.get("children", ()))


async def case_weight(args: argparse.Namespace) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="twsvc-"))
    files: dict[str, dict[str, int]] = {}
    try:
        async with Namespace("sqlite", "", tmp) as ns:
            server = Server(ns, tmp)
            try:
                server.start()
                await server.wait_ready(60)
                http = Http(server.port)
                status, page = await http.get("/")
                assert status == 200, status
                files["/"] = {"bytes": len(page), "gzip": len(gzip.compress(page, 9))}
                # What the page names, then what its scripts import (ES modules), once each.
                queue = [ref for ref in ASSET_RE.findall(page.decode()) if ":" not in ref]
                for _ in range(100):
                    if not queue:
                        break
                    ref = posixpath.normpath(queue.pop(0))
                    if ref in files:
                        continue
                    status, body = await http.get("/" + ref)
                    assert status == 200, (ref, status)
                    files[ref] = {"bytes": len(body), "gzip": len(gzip.compress(body, 9))}
                    if ref.endswith(".js"):
                        here = posixpath.dirname(ref)
                        queue += [posixpath.join(here, m) for m in IMPORT_RE.findall(body.decode())]
                await http.close()
            finally:
                server.stop()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {
        "files": files,
        "total_bytes": sum(f["bytes"] for f in files.values()),
        "total_gzip": sum(f["gzip"] for f in files.values()),
    }


# --------------------------------------------------------------------------- the table
def _cases(args: argparse.Namespace) -> dict[str, list[str]]:
    cases: dict[str, list[str]] = {"weight": ["weight"]}
    for store in ("sqlite", "postgres"):
        for clients in (1, 10, 100):
            cases[f"latency {store} {clients}"] = ["latency", "--store", store, "--clients",
                                                   str(clients)]  # fmt: skip
        cases[f"latency {store} 100 list"] = ["latency", "--store", store, "--clients",
                                              "100", "--topic", "processes"]  # fmt: skip
        for clients in (1, 100):
            cases[f"queries {store} {clients}"] = ["queries", "--store", store, "--clients",
                                                   str(clients)]  # fmt: skip
    for store, bus in (("sqlite", ""), ("sqlite", "redis"), ("postgres", "redis")):
        cases[f"endpoints {store} {bus}".strip()] = ["endpoints", "--store", store, "--bus", bus,
                                                     "--records", str(args.records)]  # fmt: skip
    if args.only:
        pattern = re.compile(args.only)
        cases = {k: v for k, v in cases.items() if pattern.search(k)}
    return cases


def _one(cmd: list[str]) -> dict[str, Any]:
    try:
        done = subprocess.run(
            [sys.executable, __file__, *cmd], capture_output=True, text=True, timeout=900
        )
    except subprocess.TimeoutExpired:
        return {"error": "timed out after 900 s"}
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if not lines:
        return {"error": (done.stderr.strip().splitlines() or ["no output"])[-1]}
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def _revision() -> str:
    try:
        rev = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(ROOT), "status", "--porcelain", "--", "src"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "(unknown revision)"
    return f"{rev}{' (src/ had uncommitted changes)' if dirty else ''}"  # fmt: skip


def run_table(args: argparse.Namespace) -> str:
    cases = _cases(args)
    results: dict[str, list[dict[str, Any]]] = {key: [] for key in cases}
    for repeat in range(args.repeats):
        for key, cmd in cases.items():  # interleaved: drift spreads over every case
            load = os.getloadavg()[0]  # other work on the machine shows here
            print(f"[{repeat + 1}/{args.repeats}] {key} (load {load:.1f})", file=sys.stderr,
                  flush=True)  # fmt: skip
            results[key].append({**_one(cmd), "load1": load})
            if "error" in results[key][-1]:
                print(f"    {results[key][-1]['error']}", file=sys.stderr, flush=True)
    return render(results, args)


def render(results: dict[str, list[dict[str, Any]]], args: argparse.Namespace) -> str:
    def med(key: str, field: str) -> float | None:
        values = [r[field] for r in results.get(key, []) if r.get(field) is not None]
        return statistics.median(values) if values else None

    def span(key: str, field: str) -> str:
        values = [r[field] for r in results.get(key, []) if r.get(field) is not None]
        return f" ({min(values):,.0f}-{max(values):,.0f})" if len(values) > 1 else ""

    def ms(value: float | None) -> str:
        return "-" if value is None else f"{value:,.1f} ms" if value < 100 else f"{value:,.0f} ms"

    def num(value: float | None, digits: int = 0) -> str:
        return "-" if value is None else f"{value:,.{digits}f}"

    out: list[str] = []
    w = out.append
    w("# The service (issue 8)\n")
    w(f"taskwarden {_revision()}, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, Python "
      f"{platform.python_version()} ({platform.machine()}, {os.cpu_count()} CPUs), "
      f"{args.repeats} repeat{'s' if args.repeats != 1 else ''} interleaved, medians "
      "(min-max over repeats). Server: "
      "`taskwarden serve` without `--app` (defaults: coalesce 0.25 s per process, poll 0.1 s "
      "without a bus), SSE clients on `/api/stream?topic=changes` (the dashboard's stream; "
      "`topic=processes`, optio's whole list per frame, where the table says so) as raw "
      "asyncio sockets in one "
      "driver process, a `taskwarden.worker.Worker` in another OS process. PostgreSQL "
      f"{_redact(PG_URL)}, Redis {_redact(REDIS_URL)}.\n")  # fmt: skip
    loads = [r["load1"] for runs in results.values() for r in runs if "load1" in r]
    if loads:
        w(f"1-minute load average before each case: median {statistics.median(loads):.1f}, "
          f"max {max(loads):.1f} (on {os.cpu_count()} CPUs; above that, other work shared "
          "the machine).\n")  # fmt: skip
    w("## Event latency: progress committed in a worker process -> SSE frame at the client\n")
    w("20 processes report every 1.2-2.0 s for 20 s; the worker stamps each write when it "
      "returns, each client when the frame with that message arrives; percentiles over every "
      "(client, message) pair.\n")  # fmt: skip
    w("| store | clients | p50 | p99 | messages seen | target (p50, 100 clients) |")
    w("| --- | ---: | ---: | ---: | ---: | --- |")
    for store, label, target in (
        ("sqlite", "SQLite, no bus (polls the store)", 150),
        ("postgres", "PostgreSQL + Redis bus", 50),
    ):
        for clients in ("1", "10", "100", "100 list"):
            key = f"latency {store} {clients}"
            if key not in results:
                continue
            p50 = med(key, "p50_ms")
            verdict = ""
            if clients == "100":
                verdict = f"<= {target} ms: {_verdict(p50, target)}"
            elif clients.endswith("list"):
                verdict = "optio's list topic: the whole list in every frame"
            shown = clients.replace(" list", " (`topic=processes`)")
            w(f"| {label} | {shown} | {ms(p50)} | {ms(med(key, 'p99_ms'))} "
              f"| {num(med(key, 'seen_pct'), 1)}% | {verdict} |")  # fmt: skip
    w("\n## Store load while 100 processes report progress (every 0.2-0.3 s)\n")
    w("Over 12 s after a 5 s warm-up. Server store calls: every call the server process made "
      "on its store (counted by wrapping the store's methods). PostgreSQL: the bench "
      "database's `xact_commit` and `seq_scan + idx_scan` of the processes table "
      "(`pg_stat_*`), i.e. the worker's writes plus the server's reads.\n")  # fmt: skip
    w("| store | clients | server store calls/s | PG commits/s | PG scans/s (processes) "
      "| worker progress writes/s | frames/s per client | resyncs |")  # fmt: skip
    w("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for store, label in (("sqlite", "SQLite, no bus"), ("postgres", "PostgreSQL + Redis")):
        for clients in (1, 100):
            key = f"queries {store} {clients}"
            if key not in results:
                continue
            w(f"| {label} | {clients} | {num(med(key, 'server_calls_per_s'), 1)}"
              f"{span(key, 'server_calls_per_s')} | {num(med(key, 'pg_xact_per_s'))} "
              f"| {num(med(key, 'pg_scans_per_s'))} | {num(med(key, 'writes_per_s'))} "
              f"| {num(med(key, 'frames_per_client_s'), 1)} "
              f"| {num(med(key, 'resyncs'))} |")  # fmt: skip
    for store, label in (("sqlite", "SQLite"), ("postgres", "PostgreSQL")):
        shown = []
        for clients in (1, 100):
            runs = [r for r in results.get(f"queries {store} {clients}", []) if "server_calls" in r]
            if runs:
                calls = ", ".join(f"`{k}` {v:,.1f}/s" for k, v in runs[0]["server_calls"].items())
                shown.append(f"{clients} client{'s' if clients > 1 else ''}: {calls or 'none'}")
        if shown:
            w(f"\n{label}, the server's store calls by method (first repeat): " + "; ".join(shown))
    w("\n## Endpoints with 100,000 process records, p50\n")
    w("1,000 trees of 1 + 9 + 90 nodes (5% failed), inserted in bulk; sequential requests "
      "on one keep-alive connection, rounds interleaved over the endpoints.\n")  # fmt: skip
    w("| store | `?limit=20` | `?limit=20&state=failed` | `/tree` (100 nodes) | one process "
      "| server ready after | server RSS | target (list p50) |")  # fmt: skip
    w("| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
    for key, label in (
        ("endpoints sqlite", "SQLite, no bus (polls the store every 0.1 s)"),
        ("endpoints sqlite redis", "SQLite + Redis bus"),
        ("endpoints postgres redis", "PostgreSQL + Redis bus"),
    ):
        if key not in results:
            continue
        lst, flt = med(key, "list_p50_ms"), med(key, "list_failed_p50_ms")
        worst = None if lst is None or flt is None else max(lst, flt)
        ready = med(key, "ready_s")
        w(f"| {label} | {ms(lst)} | {ms(flt)} | {ms(med(key, 'tree_p50_ms'))} "
          f"| {ms(med(key, 'get_p50_ms'))} | {num(ready, 1)} s | {num(med(key, 'rss_mb'))} MB "
          f"| <= 20 ms: {_verdict(worst, 20)} |")  # fmt: skip
    totals = [(k, r) for k in results if k.startswith("endpoints") for r in results[k][:1]]
    if totals and totals[0][1].get("list_total") is not None:
        r = totals[0][1]
        w(f"\n`totalCount` {r.get('list_total'):,} unfiltered, {r.get('list_failed_total'):,} "
          f"failed; response bodies {r.get('list_bytes', 0):,} B (a page), "
          f"{r.get('tree_bytes', 0):,} B (the tree).")  # fmt: skip
    weight = [r for r in results.get("weight", []) if "files" in r]
    if weight:
        w("\n## Dashboard weight: the first page load\n")
        w("| file | bytes as served | gzip -9 (for reference; not served compressed) |")
        w("| --- | ---: | ---: |")
        for name, sizes in weight[0]["files"].items():
            w(f"| `{name}` | {sizes['bytes']:,} | {sizes['gzip']:,} |")
        total = weight[0]["total_bytes"]
        w(f"| **total** | **{total:,}** | {weight[0]['total_gzip']:,} |")
        w(f"\nTarget under 300 kB: {_verdict(total / 1000, 300, strict=True)}.")
    w("\n## Store load flat in the number of clients\n")
    w("| store | server store calls/s, 1 client | 100 clients | ratio | target |")
    w("| --- | ---: | ---: | ---: | --- |")
    for store, label in (("sqlite", "SQLite, no bus"), ("postgres", "PostgreSQL + Redis")):
        one = med(f"queries {store} 1", "server_calls_per_s")
        hundred = med(f"queries {store} 100", "server_calls_per_s")
        ratio = None if not one or hundred is None else hundred / one
        w(f"| {label} | {num(one, 1)} | {num(hundred, 1)} | {num(ratio, 2)} "
          f"| no growth (<= 1.10): {_verdict(ratio, 1.10)} |")  # fmt: skip
    errors = {k: [r["error"] for r in v if "error" in r] for k, v in results.items()}
    failed = {k: e for k, e in errors.items() if e}
    if failed:
        w("\nErrors: " + "; ".join(f"{k}: {e}" for k, e in failed.items()))
    return "\n".join(out) + "\n"


def _verdict(value: float | None, bound: float, *, strict: bool = False) -> str:
    if value is None:
        return "-"
    ok = value < bound if strict else value <= bound
    return "PASS" if ok else "MISS"


def _redact(url: str) -> str:
    return re.sub(r"//[^@/]*@", "//", url.split("?")[0])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("mode", choices=["latency", "queries", "endpoints", "weight", "run"])
    ap.add_argument("--store", choices=["sqlite", "postgres"], default="sqlite")
    ap.add_argument("--bus", choices=["", "redis"], default="")
    ap.add_argument("--clients", type=int, default=1)
    ap.add_argument("--processes", type=int, default=20, help="latency: reporting processes")
    ap.add_argument("--duration", type=float, default=20.0, help="latency: seconds of reports")
    ap.add_argument("--coalesce", type=float, default=None, help="latency: diagnostic only")
    ap.add_argument(
        "--topic",
        default="changes",
        choices=["changes", "processes"],
        help="the stream's topic: changes (the dashboard's) or processes (optio's list)",
    )
    ap.add_argument("--warmup", type=float, default=5.0)
    ap.add_argument("--window", type=float, default=12.0)
    ap.add_argument("--records", type=int, default=100_000)
    ap.add_argument("--rounds", type=int, default=20, help="endpoints: at most this many")
    ap.add_argument("--budget", type=float, default=60.0, help="endpoints: seconds of rounds")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--only", default=None, help="run: a regex over the case keys")
    ap.add_argument("--out", default=str(HERE / "results" / "service.md"))
    args = ap.parse_args()
    if args.mode == "run":
        report = run_table(args)
        print(report, end="")
        if args.out:
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.out).write_text(report)
        return
    case = {
        "latency": case_latency,
        "queries": case_queries,
        "endpoints": case_endpoints,
        "weight": case_weight,
    }[args.mode]
    result = asyncio.run(case(args))
    print(json.dumps({"case": args.mode, "store": args.store, "clients": args.clients, **result}),
          flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
