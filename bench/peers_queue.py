#!/usr/bin/env python3
"""Peer job queues for the engine benchmarks: procrastinate and pgqueuer (PostgreSQL), saq
(Redis).

    python bench/peers_queue.py bench  --peer procrastinate|pgqueuer|saq --case drain|trickle
                                       [--workers 1] [--batch 10 (pgqueuer)]
                                       [--n 10000] [--concurrency 100] [--trickle 200 --rate 50]
    python bench/peers_queue.py worker --peer ...          # spawned by `bench`, not by hand

Runs in ``bench/.venv-peers`` (procrastinate, saq, psycopg, redis: their pins stay out of
taskwarden's venv). Servers: ``BENCH_PG_URL`` (procrastinate gets a fresh database there,
dropped afterwards) and ``BENCH_REDIS_URL`` (saq gets a fresh queue name, its keys deleted
afterwards), as for ``bench_engine.py``.

Measured the way the issue's anchor figures were: each job's only work is appending
``"<seq> <time.monotonic()>"`` to a sink file (CLOCK_MONOTONIC is system-wide, so the worker
process's stamps compare with the producer's).

* ``drain``: N jobs enqueued one after the other with no worker running, then ``--workers``
  fresh worker processes (``--concurrency`` jobs at once each) drain them;
  ``drain_per_s`` = (N - 1) / (first job start -> last job start): enqueueing and worker
  boot are excluded (favourable to the peer; taskwarden's drain counts its launches too).
  ``enqueue_per_s`` is also reported.
* ``trickle``: a warm, idle worker (1 s after its warm-up job ran); ``--trickle`` jobs
  enqueued on a fixed schedule of ``--rate`` per second; latency = the job's start stamp
  minus the time just before the enqueue call; p50 and p99.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from importlib.metadata import version
from pathlib import Path
from typing import Any

PG_URL = os.environ.get("BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")

_sink_fd: int | None = None


def stamp(seq: int) -> None:
    """The job side: record that job ``seq`` started, with the system-wide monotonic clock."""
    global _sink_fd
    if _sink_fd is None:
        _sink_fd = os.open(os.environ["BENCH_SINK"], os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    os.write(_sink_fd, f"{seq} {time.monotonic():.7f}\n".encode())


class Sink:
    """The producer side: reads the stamps the worker appended so far."""

    def __init__(self, path: str) -> None:
        self.path = path
        Path(path).write_bytes(b"")
        self.offset = 0
        self.rest = b""
        self.starts: dict[int, float] = {}

    def poll(self) -> None:
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            data = f.read()
        self.offset += len(data)
        lines = (self.rest + data).split(b"\n")
        self.rest = lines.pop()
        for line in lines:
            seq, ts = line.split()
            self.starts[int(seq)] = float(ts)

    async def wait_for(self, count: int, seconds: float, interval: float = 0.002) -> bool:
        deadline = time.monotonic() + seconds
        while True:
            self.poll()
            if len(self.starts) >= count:
                return True
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(interval)


def pct(values: list[float], p: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


# --------------------------------------------------------------------------- procrastinate
class Procrastinate:
    """procrastinate on PostgreSQL: ``defer_async`` to enqueue, ``run_worker_async`` to work."""

    name = "procrastinate"
    backend = "postgres"

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.dsn = os.environ.get("BENCH_PEER_DSN", "")
        self.app: Any = None
        self.db = ""

    def _make_app(self, dsn: str) -> Any:
        import procrastinate

        app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=dsn))

        @app.task(name="noop")
        async def noop(seq: int) -> None:
            stamp(seq)

        self.noop = noop
        return app

    async def setup(self) -> dict[str, str]:
        import psycopg

        base, _, _ = PG_URL.rpartition("/")
        self.db = f"pqbench_{os.getpid()}_{uuid.uuid4().hex[:8]}"
        async with await psycopg.AsyncConnection.connect(PG_URL, autocommit=True) as conn:
            await conn.execute(f"CREATE DATABASE {self.db}")
        self.dsn = f"{base}/{self.db}"
        self.app = self._make_app(self.dsn)
        self._cm = self.app.open_async()
        await self._cm.__aenter__()
        await self.app.schema_manager.apply_schema_async()
        return {"BENCH_PEER_DSN": self.dsn}

    async def close(self) -> None:
        import psycopg

        await self._cm.__aexit__(None, None, None)
        async with await psycopg.AsyncConnection.connect(PG_URL, autocommit=True) as conn:
            await conn.execute(f"DROP DATABASE IF EXISTS {self.db} WITH (FORCE)")

    async def enqueue(self, seq: int) -> None:
        await self.noop.defer_async(seq=seq)

    async def work(self) -> None:
        app = self._make_app(self.dsn)
        async with app.open_async():
            await app.run_worker_async(
                concurrency=self.args.concurrency, install_signal_handlers=False, wait=True
            )

    def versions(self) -> dict[str, str]:
        return {"version": version("procrastinate"), "driver": f"psycopg {version('psycopg')}"}


# --------------------------------------------------------------------------- saq
class Saq:
    """saq on Redis: ``Queue.enqueue`` to enqueue, a ``Worker`` to work."""

    name = "saq"
    backend = "redis"

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.queue_name = os.environ.get("BENCH_PEER_QUEUE", "")
        self.queue: Any = None

    async def setup(self) -> dict[str, str]:
        from saq import Queue

        self.queue_name = f"twbench-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.queue = Queue.from_url(REDIS_URL, name=self.queue_name)
        await self.queue.connect()
        return {"BENCH_PEER_QUEUE": self.queue_name}

    async def close(self) -> None:
        redis = self.queue.redis
        keys = [key async for key in redis.scan_iter(match=f"*{self.queue_name}*", count=1000)]
        for start in range(0, len(keys), 1000):
            await redis.delete(*keys[start : start + 1000])
        await self.queue.disconnect()

    async def enqueue(self, seq: int) -> None:
        await self.queue.enqueue("saq_noop", seq=seq)

    async def work(self) -> None:
        from saq import Queue, Worker

        queue = Queue.from_url(REDIS_URL, name=self.queue_name)
        worker = Worker(queue, functions=[saq_noop], concurrency=self.args.concurrency)
        await queue.connect()
        await worker.start()

    def versions(self) -> dict[str, str]:
        return {"version": version("saq"), "driver": f"redis-py {version('redis')}"}


async def saq_noop(ctx: Any, *, seq: int) -> None:
    """saq's job: saq names functions by their qualified name, so it lives at module level."""
    stamp(seq)


