"""Cancelable scopes: statuses, cancel sources, the ladder, parents and children, progress."""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import signal
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from taskwarden.model import CancelationReason, OperationStatus
from taskwarden.registry import OperationRegistry
from taskwarden.scope import Cancelable, CancelationToken, current_operation

BOUND = 5.0  # seconds: an upper bound for anything that should happen at once


@pytest.fixture
def registry() -> Iterator[OperationRegistry]:
    reg = OperationRegistry()
    OperationRegistry.set_instance(reg)
    yield reg
    OperationRegistry.set_instance(None)


async def test_block_that_returns_is_completed_with_times(registry: OperationRegistry) -> None:
    async with Cancelable(name="ok", registry=registry) as op:
        assert op.context.status is OperationStatus.RUNNING
        assert op.context.end_time is None
    ctx = op.context
    assert ctx.status is OperationStatus.COMPLETED
    assert ctx.end_time is not None and ctx.end_time >= ctx.start_time
    assert ctx.cancel_reason is None
    assert ctx.elapsed_time == ctx.duration


async def test_elapsed_time_grows_while_running_and_is_fixed_after(
    registry: OperationRegistry,
) -> None:
    async with Cancelable(name="clock", registry=registry) as op:
        first = op.context.elapsed_time
        await asyncio.sleep(0.01)
        assert op.context.elapsed_time > first
    ended = op.context.elapsed_time
    await asyncio.sleep(0.01)
    assert op.context.elapsed_time == ended


async def test_ids_are_unique_and_sort_by_creation() -> None:
    ids = [Cancelable(name="x", register=False).id for _ in range(1000)]
    assert len(set(ids)) == 1000
    assert sorted(ids) == ids


async def test_timeout_cancels_quietly_with_reason_timeout(registry: OperationRegistry) -> None:
    reached_after = False
    async with Cancelable(name="slow", timeout=0.01, registry=registry) as op:
        await asyncio.sleep(BOUND)
    reached_after = True
    assert reached_after
    assert op.context.status is OperationStatus.CANCELLED
    assert op.context.cancel_reason is CancelationReason.TIMEOUT
    task = asyncio.current_task()
    assert task is not None and task.cancelling() == 0


async def test_timeout_does_not_leak_a_pending_cancel_into_later_awaits(
    registry: OperationRegistry,
) -> None:
    async with Cancelable(name="slow", timeout=0.001, registry=registry):
        await asyncio.sleep(BOUND)
    await asyncio.sleep(0)  # would raise CancelledError if the cancel leaked
    await asyncio.sleep(0.001)


async def test_cancel_from_outside_propagates_unchanged(registry: OperationRegistry) -> None:
    entered = asyncio.Event()
    scopes: list[Cancelable] = []

    async def work() -> None:
        async with Cancelable(name="victim", registry=registry) as op:
            scopes.append(op)
            entered.set()
            await asyncio.sleep(BOUND)

    task = asyncio.create_task(work())
    await entered.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert scopes[0].context.status is OperationStatus.CANCELLED
    assert scopes[0].context.cancel_reason is None


async def test_exception_fails_the_operation_and_keeps_it(registry: OperationRegistry) -> None:
    with pytest.raises(KeyError):
        async with Cancelable(name="boom", registry=registry) as op:
            raise KeyError("missing")
    assert op.context.status is OperationStatus.FAILED
    assert isinstance(op.context.exception, KeyError)
    assert op.context.traceback is not None and "KeyError" in op.context.traceback


async def test_block_that_swallows_the_cancel_is_still_cancelled(
    registry: OperationRegistry,
) -> None:
    async with Cancelable(name="stubborn", timeout=0.001, registry=registry) as op:
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.sleep(BOUND)
    assert op.context.status is OperationStatus.CANCELLED
    task = asyncio.current_task()
    assert task is not None and task.cancelling() == 0


async def test_manual_cancel_exits_quietly(registry: OperationRegistry) -> None:
    async with Cancelable(name="manual", registry=registry) as op:
        await op.cancel(message="enough")
        await asyncio.sleep(BOUND)
    assert op.context.status is OperationStatus.CANCELLED
    assert op.context.cancel_reason is CancelationReason.MANUAL
    assert op.context.cancel_message == "enough"


