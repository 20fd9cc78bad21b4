"""Cron schedules: 5-field expressions in a time zone, fired exactly once per tick.

A definition with ``schedule="0 2 * * *"`` (and optionally ``schedule_tz="Europe/Paris"``)
is launched at every fire time while :meth:`Engine.run` is active. Each tick is claimed in
the store with :meth:`~taskwarden.abc.Store.mark_cron_tick` before launching, so when
several engines share one store exactly one of them launches it. Time comes from the
engine's :class:`~taskwarden.clock.Clock`, so tests drive the scheduler with a ``FakeClock``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime, tzinfo
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter

from taskwarden.clock import Clock
from taskwarden.errors import InvalidDefinition

__all__ = ["CronSchedule", "CronScheduler"]

logger = logging.getLogger("taskwarden.engine.cron")


class CronSchedule:
    """A validated 5-field cron expression in a time zone (UTC by default)."""

    __slots__ = ("expression", "process_id", "tz", "tz_name")

    def __init__(self, process_id: str, expression: str, tz: tzinfo, tz_name: str) -> None:
        self.process_id = process_id
        self.expression = expression
        self.tz = tz
        self.tz_name = tz_name

    @classmethod
    def parse(cls, process_id: str, expression: str | None, tz_name: str | None) -> CronSchedule:
        """Validate ``expression`` and ``tz_name``; raise :class:`InvalidDefinition` naming
        the process when either is wrong."""
        if not isinstance(expression, str) or len(expression.split()) != 5:
            raise InvalidDefinition(
                f"process {process_id!r}: schedule {expression!r} is not a 5-field cron "
                "expression (minute hour day-of-month month day-of-week), e.g. '0 2 * * *'"
            )
        if not croniter.is_valid(expression):
            raise InvalidDefinition(
                f"process {process_id!r}: schedule {expression!r} is not a valid cron "
                "expression; check each field's range (minute 0-59, hour 0-23, ...)"
            )
        zone: tzinfo = UTC
        if tz_name is not None:
            try:
                zone = ZoneInfo(tz_name)
            except (ZoneInfoNotFoundError, ValueError) as exc:
                raise InvalidDefinition(
                    f"process {process_id!r}: unknown time zone {tz_name!r}; use an IANA "
                    "name such as 'Europe/Paris' or 'UTC'"
                ) from exc
        return cls(process_id, expression, zone, tz_name or "UTC")

    def next_after(self, after: datetime) -> datetime:
        """The first fire time strictly after ``after``, as UTC."""
        fire = croniter(self.expression, after.astimezone(self.tz)).get_next(datetime)
        assert isinstance(fire, datetime)
        return fire.astimezone(UTC)

    def __repr__(self) -> str:
        return f"CronSchedule({self.process_id!r}, {self.expression!r}, tz={self.tz_name!r})"


class CronScheduler:
    """Sleeps until the next fire time of any schedule, then claims and fires the due ticks.

    ``schedules`` returns the current schedules by process id; :meth:`changed` wakes the
    loop after a resync. ``fire(process_id, tick)`` claims the tick in the store and launches.
    """

    def __init__(
        self,
        clock: Clock,
        schedules: Callable[[], Mapping[str, CronSchedule]],
        fire: Callable[[str, datetime], Awaitable[None]],
    ) -> None:
        self._clock = clock
        self._schedules = schedules
        self._fire = fire
        self._changed = asyncio.Event()

    def changed(self) -> None:
        """Re-read the schedules now (call after definitions changed)."""
        self._changed.set()

    async def run(self) -> None:
        """Fire due ticks until cancelled. Each tick is fired at most once by this loop."""
        last = self._clock.wall()
        while True:
            schedules = dict(self._schedules())
            self._changed.clear()
            if not schedules:
                await self._changed.wait()
                continue
            upcoming = {pid: s.next_after(last) for pid, s in schedules.items()}
            delay = (min(upcoming.values()) - self._clock.wall()).total_seconds()
            if await self._sleep_or_change(delay):
                continue
            now = self._clock.wall()
            for pid, fire_at in upcoming.items():
                if fire_at > now:
                    continue
                tick = fire_at
                # After a long stall fire only the latest missed tick, never a burst.
                while (following := schedules[pid].next_after(tick)) <= now:
                    tick = following
                try:
                    await self._fire(pid, tick)
                except Exception:
                    logger.exception("cron fire of %r at %s failed", pid, tick.isoformat())
            last = now

    async def _sleep_or_change(self, delay: float) -> bool:
        """Sleep ``delay`` seconds of the clock; True if woken early by :meth:`changed`."""
        if self._changed.is_set():
            return True
        sleeper = asyncio.ensure_future(self._clock.sleep(delay))
        waiter = asyncio.ensure_future(self._changed.wait())
        try:
            await asyncio.wait({sleeper, waiter}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (sleeper, waiter):
                task.cancel()
            await asyncio.wait({sleeper, waiter})
        return sleeper.cancelled()
