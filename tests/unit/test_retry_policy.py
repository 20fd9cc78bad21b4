"""RetryPolicy: the waits between attempts, which errors are retried, and bad values."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import pytest

from taskwarden import RetryPolicy
from taskwarden.engine.retries import plan_retry
from taskwarden.errors import InvalidDefinition

T0 = datetime(2026, 12, 1, tzinfo=UTC)


def test_the_defaults_are_three_attempts_one_second_doubling_ten_minute_cap() -> None:
    policy = RetryPolicy()
    assert (policy.attempts, policy.delay, policy.backoff) == (3, 1.0, 2.0)
    assert (policy.max_delay, policy.jitter) == (600.0, 0.1)
    middle = lambda: 0.5  # noqa: E731 - a jitter factor of exactly 1
    assert [policy.delay_before(n, middle) for n in (1, 2, 3, 4)] == [1.0, 2.0, 4.0, 8.0]
    assert policy.delay_before(11, middle) == 600.0  # 1024 s, capped


def test_jitter_spreads_the_wait_within_its_fraction() -> None:
    policy = RetryPolicy(delay=10.0, jitter=0.1)
    assert policy.delay_before(1, lambda: 0.0) == pytest.approx(9.0)
    assert policy.delay_before(1, lambda: 0.999999) == pytest.approx(11.0, rel=1e-5)
    waits = {policy.delay_before(1) for _ in range(50)}
    assert len(waits) > 1 and all(9.0 <= wait <= 11.0 for wait in waits)


def test_a_huge_retry_number_is_capped_not_an_overflow() -> None:
    policy = RetryPolicy(attempts=10_000, backoff=1e6, max_delay=30.0, jitter=0.0)
    assert policy.delay_before(5_000) == 30.0


def test_only_the_listed_errors_and_only_before_the_last_attempt_are_retried() -> None:
    policy = RetryPolicy(attempts=3, retry_on=(OSError,))
    assert policy.retries(ConnectionError("reset"), attempt=0)
    assert policy.retries(OSError("disk"), attempt=1)
    assert not policy.retries(OSError("disk"), attempt=2)  # the third try was the last
    assert not policy.retries(ValueError("bad input"), attempt=0)


def test_plan_retry_says_which_attempt_is_next_and_when() -> None:
    policy = RetryPolicy(attempts=3, delay=2.0, jitter=0.0)
    plan = plan_retry(policy, 0, RuntimeError("boom"), T0)
    assert plan is not None
    assert (plan.attempt, plan.attempts, plan.delay) == (1, 3, 2.0)
    assert plan.due == T0 + timedelta(seconds=2)
    assert plan.note == "attempt 1 of 3 failed; attempt 2 is due in 2 s"
    assert plan_retry(policy, 2, RuntimeError("boom"), T0) is None
    assert plan_retry(policy, 0, None, T0) is None
    assert plan_retry(None, 0, RuntimeError("boom"), T0) is None


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"attempts": 0}, "attempts counts the first try too"),
        ({"attempts": 2.5}, "attempts must be an int"),
        ({"delay": -1}, "delay must be a finite number >= 0"),
        ({"backoff": 0.5}, "backoff must be a finite number >= 1"),
        ({"max_delay": float("inf")}, "max_delay must be a finite number"),
        ({"jitter": 1.5}, "jitter is a fraction in [0, 1)"),
        ({"retry_on": (ValueError, "oops")}, "retry_on must be a tuple of exception types"),
    ],
)
def test_bad_values_are_refused_with_what_to_do(options: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidDefinition, match=re.escape(message)):
        RetryPolicy(**options)  # type: ignore[arg-type]
