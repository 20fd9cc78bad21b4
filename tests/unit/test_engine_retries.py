"""Retries on error: each attempt is a run in the history, the record waits in between.

The engine's clock is a FakeClock, so the waits between attempts pass when the test says,
not by sleeping.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path

import pytest

from taskwarden import RetryPolicy
from taskwarden.clock import FakeClock
from taskwarden.engine import Engine, ProcessContext
from taskwarden.errors import InvalidDefinition
from taskwarden.model import OperationStatus
from taskwarden.processes import ProcessState
from taskwarden.registry import OperationRegistry
from taskwarden.stores.memory import MemoryStore
from taskwarden.stores.sqlite import SQLiteStore
from tests.engine_support import StateLog, definitions, started_engine, task

S = ProcessState


class Flaky:
    """Fails its first ``failures`` runs, then succeeds; records each run's attempt."""

    def __init__(self, failures: int, error: type[Exception] = ConnectionError) -> None:
        self.failures = failures
        self.error = error
        self.attempts: list[int] = []

    async def __call__(self, ctx: ProcessContext) -> None:
        self.attempts.append(ctx.attempt)
        ctx.report_progress(50, "half way")
        if len(self.attempts) <= self.failures:
            raise self.error(f"try {len(self.attempts)} failed")


async def _sleeping(clock: FakeClock) -> None:
    """Wait (bounded) until the engine sleeps on the clock: a retry waits for its time."""
    async with asyncio.timeout(5):
        await clock.wait_for_sleepers(1)


async def test_a_failed_attempt_waits_in_scheduled_then_runs_again_until_it_succeeds() -> None:
    clock = FakeClock()
    flaky = Flaky(failures=2)
    policy = RetryPolicy(attempts=3, delay=1.0, backoff=2.0, jitter=0.0)
    store = MemoryStore(clock=clock)
    async with started_engine(task("flaky", flaky, retries=policy), store=store, clock=clock) as e:
        log = StateLog(e)
        await e.launch("flaky")
        await log.wait_for("flaky", S.SCHEDULED, count=2)  # the launch, then the wait
        waiting = await e.get_process("flaky")
        assert waiting is not None and waiting.state is S.SCHEDULED
        assert waiting.attempt == 1
        assert waiting.next_attempt_at == clock.wall() + timedelta(seconds=1)
        assert waiting.error == "ConnectionError: try 1 failed"
        assert waiting.progress_percent is None and waiting.lease_owner is None
        assert any(
            "attempt 1 of 3 failed; attempt 2 is due in 1 s" in e.message for e in waiting.log
        )

        await _sleeping(clock)
        clock.advance(1)
        await log.wait_for("flaky", S.SCHEDULED, count=3)
        second = await e.get_process("flaky")
        assert second is not None and second.attempt == 2
        assert second.next_attempt_at == clock.wall() + timedelta(seconds=2)  # doubled

        await _sleeping(clock)
        clock.advance(1.5)
        await asyncio.sleep(0)
        assert (await store.get("flaky")).state is S.SCHEDULED  # type: ignore[union-attr]
        clock.advance(0.5)
        await log.wait_for("flaky", S.DONE)
        done = await e.get_process("flaky")
        assert done is not None and done.state is S.DONE
        assert done.error is None and done.next_attempt_at is None and done.attempt == 2
        assert flaky.attempts == [0, 1, 2]
        # Nobody watching the record saw a failure that was about to be retried.
        assert S.FAILED not in log.states("flaky")
        runs = await store.query_history(process_id="flaky")
        assert [run.status for run in reversed(runs)] == [
            OperationStatus.FAILED,
            OperationStatus.FAILED,
            OperationStatus.COMPLETED,
        ]
        assert [run.error for run in reversed(runs)][:2] == [
            "ConnectionError: try 1 failed",
            "ConnectionError: try 2 failed",
        ]


