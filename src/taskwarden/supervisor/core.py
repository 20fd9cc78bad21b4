"""The :class:`Supervisor`: keeps critical asyncio tasks running, measures them, stops them.

Each critical task has a *runner* in the supervisor's task group. The runner starts a run
(an asyncio task named after the critical task, whose coroutine runs inside a
``Cancelable(kind="supervised")`` scope, so it shows in the registry and lands in the
history), watches it, checks its health every ``health_check_interval``, and when it ends
decides: restart after a backoff, give up, or stay stopped.

Runs are not children of the task group on purpose: a run that swallows cancellation would
hold the group open for ever. The supervisor keeps every run referenced and records how it
ended, and its shutdown gives each phase a deadline, then reports what ignored it.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import replace
from types import TracebackType
from typing import Any, ClassVar

from taskwarden.clock import Clock, SystemClock
from taskwarden.errors import ConfigurationError
from taskwarden.model import CancelationReason, OperationStatus
from taskwarden.registry import OperationRegistry
from taskwarden.scope import Cancelable
from taskwarden.supervisor.categories import TaskCategorizer, get_task_name
from taskwarden.supervisor.config import (
    DEFAULT_CATEGORY_PRIORITIES,
    DEFAULT_SHUTDOWN_ORDER,
    CriticalTaskConfig,
    CriticalTasksProvider,
    HealthPolicy,
    ShutdownReport,
    SupervisorState,
    TaskCategory,
    TaskHealth,
    TaskMetrics,
    TaskPriority,
    TaskState,
    restart_delay,
)
from taskwarden.supervisor.metrics import Liveness, MetricsBook, TaskStats
from taskwarden.supervisor.shutdown import PhaseTarget, cancel_in_phases, wait_all

__all__ = ["Supervisor", "current_supervisor"]

logger = logging.getLogger("taskwarden.supervisor")

_current_supervisor: ContextVar[Supervisor | None] = ContextVar(
    "taskwarden_supervisor", default=None
)

_SHUTDOWN_MESSAGE = "supervisor shutdown"


def current_supervisor() -> Supervisor | None:
    """The supervisor running the calling code's critical task, or None outside one."""
    return _current_supervisor.get()


class _Watched:
    """A registered critical task and its supervision state."""

    __slots__ = (
        "attempt",
        "attempts",
        "changed",
        "config",
        "manual_restart",
        "probe_failed",
        "ready",
        "runner",
        "runs_started",
        "started_at",
        "state",
        "stats",
        "wake",
        "was_healthy",
    )

    def __init__(self, config: CriticalTaskConfig, stats: TaskStats) -> None:
        self.config = config
        self.stats = stats
        self.state = TaskState.PENDING
        self.runner: asyncio.Task[None] | None = None
        self.attempt: asyncio.Task[OperationStatus] | None = None
        self.attempts = 0
        self.runs_started = 0  # runs that entered their scope (attempts counts earlier)
        self.started_at: float | None = None
        self.changed = asyncio.Event()
        self.ready = asyncio.Event()
        self.wake = asyncio.Event()
        self.manual_restart = False
        self.probe_failed = False
        self.was_healthy: bool | None = None


class _Run:
    """One run of a critical task: its asyncio task's scope and who it belongs to."""

    __slots__ = ("scope", "watched")

    def __init__(self, watched: _Watched, scope: Cancelable) -> None:
        self.watched = watched
        self.scope = scope


