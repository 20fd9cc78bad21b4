"""The measurements behind :class:`TaskMetrics` and :class:`TaskHealth`, kept per task name.

Internal to the supervisor: :class:`MetricsBook` holds one :class:`TaskStats` per name under
one ``threading.Lock``, so snapshots can be taken from any thread. Errors and restarts are
kept as clock times and counted over sliding windows: old ones age out.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Mapping
from datetime import datetime

from taskwarden.clock import Clock
from taskwarden.supervisor.config import (
    CriticalTaskConfig,
    HealthPolicy,
    TaskCategory,
    TaskHealth,
    TaskMetrics,
    TaskPriority,
    TaskState,
)

__all__ = ["MetricsBook", "TaskStats"]


class TaskStats:
    """What is measured for one task name. Guarded by its book's lock."""

    __slots__ = (
        "category",
        "error_count",
        "errors",
        "last_error",
        "last_error_time",
        "last_exc",
        "last_restart",
        "last_restart_at",
        "last_seen",
        "max_runtime",
        "name",
        "priority",
        "restart_count",
        "restarts",
        "runs",
        "start_time",
        "total_runtime",
    )

    def __init__(
        self, name: str, category: TaskCategory, priority: TaskPriority, start_time: datetime
    ) -> None:
        self.name = name
        self.category = category
        self.priority = priority
        self.start_time = start_time
        self.runs = 0
        self.total_runtime = 0.0
        self.max_runtime = 0.0
        self.error_count = 0
        self.last_error: str | None = None
        self.last_error_time: datetime | None = None
        # The last exception counted, so one failure seen twice (by an instrumented_task
        # wrapper and by the supervised run it ended) counts once.
        self.last_exc: BaseException | None = None
        self.errors: deque[float] = deque()
        self.restart_count = 0
        self.last_restart: datetime | None = None
        self.last_restart_at: float | None = None
        self.restarts: deque[float] = deque()
        self.last_seen: datetime | None = None


def _count_since(times: deque[float], cutoff: float) -> int:
    """Drop the entries older than ``cutoff`` and count the rest (times are in order)."""
    while times and times[0] < cutoff:
        times.popleft()
    return len(times)


class Liveness:
    """What the supervisor knows of a critical task, for :meth:`MetricsBook.health`."""

    __slots__ = ("restart_window", "started_at", "state")

    def __init__(self, state: TaskState, started_at: float | None, restart_window: float):
        self.state = state
        self.started_at = started_at
        self.restart_window = restart_window