async def test_past_the_last_attempt_the_failure_stands() -> None:
    clock = FakeClock()
    always = Flaky(failures=99)
    policy = RetryPolicy(attempts=2, delay=5.0, jitter=0.0)
    store = MemoryStore(clock=clock)
    async with started_engine(
        task("doomed", always, retries=policy), store=store, clock=clock
    ) as e:
        log = StateLog(e)
        await e.launch("doomed")
        await log.wait_for("doomed", S.SCHEDULED, count=2)
        await _sleeping(clock)
        clock.advance(5)
        await log.wait_for("doomed", S.FAILED)
        failed = await e.get_process("doomed")
        assert failed is not None and failed.attempt == 1 and failed.next_attempt_at is None
        assert failed.error == "ConnectionError: try 2 failed"
        assert always.attempts == [0, 1]
        assert len(await store.query_history(process_id="doomed")) == 2


async def test_an_error_the_policy_does_not_list_fails_at_once() -> None:
    bad_input = Flaky(failures=1, error=ValueError)
    policy = RetryPolicy(retry_on=(OSError,))
    async with started_engine(task("strict", bad_input, retries=policy)) as e:
        log = StateLog(e)
        await e.launch("strict")
        await log.wait_for("strict", S.FAILED)
        assert bad_input.attempts == [0]


async def test_a_cancel_while_it_waits_ends_it_and_no_attempt_follows() -> None:
    clock = FakeClock()
    flaky = Flaky(failures=1)
    policy = RetryPolicy(delay=10.0, jitter=0.0)
    async with started_engine(task("flaky", flaky, retries=policy), clock=clock) as e:
        log = StateLog(e)
        await e.launch("flaky")
        await log.wait_for("flaky", S.SCHEDULED, count=2)
        await e.cancel("flaky")
        await log.wait_for("flaky", S.CANCELLED)
        await _sleeping(clock)
        clock.advance(10)
        for _ in range(20):
            await asyncio.sleep(0)
        assert flaky.attempts == [0]
        record = await e.get_process("flaky")
        assert record is not None and record.state is S.CANCELLED


async def test_a_timed_out_run_is_not_retried() -> None:
    async def slow(ctx: ProcessContext) -> None:
        await asyncio.Event().wait()

    policy = RetryPolicy(delay=0.0)
    async with started_engine(task("slow", slow, retries=policy, timeout=0.05)) as e:
        log = StateLog(e)
        await e.launch("slow")
        await log.wait_for("slow", S.CANCELLED)
        assert log.states("slow").count(S.RUNNING) == 1


async def test_a_waiting_retry_survives_a_restart_of_the_engine(tmp_path: Path) -> None:
    clock = FakeClock()
    flaky = Flaky(failures=1)
    policy = RetryPolicy(delay=30.0, jitter=0.0)
    path = tmp_path / "retries.db"

    def engine() -> Engine:
        return Engine(
            SQLiteStore(path, clock=clock),
            get_task_definitions=definitions(task("flaky", flaky, retries=policy)),
            clock=clock,
            registry=OperationRegistry(),
            progress_flush_interval=0.0,
        )

    first = engine()
    await first.init()
    try:
        log = StateLog(first)
        await first.launch("flaky")
        await log.wait_for("flaky", S.SCHEDULED, count=2)
    finally:
        await first.shutdown(timeout=2.0)
    clock.advance(10)
    second = engine()
    await second.init()
    try:
        log = StateLog(second)
        await _sleeping(clock)
        clock.advance(19)
        for _ in range(20):
            await asyncio.sleep(0)
        assert flaky.attempts == [0]  # 29 of its 30 seconds
        clock.advance(1)
        await log.wait_for("flaky", S.DONE)
        assert flaky.attempts == [0, 1]
        record = await second.get_process("flaky")
        assert record is not None and record.lease_owner is None  # ended: the lease is gone
    finally:
        await second.shutdown(timeout=2.0)
        await second.store.close()
        await first.store.close()


async def test_retries_must_be_a_retry_policy() -> None:
    with pytest.raises(InvalidDefinition, match="retries takes a RetryPolicy"):
        async with started_engine(task("x", retries=3)):
            pass


async def test_launch_and_wait_returns_after_the_last_attempt() -> None:
    flaky = Flaky(failures=2)
    policy = RetryPolicy(attempts=3, delay=0.01, jitter=0.0)
    async with started_engine(task("flaky", flaky, retries=policy)) as e:
        async with asyncio.timeout(10):
            await e.launch_and_wait("flaky")
        record = await e.get_process("flaky")
        assert record is not None and record.state is S.DONE
        assert flaky.attempts == [0, 1, 2]
