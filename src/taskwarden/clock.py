"""Time as a dependency, so time-driven logic can be tested without sleeping.

Components that wait, time out or compare ages take a :class:`Clock`. Production code uses
:class:`SystemClock`; tests use :class:`FakeClock`, whose time only moves when the test calls
:meth:`FakeClock.advance`::

    >>> import asyncio
    >>> async def demo() -> list[str]:
    ...     clock = FakeClock()
    ...     seen: list[str] = []
    ...     async def sleeper() -> None:
    ...         await clock.sleep(5)
    ...         seen.append(f"woke at {clock.now():g}")
    ...     task = asyncio.create_task(sleeper())
    ...     await clock.wait_for_sleepers(1)
    ...     clock.advance(4)
    ...     await asyncio.sleep(0)
    ...     assert not seen
    ...     clock.advance(1)
    ...     await task
    ...     return seen
    >>> asyncio.run(demo())
    ['woke at 5']
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from datetime import UTC, datetime, timedelta
from typing import Protocol, runtime_checkable

__all__ = ["Clock", "FakeClock", "SystemClock"]


@runtime_checkable
class Clock(Protocol):
    """A source of time: monotonic seconds for intervals, UTC wall time for display."""

    def now(self) -> float:
        """Monotonic seconds: only differences mean something; never goes backwards."""
        ...

    def wall(self) -> datetime:
        """The current wall time, timezone-aware UTC."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Wait ``seconds`` of this clock's time (a non-positive value just yields)."""
        ...


class SystemClock:
    """The real clock: ``time.monotonic``, ``datetime.now(UTC)`` and ``asyncio.sleep``."""

    __slots__ = ()

    def now(self) -> float:
        """Monotonic seconds from ``time.monotonic()``."""
        return time.monotonic()

    def wall(self) -> datetime:
        """``datetime.now(UTC)``."""
        return datetime.now(UTC)

    async def sleep(self, seconds: float) -> None:
        """``asyncio.sleep(seconds)``."""
        await asyncio.sleep(max(0.0, seconds))


#: The wall time a :class:`FakeClock` starts at unless told otherwise.
FAKE_EPOCH = datetime(2026, 1, 1, tzinfo=UTC)


class FakeClock:
    """A clock that stands still until :meth:`advance` moves it; for tests.

    ``sleep`` parks the caller until the clock has been advanced past its deadline; nothing
    ever sleeps for real, so a test of a 90-second window runs in microseconds and is
    deterministic. Sleepers due at the same instant wake in the order they started sleeping.
    """

    __slots__ = ("_changed", "_counter", "_now", "_sleepers", "_start", "_wall_start")

    def __init__(self, start: float = 0.0, *, wall_start: datetime = FAKE_EPOCH) -> None:
        if wall_start.tzinfo is None:
            raise ValueError("wall_start must be timezone-aware (use datetime(..., tzinfo=UTC))")
        self._now = float(start)
        self._start = float(start)
        self._wall_start = wall_start.astimezone(UTC)
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._counter = itertools.count()
        self._changed: asyncio.Event | None = None

    def now(self) -> float:
        """The fake monotonic time, in seconds."""
        return self._now

    def wall(self) -> datetime:
        """``wall_start`` plus the time advanced so far."""
        return self._wall_start + timedelta(seconds=self._now - self._start)

    async def sleep(self, seconds: float) -> None:
        """Park until the clock is advanced by ``seconds`` (just yield if non-positive)."""
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self._now + seconds, next(self._counter), future))
        if self._changed is not None:
            self._changed.set()
        try:
            await future
        finally:
            # A cancelled sleeper leaves its entry behind; advance() skips done futures.
            future.cancel()

    @property
    def sleepers(self) -> int:
        """How many tasks are currently parked in :meth:`sleep`."""
        return sum(1 for _, _, future in self._sleepers if not future.done())

    def advance(self, seconds: float) -> None:
        """Move time forward by ``seconds`` and wake every sleeper due by then.

        The woken tasks run at the event loop's next turn (``await asyncio.sleep(0)``, or
        awaiting what they produce).
        """
        if seconds < 0:
            raise ValueError("a clock cannot go backwards: advance() takes seconds >= 0")
        self._now += seconds
        while self._sleepers and self._sleepers[0][0] <= self._now:
            _, _, future = heapq.heappop(self._sleepers)
            if not future.done():
                future.set_result(None)

    async def wait_for_sleepers(self, count: int = 1) -> None:
        """Wait until at least ``count`` tasks are parked in :meth:`sleep`.

        Lets a test advance the clock only once the code under test is actually waiting on
        it, instead of guessing with real sleeps. Bound it with ``asyncio.timeout``.
        """
        while self.sleepers < count:
            if self._changed is None:
                self._changed = asyncio.Event()
            self._changed.clear()
            await self._changed.wait()
