"""The execution history (seed 001): indexes, bounds, lookups, filters, sinks, summary."""

from __future__ import annotations

import io
import logging
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone

import pytest
from rich.console import Console

from taskwarden.errors import ConfigurationError
from taskwarden.history import (
    ExecutionHistory,
    ExecutionRegistry,
    get_default_history,
    set_default_history,
)
from taskwarden.model import CancelationReason, OperationContext, OperationStatus, RunRecord


def finished(
    name: str,
    *,
    status: OperationStatus = OperationStatus.COMPLETED,
    result: object = None,
    exception: BaseException | None = None,
    traceback: str | None = None,
    cancel_reason: CancelationReason | None = None,
    cancel_message: str = "",
    start: float | None = None,
    duration: float = 0.25,
) -> OperationContext:
    """An ended context built by hand, as a scope would leave it."""
    context = OperationContext(name=name)
    if start is not None:
        context.start_time = start
    context.status = status
    context.end_time = context.start_time + duration
    context.result = result
    context.exception = exception
    context.traceback = traceback
    context.cancel_reason = cancel_reason
    context.cancel_message = cancel_message
    return context


def failed(name: str, error: BaseException) -> OperationContext:
    return finished(name, status=OperationStatus.FAILED, exception=error)


def cancelled(name: str, reason: CancelationReason, message: str = "") -> OperationContext:
    return finished(
        name, status=OperationStatus.CANCELLED, cancel_reason=reason, cancel_message=message
    )


def capture() -> tuple[Console, io.StringIO]:
    buffer = io.StringIO()
    return Console(file=buffer, width=200), buffer


def table_rows(output: str) -> dict[int, str]:
    """The table's data lines keyed by their index column."""
    rows: dict[int, str] = {}
    for line in output.splitlines():
        # Cells are padded apart by two spaces or more; a caption's words by one.
        match = re.match(r"\s*(\d+)\s{2,}\S", line)
        if match:
            rows[int(match.group(1))] = line
    return rows


@pytest.fixture
def default_history() -> Iterator[ExecutionHistory]:
    """A fresh process-wide history for the facade, restored afterwards."""
    fresh = ExecutionHistory()
    previous = set_default_history(fresh)
    try:
        yield fresh
    finally:
        set_default_history(previous)


# -- indexes ------------------------------------------------------------------------------


def test_record_assigns_gap_free_indexes_in_record_order_and_keeps_the_context() -> None:
    history = ExecutionHistory()
    contexts = [finished(f"op{i}") for i in range(5)]
    returned = [history.record(c) for c in contexts]
    assert returned == [0, 1, 2, 3, 4]
    assert [c.index for c in contexts] == [0, 1, 2, 3, 4]
    assert all(kept is original for kept, original in zip(history.get_all(), contexts, strict=True))
    assert len(history) == 5


