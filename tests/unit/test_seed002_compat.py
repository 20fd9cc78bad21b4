"""Seed 002 (Tux ``TaskManager``) calls, written as its users write them, work unchanged.

``start()``/``stop()`` as plain methods, ``restart_critical_task`` under the seed's delay
and limit rules (with a window, so refusals end), ``TaskMetrics(name=..., category=...)``
with the seed's defaults, and ``cancel_all_tasks()`` with the seed's meaning. Time runs on
a ``FakeClock``: nothing sleeps.
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
from datetime import UTC, datetime
from typing import Any

import pytest

from taskwarden.clock import FakeClock
from taskwarden.errors import ConfigurationError, ShutdownTimeout
from taskwarden.registry import OperationRegistry
from taskwarden.supervisor import (
    CriticalTaskConfig,
    Supervisor,
    SupervisorState,
    TaskCategory,
    TaskMetrics,
    TaskPriority,
    TaskState,
)

BOUND = 5.0  # seconds: an upper bound for anything that should happen at once
NEVER = 1e9  # a health-check interval that a test never reaches

SEED_FIELDS = {
    # name: the seed's default (None for required fields and for "now")
    "name": None,
    "category": None,
    "priority": TaskPriority.NORMAL,
    "start_time": None,
    "restart_count": 0,
    "last_restart": None,
    "total_runtime": 0.0,
    "avg_runtime": 0.0,
    "max_runtime": 0.0,
    "error_count": 0,
    "last_error": None,
    "last_error_time": None,
}


class Counted:
    """A critical task that counts its runs and waits (until cancelled) in each of them."""

    def __init__(self) -> None:
        self.runs = 0
        self.cancelled = 0

    async def __call__(self) -> None:
        self.runs += 1
        try:
            await asyncio.get_running_loop().create_future()
        except asyncio.CancelledError:
            self.cancelled += 1
            raise


async def forever() -> None:
    await asyncio.get_running_loop().create_future()


def config(name: str, factory: Any, **kwargs: Any) -> CriticalTaskConfig:
    kwargs.setdefault("health_check_interval", NEVER)
    return CriticalTaskConfig(name=name, factory=factory, **kwargs)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def supervisor(clock: FakeClock) -> Supervisor:
    return Supervisor(registry=OperationRegistry(), clock=clock)


def state_of(supervisor: Supervisor) -> SupervisorState:
    return supervisor.state  # read afresh: mypy would narrow a repeated attribute read


def supervisor_tasks() -> list[asyncio.Task[Any]]:
    return [t for t in asyncio.all_tasks() if t.get_name() == "taskwarden-supervisor"]


# ---------------------------------------------------------------------------- start / stop


async def test_start_is_a_plain_call_that_runs_the_critical_tasks_until_stop(
    supervisor: Supervisor,
) -> None:
    task = Counted()
    supervisor.register_critical_task(config("poll", task))
    assert not inspect.iscoroutinefunction(Supervisor.start)
    supervisor.start()  # a plain call: nothing to await
    assert state_of(supervisor) is SupervisorState.STARTING
    async with asyncio.timeout(BOUND):
        await supervisor.wait_for_state("poll", TaskState.RUNNING)
        assert task.runs == 1
        supervisor.stop()
        report = await supervisor.wait_stopped()
    assert supervisor.state is SupervisorState.STOPPED
    assert supervisor.get_task_state("poll") is TaskState.STOPPED
    assert task.cancelled == 1
    assert report is not None and report.clean
    assert [phase.cancelled for phase in report.phases] == [("poll",)]
    assert supervisor_tasks() == []


async def test_start_twice_and_stop_twice_are_no_ops(supervisor: Supervisor) -> None:
    task = Counted()
    supervisor.register_critical_task(config("poll", task))
    supervisor.start()
    supervisor.start()
    async with asyncio.timeout(BOUND):
        await supervisor.wait_for_state("poll", TaskState.RUNNING)
        supervisor.start()  # started: still a no-op
        assert len(supervisor_tasks()) == 1
        assert task.runs == 1
        supervisor.stop()
        supervisor.stop()
        report = await supervisor.wait_stopped()
        supervisor.stop()  # stopped: still nothing
        assert await supervisor.wait_stopped() is report
    assert report is not None and len(report.phases) == 1
    assert task.runs == 1 and task.cancelled == 1
    assert supervisor.state is SupervisorState.STOPPED


async def test_start_from_a_loop_callback_with_no_task_of_its_own(
    supervisor: Supervisor,
) -> None:
    task = Counted()
    supervisor.register_critical_task(config("poll", task))
    asyncio.get_running_loop().call_soon(supervisor.start)
    async with asyncio.timeout(BOUND):
        await supervisor.wait_for_state("poll", TaskState.RUNNING)
        assert task.runs == 1
        supervisor.stop()
        await supervisor.wait_stopped()
    assert supervisor.state is SupervisorState.STOPPED


def test_start_outside_a_running_loop_says_what_to_do(supervisor: Supervisor) -> None:
    with pytest.raises(ConfigurationError, match="running event loop"):
        supervisor.start()
    assert supervisor.state is SupervisorState.STOPPED


async def test_stop_before_start_does_nothing_and_a_stopped_supervisor_starts_again(
    supervisor: Supervisor,
) -> None:
    task = Counted()
    supervisor.register_critical_task(config("poll", task))
    supervisor.stop()
    assert await supervisor.wait_stopped() is None
    async with asyncio.timeout(BOUND):
        for session in (1, 2):
            supervisor.start()
            await supervisor.wait_for_state("poll", TaskState.RUNNING, min_attempts=session)
            supervisor.stop()
            with pytest.raises(ConfigurationError, match="wait_stopped"):
                supervisor.start()  # the stop is still under way
            await supervisor.wait_stopped()
    assert task.runs == 2 and task.cancelled == 2


async def test_health_checks_run_after_start(supervisor: Supervisor, clock: FakeClock) -> None:
    probes: list[float] = []

    def probe() -> bool:
        probes.append(clock.now())
        return True

    supervisor.register_critical_task(
        config("poll", forever, health_check=probe, health_check_interval=60)
    )
    supervisor.start()
    async with asyncio.timeout(BOUND):
        await supervisor.wait_for_state("poll", TaskState.RUNNING)
        for _ in range(2):
            await clock.wait_for_sleepers(1)  # the next health check is due in 60 s
            clock.advance(60)
        await clock.wait_for_sleepers(1)
        assert probes == [60, 120]
        supervisor.stop()
        await supervisor.wait_stopped()


async def test_a_started_supervisor_accepts_restart_critical_task_at_once(
    supervisor: Supervisor,
) -> None:
    task = Counted()
    supervisor.register_critical_task(config("poll", task))
    assert not await supervisor.restart_critical_task("poll")  # never started
    supervisor.start()
    async with asyncio.timeout(BOUND):
        assert await supervisor.restart_critical_task("poll")  # waits out the start
        assert supervisor.state is SupervisorState.STARTED
        await supervisor.wait_for_state("poll", TaskState.RUNNING, min_attempts=2)
        assert task.cancelled == 1
        supervisor.stop()
        await supervisor.wait_stopped()
    metrics = supervisor.get_task_metrics("poll")
    assert metrics is not None and metrics.restart_count == 1


async def test_async_with_and_run_still_work_beside_start(supervisor: Supervisor) -> None:
    supervisor.register_critical_task(config("poll", Counted()))
    async with asyncio.timeout(BOUND):
        async with supervisor:
            supervisor.start()  # entered: a no-op
            assert supervisor.state is SupervisorState.STARTED
            assert supervisor_tasks() == []
        runner = asyncio.create_task(supervisor.run())
        await supervisor.wait_for_state("poll", TaskState.RUNNING, min_attempts=2)
        supervisor.stop()
        report = await runner
    assert report is not None and report.clean


# ---------------------------------------------------------------------------- restart rules


async def restart_at(
    supervisor: Supervisor, clock: FakeClock, times: list[float], name: str = "poll"
) -> list[bool]:
    """Call ``restart_critical_task(name)`` at each clock time; what each call returned."""
    answers = []
    for when in times:
        clock.advance(when - clock.now())
        answer = await supervisor.restart_critical_task(name)
        answers.append(answer)
        if answer:  # let the granted restart happen before the next call
            await supervisor.wait_for_state(name, TaskState.RUNNING, min_attempts=sum(answers) + 1)
    return answers


async def test_restart_within_the_restart_delay_is_refused(
    supervisor: Supervisor, clock: FakeClock
) -> None:
    supervisor.register_critical_task(config("poll", Counted(), restart_delay=30))
    supervisor.start()
    async with asyncio.timeout(BOUND):
        assert await restart_at(supervisor, clock, [0, 29, 29.5, 30, 59]) == [
            True,
            False,
            False,
            True,
            False,
        ]
        supervisor.stop()
        await supervisor.wait_stopped()
    metrics = supervisor.get_task_metrics("poll")
    assert metrics is not None and metrics.restart_count == 2


async def test_ten_manual_restarts_a_second_apart_stop_at_max_restarts(
    supervisor: Supervisor, clock: FakeClock
) -> None:
    supervisor.register_critical_task(
        config("poll", Counted(), max_restarts=2, restart_delay=1, restart_window=60)
    )
    supervisor.start()
    async with asyncio.timeout(BOUND):
        answers = await restart_at(supervisor, clock, [float(n) for n in range(10)])
        assert answers == [True, True] + [False] * 8
        supervisor.stop()
        await supervisor.wait_stopped()


async def test_restarts_leave_the_window_and_restarting_is_allowed_again(
    supervisor: Supervisor, clock: FakeClock
) -> None:
    supervisor.register_critical_task(
        config("poll", Counted(), max_restarts=2, restart_delay=1, restart_window=60)
    )
    supervisor.start()
    async with asyncio.timeout(BOUND):
        # Restarts at 0 and 1 use the limit up; each leaves the window once 60 s old.
        assert await restart_at(supervisor, clock, [0, 1, 30, 60, 60.5, 61, 62, 90]) == [
            True,
            True,
            False,  # the limit
            False,  # the restart at 0 is still inside the window (60 s old exactly)
            True,  # it has left the window
            False,  # within the delay of the one just made
            True,  # the restart at 1 has left the window too
            False,  # those at 60.5 and 62 use the limit up again
        ]
        supervisor.stop()
        await supervisor.wait_stopped()
    metrics = supervisor.get_task_metrics("poll")
    assert metrics is not None and metrics.restart_count == 4  # the total is not windowed


async def test_manual_and_automatic_restarts_count_together(
    supervisor: Supervisor, clock: FakeClock
) -> None:
    crashes = iter([True])

    async def flaky() -> None:
        if next(crashes, False):
            raise RuntimeError("boom")
        await forever()

    supervisor.register_critical_task(
        config("poll", flaky, max_restarts=2, restart_delay=10, restart_window=600)
    )
    supervisor.start()
    async with asyncio.timeout(BOUND):
        await supervisor.wait_for_state("poll", TaskState.BACKOFF)
        await clock.wait_for_sleepers(1)
        clock.advance(10)  # the automatic restart, at 10
        await supervisor.wait_for_state("poll", TaskState.RUNNING, min_attempts=2)
        assert await restart_at(supervisor, clock, [15, 20, 30]) == [False, True, False]
        supervisor.stop()
        await supervisor.wait_stopped()


async def test_force_restarts_regardless_of_the_delay_and_the_limit(
    supervisor: Supervisor, clock: FakeClock
) -> None:
    task = Counted()
    supervisor.register_critical_task(
        config("poll", task, max_restarts=1, restart_delay=30, restart_window=600)
    )
    supervisor.start()
    async with asyncio.timeout(BOUND):
        assert await restart_at(supervisor, clock, [0, 40]) == [True, False]  # limit reached
        clock.advance(1)
        assert not await supervisor.restart_critical_task("poll")
        assert await supervisor.restart_critical_task("poll", force=True)
        await supervisor.wait_for_state("poll", TaskState.RUNNING, min_attempts=3)
        assert await supervisor.restart_critical_task("poll", force=True)  # no delay either
        await supervisor.wait_for_state("poll", TaskState.RUNNING, min_attempts=4)
        supervisor.stop()
        await supervisor.wait_stopped()
    assert task.runs == 4
    metrics = supervisor.get_task_metrics("poll")
    assert metrics is not None and metrics.restart_count == 3


async def test_force_revives_a_task_that_gave_up_with_its_window_cleared(
    supervisor: Supervisor, clock: FakeClock
) -> None:
    async def crash() -> None:
        raise RuntimeError("boom")

    supervisor.register_critical_task(
        config("crash", crash, max_restarts=0, restart_delay=5, restart_window=600)
    )
    supervisor.start()
    async with asyncio.timeout(BOUND):
        await supervisor.wait_for_state("crash", TaskState.FAILED)
        assert not await supervisor.restart_critical_task("crash")  # max_restarts=0
        assert await supervisor.restart_critical_task("crash", force=True)
        await supervisor.wait_for_state("crash", TaskState.FAILED, min_attempts=2)
        supervisor.stop()
        await supervisor.wait_stopped()
    health = supervisor.get_task_health("crash")
    assert health is not None and health.restarts_in_window == 1


# ---------------------------------------------------------------------------- TaskMetrics


def test_task_metrics_builds_from_name_and_category_with_the_seeds_defaults() -> None:
    before = datetime.now(UTC)
    metrics = TaskMetrics(name="poll", category=TaskCategory.SCHEDULED)
    after = datetime.now(UTC)
    assert metrics.name == "poll"
    assert metrics.category is TaskCategory.SCHEDULED
    assert metrics.priority is TaskPriority.NORMAL
    assert before <= metrics.start_time <= after
    assert metrics.start_time.tzinfo is not None
    assert metrics.restart_count == 0
    assert metrics.last_restart is None
    assert metrics.total_runtime == 0.0
    assert metrics.avg_runtime == 0.0
    assert metrics.max_runtime == 0.0
    assert metrics.error_count == 0
    assert metrics.last_error is None
    assert metrics.last_error_time is None
    # taskwarden's own fields default too
    assert metrics.critical is False
    assert metrics.state is None
    assert metrics.runs == 0


def test_task_metrics_has_every_seed_field_with_the_seeds_defaults() -> None:
    fields = {f.name: f for f in dataclasses.fields(TaskMetrics)}
    assert set(SEED_FIELDS) <= set(fields)
    metrics = TaskMetrics(name="x", category=TaskCategory.GATEWAY)
    for name, default in SEED_FIELDS.items():
        if default is not None:
            assert getattr(metrics, name) == default, name


def test_task_metrics_takes_the_seeds_register_call_and_every_field_by_name() -> None:
    registered = TaskMetrics(
        name="poll", category=TaskCategory.SCHEDULED, priority=TaskPriority.HIGH
    )
    assert registered.priority is TaskPriority.HIGH
    when = datetime(2026, 1, 1, tzinfo=UTC)
    full = TaskMetrics(
        name="poll",
        category=TaskCategory.COMMAND,
        priority=TaskPriority.LOW,
        start_time=when,
        restart_count=2,
        last_restart=when,
        total_runtime=3.0,
        avg_runtime=1.5,
        max_runtime=2.0,
        error_count=1,
        last_error="boom",
        last_error_time=when,
    )
    assert (full.restart_count, full.last_error, full.start_time) == (2, "boom", when)


def test_start_time_is_the_time_of_construction_not_of_the_import(clock: FakeClock) -> None:
    first = TaskMetrics(name="a", category=TaskCategory.SYSTEM)
    second = TaskMetrics(name="b", category=TaskCategory.SYSTEM)
    assert first.start_time <= second.start_time
    assert (datetime.now(UTC) - first.start_time).total_seconds() < BOUND


# ---------------------------------------------------------------------------- cancel_all_tasks


def test_cancel_all_tasks_also_cancels_the_task_awaiting_the_caller_and_so_the_caller() -> None:
    """The seed's meaning, kept, with its hazard: "every task but the caller" includes the
    caller's parent, and a parent cancelled while it awaits the caller cancels the caller
    in turn, in the middle of its shutdown. (Own event loop: it cancels its main task.)"""
    seen: list[str] = []

    async def main() -> None:
        supervisor = Supervisor(registry=OperationRegistry(), clock=FakeClock())
        supervisor.register_critical_task(config("poll", forever))
        bystander = asyncio.create_task(forever(), name="bystander")

        async def caller() -> None:
            try:
                await supervisor.cancel_all_tasks()
            except asyncio.CancelledError:
                seen.append(f"caller cancelled; bystander cancelled: {bystander.cancelled()}")
                raise
            seen.append("caller finished")

        async with asyncio.timeout(BOUND), supervisor:
            try:
                await asyncio.create_task(caller(), name="caller")
            except asyncio.CancelledError:
                seen.append("main cancelled")
                raise
        seen.append("main finished")

    with pytest.raises(asyncio.CancelledError):
        asyncio.run(main())
    assert seen == ["caller cancelled; bystander cancelled: True", "main cancelled"]


async def test_shutdown_is_the_safe_default_that_spares_the_callers_parents(
    supervisor: Supervisor,
) -> None:
    bystander = asyncio.create_task(forever(), name="bystander")
    supervisor.register_critical_task(config("poll", forever))

    async def caller() -> None:
        await supervisor.shutdown()

    async def parent() -> str:
        await asyncio.create_task(caller(), name="caller")
        return "survived"

    async with asyncio.timeout(BOUND), supervisor:
        assert await asyncio.create_task(parent(), name="parent") == "survived"
    assert not bystander.done()
    bystander.cancel()


async def test_the_seeds_stop_then_cancel_all_tasks_ends_what_start_began(
    supervisor: Supervisor,
) -> None:
    bystander = asyncio.create_task(forever(), name="bystander")
    supervisor.register_critical_task(config("poll", forever))
    supervisor.start()
    async with asyncio.timeout(BOUND):
        await supervisor.wait_for_state("poll", TaskState.RUNNING)
        supervisor.stop()
        report = await supervisor.cancel_all_tasks()
        assert sorted(name for phase in report.phases for name in phase.cancelled) == [
            "bystander",
            "poll",
        ]
        assert await supervisor.wait_stopped() is not None  # start()'s task was spared
    assert bystander.cancelled()
    assert supervisor.state is SupervisorState.STOPPED
    assert supervisor_tasks() == []


# ---------------------------------------------------------------------------- ShutdownTimeout


async def test_a_stop_that_runs_out_of_time_raises_shutdown_timeout_on_request(
    clock: FakeClock,
) -> None:
    supervisor = Supervisor(registry=OperationRegistry(), clock=clock, shutdown_phase_timeout=3)
    release = asyncio.Event()
    swallowed = asyncio.Event()

    async def stubborn() -> None:
        while not release.is_set():
            try:
                await release.wait()
            except asyncio.CancelledError:
                swallowed.set()  # the bug: cancellation swallowed

    supervisor.register_critical_task(config("stubborn", stubborn))
    supervisor.start()
    async with asyncio.timeout(BOUND):
        await supervisor.wait_for_state("stubborn", TaskState.RUNNING)
        supervisor.stop()
        await swallowed.wait()
        await clock.wait_for_sleepers(1)  # the phase's deadline
        clock.advance(3)
        report = await supervisor.wait_stopped()
        assert report is not None and report.left == ("stubborn",)
        with pytest.raises(ShutdownTimeout, match="stubborn") as raised:
            report.raise_if_left()
        assert isinstance(raised.value, TimeoutError)
        assert raised.value.reason == "shutdown-timeout"
        release.set()
        await supervisor.wait_for_state("stubborn", TaskState.STOPPED)