async def test_cancel_after_end_is_refused(registry: OperationRegistry) -> None:
    async with Cancelable(name="done", registry=registry) as op:
        pass
    assert op.cancel_sync() is False
    assert op.context.status is OperationStatus.COMPLETED


async def test_token_cancels_from_another_thread(registry: OperationRegistry) -> None:
    token = CancelationToken()
    entered = threading.Event()

    def trip() -> None:
        entered.wait(BOUND)
        token.cancel_sync(message="from a thread")

    thread = threading.Thread(target=trip)
    thread.start()
    async with Cancelable.with_token(token, name="tokened", registry=registry) as op:
        entered.set()
        await asyncio.sleep(BOUND)
    thread.join(BOUND)
    assert op.context.status is OperationStatus.CANCELLED
    assert op.context.cancel_reason is CancelationReason.MANUAL
    assert op.context.cancel_message == "from a thread"
    assert token.is_cancelled


async def test_token_fired_before_entering_cancels_at_once(registry: OperationRegistry) -> None:
    token = CancelationToken()
    await token.cancel()
    async with Cancelable(name="late", token=token, registry=registry) as op:
        assert not op.should_continue()
        await asyncio.sleep(BOUND)
    assert op.context.status is OperationStatus.CANCELLED


async def test_token_wait_returns_once_fired() -> None:
    token = CancelationToken()
    waiter = asyncio.create_task(token.wait())
    await asyncio.sleep(0)
    assert not waiter.done()
    token.cancel_sync()
    await asyncio.wait_for(waiter, BOUND)
    assert token.cancel_sync() is False


async def test_signal_cancels_with_reason_signal(registry: OperationRegistry) -> None:
    async with Cancelable.with_signal(signal.SIGUSR1, name="sig", registry=registry) as op:
        os.kill(os.getpid(), signal.SIGUSR1)
        await asyncio.sleep(BOUND)
    assert op.context.status is OperationStatus.CANCELLED
    assert op.context.cancel_reason is CancelationReason.SIGNAL
    assert "SIGUSR1" in op.context.cancel_message


async def test_signal_handler_is_removed_after_the_scope(registry: OperationRegistry) -> None:
    async with Cancelable(name="sig", signals=[signal.SIGUSR2], registry=registry):
        pass
    loop = asyncio.get_running_loop()
    assert loop.remove_signal_handler(signal.SIGUSR2) is False


async def test_condition_cancels_when_it_turns_true(registry: OperationRegistry) -> None:
    flag = asyncio.Event()

    async def condition() -> bool:
        return flag.is_set()

    async with Cancelable.with_condition(
        condition, check_interval=0.001, name="cond", registry=registry
    ) as op:
        flag.set()
        await asyncio.sleep(BOUND)
    assert op.context.status is OperationStatus.CANCELLED
    assert op.context.cancel_reason is CancelationReason.CONDITION


async def test_sync_condition_is_polled_too(registry: OperationRegistry) -> None:
    calls = 0

    def condition() -> bool:
        nonlocal calls
        calls += 1
        return calls >= 3

    async with Cancelable(
        name="cond", condition=condition, condition_interval=0.001, registry=registry
    ) as op:
        await asyncio.sleep(BOUND)
    assert calls == 3
    assert op.context.cancel_reason is CancelationReason.CONDITION


async def test_ladder_is_cooperative_first_then_forced_after_grace(
    registry: OperationRegistry,
) -> None:
    called: list[str] = []
    entered = asyncio.Event()
    scopes: list[Cancelable] = []

    async def ignores_the_flag() -> None:
        async with Cancelable(name="deaf", grace_period=0.05, registry=registry) as op:
            op.on_cancel(lambda scope: called.append(scope.name))
            scopes.append(op)
            entered.set()
            await asyncio.Event().wait()  # never checks should_continue

    task = asyncio.create_task(ignores_the_flag())
    await entered.wait()
    op = scopes[0]
    assert op.cancel_sync(message="stop") is True
    # Cooperative phase: the flag is down, callbacks ran, but the task is not cancelled yet.
    assert not op.should_continue()
    assert called == ["deaf"]
    assert task.cancelling() == 0
    await asyncio.wait_for(op.wait_cancelled(), BOUND)
    await asyncio.wait_for(task, BOUND)  # forced after the grace period: ends quietly
    assert op.context.status is OperationStatus.CANCELLED


