#!/usr/bin/env python3
"""In-process micro benchmarks of taskwarden's scope against asyncio, anyio and hother-cancelable.

One invocation runs ONE case ONCE in this (fresh) process and prints one JSON line, so that
the RSS figures belong to that case alone. ``run_micro.py`` repeats every case round-robin
in fresh processes and prints the medians and the issue's target ratios.

    python bench/micro.py --list
    python bench/micro.py t_seq_taskwarden_registered [--n 100000]

Case families (the prefix says which numbers a case reports):

- ``t_seq_*``: N sequential enter/exit of a scope around ``await noop()`` -> us/op.
- ``t_conc_*``: N tasks started at once, each entering a scope around ``await noop()``,
  awaited with ``asyncio.gather`` -> us/op (create -> all finished). ``t_conc_gather`` is
  the baseline: the same no-op coroutines as bare tasks.
- ``m_*``: N operations parked on one ``asyncio.Event``; RSS delta (all parked, minus
  before) / N, then the time to release them (``event.set``) or to cancel them all.
- ``c_*``: cancel latency of a running operation, one at a time: the time from the cancel
  request to the operation's ``finally:`` block -> p50 / p99 over ``--n`` trials.

``*_registered`` cases join a registry: taskwarden's process-wide default
(``OperationRegistry.get_instance()``, what ``Cancelable(name=...)`` does unless told
otherwise), hother-cancelable's global one (``register_globally=True``). Library imports
happen before any measurement starts: an import is not an operation.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import hashlib
import importlib.metadata
import json
import os
import resource
import statistics
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from typing import Any

import psutil

_PROCESS = psutil.Process()

# The classes under test, bound by _load() before a case starts, so that no case pays for an
# import statement per operation and a case imports only the library it measures.
AnyioCancelScope: Any = None
HotherCancelable: Any = None
HotherRegistry: Any = None
Cancelable: Any = None
OperationRegistry: Any = None

Case = Callable[[int], Awaitable[dict[str, Any] | None]]
CASES: dict[str, Case] = {}


def case(fn: Case) -> Case:
    """Register a case under its function name."""
    CASES[fn.__name__] = fn
    return fn


def rss_kib() -> int:
    """The resident set size of this process, in KiB."""
    return int(_PROCESS.memory_info().rss // 1024)


def peak_rss_kib() -> int:
    """The peak resident set size of this process, in KiB (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


async def noop() -> None:
    """The operation every case wraps: it does nothing and never suspends."""
    return None


# ------------------------------------------------------------------ sequential enter / exit
@case
async def t_seq_bare(n: int) -> None:
    """No scope at all: the loop and the await alone."""
    for _ in range(n):
        await noop()


@case
async def t_seq_asyncio_timeout(n: int) -> None:
    """The cheapest stdlib cancel scope."""
    for _ in range(n):
        async with asyncio.timeout(None):
            await noop()


@case
async def t_seq_anyio_cancelscope(n: int) -> None:
    """anyio's CancelScope (synchronous context manager)."""
    for _ in range(n):
        with AnyioCancelScope():
            await noop()


async def _seq_hother(n: int, register: bool) -> None:
    for i in range(n):
        async with HotherCancelable(name=f"op-{i}", register_globally=register):
            await noop()


@case
async def t_seq_hother(n: int) -> None:
    """hother-cancelable, not registered (its default)."""
    await _seq_hother(n, False)


@case
async def t_seq_hother_registered(n: int) -> None:
    """hother-cancelable in its global registry."""
    await _seq_hother(n, True)


@case
async def t_seq_taskwarden(n: int) -> None:
    """taskwarden with ``register=False``."""
    for i in range(n):
        async with Cancelable(name=f"op-{i}", register=False):
            await noop()


@case
async def t_seq_taskwarden_registered(n: int) -> None:
    """taskwarden in the default registry (the plain ``Cancelable(name=...)``)."""
    for i in range(n):
        async with Cancelable(name=f"op-{i}"):
            await noop()


@case
async def t_seq_taskwarden_registered_explicit(n: int) -> None:
    """taskwarden in an explicit ``OperationRegistry()`` passed to each scope."""
    registry = OperationRegistry()
    for i in range(n):
        async with Cancelable(name=f"op-{i}", registry=registry):
            await noop()


# ------------------------------------------------------------------ N concurrent tasks
async def _gather_tasks(coros: Iterable[Coroutine[Any, Any, None]]) -> None:
    tasks = [asyncio.create_task(coro) for coro in coros]
    await asyncio.gather(*tasks)


@case
async def t_conc_gather(n: int) -> None:
    """The baseline: bare tasks of the no-op coroutine, gathered."""
    await _gather_tasks(noop() for _ in range(n))


async def _wrapped_op(i: int) -> None:
    await noop()


@case
async def t_conc_wrapper(n: int) -> None:
    """A plain coroutine around the no-op (what a scope's host coroutine costs by itself)."""
    await _gather_tasks(_wrapped_op(i) for i in range(n))


async def _asyncio_timeout_op(i: int) -> None:
    async with asyncio.timeout(None):
        await noop()


@case
async def t_conc_asyncio_timeout(n: int) -> None:
    """Each task in an ``asyncio.timeout(None)``."""
    await _gather_tasks(_asyncio_timeout_op(i) for i in range(n))


async def _hother_op(i: int, register: bool) -> None:
    async with HotherCancelable(name=f"op-{i}", register_globally=register):
        await noop()


@case
async def t_conc_hother(n: int) -> None:
    """Each task in a hother-cancelable scope, not registered."""
    await _gather_tasks(_hother_op(i, False) for i in range(n))


@case
async def t_conc_hother_registered(n: int) -> None:
    """Each task in a hother-cancelable scope in its global registry."""
    await _gather_tasks(_hother_op(i, True) for i in range(n))


async def _taskwarden_op(i: int, register: bool) -> None:
    async with Cancelable(name=f"op-{i}", register=register):
        await noop()


@case
async def t_conc_taskwarden(n: int) -> None:
    """Each task in a taskwarden scope with ``register=False``."""
    await _gather_tasks(_taskwarden_op(i, False) for i in range(n))


@case
async def t_conc_taskwarden_registered(n: int) -> None:
    """Each task in a taskwarden scope in the default registry."""
    await _gather_tasks(_taskwarden_op(i, True) for i in range(n))


# ------------------------------------------------------------------ memory per pending op
Waiter = Callable[[asyncio.Event, Callable[[], None], int], Coroutine[Any, Any, None]]


async def _bare_waiter(event: asyncio.Event, mark: Callable[[], None], i: int) -> None:
    mark()
    await event.wait()


async def _hother_waiter(event: asyncio.Event, mark: Callable[[], None], i: int) -> None:
    async with HotherCancelable(name=f"op-{i}", register_globally=True):
        mark()
        await event.wait()


async def _taskwarden_waiter(event: asyncio.Event, mark: Callable[[], None], i: int) -> None:
    async with Cancelable(name=f"op-{i}"):
        mark()
        await event.wait()


async def _taskwarden_unregistered_waiter(
    event: asyncio.Event, mark: Callable[[], None], i: int
) -> None:
    async with Cancelable(name=f"op-{i}", register=False):
        mark()
        await event.wait()


async def _hold(
    n: int, waiter: Waiter, cancel_all: Callable[[list[asyncio.Task[None]]], Awaitable[Any]] | None
) -> dict[str, Any]:
    """Park n operations on one event, measure the RSS they hold, then end them all."""
    event = asyncio.Event()
    all_parked = asyncio.Event()
    parked = 0

    def mark() -> None:
        nonlocal parked
        parked += 1
        if parked == n:
            all_parked.set()

    gc.collect()
    before = rss_kib()
    t0 = time.perf_counter()
    tasks = [asyncio.create_task(waiter(event, mark, i)) for i in range(n)]
    await all_parked.wait()
    started = time.perf_counter() - t0
    gc.collect()
    held = rss_kib()
    t1 = time.perf_counter()
    if cancel_all is None:
        event.set()
    else:
        await cancel_all(tasks)
    await asyncio.gather(*tasks, return_exceptions=True)
    ended = time.perf_counter() - t1
    return {
        "rss_before_kib": before,
        "rss_held_kib": held,
        "bytes_per_op": (held - before) * 1024 / n,
        "start_us_per_op": started / n * 1e6,
        "end_us_per_op": ended / n * 1e6,
        "end_by": "release" if cancel_all is None else "cancel_all",
    }


@case
async def m_bare_task(n: int) -> dict[str, Any]:
    """Bare tasks parked on the event."""
    return await _hold(n, _bare_waiter, None)


@case
async def m_hother_registered(n: int) -> dict[str, Any]:
    """hother-cancelable scopes in its global registry."""
    return await _hold(n, _hother_waiter, None)


@case
async def m_taskwarden(n: int) -> dict[str, Any]:
    """taskwarden scopes with ``register=False``."""
    return await _hold(n, _taskwarden_unregistered_waiter, None)


@case
async def m_taskwarden_registered(n: int) -> dict[str, Any]:
    """taskwarden scopes in the default registry, released by the event."""
    return await _hold(n, _taskwarden_waiter, None)


@case
async def m_taskwarden_registered_cancel_all(n: int) -> dict[str, Any]:
    """taskwarden scopes in the default registry, ended by ``await registry.cancel_all()``."""

    async def cancel_all(_tasks: list[asyncio.Task[None]]) -> None:
        cancelled = await OperationRegistry.get_instance().cancel_all()
        if cancelled != n:
            raise RuntimeError(f"cancel_all cancelled {cancelled} of {n} operations")

    return await _hold(n, _taskwarden_waiter, cancel_all)


# ------------------------------------------------------------------ cancel latency
class _Probe:
    """One running operation's timing: when its ``finally`` ran."""

    __slots__ = ("handle", "running", "stopped", "t_stop")

    def __init__(self) -> None:
        self.running = asyncio.Event()
        self.stopped = asyncio.Event()
        self.t_stop = 0.0
        self.handle: Any = None

    async def body(self) -> None:
        """The operation: sleeps until cancelled, stamps the time in ``finally``."""
        try:
            self.running.set()
            await asyncio.sleep(3600)
        finally:
            self.t_stop = time.perf_counter()
            self.stopped.set()


async def _cancel_latency(
    trials: int,
    start: Callable[[_Probe], asyncio.Task[None]],
    request_cancel: Callable[[_Probe, asyncio.Task[None]], Awaitable[Any]],
) -> dict[str, Any]:
    latencies: list[float] = []
    for _ in range(trials):
        probe = _Probe()
        task = start(probe)
        await probe.running.wait()
        await asyncio.sleep(0)  # the operation is now parked in its sleep
        t0 = time.perf_counter()
        await request_cancel(probe, task)
        await probe.stopped.wait()
        latencies.append((probe.t_stop - t0) * 1e6)
        await asyncio.gather(task, return_exceptions=True)
    latencies.sort()
    return {
        "trials": trials,
        "p50_us": statistics.median(latencies),
        "p99_us": latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))],
        "max_us": latencies[-1],
    }