class MetricsBook:
    """Every :class:`TaskStats` of one supervisor, by name."""

    __slots__ = ("_categorize", "_clock", "_lock", "_policy", "_priority_of", "_stats")

    def __init__(
        self,
        clock: Clock,
        policy: HealthPolicy,
        categorize: Callable[[str], TaskCategory],
        priority_of: Mapping[TaskCategory, TaskPriority],
    ) -> None:
        self._clock = clock
        self._policy = policy
        self._categorize = categorize
        self._priority_of = priority_of
        self._lock = threading.Lock()
        self._stats: dict[str, TaskStats] = {}

    def names(self) -> list[str]:
        """Every name with stats."""
        with self._lock:
            return list(self._stats)

    def register(self, name: str, category: TaskCategory, priority: TaskPriority) -> TaskStats:
        """The stats of a critical task (kept if the name was already instrumented)."""
        with self._lock:
            stats = self._stats.get(name)
            if stats is None:
                stats = self._stats[name] = TaskStats(name, category, priority, self._clock.wall())
            else:
                stats.category = category
                stats.priority = priority
            return stats

    def drop(self, stats: TaskStats) -> None:
        """Forget ``stats`` (if it is still the one kept under its name)."""
        with self._lock:
            if self._stats.get(stats.name) is stats:
                del self._stats[stats.name]

    def record_run(self, name: str, runtime: float, error: BaseException | None) -> None:
        """Count one run of ``name``, creating its stats (categorized by name) if new."""
        with self._lock:
            stats = self._stats.get(name)
            if stats is None:
                category = self._categorize(name)
                stats = self._stats[name] = TaskStats(
                    name, category, self._priority_of[category], self._clock.wall()
                )
            self._record_locked(stats, runtime, error)

    def record(self, stats: TaskStats, runtime: float, error: BaseException | None) -> None:
        """Count one run into ``stats`` (even if its name was unregistered meanwhile)."""
        with self._lock:
            self._record_locked(stats, runtime, error)

    def _record_locked(self, stats: TaskStats, runtime: float, error: BaseException | None) -> None:
        stats.runs += 1
        stats.total_runtime += runtime
        stats.max_runtime = max(stats.max_runtime, runtime)
        stats.last_seen = self._clock.wall()
        if error is not None and error is not stats.last_exc:
            stats.last_exc = error
            self._error_locked(stats, f"{type(error).__name__}: {error}")

    def record_error(self, stats: TaskStats, message: str) -> None:
        """Count an error that ended no run (a failed health check)."""
        with self._lock:
            self._error_locked(stats, message)

    def _error_locked(self, stats: TaskStats, message: str) -> None:
        stats.error_count += 1
        stats.last_error = message
        stats.last_error_time = self._clock.wall()
        stats.errors.append(self._clock.now())

    def note_restart(self, stats: TaskStats) -> None:
        """Count a restart now."""
        with self._lock:
            stats.restart_count += 1
            stats.last_restart = self._clock.wall()
            stats.last_restart_at = now = self._clock.now()
            stats.restarts.append(now)

    def recent_restarts(self, stats: TaskStats, window: float) -> int:
        """The restarts of the last ``window`` seconds."""
        with self._lock:
            return _count_since(stats.restarts, self._clock.now() - window)

    def restart_refusal(self, stats: TaskStats, config: CriticalTaskConfig) -> str | None:
        """Why a manual restart of ``stats``'s task must wait, or None if it may go now.

        Seed 002's two rules: ``restart_delay`` seconds must have passed since the last
        restart, and fewer than ``max_restarts`` restarts may lie inside ``restart_window``
        (automatic and manual ones alike; older ones have left the window).
        """
        with self._lock:
            now = self._clock.now()
            last = stats.last_restart_at
            if last is not None and now - last < config.restart_delay:
                return (
                    f"its last restart was {now - last:g}s ago, "
                    f"under its restart_delay of {config.restart_delay:g}s"
                )
            limit = config.max_restarts
            if limit is not None:
                recent = _count_since(stats.restarts, now - config.restart_window)
                if recent >= limit:
                    return (
                        f"{recent} restart(s) in the last {config.restart_window:g}s "
                        f"reached max_restarts ({limit})"
                    )
        return None

    def clear_restarts(self, stats: TaskStats) -> None:
        """Forget the restarts in the window (the total count stays)."""
        with self._lock:
            stats.restarts.clear()

    def metrics(self, name: str, state: TaskState | None) -> TaskMetrics | None:
        """A snapshot of the metrics of ``name`` (``state`` None: not a critical task)."""
        with self._lock:
            stats = self._stats.get(name)
            if stats is None:
                return None
            return TaskMetrics(
                name=name,
                category=stats.category,
                priority=stats.priority,
                critical=state is not None,
                state=state,
                start_time=stats.start_time,
                runs=stats.runs,
                restart_count=stats.restart_count,
                last_restart=stats.last_restart,
                total_runtime=stats.total_runtime,
                avg_runtime=stats.total_runtime / stats.runs if stats.runs else 0.0,
                max_runtime=stats.max_runtime,
                error_count=stats.error_count,
                last_error=stats.last_error,
                last_error_time=stats.last_error_time,
            )

    def health(self, name: str, live: Liveness | None) -> TaskHealth | None:
        """The health of ``name`` (``live`` None: not a critical task), or None if unknown."""
        policy = self._policy
        now = self._clock.now()
        with self._lock:
            stats = self._stats.get(name)
            if stats is None:
                return None
            errors = _count_since(stats.errors, now - policy.error_window)
            error_rate = errors * 3600.0 / policy.error_window
            problems: list[str] = []
            if error_rate >= policy.max_error_rate:
                problems.append(f"{error_rate:g} errors/hour (limit {policy.max_error_rate:g})")
            uptime = 0.0
            recent = 0
            last_seen = stats.last_seen
            if live is not None:
                recent = _count_since(stats.restarts, now - live.restart_window)
                if live.state is not TaskState.RUNNING:
                    problems.append(f"not running ({live.state.value})")
                elif live.started_at is not None:
                    uptime = now - live.started_at
                    last_seen = self._clock.wall()
                if recent >= policy.max_recent_restarts:
                    problems.append(f"{recent} restarts in {live.restart_window:g}s")
                since = None if stats.last_restart_at is None else now - stats.last_restart_at
                if since is not None and since < policy.settle_time:
                    problems.append(f"restarted {since:g}s ago")
            return TaskHealth(
                name=name,
                is_healthy=not problems,
                state=None if live is None else live.state,
                uptime=uptime,
                error_rate=error_rate,
                errors_in_window=errors,
                restart_count=stats.restart_count,
                restarts_in_window=recent,
                last_seen=last_seen,
                problems=tuple(problems),
            )