async def test_cooperative_code_stops_before_the_grace_period(
    registry: OperationRegistry,
) -> None:
    async with Cancelable(name="polite", grace_period=BOUND, registry=registry) as op:
        op.cancel_sync()
        while op.should_continue():  # noqa: ASYNC110 - the cooperative loop is the point
            await asyncio.sleep(0)
        task = asyncio.current_task()
        assert task is not None and task.cancelling() == 0
    assert op.context.status is OperationStatus.CANCELLED


async def test_zero_grace_period_forces_at_once(registry: OperationRegistry) -> None:
    async with Cancelable(name="now", registry=registry) as op:
        op.cancel_sync()
        task = asyncio.current_task()
        assert task is not None and task.cancelling() == 1
        await asyncio.sleep(BOUND)
    assert op.context.status is OperationStatus.CANCELLED


async def test_async_cancel_callback_runs(registry: OperationRegistry) -> None:
    ran = asyncio.Event()

    async def callback(scope: Cancelable) -> None:
        ran.set()

    async with Cancelable(name="cb", on_cancel=[callback], registry=registry) as op:
        op.cancel_sync()
        await asyncio.sleep(BOUND)
    await asyncio.wait_for(ran.wait(), BOUND)
    assert op.context.status is OperationStatus.CANCELLED


async def test_nested_scope_in_same_task_becomes_child(registry: OperationRegistry) -> None:
    async with Cancelable(name="parent", registry=registry) as parent:
        assert current_operation() is parent
        async with Cancelable(name="child", registry=registry) as child:
            assert current_operation() is child
            assert child.context.parent_id == parent.id
            assert [c.name for c in registry.get_children(parent.id)] == ["child"]
        assert current_operation() is parent
    assert current_operation() is None


async def test_scope_in_a_started_task_becomes_child(registry: OperationRegistry) -> None:
    async with Cancelable(name="parent", registry=registry) as parent:

        async def child() -> str | None:
            async with Cancelable(name="child", registry=registry) as op:
                pass
            return op.context.parent_id

        assert await asyncio.create_task(child()) == parent.id


async def test_cancelling_parent_cancels_children_in_other_tasks_recursively(
    registry: OperationRegistry,
) -> None:
    ready = asyncio.Event()
    grandchildren: list[Cancelable] = []
    children: list[Cancelable] = []

    async def grandchild() -> None:
        async with Cancelable(name="grandchild", registry=registry) as op:
            grandchildren.append(op)
            ready.set()
            await asyncio.sleep(BOUND)

    async def child() -> None:
        async with Cancelable(name="child", registry=registry) as op:
            children.append(op)
            await asyncio.create_task(grandchild())

    async with Cancelable(name="parent", registry=registry) as parent:
        task = asyncio.create_task(child())
        await ready.wait()
        await parent.cancel(message="stop all")
        await asyncio.sleep(BOUND)
    await asyncio.wait_for(task, BOUND)
    assert parent.context.cancel_reason is CancelationReason.MANUAL
    for op in (*children, *grandchildren):
        assert op.context.status is OperationStatus.CANCELLED
        assert op.context.cancel_reason is CancelationReason.PARENT
        assert "stop all" in op.context.cancel_message


async def test_parent_timeout_reaches_children(registry: OperationRegistry) -> None:
    children: list[Cancelable] = []

    async def child() -> None:
        async with Cancelable(name="child", registry=registry) as op:
            children.append(op)
            await asyncio.sleep(BOUND)

    async with Cancelable(name="parent", timeout=0.01, registry=registry) as parent:
        await asyncio.gather(child(), child())
    assert parent.context.cancel_reason is CancelationReason.TIMEOUT
    assert [c.context.cancel_reason for c in children] == [CancelationReason.PARENT] * 2


async def test_child_entering_a_cancelled_parent_is_cancelled(
    registry: OperationRegistry,
) -> None:
    async with Cancelable(name="parent", grace_period=BOUND, registry=registry) as parent:
        parent.cancel_sync()
        async with Cancelable(name="child", registry=registry) as child:
            await asyncio.sleep(BOUND)
    assert child.context.cancel_reason is CancelationReason.PARENT


