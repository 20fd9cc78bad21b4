"""A per-task time limit: ``TaskInstance(timeout=...)`` cancels the run through the ladder
with the reason ``timeout``, and the record and the history say so."""

from __future__ import annotations

import asyncio

import pytest

from taskwarden.engine import ProcessContext
from taskwarden.errors import InvalidDefinition
from taskwarden.model import CancelationReason, OperationStatus
from taskwarden.processes import LogLevel, ProcessState
from tests.engine_support import StateLog, started_engine, task

S = ProcessState


async def test_a_run_past_its_timeout_is_cancelled_with_the_reason_timeout() -> None:
    async def forever(ctx: ProcessContext) -> None:
        await asyncio.Event().wait()  # never checks: the forced step of the ladder ends it

    async with started_engine(task("slow", forever, timeout=0.05), cancel_grace=0.05) as engine:
        log = StateLog(engine)
        await asyncio.wait_for(engine.launch_and_wait("slow"), 5)
        assert log.states("slow") == [
            S.SCHEDULED,
            S.RUNNING,
            S.CANCEL_REQUESTED,
            S.CANCELLING,
            S.CANCELLED,
        ]
        record = await engine.get_process("slow")
        assert record is not None and record.state is S.CANCELLED
        warnings = [entry.message for entry in record.log if entry.level is LogLevel.WARNING]
        assert warnings == ["timed out after 0.05 seconds"]
        [run] = await engine.query_history("slow")
        assert run.status is OperationStatus.CANCELLED
        assert run.cancel_reason is CancelationReason.TIMEOUT


async def test_a_cooperative_run_sees_the_timeout_and_stops_in_the_grace_period() -> None:
    async def polite(ctx: ProcessContext) -> None:
        await ctx.wait_cancelled()
        ctx.log("info", "cleaned up")

    async with started_engine(task("polite", polite, timeout=0.05), cancel_grace=5) as engine:
        await asyncio.wait_for(engine.launch_and_wait("polite"), 2)
        record = await engine.get_process("polite")
        assert record is not None and record.state is S.CANCELLED
        assert [entry.message for entry in record.log] == [
            "cleaned up",
            "timed out after 0.05 seconds",
        ]


async def test_a_run_that_ends_in_time_is_not_touched_by_its_timeout() -> None:
    async with started_engine(task("quick", timeout=30)) as engine:
        await asyncio.wait_for(engine.launch_and_wait("quick"), 5)
        record = await engine.get_process("quick")
        assert record is not None and record.state is S.DONE and record.log == ()


@pytest.mark.parametrize("bad", [0, -1, float("inf"), float("nan"), "10", True])
async def test_a_timeout_that_is_not_a_positive_number_is_refused_by_name(bad: object) -> None:
    with pytest.raises(InvalidDefinition, match="'bad': timeout must be a finite number"):
        async with started_engine(task("bad", timeout=bad)):
            pass  # pragma: no cover - the definitions are refused on init


@pytest.mark.parametrize("bad", [0, -1, float("inf"), float("nan"), "10", True, 86_401])
async def test_a_lease_override_that_is_not_a_sane_number_is_refused_by_name(bad: object) -> None:
    with pytest.raises(InvalidDefinition, match="'bad': lease_seconds must be a number"):
        async with started_engine(task("bad", lease_seconds=bad)):
            pass  # pragma: no cover - the definitions are refused on init
