"""Benchmark the bus backends and the worker registry; prints a markdown table of medians.

    python bench/bench_bus.py [--runs 5]

Servers: ``BENCH_REDIS_URL`` / ``BENCH_PG_URL`` when set (e.g. the local services on
127.0.0.1), otherwise throwaway servers started the way the test suite does. A backend
whose server is unavailable is reported as skipped. The floor for Redis is
``redis-benchmark -t ping`` with one client against the same server (when installed).

Measured, per run:

* request/reply round trip p50: sequential ``request()`` calls to an echo handler served
  by a second bus (so every call crosses the server twice);
* publish throughput: awaited ``publish()`` calls from one bus until a subscriber on a
  second bus has received them all (end to end, messages per second);
* ``WorkerRegistry.snapshot()`` over 10,000 workers, and ``record()`` ingest rate.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import io
import os
import shutil
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from tests.servers import throwaway_postgres, throwaway_redis

from taskwarden.abc import Bus, BusMessage
from taskwarden.bus import open_bus
from taskwarden.bus.local import LocalBus, LocalHub
from taskwarden.clock import FakeClock
from taskwarden.heartbeat import WorkerRegistry

ROUND_TRIPS = 500
MESSAGES = 5000
WORKERS = 10_000


async def echo(message: BusMessage) -> Mapping[str, Any]:
    return message.payload


def pair(kind: str, url: str | None) -> tuple[Bus, Bus]:
    if kind == "local":
        hub = LocalHub()
        return LocalBus(hub), LocalBus(hub)
    assert url is not None
    prefix = "bench" + uuid.uuid4().hex[:8]
    return open_bus(f"{url}?prefix={prefix}"), open_bus(f"{url}?prefix={prefix}")


async def round_trip_p50(kind: str, url: str | None) -> float:
    """Median microseconds of one request/reply."""
    client, server = pair(kind, url)
    async with client, server:
        await server.serve("bench.echo", echo)
        for _ in range(50):
            await client.request("bench.echo", {"n": 0})
        samples = []
        for n in range(ROUND_TRIPS):
            started = time.perf_counter()
            await client.request("bench.echo", {"n": n})
            samples.append(time.perf_counter() - started)
    return statistics.median(samples) * 1e6


async def publish_rate(kind: str, url: str | None) -> float:
    """Messages per second, first publish to last receipt."""
    publisher, subscriber = pair(kind, url)
    sub = subscriber.subscribe("bench.events.*", max_buffer=MESSAGES * 2)
    async with publisher, subscriber, sub:
        await publisher.publish("bench.events.warm", {"i": -1})
        await anext(sub)

        async def consume() -> None:
            for _ in range(MESSAGES):
                await anext(sub)

        consumer = asyncio.create_task(consume())
        started = time.perf_counter()
        for i in range(MESSAGES):
            await publisher.publish("bench.events.x", {"i": i, "worker": "w-1"})
        await asyncio.wait_for(consumer, 120)
        elapsed = time.perf_counter() - started
    return MESSAGES / elapsed


def redis_ping_p50(url: str) -> float | None:
    """redis-benchmark's PING p50 with one client, in microseconds."""
    binary = shutil.which("redis-benchmark")
    if binary is None:
        return None
    parts = urlsplit(url)
    out = subprocess.run(
        [
            *(binary, "-h", parts.hostname or "127.0.0.1", "-p", str(parts.port or 6379)),
            *("-t", "ping", "-n", "20000", "-c", "1", "--csv"),
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rows = list(csv.DictReader(io.StringIO(out)))
    for row in rows:
        if row.get("test") == "PING_MBULK":
            return float(row["p50_latency_ms"]) * 1000
    return None


def snapshot_ms() -> float:
    clock = FakeClock()
    names = [f"worker-{i}" for i in range(WORKERS)]
    registry = WorkerRegistry(names, clock=clock)
    for name in names:
        registry.record(name, {"uptime": 1.0, "active": 3})
    clock.advance(1)
    registry.snapshot()  # fills the per-worker last-seen cache, as a live registry has
    samples = []
    for _ in range(20):
        started = time.perf_counter()
        registry.snapshot()
        samples.append(time.perf_counter() - started)
    return statistics.median(samples) * 1000


def ingest_rate() -> float:
    clock = FakeClock()
    names = [f"worker-{i}" for i in range(WORKERS)]
    registry = WorkerRegistry(names, clock=clock)
    beats = 200_000
    wall = clock.wall().timestamp()
    payloads = [{"name": names[i % WORKERS], "ts": wall + i, "uptime": 5.0} for i in range(beats)]
    started = time.perf_counter()
    for i, payload in enumerate(payloads):
        registry.record(names[i % WORKERS], payload)
    return beats / (time.perf_counter() - started)


ServerStarter = Callable[[], contextlib.AbstractContextManager[str | None]]


@contextlib.contextmanager
def server(env: str, start: ServerStarter) -> Iterator[str | None]:
    url = os.environ.get(env)
    if url:
        yield url
        return
    with start() as started:
        yield started


def fmt(values: list[float], digits: int = 0) -> str:
    if not values:
        return "skipped"
    return f"{statistics.median(values):,.{digits}f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    rows: list[tuple[str, str, str]] = []
    with (
        server("BENCH_REDIS_URL", throwaway_redis) as redis_url,
        server("BENCH_PG_URL", throwaway_postgres) as pg_url,
    ):
        urls = {"local": "memory://", "redis": redis_url, "postgres": pg_url}
        for kind, url in urls.items():
            trips: list[float] = []
            rates: list[float] = []
            if url is not None:
                for _ in range(args.runs):
                    trips.append(asyncio.run(round_trip_p50(kind, url)))
                    rates.append(asyncio.run(publish_rate(kind, url)))
            rows.append((f"request/reply round trip p50, {kind}", "µs", fmt(trips)))
            rows.append((f"publish throughput end to end, {kind}", "msg/s", fmt(rates)))
            if kind == "redis" and redis_url is not None:
                pings = [p for p in (redis_ping_p50(redis_url) for _ in range(args.runs)) if p]
                rows.append(("redis-benchmark PING p50 (1 client), floor", "µs", fmt(pings)))
        snaps = [snapshot_ms() for _ in range(args.runs)]
        ingests = [ingest_rate() for _ in range(args.runs)]
        rows.append((f"WorkerRegistry.snapshot(), {WORKERS:,} workers", "ms", fmt(snaps, 2)))
        rows.append(("WorkerRegistry.record() ingest", "beats/s", fmt(ingests)))
    print(
        f"\nMedians over {args.runs} runs (python {sys.version.split()[0]}, {os.cpu_count()} cpu)\n"
    )
    print("| measurement | unit | median |")
    print("| --- | --- | ---: |")
    for name, unit, value in rows:
        print(f"| {name} | {unit} | {value} |")


if __name__ == "__main__":
    main()