@case
async def c_bare_task(n: int) -> dict[str, Any]:
    """``task.cancel()`` on a bare task."""

    async def cancel(_probe: _Probe, task: asyncio.Task[None]) -> None:
        task.cancel()

    return await _cancel_latency(n, lambda probe: asyncio.create_task(probe.body()), cancel)


def _start_hother(register: bool) -> Callable[[_Probe], asyncio.Task[None]]:
    async def op(probe: _Probe) -> None:
        async with HotherCancelable(name="op", register_globally=register) as scope:
            probe.handle = scope
            await probe.body()

    return lambda probe: asyncio.create_task(op(probe))


@case
async def c_hother(n: int) -> dict[str, Any]:
    """``await scope.cancel()`` on an unregistered hother-cancelable scope."""

    async def cancel(probe: _Probe, _task: asyncio.Task[None]) -> None:
        await probe.handle.cancel()

    return await _cancel_latency(n, _start_hother(False), cancel)


@case
async def c_hother_registered(n: int) -> dict[str, Any]:
    """``await registry.cancel_operation(id)`` on a registered hother-cancelable scope."""
    registry = HotherRegistry.get_instance()

    async def cancel(probe: _Probe, _task: asyncio.Task[None]) -> None:
        await registry.cancel_operation(probe.handle.context.id)

    return await _cancel_latency(n, _start_hother(True), cancel)


