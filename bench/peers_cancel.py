"""Peer job queues' abort of a running job from another process: procrastinate, saq, arq.

    python bench/peers_cancel.py bench --peer procrastinate|saq|arq --variant default|tuned
                                       --redis-url URL --pg-url URL [--trials 50]
    python bench/peers_cancel.py worker ...          # spawned by `bench`, not by hand

Runs in ``bench/.venv-cancel-peers`` (their pins stay out of taskwarden's venv); called by
``bench_remote_cancel.py`` once per case and repeat; prints one JSON line with the
latencies. Measured as for taskwarden and as the peer anchors were: a worker process runs a
job that stamps ``time.monotonic()`` into a sink file when it starts and in its
``finally:``; the driver waits for the start stamp, lets it run ``--cancel-after`` seconds,
takes ``t0`` and calls the peer's documented abort API (in a background task, since some
wait for the worker's confirmation); latency = the ``finally:`` stamp - ``t0``. One
warm-up trial is not counted.

* procrastinate (PostgreSQL, a fresh database per run, dropped afterwards):
  ``job_manager.cancel_job_by_id_async(id, abort=True)``; the worker hears it by NOTIFY and
  cancels the job's task. default: ``run_worker_async`` defaults (polling fallback 5 s);
  tuned: ``fetch_job_polling_interval=0.1, abort_job_polling_interval=0.1``.
* saq (Redis, a fresh queue name): ``job.abort(...)``. default: abort timer 1 s (the worker
  looks for aborts every second); tuned: ``timers={"abort": 0.1}``.
* arq (Redis, a fresh queue name): ``job.abort(timeout=30)`` with ``allow_abort_jobs=True``.
  default: ``poll_delay=0.5``; tuned: ``poll_delay=0.01``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from importlib.metadata import version
from pathlib import Path
from typing import Any

from stamp_sink import Sink

HERE = Path(__file__).resolve()

# ---------------------------------------------------------------------------- job side
_sink_fd: int | None = None


def stamp(tag: str, seq: int) -> None:
    """Append ``<tag> <seq> <time.monotonic()>`` to the sink file (``BENCH_SINK``)."""
    global _sink_fd
    if _sink_fd is None:
        _sink_fd = os.open(os.environ["BENCH_SINK"], os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    os.write(_sink_fd, f"{tag} {seq} {time.monotonic():.7f}\n".encode())


async def sleeper(seq: int) -> None:
    """Stamps its start, sleeps until cancelled, stamps its ``finally:``."""
    stamp("S", seq)
    try:
        await asyncio.Event().wait()
    finally:
        stamp("E", seq)


# ---------------------------------------------------------------------------- peers
class Peer:
    """One peer: producer side in the driver, ``run_worker`` in the worker process."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args

    async def open(self) -> None: ...
    async def close(self) -> None: ...
    async def enqueue(self, seq: int) -> Any:
        raise NotImplementedError

    async def abort(self, handle: Any) -> None:
        raise NotImplementedError

    async def run_worker(self) -> None:
        raise NotImplementedError

    def versions(self) -> dict[str, str]:
        return {}


class Procrastinate(Peer):
    def _app(self) -> Any:
        import procrastinate

        app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=self.args.pg_url))

        @app.task(name="sleeper")
        async def job(seq: int) -> None:
            await sleeper(seq)

        return app

    async def open(self) -> None:
        self.app = self._app()
        self._cm = self.app.open_async()
        await self._cm.__aenter__()

    async def close(self) -> None:
        await self._cm.__aexit__(None, None, None)

    async def enqueue(self, seq: int) -> Any:
        return await self.app.tasks["sleeper"].defer_async(seq=seq)

    async def abort(self, handle: Any) -> None:
        await self.app.job_manager.cancel_job_by_id_async(handle, abort=True)

    async def run_worker(self) -> None:
        app = self._app()
        options: dict[str, Any] = {}
        if self.args.variant == "tuned":
            options = {"fetch_job_polling_interval": 0.1, "abort_job_polling_interval": 0.1}
        async with app.open_async():
            await app.run_worker_async(
                concurrency=10, install_signal_handlers=False, wait=True, **options
            )

    def versions(self) -> dict[str, str]:
        return {"procrastinate": version("procrastinate"), "psycopg": version("psycopg")}


class Saq(Peer):
    def _queue(self) -> Any:
        from saq import Queue

        return Queue.from_url(self.args.redis_url, name=self.args.queue)

    async def open(self) -> None:
        self.queue = self._queue()
        await self.queue.connect()

    async def close(self) -> None:
        redis = self.queue.redis
        keys = [key async for key in redis.scan_iter(match=f"*{self.args.queue}*")]
        if keys:
            await redis.delete(*keys)
        await self.queue.disconnect()

    async def enqueue(self, seq: int) -> Any:
        return await self.queue.enqueue("sleeper", seq=seq, timeout=0)  # 0: no job timeout

    async def abort(self, handle: Any) -> None:
        await handle.abort("bench abort")

    async def run_worker(self) -> None:
        from saq import Worker

        async def job(ctx: Any, *, seq: int) -> None:
            await sleeper(seq)

        job.__name__ = job.__qualname__ = "sleeper"
        queue = self._queue()
        timers = {"abort": 0.1} if self.args.variant == "tuned" else None
        worker = Worker(queue, functions=[job], concurrency=10, timers=timers)
        await queue.connect()
        await worker.start()

    def versions(self) -> dict[str, str]:
        return {"saq": version("saq"), "redis-py (saq, arq)": version("redis")}


