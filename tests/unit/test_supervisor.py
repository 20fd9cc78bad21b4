"""The supervisor of critical tasks: restart policy, health, metrics, categories, shutdown.

Time-driven behaviour runs on a ``FakeClock``: a test moves time with ``advance`` and learns
that the supervisor is waiting on the clock from ``wait_for_sleepers``, never by sleeping.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest

from taskwarden.clock import FakeClock
from taskwarden.errors import ConfigurationError, ShutdownTimeout
from taskwarden.model import CancelationReason, OperationStatus
from taskwarden.registry import OperationRegistry
from taskwarden.supervisor import (
    CriticalTaskConfig,
    HealthPolicy,
    Supervisor,
    SupervisorState,
    TaskCategorizer,
    TaskCategory,
    TaskPriority,
    TaskState,
    current_supervisor,
    instrumented_task,
    restart_delay,
)

BOUND = 5.0  # seconds: an upper bound for anything that should happen at once
NEVER = 1e9  # a health-check interval that a test never reaches
EPS = 2**-10  # a binary fraction: sums of it stay exact


class Runs:
    """A critical task whose runs follow a plan: ``"crash"`` or ``"return"`` at once, then
    every run past the plan waits until the test calls :meth:`fail` or :meth:`finish`."""

    def __init__(self, clock: FakeClock, *plan: str) -> None:
        self.clock = clock
        self.plan = plan
        self.starts: list[float] = []
        self.cancelled = 0
        self.ended = asyncio.Event()
        self.waiting: asyncio.Future[None] | None = None

    async def __call__(self) -> int:
        self.starts.append(self.clock.now())
        number = len(self.starts)
        step = self.plan[number - 1] if number <= len(self.plan) else "wait"
        if step == "crash":
            raise RuntimeError(f"boom {number}")
        if step == "return":
            return number
        self.waiting = asyncio.get_running_loop().create_future()
        try:
            await self.waiting
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        finally:
            self.ended.set()
        return number

    def fail(self, exc: BaseException | None = None) -> None:
        assert self.waiting is not None and not self.waiting.done()
        self.waiting.set_exception(exc or RuntimeError("failed later"))

    def finish(self) -> None:
        assert self.waiting is not None and not self.waiting.done()
        self.waiting.set_result(None)


async def forever() -> None:
    await asyncio.get_running_loop().create_future()


def config(name: str, factory: Any, **kwargs: Any) -> CriticalTaskConfig:
    kwargs.setdefault("health_check_interval", NEVER)
    kwargs.setdefault("restart_delay", 10.0)
    return CriticalTaskConfig(name=name, factory=factory, **kwargs)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def registry() -> OperationRegistry:
    return OperationRegistry()


@pytest.fixture
def supervisor(registry: OperationRegistry, clock: FakeClock) -> Supervisor:
    return Supervisor(registry=registry, clock=clock)


@contextlib.asynccontextmanager
async def running(supervisor: Supervisor) -> AsyncIterator[Supervisor]:
    async with asyncio.timeout(BOUND), supervisor:
        yield supervisor


async def backoff_then_restart(clock: FakeClock, delay: float) -> None:
    """Pin that the one pending sleep is a backoff of exactly ``delay`` seconds."""
    await clock.wait_for_sleepers(1)
    assert clock.sleepers == 1
    clock.advance(delay - EPS)
    assert clock.sleepers == 1, "restarted before its delay"
    clock.advance(EPS)
    assert clock.sleepers == 0, "not restarted after its delay"


# ---------------------------------------------------------------------------- configuration


def test_restart_delay_grows_by_the_backoff_factor_and_is_capped() -> None:
    cfg = config("x", forever, restart_delay=2, backoff_factor=3, max_delay=50)
    assert [restart_delay(cfg, n) for n in range(5)] == [2, 6, 18, 50, 50]
    assert restart_delay(cfg, 10_000) == 50


@pytest.mark.parametrize(
    "field",
    [
        {"name": ""},
        {"factory": "not callable"},
        {"max_restarts": -1},
        {"restart_delay": -1},
        {"restart_window": 0},
        {"health_check_interval": float("nan")},
        {"backoff_factor": 0.5},
        {"priority": "urgent"},
    ],
)
def test_invalid_config_is_refused_with_a_configuration_error(field: dict[str, Any]) -> None:
    values: dict[str, Any] = {"name": "x", "factory": forever, **field}
    with pytest.raises((ConfigurationError, ValueError)):
        CriticalTaskConfig(**values)


def test_shutdown_order_must_name_every_priority_once(registry: OperationRegistry) -> None:
    with pytest.raises(ConfigurationError):
        Supervisor(registry=registry, shutdown_order=[TaskPriority.LOW, TaskPriority.LOW])


def test_registering_a_taken_name_is_refused(supervisor: Supervisor) -> None:
    supervisor.register_critical_task(config("feeds", forever))
    with pytest.raises(ConfigurationError, match="already registered"):
        supervisor.register_critical_task(config("feeds", forever))


# ---------------------------------------------------------------------------- operations


async def test_supervised_run_is_an_operation_in_the_registry_then_in_the_history(
    supervisor: Supervisor, registry: OperationRegistry, clock: FakeClock
) -> None:
    runs = Runs(clock)
    supervisor.register_critical_task(config("feeds", runs, owner="rss"))
    async with running(supervisor):
        [live] = registry.get_operations_by_name("feeds")
        assert live.kind == "supervised"
        assert live.status is OperationStatus.RUNNING
        assert live.metadata["attempt"] == 1
        assert live.metadata["owner"] == "rss"
        runs.fail(ValueError("bad feed"))
        await supervisor.wait_for_state("feeds", TaskState.BACKOFF)
        assert registry.get_operations_by_name("feeds") == []
        [failed] = registry.history.get_by_name("feeds")
        assert failed.status is OperationStatus.FAILED
        assert isinstance(failed.exception, ValueError)
        assert failed.traceback is not None and "bad feed" in failed.traceback
        await backoff_then_restart(clock, 10)
        await supervisor.wait_for_state("feeds", TaskState.RUNNING, min_attempts=2)
    [_, last] = registry.history.get_by_name("feeds")
    assert last.status is OperationStatus.CANCELLED
    assert last.metadata["attempt"] == 2


async def test_finished_runs_errors_are_recorded_in_metrics(
    supervisor: Supervisor, clock: FakeClock
) -> None:
    supervisor.register_critical_task(config("feeds", Runs(clock, "crash")))
    async with running(supervisor):
        await supervisor.wait_for_state("feeds", TaskState.BACKOFF)
        metrics = supervisor.get_task_metrics("feeds")
        assert metrics is not None
        assert metrics.error_count == 1
        assert metrics.last_error == "RuntimeError: boom 1"
        assert metrics.last_error_time == clock.wall()
        assert metrics.runs == 1


# ---------------------------------------------------------------------------- restart policy


async def test_crashing_task_restarts_with_exponential_backoff_capped_at_max_delay(
    supervisor: Supervisor, clock: FakeClock
) -> None:
    runs = Runs(clock, "crash", "crash", "crash", "crash", "crash")
    supervisor.register_critical_task(
        config("poll", runs, restart_delay=10, backoff_factor=2, max_delay=30, max_restarts=10)
    )
    async with running(supervisor):
        for attempt, delay in enumerate([10, 20, 30, 30], start=1):
            await supervisor.wait_for_state("poll", TaskState.BACKOFF, min_attempts=attempt)
            await backoff_then_restart(clock, delay)
        await supervisor.wait_for_state("poll", TaskState.BACKOFF, min_attempts=5)
        assert runs.starts == [0, 10, 30, 60, 90]
        metrics = supervisor.get_task_metrics("poll")
        assert metrics is not None and metrics.restart_count == 4


async def test_task_gives_up_after_max_restarts_within_the_window(
    supervisor: Supervisor, clock: FakeClock
) -> None:
    runs = Runs(clock, "crash", "crash", "crash", "crash")
    supervisor.register_critical_task(
        config("poll", runs, max_restarts=2, restart_window=1000, backoff_factor=1)
    )
    async with running(supervisor):
        for attempt in (1, 2):
            await supervisor.wait_for_state("poll", TaskState.BACKOFF, min_attempts=attempt)
            await backoff_then_restart(clock, 10)
        assert await supervisor.wait_for_state("poll", TaskState.FAILED) is TaskState.FAILED
        assert len(runs.starts) == 3
        assert clock.sleepers == 0
        health = supervisor.get_task_health("poll")
        assert health is not None and not health.is_healthy
        assert "not running (failed)" in health.problems


async def test_restarts_older_than_the_window_neither_count_nor_grow_the_backoff(
    supervisor: Supervisor, clock: FakeClock
) -> None:
    """The seed counted restarts since start: a task that later ran fine for days was
    still refused a restart. Here old restarts age out of the window."""
    runs = Runs(clock, "crash", "crash")
    supervisor.register_critical_task(
        config("poll", runs, max_restarts=2, restart_window=100, backoff_factor=2)
    )
    async with running(supervisor):
        await supervisor.wait_for_state("poll", TaskState.BACKOFF, min_attempts=1)
        await backoff_then_restart(clock, 10)
        await supervisor.wait_for_state("poll", TaskState.BACKOFF, min_attempts=2)
        await backoff_then_restart(clock, 20)
        await supervisor.wait_for_state("poll", TaskState.RUNNING, min_attempts=3)
        clock.advance(500)  # runs well, long past the window
        runs.fail()
        await supervisor.wait_for_state("poll", TaskState.BACKOFF, min_attempts=3)
        await backoff_then_restart(clock, 10)
        await supervisor.wait_for_state("poll", TaskState.RUNNING, min_attempts=4)


async def test_healthy_running_task_is_never_restarted_by_health_checks(
    registry: OperationRegistry, clock: FakeClock
) -> None:
    supervisor = Supervisor(
        registry=registry, clock=clock, health=HealthPolicy(settle_time=50, max_recent_restarts=1)
    )
    runs = Runs(clock, "crash")
    supervisor.register_critical_task(
        config("poll", runs, health_check_interval=30, restart_window=100)
    )
    async with running(supervisor):
        await supervisor.wait_for_state("poll", TaskState.BACKOFF)
        await backoff_then_restart(clock, 10)
        await supervisor.wait_for_state("poll", TaskState.RUNNING, min_attempts=2)
        health = supervisor.get_task_health("poll")
        assert health is not None and not health.is_healthy  # just restarted
        for _ in range(10):  # ten health checks, the first ones while it looks unhealthy
            await clock.wait_for_sleepers(1)
            clock.advance(30)
        await clock.wait_for_sleepers(1)
        assert len(runs.starts) == 2
        health = supervisor.get_task_health("poll")
        assert health is not None
        assert health.is_healthy, health.problems
        assert health.restarts_in_window == 0
        assert health.restart_count == 1
        assert health.uptime == pytest.approx(300)


async def test_a_failing_health_probe_restarts_the_running_task(
    supervisor: Supervisor, clock: FakeClock
) -> None:
    answers = [True, False]
    runs = Runs(clock)
    supervisor.register_critical_task(
        config(
            "poll",
            runs,
            health_check_interval=60,
            health_check=lambda: answers.pop(0) if answers else True,
        )
    )
    async with running(supervisor):
        await clock.wait_for_sleepers(1)
        clock.advance(60)  # probe says alive
        await clock.wait_for_sleepers(1)
        assert runs.cancelled == 0
        clock.advance(60)  # probe says dead: cancelled, then the restart policy
        await supervisor.wait_for_state("poll", TaskState.BACKOFF)
        assert runs.cancelled == 1
        await backoff_then_restart(clock, 10)
        await supervisor.wait_for_state("poll", TaskState.RUNNING, min_attempts=2)
        metrics = supervisor.get_task_metrics("poll")
        assert metrics is not None
        assert metrics.last_error == "health check failed"
        assert metrics.restart_count == 1


async def test_cancelled_from_outside_the_task_stays_stopped(
    supervisor: Supervisor, registry: OperationRegistry, clock: FakeClock
) -> None:
    supervisor.register_critical_task(config("poll", Runs(clock)))
    async with running(supervisor):
        assert await registry.cancel_all(name_pattern="poll") == 1
        await supervisor.wait_for_state("poll", TaskState.STOPPED)
        [ended] = registry.history.get_by_name("poll")
        assert ended.cancel_reason is CancelationReason.MANUAL


async def test_a_run_that_returns_is_restarted_unless_told_otherwise(
    supervisor: Supervisor, clock: FakeClock
) -> None:
    again = Runs(clock, "return")
    once = Runs(clock, "return")
    supervisor.register_critical_task(config("again", again))
    supervisor.register_critical_task(config("once", once, restart_on_success=False))
    async with running(supervisor):
        await supervisor.wait_for_state("once", TaskState.STOPPED)
        await supervisor.wait_for_state("again", TaskState.BACKOFF)
        await backoff_then_restart(clock, 10)
        await supervisor.wait_for_state("again", TaskState.RUNNING, min_attempts=2)
    metrics = supervisor.get_task_metrics("again")
    assert metrics is not None and metrics.error_count == 0


async def test_restart_critical_task_restarts_now_and_revives_a_task_that_gave_up(
    supervisor: Supervisor, clock: FakeClock
) -> None:
    runs = Runs(clock, "wait", "crash")
    supervisor.register_critical_task(config("poll", runs, max_restarts=1))
    assert not await supervisor.restart_critical_task("poll")  # not started
    async with running(supervisor):
        assert not await supervisor.restart_critical_task("nope")
        assert await supervisor.restart_critical_task("poll")
        assert runs.cancelled == 1
        await supervisor.wait_for_state("poll", TaskState.FAILED, min_attempts=2)
        # The manual restart used up max_restarts: only the operator's override revives it.
        assert not await supervisor.restart_critical_task("poll")
        assert await supervisor.restart_critical_task("poll", force=True)
        await supervisor.wait_for_state("poll", TaskState.RUNNING, min_attempts=3)
        metrics = supervisor.get_task_metrics("poll")
        assert metrics is not None and metrics.restart_count == 2


async def test_restart_critical_task_skips_a_pending_backoff(
    supervisor: Supervisor, clock: FakeClock
) -> None:
    runs = Runs(clock, "crash")
    supervisor.register_critical_task(config("poll", runs, restart_delay=500))
    async with running(supervisor):
        await supervisor.wait_for_state("poll", TaskState.BACKOFF)
        assert await supervisor.restart_critical_task("poll")
        await supervisor.wait_for_state("poll", TaskState.RUNNING, min_attempts=2)
        assert runs.starts == [0, 0]


# ---------------------------------------------------------------------------- health, metrics


async def test_error_rate_counts_only_the_errors_inside_the_window(
    registry: OperationRegistry, clock: FakeClock
) -> None:
    supervisor = Supervisor(
        registry=registry, clock=clock, health=HealthPolicy(error_window=600, max_error_rate=20)
    )
    for _ in range(5):
        supervisor.record_run("sync", 1.0, RuntimeError("x"))
    health = supervisor.get_task_health("sync")
    assert health is not None
    assert health.errors_in_window == 5
    assert health.error_rate == pytest.approx(30.0)  # 5 in 10 minutes: 30 an hour
    assert not health.is_healthy
    clock.advance(601)
    health = supervisor.get_task_health("sync")
    assert health is not None
    assert health.error_rate == 0.0
    assert health.is_healthy
    metrics = supervisor.get_task_metrics("sync")
    assert metrics is not None and metrics.error_count == 5  # the total stays


async def test_instrumented_task_records_runs_runtime_and_errors(
    supervisor: Supervisor, clock: FakeClock
) -> None:
    @instrumented_task(name="job", supervisor=supervisor)
    async def job(seconds: float, fail: bool = False) -> float:
        await clock.sleep(seconds)
        if fail:
            raise KeyError("missing")
        return seconds

    for seconds, fail in ((3, False), (5, True)):
        task = asyncio.create_task(job(seconds, fail=fail))
        await clock.wait_for_sleepers(1)
        clock.advance(seconds)
        if fail:
            with pytest.raises(KeyError):
                await task
        else:
            assert await task == 3
    cancelled = asyncio.create_task(job(100))
    await clock.wait_for_sleepers(1)
    cancelled.cancel()
    with pytest.raises(asyncio.CancelledError):
        await cancelled
    metrics = supervisor.get_task_metrics("job")
    assert metrics is not None
    assert (metrics.runs, metrics.total_runtime, metrics.max_runtime) == (3, 8, 5)
    assert metrics.avg_runtime == pytest.approx(8 / 3)
    assert metrics.error_count == 1  # a cancellation is no error
    assert metrics.last_error == "KeyError: 'missing'"
    assert not metrics.critical and metrics.state is None


async def test_instrumented_task_reports_to_the_supervisor_of_the_running_critical_task(
    supervisor: Supervisor, clock: FakeClock
) -> None:
    """A bare ``@instrumented_task`` inside a supervised run finds its supervisor, and a
    failure seen by both the wrapper and the run counts once."""

    @instrumented_task
    async def poll() -> None:
        assert current_supervisor() is supervisor
        raise RuntimeError("down")

    label = poll.__qualname__
    supervisor.register_critical_task(config(label, poll))
    async with running(supervisor):
        await supervisor.wait_for_state(label, TaskState.BACKOFF)
    metrics = supervisor.get_task_metrics(label)
    assert metrics is not None
    assert metrics.error_count == 1
    assert metrics.runs == 2  # the wrapper's call and the supervised run


async def test_statistics_count_health_categories_priorities_and_states(
    supervisor: Supervisor, clock: FakeClock
) -> None:
    supervisor.register_critical_task(config("a", Runs(clock), priority=TaskPriority.LOW))
    supervisor.register_critical_task(
        config("b", Runs(clock, "crash"), category=TaskCategory.GATEWAY)
    )
    supervisor.record_run("Task-9", 0.5)
    async with running(supervisor):
        await supervisor.wait_for_state("b", TaskState.BACKOFF)
        stats = supervisor.get_task_statistics()
    assert stats == {
        "state": "started",
        "total_tasks": 3,
        "critical_tasks": 2,
        "healthy_tasks": 2,
        "unhealthy_tasks": 1,
        "categories": {"scheduled": 1, "gateway": 1, "system": 1},
        "priorities": {"low": 1, "high": 1, "normal": 1},
        "states": {"running": 1, "backoff": 1},
        "total_restarts": 0,
        "total_errors": 1,
    }


# ---------------------------------------------------------------------------- registration


class Plugin:
    def __init__(self, *configs: CriticalTaskConfig) -> None:
        self.configs = configs

    def get_critical_tasks(self) -> list[CriticalTaskConfig]:
        return list(self.configs)


class BrokenPlugin:
    def get_critical_tasks(self) -> list[CriticalTaskConfig]:
        raise RuntimeError("cannot list")


async def test_discovery_registers_providers_tasks_with_their_owner(
    supervisor: Supervisor, caplog: pytest.LogCaptureFixture
) -> None:
    providers = {
        "rss": Plugin(config("feeds", forever), config("dup", forever)),
        "music": Plugin(config("player", forever, owner="audio"), config("dup", forever)),
        "broken": BrokenPlugin(),
        "plain": object(),
    }
    with caplog.at_level(logging.WARNING, "taskwarden.supervisor"):
        names = supervisor.discover_and_register(providers)
    assert names == ["feeds", "dup", "player"]
    tasks = supervisor.critical_tasks
    assert tasks["feeds"].owner == "rss"
    assert tasks["player"].owner == "audio"
    assert "broken" in caplog.text and "dup" in caplog.text
    assert supervisor.discover_and_register([Plugin(config("solo", forever))]) == ["solo"]
    assert supervisor.critical_tasks["solo"].owner == "Plugin"


async def test_unregister_owner_stops_and_forgets_only_that_owners_tasks(
    supervisor: Supervisor, registry: OperationRegistry, clock: FakeClock
) -> None:
    rss, other = Runs(clock), Runs(clock)
    supervisor.register_critical_task(config("feeds", rss, owner="rss"))
    supervisor.register_critical_task(config("player", other, owner="music"))
    async with running(supervisor):
        assert supervisor.unregister_owner("rss") == ["feeds"]
        assert supervisor.get_task_metrics("feeds") is None
        assert supervisor.get_task_state("feeds") is None
        assert set(supervisor.critical_tasks) == {"player"}
        await rss.ended.wait()
        [ended] = registry.history.get_by_name("feeds")
        assert ended.cancel_message == "unregistered"
        assert rss.cancelled == 1 and other.cancelled == 0
        assert supervisor.unregister_owner("rss") == []
        assert not supervisor.unregister_critical_task("feeds")


async def test_a_task_registered_while_running_starts_at_once(
    supervisor: Supervisor, registry: OperationRegistry, clock: FakeClock
) -> None:
    async with running(supervisor):
        supervisor.register_critical_task(config("late", Runs(clock)))
        await supervisor.wait_for_state("late", TaskState.RUNNING)
        assert registry.get_operation_by_name("late") is not None


async def test_a_task_registered_by_another_during_start_up_starts_too(
    supervisor: Supervisor, clock: FakeClock
) -> None:
    helper = Runs(clock)

    async def first() -> None:
        supervisor.register_critical_task(config("helper", helper))
        await forever()

    supervisor.register_critical_task(config("first", first))
    async with running(supervisor):
        await supervisor.wait_for_state("helper", TaskState.RUNNING)
    assert helper.cancelled == 1


async def test_a_task_registered_while_stopped_waits_pending_for_the_next_start(
    supervisor: Supervisor, clock: FakeClock
) -> None:
    supervisor.register_critical_task(config("poll", Runs(clock)))
    assert supervisor.get_task_state("poll") is TaskState.PENDING
    health = supervisor.get_task_health("poll")
    assert health is not None and health.problems == ("not running (pending)",)
    async with running(supervisor):
        assert supervisor.get_task_state("poll") is TaskState.RUNNING
    async with running(supervisor):  # a supervisor can start again after a stop
        await supervisor.wait_for_state("poll", TaskState.RUNNING, min_attempts=2)


# ---------------------------------------------------------------------------- run state


async def test_run_state_goes_starting_started_stopping_stopped(
    supervisor: Supervisor,
) -> None:
    seen: list[SupervisorState] = []

    async def watch() -> None:
        seen.append(supervisor.state)
        try:
            await forever()
        finally:
            seen.append(supervisor.state)

    supervisor.register_critical_task(config("watch", watch))
    states = [supervisor.state]
    async with running(supervisor):
        states.append(supervisor.state)
    states.append(supervisor.state)
    assert states == [SupervisorState.STOPPED, SupervisorState.STARTED, SupervisorState.STOPPED]
    assert seen == [SupervisorState.STARTING, SupervisorState.STOPPING]


async def test_run_until_stop_from_another_thread_returns_the_shutdown_report(
    supervisor: Supervisor, clock: FakeClock
) -> None:
    supervisor.register_critical_task(config("poll", Runs(clock)))
    runner = asyncio.create_task(supervisor.run())
    async with asyncio.timeout(BOUND):
        await supervisor.wait_for_state("poll", TaskState.RUNNING)
        stats = await asyncio.to_thread(supervisor.get_task_statistics)  # from a thread
        assert stats["states"] == {"running": 1}
        await asyncio.to_thread(supervisor.stop)
        report = await runner
    assert report is not None and report.clean
    assert [phase.cancelled for phase in report.phases] == [("poll",)]
    assert supervisor.get_task_state("poll") is TaskState.STOPPED


async def test_an_error_in_the_body_propagates_unwrapped(supervisor: Supervisor) -> None:
    supervisor.register_critical_task(config("poll", forever))
    with pytest.raises(LookupError):
        async with running(supervisor):
            raise LookupError("from the body")
    assert supervisor.state is SupervisorState.STOPPED


# ---------------------------------------------------------------------------- shutdown


def recorder(name: str, log: list[str]) -> Any:
    async def run() -> None:
        try:
            await forever()
        except asyncio.CancelledError:
            log.append(name)
            raise

    return run


async def test_shutdown_cancels_by_priority_least_important_first(
    supervisor: Supervisor,
) -> None:
    log: list[str] = []
    for name, priority in (
        ("critical", TaskPriority.CRITICAL),
        ("low", TaskPriority.LOW),
        ("high", TaskPriority.HIGH),
        ("normal", TaskPriority.NORMAL),
    ):
        supervisor.register_critical_task(config(name, recorder(name, log), priority=priority))
    async with running(supervisor):
        report = await supervisor.shutdown()
    assert log == ["low", "normal", "high", "critical"]
    assert [phase.priority for phase in report.phases] == [
        TaskPriority.LOW,
        TaskPriority.NORMAL,
        TaskPriority.HIGH,
        TaskPriority.CRITICAL,
    ]
    assert report.clean
    assert supervisor.last_shutdown is report


async def test_custom_shutdown_order_is_followed(
    registry: OperationRegistry, clock: FakeClock
) -> None:
    supervisor = Supervisor(
        registry=registry,
        clock=clock,
        shutdown_order=[
            TaskPriority.CRITICAL,
            TaskPriority.HIGH,
            TaskPriority.NORMAL,
            TaskPriority.LOW,
        ],
    )
    log: list[str] = []
    for name, priority in (("low", TaskPriority.LOW), ("top", TaskPriority.CRITICAL)):
        supervisor.register_critical_task(config(name, recorder(name, log), priority=priority))
    async with running(supervisor):
        pass
    assert log == ["top", "low"]


async def test_a_task_that_swallows_cancellation_cannot_hang_shutdown(
    supervisor: Supervisor, clock: FakeClock
) -> None:
    log: list[str] = []
    swallowed = asyncio.Event()
    release = asyncio.Event()

    async def stubborn() -> None:
        while not release.is_set():
            try:
                await release.wait()
            except asyncio.CancelledError:
                swallowed.set()  # and carries on: the bug this deadline exists for

    supervisor.register_critical_task(config("stubborn", stubborn, priority=TaskPriority.NORMAL))
    supervisor.register_critical_task(
        config("last", recorder("last", log), priority=TaskPriority.CRITICAL)
    )
    async with running(supervisor):
        shutdown = asyncio.create_task(supervisor.shutdown(phase_timeout=7))
        await swallowed.wait()
        await clock.wait_for_sleepers(1)  # the phase's deadline
        assert log == []
        clock.advance(7)
        report = await shutdown
        assert log == ["last"]
        assert report.left == ("stubborn",)
        [normal, critical] = report.phases
        assert normal.left == ("stubborn",) and normal.duration == 7
        assert critical.left == () and critical.duration == 0
        with pytest.raises(ShutdownTimeout, match="stubborn"):
            report.raise_if_left()
        assert supervisor.get_task_state("stubborn") is TaskState.RUNNING  # it still is
        assert supervisor.get_task_state("last") is TaskState.STOPPED
        release.set()
        await supervisor.wait_for_state("stubborn", TaskState.STOPPED)


async def test_shutdown_cancels_only_owned_tasks_by_default(supervisor: Supervisor) -> None:
    bystander = asyncio.create_task(forever(), name="cmd-bystander")
    supervisor.register_critical_task(config("poll", forever))
    async with running(supervisor):
        pass
    assert not bystander.done()
    bystander.cancel()


async def test_opt_in_shutdown_cancels_every_loop_task_in_its_categorys_phase(
    registry: OperationRegistry, clock: FakeClock
) -> None:
    supervisor = Supervisor(
        registry=registry,
        clock=clock,
        category_prefixes={"cmd-": TaskCategory.COMMAND, "gateway-": "gateway"},
    )
    log: list[str] = []

    async def failing_on_cancel() -> None:
        try:
            await forever()
        except asyncio.CancelledError:
            log.append("cmd-fails")
            raise ValueError("cleanup failed") from None

    loop_tasks = [
        asyncio.create_task(recorder("gateway-shard", log)(), name="gateway-shard"),
        asyncio.create_task(failing_on_cancel(), name="cmd-fails"),
        asyncio.create_task(recorder("Task-x", log)(), name="Task-x"),
    ]
    spared = asyncio.create_task(forever(), name="spared")
    supervisor.register_critical_task(config("poll", recorder("poll", log)))
    async with running(supervisor):
        report = await supervisor.shutdown(include_all_tasks=True, exclude=[spared])
    assert log == ["cmd-fails", "Task-x", "poll", "gateway-shard"]
    assert [phase.cancelled for phase in report.phases] == [
        ("cmd-fails",),
        ("Task-x",),
        ("poll",),
        ("gateway-shard",),
    ]
    assert report.errors == {"cmd-fails": "ValueError('cleanup failed')"}
    assert all(task.done() for task in loop_tasks)
    assert not spared.done()
    spared.cancel()


async def test_cancel_all_tasks_is_the_seeds_name_for_the_all_tasks_shutdown(
    supervisor: Supervisor,
) -> None:
    bystander = asyncio.create_task(forever(), name="bystander")
    supervisor.register_critical_task(config("poll", forever))
    async with running(supervisor):
        report = await supervisor.cancel_all_tasks()
    assert bystander.cancelled()
    assert sorted(name for phase in report.phases for name in phase.cancelled) == [
        "bystander",
        "poll",
    ]


# ---------------------------------------------------------------------------- categories


def test_categorizer_picks_the_longest_matching_prefix() -> None:
    categorizer = TaskCategorizer({"bot.": "system", "bot.gateway.": TaskCategory.GATEWAY})
    assert categorizer.category_of("bot.gateway.shard-1") is TaskCategory.GATEWAY
    assert categorizer.category_of("bot.cache") is TaskCategory.SYSTEM
    assert categorizer.category_of("Task-3") is TaskCategory.SYSTEM
    assert categorizer.category_of("mystery") is TaskCategory.UNKNOWN
    assert TaskCategorizer(defaults={}).category_of("Task-3") is TaskCategory.UNKNOWN
    with pytest.raises(ConfigurationError):
        TaskCategorizer({"x": "nonsense"})


async def test_categorize_tasks_files_loop_tasks_by_prefix_and_runs_by_their_config(
    registry: OperationRegistry, clock: FakeClock
) -> None:
    supervisor = Supervisor(
        registry=registry, clock=clock, category_prefixes={"cmd-": TaskCategory.COMMAND}
    )
    supervisor.register_critical_task(config("gw", Runs(clock), category=TaskCategory.GATEWAY))
    command = asyncio.create_task(forever(), name="cmd-ban")
    stranger = asyncio.create_task(forever(), name="stranger")
    async with running(supervisor):
        grouped = supervisor.categorize_tasks()
        names = {cat: sorted(t.get_name() for t in tasks) for cat, tasks in grouped.items()}
        assert names[TaskCategory.GATEWAY] == ["gw"]
        assert names[TaskCategory.COMMAND] == ["cmd-ban"]
        assert "stranger" in names[TaskCategory.UNKNOWN]
        assert "taskwarden-supervisor:gw" in names[TaskCategory.SYSTEM]
        assert supervisor.get_task_category("gw") is TaskCategory.GATEWAY
        assert supervisor.get_task_category("cmd-kick") is TaskCategory.COMMAND
    for task in (command, stranger):
        task.cancel()


def test_metrics_snapshot_is_a_frozen_record(supervisor: Supervisor) -> None:
    supervisor.record_run("job", 2.0)
    metrics = supervisor.get_task_metrics("job")
    assert metrics is not None
    with pytest.raises(dataclasses.FrozenInstanceError):
        metrics.runs = 5  # type: ignore[misc]


def test_priority_and_category_given_as_strings_become_enums() -> None:
    cfg = CriticalTaskConfig(
        name="x",
        factory=forever,
        priority="low",  # type: ignore[arg-type]
        category="gateway",  # type: ignore[arg-type]
    )
    assert cfg.priority is TaskPriority.LOW
    assert cfg.category is TaskCategory.GATEWAY