# --------------------------------------------------------------------------- pgqueuer
class PgQueuer:
    """pgqueuer on PostgreSQL (asyncpg): ``Queries.enqueue`` to enqueue, a ``QueueManager``
    per worker; ``--batch`` is its dequeue batch size (its default is 10)."""

    name = "pgqueuer"
    backend = "postgres"

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.dsn = os.environ.get("BENCH_PEER_DSN", "")
        self.db = ""
        self.conn: Any = None

    async def setup(self) -> dict[str, str]:
        import asyncpg
        from pgqueuer import AsyncpgDriver, Queries

        base, _, _ = PG_URL.rpartition("/")
        self.db = f"pgqbench_{os.getpid()}_{uuid.uuid4().hex[:8]}"
        admin = await asyncpg.connect(PG_URL)
        try:
            await admin.execute(f"CREATE DATABASE {self.db}")
        finally:
            await admin.close()
        self.dsn = f"{base}/{self.db}"
        self.conn = await asyncpg.connect(self.dsn)
        self.queries = Queries(AsyncpgDriver(self.conn))
        await self.queries.install()
        return {"BENCH_PEER_DSN": self.dsn}

    async def close(self) -> None:
        import asyncpg

        await self.conn.close()
        admin = await asyncpg.connect(PG_URL)
        try:
            await admin.execute(f"DROP DATABASE IF EXISTS {self.db} WITH (FORCE)")
        finally:
            await admin.close()

    async def enqueue(self, seq: int) -> None:
        await self.queries.enqueue("noop", str(seq).encode())

    async def work(self) -> None:
        import asyncpg
        from pgqueuer import AsyncpgDriver, Queries, QueueManager

        conn = await asyncpg.connect(self.dsn)
        qm = QueueManager(Queries(AsyncpgDriver(conn)))

        @qm.entrypoint("noop")
        async def noop(job: Any) -> None:
            stamp(int(job.payload))

        await qm.run(batch_size=self.args.batch)

    def versions(self) -> dict[str, str]:
        return {"version": version("pgqueuer"), "driver": f"asyncpg {version('asyncpg')}"}