class Arq(Peer):
    def _settings(self) -> Any:
        from arq.connections import RedisSettings

        return RedisSettings.from_dsn(self.args.redis_url)

    async def open(self) -> None:
        from arq import create_pool

        self.pool = await create_pool(self._settings(), default_queue_name=self.args.queue)
        self.ids: list[str] = []

    async def close(self) -> None:
        keys = [self.args.queue, f"{self.args.queue}:health-check"]
        for job_id in self.ids:
            keys += [f"arq:{kind}:{job_id}" for kind in ("job", "result", "in-progress", "retry")]
        await self.pool.delete(*keys)
        if self.ids:
            await self.pool.zrem("arq:abort", *self.ids)
        await self.pool.aclose()

    async def enqueue(self, seq: int) -> Any:
        job = await self.pool.enqueue_job("sleeper", seq)
        self.ids.append(job.job_id)
        return job

    async def abort(self, handle: Any) -> None:
        await handle.abort(timeout=30)

    async def run_worker(self) -> None:
        from arq.worker import Worker, func

        async def job(ctx: Any, seq: int) -> None:
            await sleeper(seq)

        worker = Worker(
            functions=[func(job, name="sleeper")],
            redis_settings=self._settings(),
            queue_name=self.args.queue,
            max_jobs=10,
            poll_delay=0.01 if self.args.variant == "tuned" else 0.5,
            allow_abort_jobs=True,
            handle_signals=False,
        )
        await worker.async_run()

    def versions(self) -> dict[str, str]:
        return {"arq": version("arq")}


PEERS: dict[str, type[Peer]] = {"procrastinate": Procrastinate, "saq": Saq, "arq": Arq}


# ---------------------------------------------------------------------------- driver side


def psql_admin(server_url: str, sql: str) -> None:
    import psycopg

    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(sql)


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    tag = uuid.uuid4().hex[:8]
    args.queue = f"bench{tag}"
    database = None
    if args.peer == "procrastinate":
        database = f"procrastinate_{tag}"
        psql_admin(args.pg_url, f"CREATE DATABASE {database}")
        server_url = args.pg_url
        args.pg_url = server_url.rsplit("/", 1)[0] + "/" + database
    peer = PEERS[args.peer](args)
    sink = Sink(Path(args.tmpdir) / f"{args.peer}_{args.variant}_{tag}.sink")
    latencies: list[float] = []
    failed = 0
    error = None
    pending: set[asyncio.Task[None]] = set()
    try:
        await peer.open()
        if args.peer == "procrastinate":
            await peer.app.schema_manager.apply_schema_async()  # type: ignore[attr-defined]
        env = dict(os.environ, BENCH_SINK=str(sink.path), PYTHONUNBUFFERED="1")
        log = sink.path.with_suffix(".worker.log").open("wb")
        worker = await asyncio.create_subprocess_exec(
            *[
                sys.executable,
                str(HERE),
                "worker",
                "--peer",
                args.peer,
                "--variant",
                args.variant,
                "--redis-url",
                args.redis_url,
                "--pg-url",
                args.pg_url,
                "--queue",
                args.queue,
            ],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            for seq in range(args.trials + 1):  # trial 0 warms the worker up
                handle = await peer.enqueue(seq)
                if not await sink.wait_for("S", seq, 60, 0.002):
                    raise RuntimeError(f"the job did not start; see {log.name}")
                await asyncio.sleep(args.cancel_after)
                t0 = time.monotonic()
                task = asyncio.create_task(peer.abort(handle))
                pending.add(task)
                task.add_done_callback(pending.discard)
                if await sink.wait_for("E", seq, args.cancel_timeout, 0.001):
                    if seq > 0:
                        latencies.append((sink.ends[seq] - t0) * 1e3)
                elif seq > 0:
                    failed += 1
        finally:
            for task in list(pending):
                task.cancel()
            if pending:
                await asyncio.wait(list(pending))
            worker.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(worker.wait(), 10)
            except TimeoutError:
                worker.kill()
                await worker.wait()
            log.close()
    except Exception as exc:
        error = f"{type(exc).__name__}: {exc}"
    finally:
        with contextlib.suppress(Exception):
            await peer.close()
        if database is not None:
            with contextlib.suppress(Exception):
                psql_admin(server_url, f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")
    return {
        "peer": args.peer,
        "variant": args.variant,
        "latencies_ms": latencies,
        "failed": failed,
        "error": error,
        "versions": peer.versions(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("mode", choices=["bench", "worker"])
    parser.add_argument("--peer", choices=sorted(PEERS), required=True)
    parser.add_argument("--variant", choices=["default", "tuned"], default="default")
    parser.add_argument("--redis-url", default=os.environ.get("BENCH_REDIS_URL", ""))
    parser.add_argument("--pg-url", default=os.environ.get("BENCH_PG_URL", ""))
    parser.add_argument("--trials", type=int, default=50)
    parser.add_argument("--cancel-after", type=float, default=0.05)
    parser.add_argument("--cancel-timeout", type=float, default=15.0)
    parser.add_argument("--queue", default="bench")
    parser.add_argument("--tmpdir", default="/tmp")
    args = parser.parse_args()
    if args.mode == "worker":
        asyncio.run(PEERS[args.peer](args).run_worker())
        return
    print(json.dumps(asyncio.run(bench(args))))


if __name__ == "__main__":
    main()
