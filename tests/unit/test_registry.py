"""OperationRegistry: lookups, bulk cancel, history queries, cleanup, tree, stats, stuck ops."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Callable

import pytest

from taskwarden.model import CancelationReason, OperationStatus
from taskwarden.registry import OperationRegistry
from taskwarden.scope import Cancelable

BOUND = 5.0


class Running:
    """Keeps a set of scopes open in their own tasks until released."""

    def __init__(self, registry: OperationRegistry) -> None:
        self.registry = registry
        self.scopes: dict[str, Cancelable] = {}
        self.tasks: list[asyncio.Task[None]] = []
        self.release = asyncio.Event()

    async def start(self, name: str, **kwargs: object) -> Cancelable:
        entered = asyncio.Event()

        async def body() -> None:
            async with Cancelable(name=name, registry=self.registry, **kwargs) as op:  # type: ignore[arg-type]
                self.scopes[name] = op
                entered.set()
                await self.release.wait()

        self.tasks.append(asyncio.create_task(body()))
        await entered.wait()
        return self.scopes[name]

    async def finish(self) -> None:
        self.release.set()
        await asyncio.wait_for(asyncio.gather(*self.tasks), BOUND)


@pytest.fixture
async def running() -> AsyncIterator[Running]:
    ops = Running(OperationRegistry())
    yield ops
    await ops.finish()


async def test_lookup_by_id_name_and_parent(running: Running) -> None:
    registry = running.registry
    parent = await running.start("parent")
    assert registry.get_operation(parent.id) is parent.context
    assert registry.get_operation_by_name("parent") is parent.context
    assert registry.get_operation("nope") is None
    assert registry.get_operation_by_name("nope") is None
    assert registry.get_children("nope") == []
    assert registry.get_scope(parent.id) is parent


async def test_same_name_returns_most_recent_and_survives_removal(running: Running) -> None:
    registry = running.registry
    async with Cancelable(name="dup", registry=registry) as first:
        async with Cancelable(name="dup", registry=registry) as second:
            assert registry.get_operation_by_name("dup") is second.context
            assert len(registry.get_operations_by_name("dup")) == 2
        assert registry.get_operation_by_name("dup") is first.context
    assert registry.get_operation_by_name("dup") is None


async def test_finished_operations_leave_the_active_set(running: Running) -> None:
    registry = running.registry
    async with Cancelable(name="short", registry=registry) as op:
        assert op.context in registry.get_active_operations()
    assert registry.get_active_operations() == []
    assert registry.get_operation(op.id) is None


async def test_get_history_filters_by_status_limit_and_since(running: Running) -> None:
    registry = running.registry
    async with Cancelable(name="ok-1", registry=registry):
        pass
    cutoff = time.time()
    async with Cancelable(name="cancelled", registry=registry) as op:
        op.cancel_sync()
        await asyncio.sleep(BOUND)
    with pytest.raises(RuntimeError):
        async with Cancelable(name="failed", registry=registry):
            raise RuntimeError("x")
    async with Cancelable(name="ok-2", registry=registry):
        pass
    names = [c.name for c in await registry.get_history()]
    assert names == ["ok-2", "failed", "cancelled", "ok-1"]
    assert [c.name for c in await registry.get_history(limit=2)] == ["ok-2", "failed"]
    completed = await registry.get_history(status=OperationStatus.COMPLETED)
    assert [c.name for c in completed] == ["ok-2", "ok-1"]
    assert [c.name for c in await registry.get_history(status="cancelled")] == ["cancelled"]
    recent = await registry.get_history(since=cutoff)
    assert "ok-1" not in [c.name for c in recent]


async def test_cancel_all_by_glob_counts_what_it_cancelled(running: Running) -> None:
    for name in ("user_123_a", "user_123_b", "user_456_a"):
        await running.start(name)
    registry = running.registry
    assert await registry.cancel_all(name_pattern="user_123_*") == 2
    assert running.scopes["user_123_a"].is_cancelled
    assert not running.scopes["user_456_a"].is_cancelled
    assert await registry.cancel_all(name_pattern="user_123_*") == 0  # already cancelled


async def test_cancel_all_by_exact_name_uses_the_index(running: Running) -> None:
    for i in range(50):
        await running.start(f"other-{i}")
    await running.start("target")
    seen: list[str] = []

    def spy(scope: Cancelable) -> bool:
        seen.append(scope.name)
        return True

    assert await running.registry.cancel_all(name_pattern="target", filter_func=spy) == 1
    assert seen == ["target"]


async def test_cancel_all_by_age(running: Running) -> None:
    old = await running.start("old")
    old.context.start_time -= 600  # pretend it started ten minutes ago
    await running.start("new")
    registry = running.registry
    assert await registry.cancel_all(min_age_seconds=300, reason=CancelationReason.TIMEOUT) == 1
    assert old.context.cancel_reason is CancelationReason.TIMEOUT
    assert await registry.cancel_all(max_age_seconds=300) == 1
    assert running.scopes["new"].is_cancelled


async def test_cancel_all_with_filter_func_on_metadata(running: Running) -> None:
    await running.start("low", metadata={"priority": "low"})
    await running.start("high", metadata={"priority": "high"})
    cancelled = await running.registry.cancel_all(
        filter_func=lambda op: op.context.metadata.get("priority") == "low",
        message="shed load",
    )
    assert cancelled == 1
    assert running.scopes["low"].context.cancel_message == "shed load"
    assert not running.scopes["high"].is_cancelled


async def test_cleanup_completed_frees_finished_operations() -> None:
    registry = OperationRegistry()
    for i in range(3):
        async with Cancelable(name=f"op-{i}", registry=registry):
            pass
    history = await registry.get_history()
    history[-1].end_time = time.time() - 7200  # the oldest ended two hours ago
    assert await registry.cleanup_completed(max_age_seconds=3600) == 1
    assert len(await registry.get_history()) == 2
    assert await registry.cleanup_completed() == 2
    assert await registry.get_history() == []


async def test_clear_forgets_everything(running: Running) -> None:
    await running.start("live")
    async with Cancelable(name="done", registry=running.registry):
        pass
    running.registry.clear()
    assert running.registry.get_active_operations() == []
    assert await running.registry.get_history() == []


async def test_tree_nests_live_children(running: Running) -> None:
    registry = running.registry
    await running.start("other-root")
    async with Cancelable(name="root", registry=registry):
        async with Cancelable(name="mid", registry=registry):
            orphan = await running.start("orphan")  # a task started inside "mid"
            tree = registry.tree()
            by_name = {node.context.name: node for node in tree}
            assert set(by_name) == {"root", "other-root"}
            mid = by_name["root"].children[0]
            assert mid.context.name == "mid"
            assert [n.context.name for n in mid.children] == ["orphan"]
    # "orphan" outlived its parents: once they ended it is a root of the tree.
    assert orphan.context.parent_id is not None
    assert {node.context.name for node in registry.tree()} == {"other-root", "orphan"}


async def test_render_tree_shows_names_and_progress(running: Running) -> None:
    from io import StringIO

    from rich.console import Console

    op = await running.start("render-me")
    op.report_progress(42, "crunching")
    out = StringIO()
    Console(file=out, width=200).print(running.registry.render_tree())
    text = out.getvalue()
    assert "render-me" in text and "42%" in text and "crunching" in text


async def test_stats_counts_by_status_and_finds_longest(running: Running) -> None:
    first = await running.start("first")
    first.context.start_time -= 100
    await running.start("second")
    stats = running.registry.stats()
    assert stats.active == 2
    assert stats.by_status == {"running": 2}
    assert stats.longest_running is first.context
    assert stats.longest_elapsed >= 100


async def test_find_stuck_shows_where_the_coroutine_awaits(running: Running) -> None:
    registry = running.registry
    entered = asyncio.Event()

    async def waits_on_a_lock_forever() -> None:
        async with Cancelable(name="stuck", registry=registry):
            entered.set()
            await asyncio.Event().wait()

    task = asyncio.create_task(waits_on_a_lock_forever())
    await entered.wait()
    await running.start("fresh")
    stuck_op = registry.get_operation_by_name("stuck")
    assert stuck_op is not None
    stuck_op.start_time -= 400
    stuck = registry.find_stuck(300)
    assert [s.context.name for s in stuck] == ["stuck"]
    assert stuck[0].elapsed >= 400
    assert any("waits_on_a_lock_forever" in frame for frame in stuck[0].stack)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


def test_get_instance_is_a_process_wide_singleton() -> None:
    OperationRegistry.set_instance(None)
    try:
        first = OperationRegistry.get_instance()
        assert OperationRegistry.get_instance() is first
        mine = OperationRegistry()
        OperationRegistry.set_instance(mine)
        assert OperationRegistry.get_instance() is mine
    finally:
        OperationRegistry.set_instance(None)


def test_registry_is_safe_to_read_from_another_thread_while_ops_run() -> None:
    registry = OperationRegistry(history_size=50_000)
    stop = threading.Event()
    errors: list[BaseException] = []
    reads = 0

    def reader() -> None:
        nonlocal reads
        readers: list[Callable[[], object]] = [
            registry.get_active_operations,
            registry.tree,
            registry.stats,
            lambda: registry.find_stuck(0),
            lambda: registry.get_operation_by_name("op-1"),
            lambda: registry.history.get_all(),
        ]
        while not stop.is_set():
            try:
                for read in readers:
                    read()
                reads += 1
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)
                return

    async def writer() -> None:
        async def op(i: int) -> None:
            async with Cancelable(name=f"op-{i % 10}", registry=registry):
                await asyncio.sleep(0)

        for _ in range(20):
            await asyncio.gather(*(op(i) for i in range(500)))

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        asyncio.run(writer())
    finally:
        stop.set()
        thread.join(BOUND)
    assert errors == []
    assert reads > 0
    assert len(registry.history) == 10_000


async def test_default_registry_feeds_the_seed_001_facade() -> None:
    from taskwarden.history import ExecutionHistory, ExecutionRegistry, set_default_history

    previous = set_default_history(ExecutionHistory())
    OperationRegistry.set_instance(None)
    try:
        async with Cancelable(name="seen-by-facade"):
            pass
        latest = ExecutionRegistry.get_latest()
        assert latest is not None and latest.name == "seen-by-facade"
    finally:
        OperationRegistry.set_instance(None)
        set_default_history(previous)