def _start_taskwarden() -> Callable[[_Probe], asyncio.Task[None]]:
    async def op(probe: _Probe) -> None:
        async with Cancelable(name="op") as scope:
            probe.handle = scope
            await probe.body()

    return lambda probe: asyncio.create_task(op(probe))


@case
async def c_taskwarden(n: int) -> dict[str, Any]:
    """``scope.cancel_sync()`` on a registered taskwarden scope (grace period 0)."""

    async def cancel(probe: _Probe, _task: asyncio.Task[None]) -> None:
        probe.handle.cancel_sync()

    return await _cancel_latency(n, _start_taskwarden(), cancel)


@case
async def c_taskwarden_await_cancel(n: int) -> dict[str, Any]:
    """``await scope.cancel()`` on a registered taskwarden scope (grace period 0)."""

    async def cancel(probe: _Probe, _task: asyncio.Task[None]) -> None:
        await probe.handle.cancel()

    return await _cancel_latency(n, _start_taskwarden(), cancel)


@case
async def c_taskwarden_cancel_all(n: int) -> dict[str, Any]:
    """``await registry.cancel_all(name_pattern=<exact name>)`` on the default registry."""
    registry = OperationRegistry.get_instance()

    async def cancel(_probe: _Probe, _task: asyncio.Task[None]) -> None:
        await registry.cancel_all(name_pattern="op")

    return await _cancel_latency(n, _start_taskwarden(), cancel)