def test_concurrent_records_from_8_threads_get_every_index_exactly_once() -> None:
    threads_count, per_thread = 8, 10_000
    total = threads_count * per_thread
    history = ExecutionHistory(max_entries=total)
    batches = [[finished(f"t{t}") for _ in range(per_thread)] for t in range(threads_count)]
    barrier = threading.Barrier(threads_count)
    errors: list[BaseException] = []

    def work(batch: list[OperationContext]) -> None:
        try:
            barrier.wait()
            for context in batch:
                history.record(context)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    previous_interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible, to provoke races
    try:
        workers = [threading.Thread(target=work, args=(b,)) for b in batches]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
    finally:
        sys.setswitchinterval(previous_interval)

    assert errors == []
    indexes = sorted(c.index for batch in batches for c in batch if c.index is not None)
    assert indexes == list(range(total))
    assert len(history) == total
    assert history.total_recorded == total
    assert [c.index for c in history.get_all()] == list(range(total))
    for i in (0, total // 2, total - 1):
        found = history.get_by_index(i)
        assert found is not None and found.index == i
    for t in range(threads_count):
        assert len(history.get_by_name(f"t{t}")) == per_thread


def test_concurrent_records_past_the_bound_keep_the_newest_runs_and_a_true_name_index() -> None:
    threads_count, per_thread, bound = 8, 5_000, 1_000
    history = ExecutionHistory(max_entries=bound)
    batches = [[finished(f"t{t}") for _ in range(per_thread)] for t in range(threads_count)]
    barrier = threading.Barrier(threads_count)

    def work(batch: list[OperationContext]) -> None:
        barrier.wait()
        for context in batch:
            history.record(context)

    previous_interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        workers = [threading.Thread(target=work, args=(b,)) for b in batches]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
    finally:
        sys.setswitchinterval(previous_interval)

    total = threads_count * per_thread
    kept = history.get_all()
    assert [c.index for c in kept] == list(range(total - bound, total))
    for t in range(threads_count):
        assert history.get_by_name(f"t{t}") == [c for c in kept if c.name == f"t{t}"]
    assert sum(len(history.get_by_name(f"t{t}")) for t in range(threads_count)) == bound


def test_clear_forgets_everything_and_restarts_indexes_at_zero() -> None:
    history = ExecutionHistory()
    for i in range(3):
        history.record(finished(f"op{i}"))
    history.clear()
    assert len(history) == 0
    assert history.get_all() == []
    assert history.get_by_name("op0") == []
    assert history.get_latest() is None
    assert history.total_recorded == 0
    again = finished("after")
    assert history.record(again) == 0
    assert again.index == 0
    assert history.get_by_index(0) is again


def test_clear_after_eviction_restarts_a_consistent_ring() -> None:
    history = ExecutionHistory(max_entries=3)
    for i in range(7):
        history.record(finished(f"op{i}"))
    history.clear()
    fresh = [finished("x") for _ in range(4)]
    for context in fresh:
        history.record(context)
    assert [c.index for c in history.get_all()] == [1, 2, 3]
    assert history.get_all() == fresh[1:]
    assert history.get_by_name("x") == fresh[1:]


# -- bounds -------------------------------------------------------------------------------


def test_eviction_drops_the_oldest_first_and_keeps_indexes_stable() -> None:
    history = ExecutionHistory(max_entries=3)
    contexts = [finished(f"op{i}") for i in range(5)]
    for context in contexts:
        history.record(context)
    assert len(history) == 3
    assert history.get_all() == contexts[2:]
    assert history.total_recorded == 5
    assert history.get_by_index(0) is None
    assert history.get_by_index(1) is None
    assert history.get_by_index(2) is contexts[2]
    assert history.get_by_index(4) is contexts[4]
    assert history.get_by_index(5) is None
    assert history.get_latest() is contexts[4]


def test_eviction_keeps_the_per_name_index_correct() -> None:
    history = ExecutionHistory(max_entries=4)
    names = ["a", "b", "a", "c", "a", "b", "d"]
    contexts = [finished(name) for name in names]
    for context in contexts:
        history.record(context)
    # Kept: indexes 3..6 -> c, a, b, d.
    assert history.get_by_name("a") == [contexts[4]]
    assert history.get_by_name("b") == [contexts[5]]
    assert history.get_by_name("c") == [contexts[3]]
    assert history.get_by_name("d") == [contexts[6]]
    history.record(finished("e"))  # drops "c", its only run
    assert history.get_by_name("c") == []
    assert "c" not in history._by_name  # no empty bucket is left behind


def test_eviction_uses_the_name_recorded_even_if_the_context_was_renamed() -> None:
    history = ExecutionHistory(max_entries=1)
    first = finished("before")
    history.record(first)
    first.name = "after"
    second = finished("next")
    history.record(second)
    assert history.get_by_name("before") == []
    assert history.get_by_name("next") == [second]


def test_default_bound_is_10000_and_invalid_bounds_are_refused() -> None:
    assert ExecutionHistory().max_entries == 10_000
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ConfigurationError, match="max_entries"):
            ExecutionHistory(max_entries=bad)  # type: ignore[arg-type]


def test_prune_without_cutoff_drops_every_run_but_never_reuses_indexes() -> None:
    history = ExecutionHistory()
    for i in range(3):
        history.record(finished(f"op{i}"))
    assert history.prune() == 3
    assert len(history) == 0
    assert history.get_all() == []
    assert history.get_latest() is None
    assert history.get_by_name("op0") == []
    assert history.get_by_index(0) is None
    later = finished("later")
    assert history.record(later) == 3
    assert history.get_all() == [later]
    assert history.get_by_index(3) is later