async def test_explicit_parent_wins_over_the_current_one(registry: OperationRegistry) -> None:
    async with Cancelable(name="a", registry=registry) as a:
        async with Cancelable(name="b", registry=registry):
            async with Cancelable(name="c", parent=a, registry=registry) as c:
                assert c.context.parent_id == a.id


async def test_progress_reaches_callbacks(registry: OperationRegistry) -> None:
    seen: list[tuple[str, float | None, str | None]] = []
    async_seen = asyncio.Event()

    async def async_callback(op_id: str, percent: float | None, message: str | None) -> None:
        async_seen.set()

    async with Cancelable(
        name="p", registry=registry, on_progress=[lambda *args: seen.append(args)]
    ) as op:
        op.on_progress(async_callback)
        op.report_progress(50, "half")
        op.report_progress(None, "unknown")
    assert seen == [(op.id, 50.0, "half"), (op.id, None, "unknown")]
    assert op.context.progress_percent is None
    assert op.context.progress_message == "unknown"
    await asyncio.wait_for(async_seen.wait(), BOUND)


@pytest.mark.parametrize("bad", [-1, 100.5, math.nan, "50", True])
async def test_progress_outside_0_to_100_is_a_clear_error(
    registry: OperationRegistry, bad: Any
) -> None:
    async with Cancelable(name="p", registry=registry) as op:
        with pytest.raises(ValueError, match=r"between 0 and 100|from 0 to 100"):
            op.report_progress(bad)
        assert op.context.progress_percent is None


async def test_register_false_keeps_it_out_of_registry_and_history(
    registry: OperationRegistry,
) -> None:
    async with Cancelable(name="hidden", register=False) as op:
        assert registry.get_operation(op.id) is None
    async with Cancelable(name="hidden-too", auto_register=False):
        assert registry.get_active_operations() == []
    assert len(registry.history) == 0


async def test_scope_joins_the_default_registry(registry: OperationRegistry) -> None:
    async with Cancelable(name="default") as op:
        assert OperationRegistry.get_instance().get_operation(op.id) is op.context
    assert registry.get_operation(op.id) is None
    assert registry.history.get_latest() is op.context


async def test_scope_cannot_be_entered_twice(registry: OperationRegistry) -> None:
    op = Cancelable(name="once", registry=registry)
    async with op:
        pass
    with pytest.raises(RuntimeError, match="already entered"):
        async with op:
            pass


async def test_invalid_arguments_are_clear_errors() -> None:
    with pytest.raises(ValueError, match="timeout"):
        Cancelable(name="x", timeout=-1, register=False)
    with pytest.raises(ValueError, match="grace_period"):
        Cancelable(name="x", grace_period=-1, register=False)


def test_scopes_run_on_several_event_loops_in_threads_at_once() -> None:
    registry = OperationRegistry(history_size=100_000)
    errors: list[BaseException] = []
    per_thread = 2000

    async def work(thread: int) -> None:
        for i in range(per_thread):
            async with Cancelable(name=f"t{thread}-{i}", registry=registry):
                if i % 100 == 0:
                    registry.get_active_operations()
                    await asyncio.sleep(0)

    def run(thread: int) -> None:
        try:
            asyncio.run(work(thread))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads), "deadlock: a thread did not finish"
    assert errors == []
    assert len(registry) == 0
    assert len(registry.history) == 4 * per_thread


def test_cancel_all_from_another_thread_reaches_a_loop_in_this_one() -> None:
    registry = OperationRegistry()
    entered = threading.Event()
    outcome: list[int] = []

    async def main() -> Cancelable:
        async with Cancelable(name="remote-target", registry=registry) as op:
            entered.set()
            await asyncio.sleep(BOUND)
        return op

    def canceller() -> None:
        entered.wait(BOUND)
        outcome.append(registry.cancel_all_sync(name_pattern="remote-*"))

    thread = threading.Thread(target=canceller)
    thread.start()
    op = asyncio.run(main())
    thread.join(BOUND)
    assert outcome == [1]
    assert op.context.status is OperationStatus.CANCELLED