# ------------------------------------------------------------------ driver
def _load(name: str) -> dict[str, str]:
    """Import the library a case measures; return the versions of what it imported."""
    global AnyioCancelScope, HotherCancelable, HotherRegistry, Cancelable, OperationRegistry
    versions: dict[str, str] = {}
    if "anyio" in name:
        import anyio

        AnyioCancelScope = anyio.CancelScope
        versions["anyio"] = importlib.metadata.version("anyio")
    if "hother" in name:
        import hother.cancelable

        HotherCancelable = hother.cancelable.Cancelable
        HotherRegistry = hother.cancelable.OperationRegistry
        versions["hother-cancelable"] = importlib.metadata.version("hother-cancelable")
    if "taskwarden" in name:
        import taskwarden.registry
        import taskwarden.scope

        Cancelable = taskwarden.scope.Cancelable
        OperationRegistry = taskwarden.registry.OperationRegistry
        versions["taskwarden"] = importlib.metadata.version("taskwarden")
    return versions


def default_n(name: str) -> int:
    """How many ops (or cancel trials) a case runs unless told."""
    return 1000 if name.startswith("c_") else 100_000


# The modules on the measured path; the package's __init__ pulls in much more that no case runs.
_MEASURED_MODULES = (
    "taskwarden.scope",
    "taskwarden.registry",
    "taskwarden.history",
    "taskwarden.model",
)


def taskwarden_source_digest() -> str | None:
    """A short hash of the taskwarden modules the cases measure, or None if none is loaded.

    Other engineers edit ``src/`` while benchmarks run: the runner compares these digests
    to say whether every case measured the same code.
    """
    digest = hashlib.sha256()
    found = False
    for key in _MEASURED_MODULES:
        path = getattr(sys.modules.get(key), "__file__", None)
        if path is None:
            continue
        found = True
        with open(path, "rb") as fh:
            digest.update(fh.read())
    return digest.hexdigest()[:12] if found else None


def run_case(name: str, n: int) -> dict[str, Any]:
    """Run one case once in this process and return its measurements."""
    fn = CASES[name]
    versions = _load(name)

    async def measured() -> tuple[int, float, dict[str, Any] | None]:
        gc.collect()
        base = rss_kib()
        t0 = time.perf_counter()
        extra = await fn(n)
        return base, time.perf_counter() - t0, extra

    base, elapsed, extra = asyncio.run(measured())
    out: dict[str, Any] = {
        "case": name,
        "n": n,
        "elapsed_s": elapsed,
        "rss_base_kib": base,
        "rss_peak_kib": peak_rss_kib(),
        "python": sys.version.split()[0],
        "versions": versions,
        "taskwarden_src": taskwarden_source_digest(),
        "pid": os.getpid(),
    }
    if name.startswith("t_"):
        out["us_per_op"] = elapsed / n * 1e6
    if extra:
        out.update(extra)
    return out


def main() -> None:
    """Command line: list the cases, or run one and print its JSON line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("case", nargs="?", help="the case to run (see --list)")
    parser.add_argument("--n", type=int, default=None, help="ops, or cancel trials for c_*")
    parser.add_argument("--list", action="store_true", help="print the case names")
    args = parser.parse_args()
    if args.list or not args.case:
        print("\n".join(CASES))
        return
    if args.case not in CASES:
        parser.error(f"unknown case {args.case!r}; --list shows the cases")
    print(json.dumps(run_case(args.case, args.n or default_n(args.case))))


if __name__ == "__main__":
    main()
