"""Retries on error: how often a failed run is tried again, and how long it waits first.

A task opts in with ``TaskInstance(retries=RetryPolicy(...))``. A root run that raises one
of ``retry_on`` is recorded in the history as a failed run, with its error, and its process
goes back to ``scheduled`` with ``attempt`` counted up and ``next_attempt_at`` saying when
the next try is due. Any engine or worker that serves the process starts it then. Past the
last attempt the failure stands. A cancelled or timed-out run is never retried: somebody
(or the time limit) asked it to stop.

The waits grow geometrically from ``delay`` by ``backoff``, are capped at ``max_delay``,
and are spread by ``jitter`` (a fraction: 0.1 is +-10%) so that many runs failing together
do not all come back in the same instant::

    >>> policy = RetryPolicy(attempts=4, delay=1.0, backoff=2.0, max_delay=3.0, jitter=0.0)
    >>> [policy.delay_before(retry) for retry in (1, 2, 3)]
    [1.0, 2.0, 3.0]
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from taskwarden.errors import InvalidDefinition

__all__ = ["RetryPlan", "RetryPolicy", "plan_retry"]


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """When and how often a run that failed with an error is tried again.

    ``attempts`` counts every try, the first included (3: the first run and two retries).
    The wait before retry ``n`` (1-based) is ``delay * backoff ** (n - 1)``, at most
    ``max_delay`` seconds, then multiplied by a random factor in ``1 +- jitter``.
    ``retry_on`` names the exception types worth another try; others fail at once.

    The defaults are those of the field: 3 attempts, 1 s doubling, a 10-minute cap and
    +-10% jitter. Bad values raise :class:`~taskwarden.errors.InvalidDefinition`.
    """

    attempts: int = 3
    delay: float = 1.0
    backoff: float = 2.0
    max_delay: float = 600.0
    jitter: float = 0.1
    retry_on: tuple[type[BaseException], ...] = (Exception,)

    def __post_init__(self) -> None:
        if isinstance(self.attempts, bool) or not isinstance(self.attempts, int):
            raise InvalidDefinition(f"RetryPolicy.attempts must be an int, got {self.attempts!r}")
        if self.attempts < 1:
            raise InvalidDefinition(
                f"RetryPolicy.attempts counts the first try too: it must be >= 1, "
                f"got {self.attempts}"
            )
        for name, low in (("delay", 0.0), ("max_delay", 0.0), ("backoff", 1.0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise InvalidDefinition(f"RetryPolicy.{name} must be a number, got {value!r}")
            if not low <= value < math.inf:
                raise InvalidDefinition(
                    f"RetryPolicy.{name} must be a finite number >= {low:g}, got {value!r}"
                )
        if not isinstance(self.jitter, int | float) or not 0 <= self.jitter < 1:
            raise InvalidDefinition(
                f"RetryPolicy.jitter is a fraction in [0, 1) (0.1 means +-10%), got {self.jitter!r}"
            )
        if not isinstance(self.retry_on, tuple) or not all(
            isinstance(kind, type) and issubclass(kind, BaseException) for kind in self.retry_on
        ):
            raise InvalidDefinition(
                f"RetryPolicy.retry_on must be a tuple of exception types, got {self.retry_on!r}"
            )

    def delay_before(self, retry: int, rand: Callable[[], float] = random.random) -> float:
        """The wait in seconds before retry number ``retry`` (1 for the first retry).

        ``rand`` returns a float in [0, 1); a test passes a fixed one.
        """
        if retry < 1:
            raise ValueError(f"retry numbers start at 1, got {retry}")
        try:
            grown = self.delay * self.backoff ** (retry - 1)
        except OverflowError:  # a huge retry number: the cap applies anyway
            grown = math.inf
        base = min(grown, self.max_delay)
        return max(0.0, base * (1.0 + self.jitter * (2.0 * rand() - 1.0)))

    def retries(self, error: BaseException, attempt: int) -> bool:
        """True if a run on attempt ``attempt`` (0 for the first try) that raised ``error``
        is tried again."""
        return attempt + 1 < self.attempts and isinstance(error, self.retry_on)


@dataclass(frozen=True, slots=True)
class RetryPlan:
    """The next try of a failed run: its number, the wait before it, and when it is due."""

    attempt: int
    """The new ``attempt`` of the record (1 for the first retry)."""
    attempts: int
    """The policy's total number of tries."""
    delay: float
    due: datetime

    @property
    def note(self) -> str:
        """The line the process log gets about it."""
        return (
            f"attempt {self.attempt} of {self.attempts} failed; "
            f"attempt {self.attempt + 1} is due in {self.delay:.3g} s"
        )


def plan_retry(
    policy: RetryPolicy | None,
    attempt: int,
    error: BaseException | None,
    now: datetime,
    rand: Callable[[], float] = random.random,
) -> RetryPlan | None:
    """The retry of a run on try ``attempt`` (0 first) that raised ``error`` at ``now``, or
    None when ``policy`` says it fails for good (no policy, no error, an error it does not
    retry, or the last attempt)."""
    if policy is None or error is None or not policy.retries(error, attempt):
        return None
    delay = policy.delay_before(attempt + 1, rand)
    return RetryPlan(
        attempt=attempt + 1,
        attempts=policy.attempts,
        delay=delay,
        due=now + timedelta(seconds=delay),
    )