PEERS = {"procrastinate": Procrastinate, "saq": Saq, "pgqueuer": PgQueuer}


# --------------------------------------------------------------------------- the driver
class Worker:
    """One worker process of the peer, started fresh for a case."""

    def __init__(self, args: argparse.Namespace, sink: str, env: dict[str, str]) -> None:
        self.log = open(Path(sink).with_suffix(".worker.log"), "w")  # noqa: SIM115
        cmd = [
            sys.executable,
            os.path.abspath(__file__),
            "worker",
            "--peer",
            args.peer,
            "--concurrency",
            str(args.concurrency),
            "--batch",
            str(args.batch),
        ]
        self.proc = subprocess.Popen(
            cmd,
            env={**os.environ, **env, "BENCH_SINK": sink, "PYTHONUNBUFFERED": "1"},
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


async def case_drain(peer: Any, args: argparse.Namespace, env: dict[str, str], tmp: str) -> dict:
    n = args.n
    sink = Sink(os.path.join(tmp, "drain.sink"))
    t0 = time.monotonic()
    for seq in range(n):
        await peer.enqueue(seq)
    enqueue_s = time.monotonic() - t0
    workers = [Worker(args, sink.path, env) for _ in range(args.workers)]
    try:
        ok = await sink.wait_for(n, args.timeout, interval=0.02)
    finally:
        for worker in workers:
            worker.stop()
    result: dict[str, Any] = {"enqueue_per_s": n / enqueue_s}
    if ok:
        stamps = sorted(sink.starts.values())
        result["drain_per_s"] = (n - 1) / (stamps[-1] - stamps[0])
    else:
        result["error"] = f"only {len(sink.starts)}/{n} jobs ran within {args.timeout}s"
    return result


async def case_trickle(peer: Any, args: argparse.Namespace, env: dict[str, str], tmp: str) -> dict:
    m, rate = args.trickle, args.rate
    sink = Sink(os.path.join(tmp, "trickle.sink"))
    worker = Worker(args, sink.path, env)
    sent: dict[int, float] = {}
    try:
        await peer.enqueue(-1)  # warm-up: the worker is up and connected
        if not await sink.wait_for(1, 60):
            raise RuntimeError(f"the worker did not start (see {sink.path[:-5]}.worker.log)")
        await asyncio.sleep(1.0)
        t0 = time.monotonic() + 0.05
        for seq in range(m):
            delay = t0 + seq / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            sent[seq] = time.monotonic()
            await peer.enqueue(seq)
        ok = await sink.wait_for(m + 1, 60)
    finally:
        worker.stop()
    lat = [(sink.starts[s] - sent[s]) * 1e3 for s in range(m) if s in sink.starts]
    return {
        "trickle_ok": ok,
        "lat_p50_ms": pct(lat, 50),
        "lat_p99_ms": pct(lat, 99),
        "lat_mean_ms": statistics.fmean(lat) if lat else None,
    }


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    peer = PEERS[args.peer](args)
    env = await peer.setup()
    tmp = tempfile.mkdtemp(prefix=f"twbench-{args.peer}-")
    try:
        case = {"drain": case_drain, "trickle": case_trickle}[args.case]
        result = await case(peer, args, env, tmp)
    finally:
        await peer.close()
    return {
        "peer": peer.name,
        "case": args.case,
        "backend": peer.backend,
        "concurrency": args.concurrency,
        "workers": args.workers,
        **({"batch": args.batch} if args.peer == "pgqueuer" else {}),
        **({"n": args.n} if args.case == "drain" else {}),
        **peer.versions(),
        **result,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("mode", choices=["bench", "worker"])
    ap.add_argument("--peer", required=True, choices=sorted(PEERS))
    ap.add_argument("--case", default="drain", choices=["drain", "trickle"])
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--concurrency", type=int, default=100)
    ap.add_argument("--workers", type=int, default=1, help="worker processes (drain)")
    ap.add_argument("--batch", type=int, default=10, help="pgqueuer's dequeue batch size")
    ap.add_argument("--trickle", type=int, default=200)
    ap.add_argument("--rate", type=float, default=50.0)
    ap.add_argument("--timeout", type=float, default=300.0)
    args = ap.parse_args()
    if args.mode == "worker":
        asyncio.run(PEERS[args.peer](args).work())
        return
    print(json.dumps(asyncio.run(bench(args))), flush=True)


if __name__ == "__main__":
    main()