class Supervisor:
    """Keeps critical background tasks running, measures them and shuts them down in order.

    Use it as an async context manager (it starts every registered task on entry and shuts
    them down on exit), or ``await supervisor.run()`` until :meth:`stop` is called::

        supervisor = Supervisor()
        supervisor.register_critical_task(
            CriticalTaskConfig(name="poll-feeds", factory=poll_feeds, restart_delay=5)
        )
        async with supervisor:
            await serve_forever()

    Args:
        registry: where the runs show as operations; the default registry if None.
        clock: the time source for delays, windows and deadlines (``FakeClock`` in tests).
        health: when a task counts as healthy.
        category_prefixes: task name prefix to :class:`TaskCategory`, for the loop's tasks
            the supervisor does not own (added to ``Task-`` and ``taskwarden-``, system).
        category_priorities: the shutdown phase of each category, for tasks it does not
            own; unknown and command tasks go first, the gateway last, by default.
        shutdown_order: the priorities in the order their phases run (each exactly once).
        shutdown_phase_timeout: seconds each shutdown phase waits for its tasks to end.
        stop_timeout: seconds :meth:`restart_critical_task` waits for the old run to end.
    """

    _instance: ClassVar[Supervisor | None] = None
    _instance_lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(
        self,
        *,
        registry: OperationRegistry | None = None,
        clock: Clock | None = None,
        health: HealthPolicy | None = None,
        category_prefixes: Mapping[str, TaskCategory | str] | None = None,
        category_priorities: Mapping[TaskCategory, TaskPriority] | None = None,
        shutdown_order: Sequence[TaskPriority] = DEFAULT_SHUTDOWN_ORDER,
        shutdown_phase_timeout: float = 5.0,
        stop_timeout: float = 5.0,
    ) -> None:
        order = tuple(TaskPriority(p) for p in shutdown_order)
        if sorted(order) != sorted(TaskPriority):
            raise ConfigurationError(
                f"shutdown_order must list every TaskPriority exactly once, got {order!r}"
            )
        for label, value in (
            ("shutdown_phase_timeout", shutdown_phase_timeout),
            ("stop_timeout", stop_timeout),
        ):
            if not value > 0:
                raise ConfigurationError(f"{label} must be > 0 seconds, got {value!r}")
        self._registry = registry if registry is not None else OperationRegistry.get_instance()
        self._clock: Clock = clock if clock is not None else SystemClock()
        self._health = health if health is not None else HealthPolicy()
        self._categorizer = TaskCategorizer(category_prefixes)
        self._category_priorities = {**DEFAULT_CATEGORY_PRIORITIES, **(category_priorities or {})}
        self._shutdown_order = order
        self._phase_timeout = shutdown_phase_timeout
        self._stop_timeout = stop_timeout
        self._book = MetricsBook(
            self._clock, self._health, self._categorizer.category_of, self._category_priorities
        )
        self._watched: dict[str, _Watched] = {}
        self._runs: dict[asyncio.Task[OperationStatus], _Run] = {}
        self._state = SupervisorState.STOPPED
        self._task_group: asyncio.TaskGroup | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_requested: asyncio.Event | None = None
        self._start_done: asyncio.Event | None = None
        self._host: asyncio.Task[ShutdownReport | None] | None = None
        self._shutdowns = 0  # shutdowns under way
        self._shutdown_idle: asyncio.Event | None = None
        self._last_report: ShutdownReport | None = None

    # ------------------------------------------------------------------ default instance
    @classmethod
    def get_instance(cls) -> Supervisor:
        """The process-wide supervisor (made on first use); instrumented tasks report to it
        when they run outside any supervised task and were given no supervisor."""
        instance = cls._instance
        if instance is None:
            with cls._instance_lock:
                instance = cls._instance
                if instance is None:
                    instance = cls._instance = cls()
        return instance

    @classmethod
    def set_instance(cls, supervisor: Supervisor | None) -> None:
        """Replace the process-wide supervisor (None: a fresh one is made on next use)."""
        with cls._instance_lock:
            cls._instance = supervisor

    # ------------------------------------------------------------------ properties
    @property
    def state(self) -> SupervisorState:
        """The run state: starting, started, stopping or stopped."""
        return self._state

    @property
    def clock(self) -> Clock:
        """The clock that drives delays, windows and deadlines."""
        return self._clock

    @property
    def registry(self) -> OperationRegistry:
        """The registry the supervised runs join."""
        return self._registry

    @property
    def critical_tasks(self) -> dict[str, CriticalTaskConfig]:
        """The registered critical tasks by name (a copy)."""
        return {name: w.config for name, w in self._watched.items()}

    @property
    def last_shutdown(self) -> ShutdownReport | None:
        """The report of the last graceful shutdown, or None before the first."""
        return self._last_report

    def get_task_state(self, name: str) -> TaskState | None:
        """The state of the critical task ``name``, or None if it is not registered."""
        watched = self._watched.get(name)
        return watched.state if watched is not None else None

    # ------------------------------------------------------------------ registration
    def register_critical_task(self, config: CriticalTaskConfig) -> None:
        """Supervise ``config``; it starts at once if the supervisor is starting or started.

        Registered while the supervisor is stopping or stopped, it waits (``PENDING``) for
        the next start.

        Raises:
            ConfigurationError: a critical task with this name is already registered.
        """
        if not isinstance(config, CriticalTaskConfig):
            raise ConfigurationError(f"expected a CriticalTaskConfig, got {config!r}")
        if config.name in self._watched:
            raise ConfigurationError(
                f"a critical task named {config.name!r} is already registered: "
                "unregister it first, or pick another name"
            )
        stats = self._book.register(config.name, config.category, config.priority)
        watched = self._watched[config.name] = _Watched(config, stats)
        logger.debug("registered critical task %r", config.name)
        if self._task_group is not None and self._state in (
            SupervisorState.STARTING,
            SupervisorState.STARTED,
        ):
            self._spawn(watched)

    def unregister_critical_task(self, name: str) -> bool:
        """Stop supervising ``name``: cancel its run, forget its metrics; False if unknown.

        A run that ignores the cancel is still tracked, and a shutdown cancels it again.
        """
        watched = self._watched.pop(name, None)
        if watched is None:
            return False
        self._book.drop(watched.stats)
        self._stop_watched(watched, "unregistered")
        logger.debug("unregistered critical task %r", name)
        return True

    def unregister_owner(self, owner: str) -> list[str]:
        """Unregister every critical task registered with ``owner``; their names."""
        names = [name for name, w in self._watched.items() if w.config.owner == owner]
        for name in names:
            self.unregister_critical_task(name)
        if names:
            logger.info("unregistered %d critical task(s) of owner %r", len(names), owner)
        return names

    def discover_and_register(
        self, providers: Mapping[str, object] | Iterable[object]
    ) -> list[str]:
        """Register the critical tasks of every provider that has ``get_critical_tasks()``.

        ``providers`` is a mapping of owner name to object (a bot's cogs, a plugin table) or
        an iterable of objects (owned by their class name). A config without an owner gets
        its provider's. A provider that raises, or returns a task whose name is taken, is
        logged and skipped; the others are registered. Returns the names registered.
        """
        if isinstance(providers, Mapping):
            pairs = [(str(key), value) for key, value in providers.items()]
        else:
            pairs = [(type(value).__name__, value) for value in providers]
        registered: list[str] = []
        for owner, provider in pairs:
            if not isinstance(provider, CriticalTasksProvider):
                continue
            try:
                configs = list(provider.get_critical_tasks())
            except Exception:
                logger.exception("discovering critical tasks of %r failed; skipped", owner)
                continue
            for config in configs:
                if config.owner is None:
                    config = replace(config, owner=owner)
                try:
                    self.register_critical_task(config)
                except ConfigurationError as exc:
                    logger.warning("critical task from %r not registered: %s", owner, exc)
                    continue
                registered.append(config.name)
        return registered

    # ------------------------------------------------------------------ metrics
    def record_run(self, name: str, runtime: float, error: BaseException | None = None) -> None:
        """Count one run of ``name`` that took ``runtime`` seconds, failed with ``error``.

        :func:`~taskwarden.supervisor.instrumented_task` calls this; a name that is not a
        critical task gets metrics of its own, categorized by its prefix.
        """
        self._book.record_run(name, runtime, error)

    def get_task_metrics(self, name: str) -> TaskMetrics | None:
        """A snapshot of the metrics of ``name``, or None if nothing was recorded for it."""
        watched = self._watched.get(name)
        return self._book.metrics(name, watched.state if watched is not None else None)

    def get_task_health(self, name: str) -> TaskHealth | None:
        """The health of ``name`` by the :class:`HealthPolicy`, or None if it is unknown.

        Errors count over the policy's ``error_window`` and restarts over the task's
        ``restart_window``; what is older no longer counts.
        """
        watched = self._watched.get(name)
        live = None
        if watched is not None:
            live = Liveness(watched.state, watched.started_at, watched.config.restart_window)
        return self._book.health(name, live)

    def task_names(self) -> list[str]:
        """Every task the supervisor knows (critical or recorded), sorted."""
        return sorted(self._book.names())

    def get_task_statistics(self) -> dict[str, Any]:
        """Counts over every known task: health, categories, priorities, states, totals."""
        healthy = unhealthy = restarts = errors = 0
        categories: dict[str, int] = {}
        priorities: dict[str, int] = {}
        states: dict[str, int] = {}
        for name in self._book.names():
            health = self.get_task_health(name)
            metrics = self.get_task_metrics(name)
            if health is None or metrics is None:  # unregistered meanwhile
                continue
            if health.is_healthy:
                healthy += 1
            else:
                unhealthy += 1
            categories[metrics.category.value] = categories.get(metrics.category.value, 0) + 1
            priorities[metrics.priority.value] = priorities.get(metrics.priority.value, 0) + 1
            if metrics.state is not None:
                states[metrics.state.value] = states.get(metrics.state.value, 0) + 1
            restarts += metrics.restart_count
            errors += metrics.error_count
        return {
            "state": self._state.value,
            "total_tasks": healthy + unhealthy,
            "critical_tasks": len(self._watched),
            "healthy_tasks": healthy,
            "unhealthy_tasks": unhealthy,
            "categories": categories,
            "priorities": priorities,
            "states": states,
            "total_restarts": restarts,
            "total_errors": errors,
        }

    # ------------------------------------------------------------------ categories
    def get_task_category(self, name: str) -> TaskCategory:
        """The category of a task named ``name``: its config's if it is a critical task."""
        watched = self._watched.get(name)
        if watched is not None:
            return watched.config.category
        return self._categorizer.category_of(name)

    def categorize_tasks(
        self, tasks: Iterable[asyncio.Task[Any]] | None = None
    ) -> dict[TaskCategory, list[asyncio.Task[Any]]]:
        """The unfinished tasks (default: all of the running loop but the caller) by category.

        The supervisor's own runs are filed under their config's category; other tasks by
        the longest name prefix configured in ``category_prefixes``.
        """
        if tasks is None:
            current = asyncio.current_task()
            tasks = [t for t in asyncio.all_tasks() if t is not current]
        grouped: dict[TaskCategory, list[asyncio.Task[Any]]] = {c: [] for c in TaskCategory}
        for task in tasks:
            if task.done():
                continue
            run = self._runs.get(task)
            if run is not None:
                grouped[run.watched.config.category].append(task)
            else:
                grouped[self._categorizer.category_of(get_task_name(task))].append(task)
        return grouped

    # ------------------------------------------------------------------ start / run / stop
    def _begin(self) -> None:
        """Become ``STARTING``: the part of every start that runs before its first await."""
        if self._state is not SupervisorState.STOPPED:
            raise ConfigurationError(
                f"the supervisor is {self._state.value}: enter it once at a time"
            )
        self._state = SupervisorState.STARTING
        self._loop = asyncio.get_running_loop()
        self._stop_requested = asyncio.Event()
        self._start_done = asyncio.Event()
        self._last_report = None

    async def _open(self) -> None:
        """Open the task group and start every registered task; ``STARTED`` once all run."""
        assert self._start_done is not None
        try:
            group = asyncio.TaskGroup()
            await group.__aenter__()
            self._task_group = group
            watched = list(self._watched.values())
            for item in watched:
                self._spawn(item)
            try:
                # Ready once every first run has entered its scope (or its runner ended).
                await asyncio.gather(*(item.ready.wait() for item in watched))
            except BaseException as exc:
                await self._abort_start(exc)
                raise
            self._state = SupervisorState.STARTED
            logger.info("supervisor started with %d critical task(s)", len(watched))
        finally:
            self._start_done.set()

    async def __aenter__(self) -> Supervisor:
        self._begin()
        await self._open()
        return self

    async def _abort_start(self, exc: BaseException) -> None:
        await self.shutdown()
        group, self._task_group = self._task_group, None
        if group is not None:
            await group.__aexit__(type(exc), exc, exc.__traceback__)
        self._state = SupervisorState.STOPPED

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            if self._state is SupervisorState.STARTED:
                await self.shutdown()
            elif self._shutdown_idle is not None and self._shutdowns:
                await self._shutdown_idle.wait()  # one is under way (cancel_all_tasks...)
        finally:
            group, self._task_group = self._task_group, None
            if group is not None:
                # The runners are all done by now. Only a cancellation of the body is passed
                # on: the group would wrap any other exception of the body in a group.
                if exc_type is not None and issubclass(exc_type, asyncio.CancelledError):
                    await group.__aexit__(exc_type, exc, tb)
                else:
                    await group.__aexit__(None, None, None)
            self._state = SupervisorState.STOPPED

    async def run(self) -> ShutdownReport | None:
        """Start, run until :meth:`stop` is called, shut down; the shutdown's report.

        A :meth:`shutdown` called directly (or :meth:`cancel_all_tasks`) also ends it.
        """
        self._begin()
        return await self._serve()

    async def _serve(self) -> ShutdownReport | None:
        await self._open()
        assert self._stop_requested is not None
        try:
            await self._stop_requested.wait()
        except BaseException as exc:
            await self.__aexit__(type(exc), exc, exc.__traceback__)
            raise
        await self.__aexit__(None, None, None)
        return self._last_report

    def start(self) -> None:
        """Begin supervising in the background: seed 002's ``TaskManager.start()``.

        A plain method, called from inside a running event loop (a coroutine, a callback):
        it returns at once, and a background task named ``taskwarden-supervisor`` does what
        ``async with`` does: every registered critical task starts, each with its health
        checks, until :meth:`stop`. The state is ``STARTING`` on return and ``STARTED``
        once every first run is running (:meth:`restart_critical_task` waits for that).

        Calling it again while it supervises is a no-op, and so is calling it inside
        ``async with`` or :meth:`run`. After :meth:`stop` has finished (``await``
        :meth:`wait_stopped`), it starts again.

        Raises:
            ConfigurationError: no event loop is running in this thread, or a stop is still
                under way (await :meth:`wait_stopped` first).
        """
        if self._state is SupervisorState.STOPPING or (
            self._host is not None and not self._host.done() and self._stop_pending()
        ):
            raise ConfigurationError(
                "the supervisor is stopping: await wait_stopped() before starting it again"
            )
        if self._state is not SupervisorState.STOPPED:
            logger.debug("supervisor.start(): already %s", self._state.value)
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            raise ConfigurationError(
                "Supervisor.start() needs a running event loop: call it from async code, "
                "or use asyncio.run(supervisor.run())"
            ) from None
        self._begin()
        host = loop.create_task(self._serve(), name="taskwarden-supervisor")
        host.add_done_callback(self._host_done)
        self._host = host

    def _stop_pending(self) -> bool:
        event = self._stop_requested
        return event is not None and event.is_set()

    @staticmethod
    def _host_done(host: asyncio.Task[ShutdownReport | None]) -> None:
        # Nobody need await the background task: a failure of it is logged here.
        if not host.cancelled() and (exc := host.exception()) is not None:
            logger.critical("the supervisor started by start() failed", exc_info=exc)

    def stop(self) -> None:
        """Stop supervising: seed 002's ``TaskManager.stop()``. Safe from any thread.

        It shuts down what :meth:`start` began, and makes :meth:`run` return, through
        :meth:`shutdown`, in the background: ``await`` :meth:`wait_stopped` to wait for the
        end and get the report. Inside ``async with`` it does nothing, since leaving the
        block is the shutdown. Calling it again, or before any start, does nothing.
        """
        event, loop = self._stop_requested, self._loop
        if event is None or loop is None or loop.is_closed():
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            event.set()
        else:
            loop.call_soon_threadsafe(event.set)

    async def wait_stopped(self) -> ShutdownReport | None:
        """Wait until what :meth:`start` began has shut down; the shutdown's report.

        Returns at once (the last report, or None) if nothing was started by
        :meth:`start`. Cancelling the caller does not cancel the supervisor. A failure of
        the background supervising is raised here.
        """
        host = self._host
        if host is None:
            return self._last_report
        await asyncio.wait({host})
        if host.cancelled():
            return self._last_report
        return host.result()

    def _spawn(self, watched: _Watched) -> None:
        group = self._task_group
        assert group is not None
        watched.ready.clear()
        watched.manual_restart = False  # a request left over from a previous session
        watched.runner = group.create_task(
            self._supervise(watched),
            name=f"taskwarden-supervisor:{watched.config.name}",
        )

    def _set_state(self, watched: _Watched, state: TaskState) -> None:
        watched.state = state
        changed, watched.changed = watched.changed, asyncio.Event()
        changed.set()

    async def wait_for_state(
        self, name: str, *states: TaskState, min_attempts: int = 0
    ) -> TaskState:
        """Wait until ``name`` is in one of ``states`` having started ``min_attempts`` runs.

        A run counts once it is running (it entered its scope), so after a manual restart
        ``wait_for_state(name, TaskState.RUNNING, min_attempts=n + 1)`` waits for the new
        run, not the old one. Bound it with ``asyncio.timeout``. Raises
        :class:`~taskwarden.errors.ConfigurationError` if ``name`` is not registered.
        """
        watched = self._watched.get(name)
        if watched is None:
            raise ConfigurationError(f"no critical task named {name!r} is registered")
        while not (watched.state in states and watched.runs_started >= min_attempts):
            await watched.changed.wait()
        return watched.state

    # ------------------------------------------------------------------ supervision
    async def _supervise(self, watched: _Watched) -> None:
        config = watched.config
        # Automatic restarts are counted here; manual ones by restart_critical_task, at
        # once, so that its delay and limit checks see them before the runner runs again.
        counted = True  # the first run is no restart
        try:
            while True:
                if not counted:
                    self._book.note_restart(watched.stats)
                counted = False
                status = await self._run_once(watched)
                if watched.manual_restart:
                    watched.manual_restart = False
                    counted = True
                    continue
                failed = status is OperationStatus.FAILED or watched.probe_failed
                watched.probe_failed = False
                if not failed and (
                    status is OperationStatus.CANCELLED or not config.restart_on_success
                ):
                    self._set_state(watched, TaskState.STOPPED)
                    return
                recent = self._book.recent_restarts(watched.stats, config.restart_window)
                if config.max_restarts is not None and recent >= config.max_restarts:
                    logger.error(
                        "critical task %r gave up: %d restart(s) in %gs reached max_restarts",
                        config.name,
                        recent,
                        config.restart_window,
                    )
                    self._set_state(watched, TaskState.FAILED)
                    return
                delay = restart_delay(config, recent)
                logger.warning(
                    "critical task %r ended (%s); restarting in %gs",
                    config.name,
                    status.value,
                    delay,
                )
                self._set_state(watched, TaskState.BACKOFF)
                watched.wake.clear()
                await self._sleep_or_wake(watched, delay)
                counted, watched.manual_restart = watched.manual_restart, False
        finally:
            watched.ready.set()

    async def _sleep_or_wake(self, watched: _Watched, delay: float) -> None:
        sleeper = asyncio.get_running_loop().create_task(
            self._clock.sleep(delay), name="taskwarden-supervisor-backoff"
        )
        waker = asyncio.get_running_loop().create_task(
            watched.wake.wait(), name="taskwarden-supervisor-wake"
        )
        try:
            await asyncio.wait({sleeper, waker}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            sleeper.cancel()
            waker.cancel()

    async def _run_once(self, watched: _Watched) -> OperationStatus:
        config = watched.config
        watched.attempts += 1
        scope = Cancelable(
            name=config.name,
            kind="supervised",
            registry=self._registry,
            metadata={
                **config.metadata,
                "supervised": True,
                "attempt": watched.attempts,
                "category": config.category.value,
                "priority": config.priority.value,
                "owner": config.owner,
            },
        )
        task = asyncio.get_running_loop().create_task(
            self._attempt(watched, scope), name=config.name
        )
        self._runs[task] = _Run(watched, scope)
        task.add_done_callback(self._run_done)
        watched.attempt = task
        interval = config.health_check_interval
        while not task.done():
            pending = await wait_all(self._clock, (task,), interval)
            if pending and not scope.is_cancelled:
                await self._check_health(watched, scope)
        watched.attempt = None
        if task.cancelled():
            return OperationStatus.CANCELLED
        return task.result()

    async def _attempt(self, watched: _Watched, scope: Cancelable) -> OperationStatus:
        config = watched.config
        _current_supervisor.set(self)
        started = self._clock.now()
        error: Exception | None = None
        try:
            async with scope:
                watched.started_at = started
                watched.runs_started += 1
                self._set_state(watched, TaskState.RUNNING)
                watched.ready.set()
                result = await config.factory()
                scope.set_result(result)
        except Exception as exc:
            # The scope has put the failure in the history; it is counted below and the
            # runner restarts the task: nothing more would see it if raised on.
            error = exc
            logger.error("critical task %r failed", config.name, exc_info=exc)
        finally:
            watched.started_at = None
            self._book.record(watched.stats, self._clock.now() - started, error)
        return scope.context.status

    def _run_done(self, task: asyncio.Task[OperationStatus]) -> None:
        run = self._runs.pop(task, None)
        if run is not None:
            watched = run.watched
            runner = watched.runner
            # A run that outlived its runner (it ignored a shutdown) has nobody else to
            # tell that it ended.
            if (runner is None or runner.done()) and watched.state is TaskState.RUNNING:
                self._set_state(watched, TaskState.STOPPED)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:  # a BaseException that is not a cancellation
            name = run.watched.config.name if run is not None else get_task_name(task)
            logger.critical("supervised run of %r died", name, exc_info=exc)

    async def _check_health(self, watched: _Watched, scope: Cancelable) -> None:
        config = watched.config
        health = self.get_task_health(config.name)
        if health is not None and health.is_healthy != watched.was_healthy:
            if not health.is_healthy:
                logger.warning(
                    "critical task %r is unhealthy: %s", config.name, "; ".join(health.problems)
                )
            elif watched.was_healthy is not None:
                logger.info("critical task %r is healthy again", config.name)
            watched.was_healthy = health.is_healthy
        probe = config.health_check
        if probe is None:
            return
        alive = await self._probe(config)
        if not alive and not scope.is_cancelled:
            logger.warning("health check of %r failed; restarting it", config.name)
            watched.probe_failed = True
            self._book.record_error(watched.stats, "health check failed")
            scope.cancel_sync(CancelationReason.CONDITION, "health check failed")

    async def _probe(self, config: CriticalTaskConfig) -> bool:
        probe = config.health_check
        assert probe is not None
        try:
            outcome = probe()
        except Exception:
            logger.warning("health check of %r raised", config.name, exc_info=True)
            return False
        if not inspect.isawaitable(outcome):
            return bool(outcome)

        async def answer() -> bool:
            return bool(await outcome)

        task = asyncio.get_running_loop().create_task(answer(), name="taskwarden-supervisor-probe")
        if await wait_all(self._clock, (task,), config.health_check_interval):
            task.cancel()
            logger.warning("health check of %r did not answer in time", config.name)
            return False
        if task.cancelled():
            return False
        exc = task.exception()
        if exc is not None:
            logger.warning("health check of %r raised", config.name, exc_info=exc)
            return False
        return task.result()

    def _cancel_attempt(self, attempt: asyncio.Task[OperationStatus], message: str) -> None:
        """Cancel a run through its scope (so the history says why), or its task if the run
        has not started: a scope cancelled before it is entered would not stop it."""
        run = self._runs.get(attempt)
        if run is not None and run.scope.status is not OperationStatus.PENDING:
            run.scope.cancel_sync(CancelationReason.MANUAL, message)
        else:
            attempt.cancel(message)

    def _stop_watched(self, watched: _Watched, message: str) -> None:
        """Cancel a task's runner and its run (without waiting for them)."""
        runner = watched.runner
        if runner is not None and not runner.done():
            runner.cancel()
        attempt = watched.attempt
        if attempt is not None and not attempt.done():
            self._cancel_attempt(attempt, message)
        if watched.state is not TaskState.FAILED:
            self._set_state(watched, TaskState.STOPPED)

    async def restart_critical_task(self, name: str, *, force: bool = False) -> bool:
        """Restart ``name`` now, skipping any backoff, if seed 002's rules allow it.

        Returns False, and restarts nothing, when:

        - no critical task has that name, or the supervisor is not started (called while
          it is starting, for instance right after :meth:`start`, it waits for the start);
        - fewer than ``restart_delay`` seconds have passed since its last restart;
        - ``max_restarts`` restarts already lie inside its ``restart_window``.

        Manual restarts count against the delay and the window together with the automatic
        ones; restarts older than the window no longer count, so a refused task can be
        restarted again later. ``force=True`` skips both rules (an operator's override); a
        task that gave up (``FAILED``) and is forced starts afresh, its window cleared.

        A running run is cancelled first and waited for up to ``stop_timeout``: False if it
        ignores the cancel (the restart then happens when it does end). The restart counts
        in its metrics as soon as it is granted.
        """
        watched = self._watched.get(name)
        if watched is not None and self._state is SupervisorState.STARTING:
            assert self._start_done is not None
            await self._start_done.wait()
            watched = self._watched.get(name)
        if watched is None:
            logger.warning("cannot restart %r: no critical task has that name", name)
            return False
        if self._state is not SupervisorState.STARTED:
            logger.warning("cannot restart %r: the supervisor is %s", name, self._state.value)
            return False
        if not force:
            refusal = self._book.restart_refusal(watched.stats, watched.config)
            if refusal is not None:
                logger.warning("cannot restart %r now: %s (force=True overrides)", name, refusal)
                return False
        if watched.manual_restart:
            return True  # the restart granted a moment ago is on its way: not a second one
        attempt = watched.attempt
        runner = watched.runner
        if attempt is not None and not attempt.done():
            self._book.note_restart(watched.stats)
            watched.manual_restart = True
            self._cancel_attempt(attempt, "restart requested")
            if await wait_all(self._clock, (attempt,), self._stop_timeout):
                logger.error("cannot restart %r: its run ignored the cancel", name)
                return False
            return True
        if runner is not None and not runner.done():  # waiting out a backoff
            self._book.note_restart(watched.stats)
            watched.manual_restart = True
            watched.wake.set()
            return True
        if watched.state is TaskState.FAILED and force:
            self._book.clear_restarts(watched.stats)
        self._book.note_restart(watched.stats)
        self._spawn(watched)
        return True

    # ------------------------------------------------------------------ shutdown
    async def shutdown(
        self,
        *,
        include_all_tasks: bool = False,
        phase_timeout: float | None = None,
        exclude: Iterable[asyncio.Task[Any]] = (),
    ) -> ShutdownReport:
        """Cancel the supervised runs phase by phase, least important priority first.

        Restarts stop first. Then each phase cancels the tasks of one priority (in
        ``shutdown_order``) and waits for them up to ``phase_timeout`` seconds (default
        ``shutdown_phase_timeout``); a task that swallows the cancel is reported in
        :attr:`ShutdownReport.left` and the shutdown goes on without it (it never raises
        for that: :meth:`ShutdownReport.raise_if_left` turns it into
        :class:`~taskwarden.errors.ShutdownTimeout`). This is the safe default: it cancels
        nothing the supervisor does not own unless asked to.

        It also ends :meth:`run` and what :meth:`start` began. The state is ``STOPPED``
        once the last of several concurrent shutdowns has finished.

        Args:
            include_all_tasks: also cancel every other task of the running loop (but the
                caller, ``exclude`` and the supervisor's own tasks), each in the phase of
                its category's priority; see the warning of :meth:`cancel_all_tasks`.
            phase_timeout: seconds each phase waits.
            exclude: tasks never to cancel.
        """
        timeout = self._phase_timeout if phase_timeout is None else phase_timeout
        if not timeout > 0:
            raise ConfigurationError(f"phase_timeout must be > 0 seconds, got {timeout!r}")
        self._state = SupervisorState.STOPPING
        if not self._shutdowns:
            self._shutdown_idle = asyncio.Event()
        self._shutdowns += 1
        try:
            report = await self._shut_down(include_all_tasks, set(exclude), phase_seconds=timeout)
        finally:
            self._shutdowns -= 1
            if not self._shutdowns:
                self._state = SupervisorState.STOPPED
                if self._stop_requested is not None:
                    self._stop_requested.set()  # run() and start()'s task return
                if self._shutdown_idle is not None:
                    self._shutdown_idle.set()
        self._last_report = report
        logger.info(
            "supervisor stopped: %d phase(s), %d task(s) left",
            len(report.phases),
            len(report.left),
        )
        return report

    async def _shut_down(
        self, include_all_tasks: bool, skip: set[asyncio.Task[Any]], *, phase_seconds: float
    ) -> ShutdownReport:
        current = asyncio.current_task()
        if current is not None:
            skip.add(current)
        runners = [w.runner for w in self._watched.values() if w.runner is not None]
        for runner in runners:
            runner.cancel()
        if runners:
            await asyncio.wait(runners)
        targets: dict[TaskPriority, list[PhaseTarget]] = {}
        for task, run in list(self._runs.items()):
            if task not in skip and not task.done():
                config = run.watched.config
                cancel: Callable[[], object] = functools.partial(
                    self._cancel_attempt, task, _SHUTDOWN_MESSAGE
                )
                targets.setdefault(config.priority, []).append(
                    PhaseTarget(name=config.name, task=task, cancel=cancel, owned=True)
                )
        if include_all_tasks:
            owned: set[asyncio.Task[Any]] = set(self._runs) | set(runners)
            if self._host is not None:
                owned.add(self._host)  # start()'s task ends by itself once this is done
            for task in asyncio.all_tasks():
                if task in skip or task in owned or task.done():
                    continue
                name = get_task_name(task)
                priority = self._category_priorities[self._categorizer.category_of(name)]
                cancel = functools.partial(task.cancel, f"taskwarden: {_SHUTDOWN_MESSAGE}")
                targets.setdefault(priority, []).append(
                    PhaseTarget(name=name, task=task, cancel=cancel, owned=False)
                )
        report = await cancel_in_phases(self._clock, self._shutdown_order, targets, phase_seconds)
        for watched in self._watched.values():
            attempt = watched.attempt
            if attempt is not None and not attempt.done():
                continue  # ignored the cancel: RUNNING until it ends (see _run_done)
            if watched.state in (TaskState.RUNNING, TaskState.BACKOFF):
                self._set_state(watched, TaskState.STOPPED)
        return report

    async def cancel_all_tasks(self, *, phase_timeout: float | None = None) -> ShutdownReport:
        """Seed 002's ``cancel_all_tasks()``: cancel **every** task of the loop but the caller.

        The same as ``shutdown(include_all_tasks=True)``: the supervised runs and every
        other task of the running loop, in priority phases, except the calling task and
        the supervisor's own tasks.

        .. warning::
            "Every task but the caller" includes the tasks that are *awaiting* the caller:
            its parents. Called in a task that ``main()`` awaits (``asyncio.gather``,
            ``create_task`` then ``await``, a ``TaskGroup`` child, a web framework's
            request task), it cancels ``main()`` too, and every task that awaits that.
            Call it only from the outermost task, as the last step of an exit, or use
            :meth:`shutdown` (only what the supervisor owns), the safe default.
        """
        return await self.shutdown(include_all_tasks=True, phase_timeout=phase_timeout)

    def __repr__(self) -> str:
        return f"<Supervisor {self._state.value} critical_tasks={len(self._watched)}>"
