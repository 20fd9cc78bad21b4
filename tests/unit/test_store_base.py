"""Shared store helpers: the transient-retry helper, argument checks and encodings."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from taskwarden.errors import ConfigurationError, InvalidDefinition, InvalidTransition
from taskwarden.processes import ProcessState
from taskwarden.stores.base import (
    check_edges,
    decode_dt,
    encode_dt,
    json_dumps,
    load_migrations,
    metadata_matches,
    retry_transient,
    retry_transient_sync,
    table_names,
    transition_defaults,
)

S = ProcessState


class Flaky(Exception):
    """A stand-in transient error."""


async def test_retry_transient_retries_transient_errors_until_success() -> None:
    """A call failing transiently twice then succeeding returns its value."""
    calls = 0

    async def call() -> str:
        nonlocal calls
        calls += 1
        if calls < 3:
            raise Flaky
        return "ok"

    result = await retry_transient(
        call, is_transient=lambda e: isinstance(e, Flaky), attempts=4, delay=0
    )
    assert (result, calls) == ("ok", 3)


async def test_retry_transient_gives_up_after_the_last_attempt() -> None:
    """The last transient error propagates unchanged after ``attempts`` calls."""
    calls = 0

    async def call() -> None:
        nonlocal calls
        calls += 1
        raise Flaky

    with pytest.raises(Flaky):
        await retry_transient(call, is_transient=lambda e: True, attempts=3, delay=0)
    assert calls == 3


def test_retry_transient_sync_never_retries_other_errors() -> None:
    """A non-transient error propagates at once."""
    calls = 0

    def call() -> None:
        nonlocal calls
        calls += 1
        raise ValueError("bad")

    with pytest.raises(ValueError):
        retry_transient_sync(call, is_transient=lambda e: isinstance(e, Flaky), delay=0)
    assert calls == 1


def test_encoded_times_sort_like_times() -> None:
    """Fixed-width UTC text keeps text order equal to time order, across zones."""
    base = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
    times = [
        base,
        base + timedelta(microseconds=1),
        (base + timedelta(seconds=1)).astimezone(timezone(timedelta(hours=-5))),
        base + timedelta(seconds=1, microseconds=500000),
    ]
    texts = [encode_dt(t) for t in times]
    assert texts == sorted(texts)  # type: ignore[type-var]
    assert decode_dt(texts[2]) == times[2]
    assert all(len(t or "") == 32 for t in texts)


def test_naive_times_are_refused() -> None:
    """A naive datetime cannot be stored."""
    with pytest.raises(ConfigurationError):
        encode_dt(datetime(2026, 1, 1))


def test_json_dumps_refuses_non_json_values_naming_the_field() -> None:
    """NaN and arbitrary objects are InvalidDefinition naming what was wrong."""
    with pytest.raises(InvalidDefinition, match="params"):
        json_dumps({"x": float("nan")}, "params")
    with pytest.raises(InvalidDefinition, match="metadata"):
        json_dumps({"x": object()}, "metadata")


def test_check_edges_refuses_edges_outside_the_table() -> None:
    """Validation happens before I/O, with current=None only for an empty set."""
    assert check_edges("p", [S.IDLE, S.DONE], S.SCHEDULED) == {S.IDLE, S.DONE}
    with pytest.raises(InvalidTransition) as info:
        check_edges("p", [S.IDLE], S.DONE)
    assert info.value.current == "idle"
    with pytest.raises(InvalidTransition):
        check_edges("p", [], S.DONE)


def test_transition_defaults() -> None:
    """Running increments the run number; ending or idling clears the lease."""
    assert transition_defaults(S.RUNNING, {}) == (True, False)
    assert transition_defaults(S.RUNNING, {"run_number": 3}) == (False, False)
    assert transition_defaults(S.DONE, {}) == (False, True)
    assert transition_defaults(S.IDLE, {"lease_owner": "w"}) == (False, False)
    assert transition_defaults(S.CANCELLING, {}) == (False, False)


def test_metadata_matches_compares_kinds() -> None:
    """True matches only True, 1 matches 1 and 1.0, "1" only "1"."""
    meta = {"b": True, "n": 1, "s": "1"}
    assert metadata_matches(meta, {"b": True, "n": 1.0, "s": "1"})
    assert not metadata_matches(meta, {"b": 1})
    assert not metadata_matches(meta, {"n": True})
    assert not metadata_matches(meta, {"s": 1})
    assert not metadata_matches(meta, {"missing": "x"})


def test_table_names_and_migrations_use_the_prefix() -> None:
    """Every migration statement names only prefixed tables."""
    assert table_names("app") == ("app_processes", "app_runs", "app_schema_version")
    for dialect in ("sqlite", "postgres"):
        migrations = load_migrations(dialect, "app")
        assert [version for version, _ in migrations] == list(range(1, len(migrations) + 1))
        for _, statements in migrations:
            assert statements
            assert not any("{processes}" in s or "{runs}" in s for s in statements)
    with pytest.raises(ConfigurationError):
        table_names("Bad-Prefix")