def test_prune_drops_the_oldest_runs_that_ended_before_the_cutoff() -> None:
    history = ExecutionHistory()
    base = 1_700_000_000.0
    contexts = [finished(n, start=base + 10 * i, duration=1) for i, n in enumerate("abab")]
    for context in contexts:
        history.record(context)
    # Ends: 1, 11, 21, 31 after base.
    assert history.prune(ended_before=base + 21) == 2
    assert history.get_all() == contexts[2:]
    assert history.get_by_name("a") == [contexts[2]]
    assert history.get_by_name("b") == [contexts[3]]
    assert history.get_by_index(1) is None
    assert history.get_by_index(2) is contexts[2]
    cutoff = datetime.fromtimestamp(base + 100, UTC)
    assert history.prune(ended_before=cutoff) == 2
    assert len(history) == 0
    with pytest.raises(ConfigurationError, match="ended_before"):
        history.prune(ended_before=datetime(2026, 1, 1))


def test_prune_stops_at_the_first_run_that_ended_after_the_cutoff() -> None:
    history = ExecutionHistory()
    base = 1_700_000_000.0
    old = finished("old", start=base, duration=1)
    new = finished("new", start=base + 50, duration=1)
    late_old = finished("late-old", start=base, duration=2)  # recorded after a newer run
    for context in (old, new, late_old):
        history.record(context)
    assert history.prune(ended_before=base + 10) == 1
    assert history.get_all() == [new, late_old]  # kept indexes stay contiguous


@pytest.mark.parametrize("prune_before_full", [True, False])
def test_recording_after_prune_refills_the_ring_and_evicts_correctly(
    prune_before_full: bool,
) -> None:
    history = ExecutionHistory(max_entries=3)
    contexts = [finished(f"op{i}", start=1_700_000_000.0 + i) for i in range(8)]
    recorded = 2 if prune_before_full else 3
    for context in contexts[:recorded]:
        history.record(context)
    history.prune(ended_before=contexts[recorded - 1].end_time)  # all but the newest
    assert history.get_all() == [contexts[recorded - 1]]
    for context in contexts[recorded:]:
        history.record(context)
    assert history.get_all() == contexts[5:]
    assert len(history) == 3
    assert history.get_by_index(4) is None
    assert all(history.get_by_index(i) is contexts[i] for i in range(5, 8))
    assert history.query(limit=2) == [contexts[7], contexts[6]]
    for i in range(8):
        assert history.get_by_name(f"op{i}") == ([contexts[i]] if i >= 5 else [])
    assert sorted(history._by_name) == ["op5", "op6", "op7"]


# -- lookups ------------------------------------------------------------------------------


def test_get_all_returns_a_copy_callers_cannot_corrupt() -> None:
    history = ExecutionHistory()
    history.record(finished("a"))
    everything = history.get_all()
    everything.clear()
    everything.append(finished("intruder"))
    assert [c.name for c in history.get_all()] == ["a"]


def test_get_by_name_returns_a_copy_and_empty_for_unknown_names() -> None:
    history = ExecutionHistory()
    one, two = finished("a"), finished("a")
    history.record(one)
    history.record(finished("b"))
    history.record(two)
    runs = history.get_by_name("a")
    assert runs == [one, two]
    runs.clear()
    assert history.get_by_name("a") == [one, two]
    assert history.get_by_name("missing") == []
    assert "missing" not in history._by_name  # a lookup never creates a bucket


def test_get_latest_is_none_when_empty_and_the_newest_run_otherwise() -> None:
    history = ExecutionHistory()
    assert history.get_latest() is None
    history.record(finished("a"))
    newest = finished("b")
    history.record(newest)
    assert history.get_latest() is newest


def test_get_by_index_finds_nothing_for_negative_or_unknown_indexes() -> None:
    history = ExecutionHistory()
    history.record(finished("a"))
    assert history.get_by_index(-1) is None
    assert history.get_by_index(1) is None


def test_query_is_newest_first_and_filters_by_status_name_since_and_limit() -> None:
    history = ExecutionHistory()
    base = 1_700_000_000.0
    ok_old = finished("a", start=base, duration=1)
    bad = failed("a", ValueError("x"))
    bad.start_time, bad.end_time = base + 10, base + 11
    stop = cancelled("b", CancelationReason.TIMEOUT)
    stop.start_time, stop.end_time = base + 20, base + 21
    ok_new = finished("a", start=base + 30, duration=1)
    for context in (ok_old, bad, stop, ok_new):
        history.record(context)

    assert history.query() == [ok_new, stop, bad, ok_old]
    assert history.query(limit=2) == [ok_new, stop]
    assert history.query(limit=0) == []
    assert history.query(status=OperationStatus.COMPLETED) == [ok_new, ok_old]
    assert history.query(status="failed") == [bad]
    assert history.query(status="CANCELLED") == [stop]
    assert history.query(name="a") == [ok_new, bad, ok_old]
    assert history.query(name="a", limit=1, status="completed") == [ok_new]
    assert history.query(since=base + 11) == [ok_new, stop, bad]
    aware = datetime.fromtimestamp(base + 21, UTC).astimezone(timezone(timedelta(hours=2)))
    assert history.query(since=aware) == [ok_new, stop]
    assert history.query(name="nobody") == []


def test_query_unfiltered_limit_after_eviction_walks_the_ring_newest_first() -> None:
    history = ExecutionHistory(max_entries=3)
    contexts = [finished(f"op{i}") for i in range(5)]
    for context in contexts:
        history.record(context)
    assert history.query(limit=10) == [contexts[4], contexts[3], contexts[2]]
    assert history.query(limit=2) == [contexts[4], contexts[3]]


def test_query_refuses_bad_filters_with_configuration_errors() -> None:
    history = ExecutionHistory()
    with pytest.raises(ConfigurationError, match="unknown status 'done'"):
        history.query(status="done")
    with pytest.raises(ConfigurationError, match="unknown status 'all'"):
        history.query(status="all")
    with pytest.raises(ConfigurationError, match="naive datetime"):
        history.query(since=datetime(2026, 1, 1))
    with pytest.raises(ConfigurationError, match="limit"):
        history.query(limit=-1)
    with pytest.raises(ConfigurationError, match="since"):
        history.query(since="yesterday")  # type: ignore[arg-type]


# -- sinks --------------------------------------------------------------------------------


def test_sinks_receive_a_run_record_of_every_recorded_context() -> None:
    history = ExecutionHistory()
    received: list[RunRecord] = []
    history.add_sink(received.append)
    context = failed("job", RuntimeError("boom"))
    history.record(context)
    assert len(received) == 1
    run = received[0]
    assert isinstance(run, RunRecord)
    assert run.index == 0
    assert run.operation_id == context.id
    assert run.status is OperationStatus.FAILED
    assert run.error == "RuntimeError('boom')"
    history.remove_sink(received.append)
    history.record(finished("later"))
    assert len(received) == 1


def test_a_raising_sink_is_logged_and_counted_and_never_breaks_record(
    caplog: pytest.LogCaptureFixture,
) -> None:
    history = ExecutionHistory()
    received: list[RunRecord] = []

    def broken(run: RunRecord) -> None:
        raise OSError("disk full")

    history.add_sink(broken)
    history.add_sink(received.append)
    context = finished("job")
    with caplog.at_level(logging.ERROR, logger="taskwarden.history"):
        assert history.record(context) == 0
    assert history.get_latest() is context
    assert [r.index for r in received] == [0]  # later sinks still run
    assert history.sink_errors == 1
    assert "disk full" in caplog.text
    assert "history sink" in caplog.text


def test_a_sink_returning_a_coroutine_is_refused_without_an_unawaited_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    history = ExecutionHistory()
    awaited: list[RunRecord] = []

    async def async_sink(run: RunRecord) -> None:  # pragma: no cover - never awaited
        awaited.append(run)

    history.add_sink(async_sink)
    with caplog.at_level(logging.ERROR, logger="taskwarden.history"):
        history.record(finished("job"))
    assert history.sink_errors == 1
    assert "must be synchronous" in caplog.text
    assert awaited == []


def test_a_sink_may_read_the_history_without_deadlocking() -> None:
    """Sinks run outside the lock; a deadlock shows as a bounded wait that fails."""
    history = ExecutionHistory()
    seen: list[int] = []
    history.add_sink(lambda run: seen.append(len(history.get_all())))
    done = threading.Event()

    def record() -> None:
        history.record(finished("job"))
        done.set()

    threading.Thread(target=record, daemon=True).start()
    assert done.wait(timeout=10), "record() deadlocked calling a sink that reads the history"
    assert seen == [1]


def test_a_run_that_cannot_become_a_run_record_is_still_recorded(
    caplog: pytest.LogCaptureFixture,
) -> None:
    history = ExecutionHistory()
    received: list[RunRecord] = []
    history.add_sink(received.append)
    context = finished("job")
    context.start_time = float("nan")  # to_run_record() raises on this
    with caplog.at_level(logging.ERROR, logger="taskwarden.history"):
        assert history.record(context) == 0
    assert history.get_latest() is context
    assert received == []
    assert history.sink_errors == 1
    assert "could not convert run 0" in caplog.text


def test_no_run_record_is_built_when_there_are_no_sinks() -> None:
    history = ExecutionHistory()
    context = finished("job")
    context.start_time = float("nan")  # to_run_record() would fail on this
    history.record(context)
    assert history.get_latest() is context


# -- summary ------------------------------------------------------------------------------


def filled_history() -> ExecutionHistory:
    history = ExecutionHistory()
    history.record(finished("fetch", result={"rows": 3}))
    history.record(failed("parse", ValueError("bad header")))
    history.record(cancelled("upload", CancelationReason.TIMEOUT, "deadline 5s"))
    history.record(finished("fetch", result="again"))
    return history


def test_summary_lists_every_run_with_its_columns() -> None:
    console, out = capture()
    filled_history().summary(console=console)
    text = out.getvalue()
    for header in ("Index", "Name", "Start", "End", "Duration", "Status", "Result / Exception"):
        assert header in text
    rows = table_rows(text)
    assert sorted(rows) == [0, 1, 2, 3]
    assert "fetch" in rows[0] and "Success" in rows[0] and "{'rows': 3}" in rows[0]
    assert "0.250s" in rows[0]
    assert "parse" in rows[1] and "Error" in rows[1] and "ValueError('bad header')" in rows[1]
    assert "upload" in rows[2] and "Cancelled" in rows[2]
    assert "reason: timeout (deadline 5s)" in rows[2]
    assert "'again'" in rows[3]


def test_summary_success_lists_only_completed_runs_never_failures_or_cancels() -> None:
    console, out = capture()
    filled_history().summary(status="success", console=console)
    rows = table_rows(out.getvalue())
    assert sorted(rows) == [0, 3]
    assert "Error" not in out.getvalue()
    assert "Cancelled" not in out.getvalue()


def test_summary_error_lists_only_failed_runs() -> None:
    console, out = capture()
    filled_history().summary(status="error", console=console)
    rows = table_rows(out.getvalue())
    assert sorted(rows) == [1]
    assert "Error" in rows[1]


@pytest.mark.parametrize(
    "status", ["cancelled", "canceled", "CANCELLED", OperationStatus.CANCELLED]
)
def test_summary_cancelled_lists_cancelled_runs_as_cancelled_with_their_reason(
    status: str | OperationStatus,
) -> None:
    console, out = capture()
    filled_history().summary(status=status, console=console)
    rows = table_rows(out.getvalue())
    assert sorted(rows) == [2]
    assert "Cancelled" in rows[2] and "Success" not in rows[2]
    assert "timeout" in rows[2]


def test_summary_accepts_any_operation_status_value() -> None:
    console, out = capture()
    history = filled_history()
    history.summary(status="completed", console=console)
    assert sorted(table_rows(out.getvalue())) == [0, 3]
    console, out = capture()
    history.summary(status=OperationStatus.FAILED, console=console)
    assert sorted(table_rows(out.getvalue())) == [1]


def test_summary_refuses_an_unknown_status_before_printing() -> None:
    console, out = capture()
    with pytest.raises(ConfigurationError, match="unknown status 'done'"):
        filled_history().summary(status="done", console=console)
    assert out.getvalue() == ""


def test_summary_with_no_matching_status_says_so() -> None:
    console, out = capture()
    history = ExecutionHistory()
    history.record(finished("ok"))
    history.summary(status="error", console=console)
    assert "No executions with status 'error'" in out.getvalue()


def test_summary_by_name_shows_only_that_name_and_says_when_unknown() -> None:
    console, out = capture()
    history = filled_history()
    history.summary(name="fetch", console=console)
    assert "Execution History for 'fetch'" in out.getvalue()
    assert sorted(table_rows(out.getvalue())) == [0, 3]
    console, out = capture()
    history.summary(name="nope", console=console)
    assert "No executions found for 'nope'" in out.getvalue()


def test_summary_by_index_shows_one_row_and_says_when_missing() -> None:
    history = filled_history()
    console, out = capture()
    history.summary(index=1, console=console)
    assert sorted(table_rows(out.getvalue())) == [1]
    console, out = capture()
    history.summary(index=9, console=console)
    assert "No execution found for index 9: kept indexes are 0 to 3" in out.getvalue()
    console, out = capture()
    history.summary(index=-1, console=console)
    assert "No execution found for index -1: indexes start at 0" in out.getvalue()
    console, out = capture()
    history.summary(name="fetch", index=1, console=console)
    assert "No execution found for index 1 named 'fetch'" in out.getvalue()


def test_summary_of_an_empty_history_says_so() -> None:
    console, out = capture()
    ExecutionHistory().summary(console=console)
    assert "No executions recorded yet" in out.getvalue()


def test_summary_notes_dropped_runs_in_the_caption() -> None:
    history = ExecutionHistory(max_entries=2)
    for i in range(5):
        history.record(finished(f"op{i}"))
    console, out = capture()
    history.summary(console=console)
    assert sorted(table_rows(out.getvalue())) == [3, 4]
    assert "2 of 5 recorded runs kept (at most 2, oldest dropped first)" in out.getvalue()


def test_summary_shows_user_data_literally_instead_of_parsing_markup() -> None:
    history = ExecutionHistory()
    history.record(finished("[bold]name[/bold]", result="[/] closing tag"))
    console, out = capture()
    history.summary(console=console)
    text = out.getvalue()
    assert "[bold]name[/bold]" in text
    assert "'[/] closing tag'" in text


def test_summary_shows_a_zero_duration_as_zero_not_missing() -> None:
    history = ExecutionHistory()
    history.record(finished("instant", duration=0.0))
    console, out = capture()
    history.summary(console=console)
    assert "0.000s" in table_rows(out.getvalue())[0]


def test_summary_truncates_long_results() -> None:
    history = ExecutionHistory()
    history.record(finished("big", result="x" * 500))
    console, out = capture()
    history.summary(console=console)
    assert "x" * 500 not in out.getvalue()
    assert "…" in out.getvalue()


def test_summary_last_result_prints_the_newest_result() -> None:
    history = ExecutionHistory()
    history.record(finished("first", result="old"))
    history.record(finished("second", result={"answer": 42}))
    console, out = capture()
    history.summary(last_result=True, console=console)
    text = out.getvalue()
    assert "#1 second" in text and "Success" in text
    assert "{'answer': 42}" in text
    assert "old" not in text


def test_summary_last_result_of_a_failure_prints_its_traceback() -> None:
    history = ExecutionHistory()
    context = failed("job", ValueError("nope"))
    context.traceback = "Traceback (most recent call last):\nValueError: nope [x]"
    history.record(context)
    console, out = capture()
    history.summary(last_result=True, console=console)
    assert "ValueError: nope [x]" in out.getvalue()
    assert "Error" in out.getvalue()


def test_summary_last_result_of_a_cancel_prints_cancelled_and_its_reason() -> None:
    history = ExecutionHistory()
    history.record(cancelled("job", CancelationReason.MANUAL, "user asked"))
    console, out = capture()
    history.summary(last_result=True, console=console)
    text = out.getvalue()
    assert "Cancelled" in text and "Success" not in text
    assert "reason: manual (user asked)" in text


def test_summary_last_result_on_empty_history_says_there_is_none() -> None:
    console, out = capture()
    ExecutionHistory().summary(last_result=True, console=console)
    assert "there is no last result" in out.getvalue()


def test_summary_result_index_prints_that_result_or_says_it_is_missing() -> None:
    history = filled_history()
    console, out = capture()
    history.summary(result_index=0, console=console)
    assert "{'rows': 3}" in out.getvalue()
    console, out = capture()
    history.summary(result_index=1, console=console)
    assert "ValueError('bad header')" in out.getvalue()
    console, out = capture()
    history.summary(result_index=42, console=console)
    assert "No execution found for index 42" in out.getvalue()


def test_summary_clear_empties_the_history_and_says_so() -> None:
    history = filled_history()
    console, out = capture()
    history.summary(clear=True, console=console)
    assert "Execution history cleared" in out.getvalue()
    assert len(history) == 0
    assert history.total_recorded == 0


def test_summary_with_a_console_prints_nothing_to_stdout(
    capsys: pytest.CaptureFixture[str],
) -> None:
    history = filled_history()
    for kwargs in (
        {},
        {"status": "success"},
        {"name": "fetch"},
        {"name": "missing"},
        {"index": 1},
        {"index": 99},
        {"result_index": 0},
        {"last_result": True},
        {"clear": True},
    ):
        console, _ = capture()
        history.summary(console=console, **kwargs)
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == ""


def test_summary_defaults_to_a_console_on_stdout(capsys: pytest.CaptureFixture[str]) -> None:
    filled_history().summary()
    assert "Execution History" in capsys.readouterr().out


# -- the facade ---------------------------------------------------------------------------


def test_seed_example_runs_with_only_the_import_changed(
    default_history: ExecutionHistory, capsys: pytest.CaptureFixture[str]
) -> None:
    from taskwarden.history import ExecutionRegistry as er

    context = finished("seed", result="hello")
    # Record a context
    er.record(context)
    # Display a rich table summary
    er.summary()
    # Print the last non-ignored result
    er.summary(last_result=True)
    # Clear execution history
    er.summary(clear=True)

    out = capsys.readouterr().out
    assert "Execution History" in out and "seed" in out
    assert "'hello'" in out
    assert "Execution history cleared" in out
    assert er.get_all() == []
    assert er.get_latest() is None


def test_facade_forwards_every_lookup_to_the_default_history(
    default_history: ExecutionHistory,
) -> None:
    assert ExecutionRegistry.history() is default_history
    assert ExecutionHistory.get_default() is default_history
    assert get_default_history() is default_history
    a, b = finished("a"), failed("b", KeyError("k"))
    assert ExecutionRegistry.record(a) == 0
    ExecutionRegistry.record(b)
    assert default_history.get_all() == [a, b]
    assert ExecutionRegistry.get_all() == [a, b]
    assert ExecutionRegistry.get_by_name("b") == [b]
    assert ExecutionRegistry.get_by_index(0) is a
    assert ExecutionRegistry.get_latest() is b
    assert ExecutionRegistry.query(status="failed") == [b]
    console, out = capture()
    ExecutionRegistry.summary(status="error", console=console)
    assert sorted(table_rows(out.getvalue())) == [1]
    ExecutionRegistry.clear()
    assert len(default_history) == 0


def test_set_default_history_returns_the_previous_one_and_checks_its_argument() -> None:
    mine = ExecutionHistory(max_entries=5)
    previous = set_default_history(mine)
    try:
        assert get_default_history() is mine
        with pytest.raises(ConfigurationError, match="ExecutionHistory"):
            set_default_history(object())  # type: ignore[arg-type]
    finally:
        assert set_default_history(previous) is mine
    assert get_default_history() is previous


def test_last_result_skips_contexts_marked_ignore_in_history(
    default_history: ExecutionHistory,
) -> None:
    class Ignored(OperationContext):
        ignore_in_history = True

    shown = finished("shown", result="visible")
    hidden = Ignored(name="hidden")
    hidden.status, hidden.end_time, hidden.result = OperationStatus.COMPLETED, time.time(), "no"
    ExecutionRegistry.record(shown)
    ExecutionRegistry.record(hidden)
    console, out = capture()
    ExecutionRegistry.summary(last_result=True, console=console)
    assert "'visible'" in out.getvalue()
    assert "'no'" not in out.getvalue()


# -- import cost --------------------------------------------------------------------------


def test_importing_the_history_does_not_load_rich() -> None:
    code = (
        "import sys, taskwarden.history; "
        "loaded = sorted(m for m in sys.modules if m == 'rich' or m.startswith('rich.')); "
        "assert not loaded, loaded"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
