"""Workers sharing one store, in one test process: claims, cancels, renewals and the reaper.

Every test runs on a real SQLite file and on a real PostgreSQL database. Leases and
intervals are short (a fraction of a second) so that expiry is reached by real time;
waits are bounded polls of the store, never fixed sleeps.
"""

from __future__ import annotations

import asyncio
import collections
import socket
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from taskwarden.abc import Store
from taskwarden.bus import open_bus
from taskwarden.engine import ProcessContext, TaskInstance
from taskwarden.errors import InvalidDefinition, LeaseLost, NotCancellable, ProcessNotFound
from taskwarden.model import OperationStatus
from taskwarden.processes import ProcessRecord, ProcessState, utcnow
from taskwarden.registry import OperationRegistry
from taskwarden.stores import open_store
from taskwarden.worker import Worker, cancel, launch
from tests.engine_support import definitions, task
from tests.store_support import postgres_database  # noqa: F401 (a fixture, found by name)

S = ProcessState
FAST = {"lease_seconds": 0.6, "renew_interval": 0.2, "reaper_interval": 0.1}


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, str]]:
    """``(url, prefix)`` of a fresh namespace on a SQLite file or a PostgreSQL database."""
    prefix = f"t{uuid.uuid4().hex[:12]}"
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'fleet.db'}", prefix
    else:
        yield request.getfixturevalue("postgres_database"), prefix


@pytest.fixture
async def client(store_url: tuple[str, str]) -> AsyncIterator[Store]:
    """A store as a process without definitions sees it (the API server, the CLI)."""
    url, prefix = store_url
    store = open_store(url, prefix=prefix)
    async with store:
        yield store


async def eventually(
    probe: Callable[[], Awaitable[bool]],
    timeout: float = 10.0,  # noqa: ASYNC109
) -> None:
    """Poll ``probe`` (a store read) until it holds; fail after ``timeout`` seconds."""
    async with asyncio.timeout(timeout):
        while not await probe():  # noqa: ASYNC110 - another process writes the store
            await asyncio.sleep(0.02)


async def state_of(store: Store, process_id: str) -> ProcessRecord:
    record = await store.get(process_id)
    assert record is not None, process_id
    return record


def worker(store_url: tuple[str, str], *tasks: TaskInstance, **options: Any) -> Worker:
    url, prefix = store_url
    settings = {**FAST, "cancel_grace": 0.5, "progress_flush_interval": 0.0, **options}
    return Worker(
        url,
        prefix=prefix,
        get_task_definitions=definitions(*tasks),
        registry=OperationRegistry(),
        **settings,
    )


async def test_a_launch_from_a_process_without_definitions_runs_on_a_worker(
    store_url: tuple[str, str], client: Store
) -> None:
    """The client writes ``scheduled`` with no owner; the worker that serves the process
    claims it by polling (no bus), runs it, and the history records the run."""
    ran: list[str] = []

    async def job(ctx: ProcessContext) -> None:
        ran.append(ctx.process_id)
        ctx.report_progress(100, "all done")

    async with worker(store_url, task("job", job), poll_interval=0.02) as w:
        record = await launch(client, "job")
        assert record.state is S.SCHEDULED and record.lease_owner is None
        await eventually(lambda: _is(client, "job", S.DONE))
        [run] = await client.query_history(process_id="job")
        assert run.status is OperationStatus.COMPLETED
        assert ran == ["job"] and w.claimed == 1
        done = await state_of(client, "job")
        assert done.lease_owner is None and done.progress_message == "all done"
        with pytest.raises(ProcessNotFound):
            await launch(client, "ghost")


async def _is(store: Store, process_id: str, *states: ProcessState) -> bool:
    record = await store.get(process_id)
    return record is not None and record.state in states


async def test_workers_claim_only_what_they_serve_and_each_run_happens_once(
    store_url: tuple[str, str], client: Store
) -> None:
    """Two workers with overlapping definitions drain 60 launches between them: every
    process runs exactly once, and only on a worker that has its definition."""
    runs: collections.Counter[str] = collections.Counter()
    where: dict[str, str] = {}

    def job(label: str) -> Callable[[ProcessContext], Awaitable[None]]:
        async def execute(ctx: ProcessContext) -> None:
            runs[ctx.process_id] += 1
            where[ctx.process_id] = label
            await asyncio.sleep(0)

        return execute

    shared = [f"s{i:02d}" for i in range(50)]
    only_a = [f"a{i}" for i in range(5)]
    only_b = [f"b{i}" for i in range(5)]
    a = worker(
        store_url, *(task(p, job("a")) for p in shared + only_a), concurrency=3, poll_interval=0.02
    )
    b = worker(
        store_url, *(task(p, job("b")) for p in shared + only_b), concurrency=3, poll_interval=0.02
    )
    async with a, b:
        for pid in shared + only_a + only_b:
            await launch(client, pid)

        async def all_done() -> bool:
            records = await client.list(state=[S.DONE])
            return len(records) == 60

        await eventually(all_done, timeout=30)
    assert set(runs) == set(shared + only_a + only_b)
    assert max(runs.values()) == 1
    assert all(where[p] == "a" for p in only_a) and all(where[p] == "b" for p in only_b)
    assert a.claimed + b.claimed == 60
    history = await client.query_history(limit=1000)
    assert len(history) == 60


async def test_a_cancel_from_a_client_reaches_the_run_over_the_bus_and_without_it(
    store_url: tuple[str, str], client: Store
) -> None:
    """With a bus the worker starts the ladder on the notification; without one it sees
    ``cancel_requested`` at its next renewal. Either way the run ends cancelled and its
    ``finally`` ran."""
    stopped: list[str] = []

    async def long(ctx: ProcessContext) -> None:
        try:
            await ctx.wait_cancelled()
        finally:
            stopped.append(ctx.process_id)

    bus = open_bus("memory://")
    async with bus:
        for via_bus, pid in ((True, "with-bus"), (False, "no-bus")):
            # Without a bus and without NOTIFY (PostgreSQL's): the renewal is the only path.
            options: dict[str, Any] = {"bus": bus} if via_bus else {"listen_notify": False}
            # Without a bus the renewal is the only path: make it rare enough to tell apart.
            renew = 0.05 if via_bus else 0.3
            w = worker(
                store_url,
                task(pid, long),
                poll_interval=0.02,
                renew_interval=renew,
                lease_seconds=renew * 4,
                **options,
            )
            async with w:
                await launch(client, pid, bus=bus if via_bus else None)
                await eventually(lambda p=pid: _is(client, p, S.RUNNING))  # type: ignore[misc]
                requested = await cancel(
                    client,
                    pid,
                    bus=bus if via_bus else None,
                    reason="operator asked",
                    requested_by="tests",
                )
                assert requested.state is S.CANCEL_REQUESTED
                await eventually(lambda p=pid: _is(client, p, S.CANCELLED))  # type: ignore[misc]
            record = await state_of(client, pid)
            assert any("operator asked (by tests)" in e.message for e in record.log)
    assert stopped == ["with-bus", "no-bus"]
    with pytest.raises(NotCancellable):
        await cancel(client, "no-bus")


async def test_a_scheduled_launch_is_cancelled_at_once_by_a_client(client: Store) -> None:
    """Nobody serves it yet: the cancel turns ``scheduled`` into ``cancelled`` directly."""
    await client.create(ProcessRecord(process_id="queued", name="Queued"))
    await launch(client, "queued")
    cancelled = await cancel(client, "queued")
    assert cancelled.state is S.CANCELLED


async def _dead_worker_with_a_running_run(
    store_url: tuple[str, str], definition: TaskInstance, client: Store, *, queued: bool = False
) -> Worker:
    """A worker that runs ``definition`` (launched here unless ``queued`` already) and
    then dies without a word (its tasks stop, its leases stay)."""
    dead = worker(store_url, definition, poll_interval=0.02)
    await dead.start()
    if not queued:
        await launch(client, definition.process_id)
    await eventually(lambda: _is(client, definition.process_id, S.RUNNING))
    await dead._abort()
    return dead


async def forever(ctx: ProcessContext) -> None:
    await asyncio.Event().wait()


@pytest.mark.parametrize("policy", ["fail", "retry"])
async def test_the_reaper_resolves_a_dead_workers_run_by_its_policy(
    store_url: tuple[str, str], client: Store, policy: str
) -> None:
    """``fail`` records the run failed naming the lost worker; ``retry`` records that
    attempt failed and launches it again on a live worker, within its budget."""
    finished = asyncio.Event()
    attempts: list[int] = []

    async def second_time_lucky(ctx: ProcessContext) -> None:
        attempts.append(1)
        if len(attempts) == 1:
            await asyncio.Event().wait()  # the first attempt's worker dies under it
        finished.set()

    definition = task("flaky", second_time_lucky, on_worker_lost=policy)
    dead = await _dead_worker_with_a_running_run(store_url, definition, client)
    async with worker(store_url, definition, poll_interval=0.02) as survivor:
        if policy == "fail":
            await eventually(lambda: _is(client, "flaky", S.FAILED))
            record = await state_of(client, "flaky")
            assert record.error is not None and "worker-lost" in record.error
            assert dead.incarnation in record.error
            assert record.lease_owner is None
        else:
            await eventually(lambda: _is(client, "flaky", S.DONE))
            record = await state_of(client, "flaky")
            assert record.lost_count == 1 and record.run_number == 2
        assert survivor.reaped == 1
    history = await client.query_history(process_id="flaky")
    statuses = sorted(str(run.status) for run in history)
    if policy == "fail":
        assert statuses == ["failed"]
    else:
        assert statuses == ["completed", "failed"]
        assert "worker-lost" in (history[-1].error or history[0].error or "")
    assert await client.expired_leases() == []


async def test_retry_past_its_budget_stays_failed(
    store_url: tuple[str, str], client: Store
) -> None:
    """A run that kills its worker every time is relaunched ``lost_retries`` times, then
    stays failed with the reason ``worker-lost``: it cannot loop for ever."""
    definition = task("poison", forever, on_worker_lost="retry", lost_retries=1)
    await _dead_worker_with_a_running_run(store_url, definition, client)
    reaper = worker(store_url, task("other"), poll_interval=0.02)  # does not serve poison
    async with reaper:
        await eventually(lambda: _is(client, "poison", S.SCHEDULED))
        relaunched = await state_of(client, "poison")
        assert relaunched.lost_count == 1
        second = await _dead_worker_with_a_running_run(store_url, definition, client, queued=True)
        await eventually(lambda: _is(client, "poison", S.FAILED))
        record = await state_of(client, "poison")
        assert record.error is not None and "worker-lost" in record.error
        assert "not launched again" in record.error and second.incarnation in record.error


async def test_a_worker_that_lost_its_lease_stops_its_copy_and_writes_nothing(
    store_url: tuple[str, str], client: Store
) -> None:
    """Its lease was reaped while it stalled and the run went to another worker: at its
    next renewal the stalled worker cancels its copy (``lease-lost``), and neither its
    progress nor its end reaches the record, which stays the new attempt's."""
    stopped = asyncio.Event()

    async def stubborn(ctx: ProcessContext) -> None:
        try:
            await asyncio.Event().wait()
        finally:
            ctx.report_progress(99, "stale copy")
            stopped.set()

    stalled = worker(store_url, task("job", stubborn), poll_interval=0.02, renew_interval=0.2)
    async with stalled:
        await launch(client, "job")
        await eventually(lambda: _is(client, "job", S.RUNNING))
        held = await state_of(client, "job")
        # What a reaper and a second worker do while this one is frozen: the attempt is
        # failed, relaunched and claimed by someone else.
        await client.transition("job", {S.RUNNING}, S.FAILED, expected_owner=held.lease_owner)
        # Relaunched already held by the other worker, as its claim leaves it: a relaunch
        # left unleased would wake this worker (NOTIFY on PostgreSQL), which could claim it.
        taken = await client.transition(
            "job",
            {S.FAILED},
            S.SCHEDULED,
            lease_owner="someone-else",
            lease_expires_at=utcnow() + timedelta(seconds=60),
        )
        await client.transition("job", {S.SCHEDULED}, S.RUNNING, expected_owner="someone-else")
        async with asyncio.timeout(5):
            await stopped.wait()
        await eventually(lambda: _no_runs(stalled))
        record = await state_of(client, "job")
        assert record.state is S.RUNNING and record.lease_owner == "someone-else"
        assert record.progress_message != "stale copy"
        assert record.run_number == taken.run_number + 1
        with pytest.raises(LeaseLost):
            await client.transition("job", {S.RUNNING}, S.DONE, expected_owner=stalled.incarnation)


async def _no_runs(w: Worker) -> bool:
    return not w.engine.active_runs()


async def test_the_worker_record_says_who_runs_what(
    store_url: tuple[str, str], client: Store
) -> None:
    """Each worker records its name, incarnation, host, pid, runs and served ids, renews
    it, and removes it when it stops cleanly."""
    gate = asyncio.Event()

    async def waits(ctx: ProcessContext) -> None:
        await gate.wait()

    w = worker(store_url, task("w1", waits), task("w2"), name="alpha", poll_interval=0.02)
    async with w:
        await launch(client, "w1")
        await eventually(lambda: _is(client, "w1", S.RUNNING))

        async def shows_the_run() -> bool:
            records = await client.list_workers()
            return len(records) == 1 and records[0].runs == 1

        await eventually(shows_the_run)
        [record] = await client.list_workers()
        assert record.name == "alpha" and record.incarnation == w.incarnation
        assert record.process_ids == ("w1", "w2") and record.concurrency == 10
        assert record.renewed_at > record.started_at
        gate.set()
    assert await client.list_workers() == []


async def test_drain_lets_runs_finish_then_hands_back_what_is_left(
    store_url: tuple[str, str], client: Store
) -> None:
    """stop() stops claiming, waits for running runs up to the drain deadline, then
    stops the rest and hands them back: done or queued again, every record true."""
    gate = asyncio.Event()

    async def quick(ctx: ProcessContext) -> None:
        await gate.wait()

    w = worker(store_url, task("quick", quick), task("slow", forever), poll_interval=0.02)
    await w.start()
    try:
        await launch(client, "quick")
        await launch(client, "slow")
        await eventually(lambda: _both_running(client))
        stopping = asyncio.ensure_future(w.stop(drain_timeout=0.5))
        await asyncio.sleep(0)
        gate.set()
        await stopping
    finally:
        await w.stop()
    assert (await state_of(client, "quick")).state is S.DONE
    slow = await state_of(client, "slow")
    assert slow.state is S.SCHEDULED and slow.lease_owner is None
    await launch(client, "quick")
    assert (await state_of(client, "quick")).state is S.SCHEDULED  # nobody claims it now


async def _both_running(store: Store) -> bool:
    return await _is(store, "quick", S.RUNNING) and await _is(store, "slow", S.RUNNING)


async def test_a_failed_attempt_is_retried_when_due_by_whichever_worker_serves_it(
    store_url: tuple[str, str], client: Store
) -> None:
    """The first worker records the failed attempt and leaves the process unleased until
    its retry is due; it stops, and a second worker started later claims it when due (not
    before: the store refuses the claim until ``next_attempt_at``)."""
    from taskwarden import RetryPolicy

    tries: list[str] = []

    def flaky(label: str) -> Callable[[ProcessContext], Awaitable[None]]:
        async def execute(ctx: ProcessContext) -> None:
            tries.append(label)
            if ctx.attempt == 0:
                raise ConnectionError("the upstream reset the connection")

        return execute

    policy = RetryPolicy(attempts=2, delay=0.4, jitter=0.0)
    async with worker(store_url, task("flaky", flaky("first"), retries=policy), poll_interval=0.02):
        await launch(client, "flaky")
        await eventually(lambda: _has_attempt(client, "flaky", 1))
        waiting = await state_of(client, "flaky")
        assert waiting.state is S.SCHEDULED and waiting.lease_owner is None
        assert waiting.error == "ConnectionError: the upstream reset the connection"
    second = task("flaky", flaky("second"), retries=policy)
    async with worker(store_url, second, poll_interval=0.02):
        await eventually(lambda: _is(client, "flaky", S.DONE))
        assert tries == ["first", "second"]
    failed, completed = reversed(await client.query_history(process_id="flaky"))
    assert failed.status is OperationStatus.FAILED and "reset the connection" in str(failed.error)
    assert completed.status is OperationStatus.COMPLETED
    assert waiting.next_attempt_at is not None
    assert completed.started_at >= waiting.next_attempt_at


async def _has_attempt(store: Store, process_id: str, attempt: int) -> bool:
    record = await store.get(process_id)
    return record is not None and record.attempt == attempt


@pytest.mark.postgres
@pytest.mark.parametrize("worker_bus", [False, True], ids=["no-bus", "worker-with-a-bus"])
async def test_on_postgresql_launches_and_cancels_arrive_by_notify(
    postgres_database: str,  # noqa: F811 - the fixture, imported by name
    worker_bus: bool,
) -> None:
    """The store's trigger notifies whoever wrote the launch or the cancel; the worker
    LISTENs, with a bus of its own too (the writer here uses none). Its claim poll (60 s)
    and renewal (20 s) are far too slow to explain a start and a cancel within the
    test's few seconds."""
    prefix = f"t{uuid.uuid4().hex[:12]}"
    stopped: list[str] = []

    async def long(ctx: ProcessContext) -> None:
        try:
            await ctx.wait_cancelled()
        finally:
            stopped.append(ctx.process_id)

    slow: dict[str, Any] = {"poll_interval": 60.0, "renew_interval": 20.0, "lease_seconds": 60.0}
    bus = open_bus("memory://")
    if worker_bus:
        slow["bus"] = bus
    w = worker((postgres_database, prefix), task("long", long), **slow)
    async with bus, open_store(postgres_database, prefix=prefix) as client, w:
        assert w._notify is not None and w._notify.listening
        await launch(client, "long")  # no bus: only the trigger's NOTIFY tells the worker
        await eventually(lambda: _is(client, "long", S.RUNNING), timeout=5)
        await cancel(client, "long", reason="operator asked")
        await eventually(lambda: _is(client, "long", S.CANCELLED), timeout=5)
        assert stopped == ["long"]


async def test_a_drain_hands_what_still_runs_back_to_the_fleet(
    store_url: tuple[str, str], client: Store
) -> None:
    """Past the drain deadline the running run is stopped and its process goes back to
    ``scheduled`` without an owner (its attempt in the history as cancelled, counted as
    neither an error retry nor a lost worker); one of its launches still waiting for a
    slot is released. Another worker then runs both."""
    from taskwarden.model import CancelationReason

    async def stubborn(ctx: ProcessContext) -> None:
        ctx.report_progress(30, "a third")
        await ctx.wait_cancelled()

    async def quick(ctx: ProcessContext) -> None:
        ctx.report_progress(100, "done elsewhere")

    first = worker(
        store_url,
        task("long", stubborn),
        task("queued", stubborn),
        concurrency=1,
        drain_timeout=0.2,
        poll_interval=0.02,
    )
    async with first:
        await launch(client, "long")
        await eventually(lambda: _is(client, "long", S.RUNNING))
        await first.engine.launch("queued")  # a launch of its own, beyond its one slot
        assert (await state_of(client, "queued")).lease_owner == first.incarnation
    for pid in ("long", "queued"):
        record = await state_of(client, pid)
        assert record.state is S.SCHEDULED and record.lease_owner is None, pid
        assert record.attempt == 0 and record.lost_count == 0
    long_record = await state_of(client, "long")
    assert long_record.progress_percent is None and long_record.running_since is None
    [handed] = await client.query_history(process_id="long")
    assert handed.status is OperationStatus.CANCELLED
    assert handed.cancel_reason is CancelationReason.SIGNAL
    assert await client.query_history(process_id="queued") == []
    second = worker(store_url, task("long", quick), task("queued", quick), poll_interval=0.02)
    async with second:
        await eventually(lambda: _is(client, "long", S.DONE))
        await eventually(lambda: _is(client, "queued", S.DONE))


async def _take_over(client: Store, process_id: str, owner: str) -> None:
    """Do in the store what the reaper and another worker would: end the running attempt,
    then start a new one leased by ``owner``."""
    held = await state_of(client, process_id)
    await client.transition(process_id, {S.RUNNING}, S.FAILED, expected_owner=held.lease_owner)
    await client.transition(
        process_id,
        {S.FAILED},
        S.SCHEDULED,
        lease_owner=owner,
        lease_expires_at=utcnow() + timedelta(seconds=60),
    )
    await client.transition(process_id, {S.SCHEDULED}, S.RUNNING, expected_owner=owner)


async def test_a_refused_progress_write_stops_the_run_before_any_renewal(
    store_url: tuple[str, str], client: Store
) -> None:
    """Progress writes are fenced by the lease: once another worker holds the process, the
    stalled worker's next flush is refused, and it stops its copy with ``lease-lost`` at
    once (its renewal, 20 s away, plays no part); the new attempt's progress stands."""
    stopped: list[str] = []

    async def reporter(ctx: ProcessContext) -> None:
        try:
            step = 0
            while True:
                step += 1
                ctx.report_progress(step % 100, f"step {step}")
                await asyncio.sleep(0.01)
        except asyncio.CancelledError:
            stopped.append(ctx.scope.context.cancel_message or "")
            raise

    slow = {"renew_interval": 20.0, "lease_seconds": 60.0}
    async with worker(store_url, task("job", reporter), poll_interval=0.02, **slow) as w:
        await launch(client, "job")
        await eventually(lambda: _is(client, "job", S.RUNNING))
        await _take_over(client, "job", "someone-else")
        await client.update_progress("job", 5.0, "the new attempt", expected_owner="someone-else")
        await eventually(lambda: _no_runs(w), timeout=5)
    assert len(stopped) == 1 and "lease-lost" in stopped[0]
    record = await state_of(client, "job")
    assert record.lease_owner == "someone-else" and record.progress_message == "the new attempt"


async def test_a_child_is_not_created_under_a_parent_whose_lease_was_lost(
    store_url: tuple[str, str], client: Store
) -> None:
    """Creating a child is fenced by the parent's lease: a stalled worker whose process
    another worker now holds cannot add children to the new attempt; it stops its copy
    with ``lease-lost``, and ``run_child`` raises LeaseLost in it."""
    stopped: list[str] = []
    go = asyncio.Event()

    async def parent(ctx: ProcessContext) -> None:
        try:
            await go.wait()
            await ctx.run_child(lambda c: asyncio.sleep(0), "job/child", "Child")
        except LeaseLost as exc:
            stopped.append(f"{exc.reason}: {ctx.scope.context.cancel_message}")
            raise

    slow = {"renew_interval": 20.0, "lease_seconds": 60.0}
    async with worker(store_url, task("job", parent), poll_interval=0.02, **slow) as w:
        await launch(client, "job")
        await eventually(lambda: _is(client, "job", S.RUNNING))
        await _take_over(client, "job", "someone-else")
        go.set()
        await eventually(lambda: _no_runs(w), timeout=5)
    assert len(stopped) == 1 and "lease-lost" in stopped[0]
    assert await client.get("job/child") is None
    record = await state_of(client, "job")
    assert record.lease_owner == "someone-else" and record.state is S.RUNNING


async def test_a_claim_starts_its_runs_in_the_same_write(
    store_url: tuple[str, str], client: Store
) -> None:
    """A worker's claim writes ``running`` itself: no run it claims makes a
    ``scheduled -> running`` transition of its own (one write per run less)."""
    seen: list[ProcessRecord] = []

    async def job(ctx: ProcessContext) -> None:
        seen.append(await state_of(client, ctx.process_id))

    ids = [f"job-{i}" for i in range(5)]
    w = worker(store_url, *(task(pid, job) for pid in ids), poll_interval=0.02)
    starts: list[str] = []
    original = w.store.transition

    async def counting(process_id: str, expected: Any, to_state: Any, /, **kw: Any) -> Any:
        if to_state is S.RUNNING:
            starts.append(process_id)
        return await original(process_id, expected, to_state, **kw)

    w.store.transition = counting  # type: ignore[method-assign]
    async with w:
        for pid in ids:
            await launch(client, pid)
        await eventually(lambda: _all_are(client, ids, S.DONE))
    assert starts == []
    assert sorted(r.process_id for r in seen) == ids
    assert all(r.state is S.RUNNING and r.run_number == 1 for r in seen)
    assert all(r.lease_owner == w.incarnation for r in seen)
    assert len(await client.query_history(status=OperationStatus.COMPLETED)) == 5


async def _all_are(store: Store, ids: list[str], state: ProcessState) -> bool:
    return all([await _is(store, pid, state) for pid in ids])


async def test_a_worker_dead_between_its_claim_and_the_run_is_a_lost_worker(
    store_url: tuple[str, str], client: Store
) -> None:
    """A claim that started a run whose worker died before the task began: the record
    says ``running`` under a lease nobody renews, so the reaper resolves it by the task's
    policy (here ``retry``: it runs on the survivor), like any run of a dead worker."""
    ran = asyncio.Event()

    async def job(ctx: ProcessContext) -> None:
        ran.set()

    await client.create(ProcessRecord(process_id="job", name="job", on_worker_lost="retry"))
    await launch(client, "job")
    [claimed] = await client.claim("gone:1:1", 0.3, 1, start=True)
    assert claimed.state is S.RUNNING and claimed.run_number == 1
    async with worker(store_url, task("job", job, on_worker_lost="retry"), poll_interval=0.02):
        await eventually(lambda: _is(client, "job", S.DONE))
    assert ran.is_set()
    record = await state_of(client, "job")
    assert record.lost_count == 1 and record.run_number == 2
    statuses = sorted(str(r.status) for r in await client.query_history(process_id="job"))
    assert statuses == ["completed", "failed"]


async def test_a_started_claim_that_cannot_run_here_goes_back_unstarted(
    store_url: tuple[str, str], client: Store
) -> None:
    """A record the claim started but that this worker has no definition for is given
    back ``scheduled``, unleased, with its run number as before: it never ran."""
    async with worker(store_url, task("mine")) as w:
        await client.create(ProcessRecord(process_id="theirs", name="theirs"))
        await launch(client, "theirs")
        [claimed] = await client.claim(w.incarnation, 30, 1, process_ids=["theirs"], start=True)
        assert claimed.state is S.RUNNING
        assert await w.engine.start_claimed(claimed) is False
        back = await state_of(client, "theirs")
        assert back.state is S.SCHEDULED and back.lease_owner is None
        assert back.run_number == 0 and back.running_since is None


async def test_a_worker_restarted_on_the_same_host_resolves_its_dead_predecessor_at_once(
    store_url: tuple[str, str], client: Store
) -> None:
    """Runs held by a worker of this host whose process has exited are resolved by their
    policy when a worker starts, without waiting for the lease (60 s here) to expire:
    ``retry`` runs again at once, ``fail`` is recorded failed naming the dead worker."""
    exited = await asyncio.create_subprocess_exec(sys.executable, "-c", "pass")
    await exited.wait()
    dead = f"{socket.gethostname()}:{exited.pid}:1"
    held: dict[str, Any] = {
        "state": S.RUNNING,
        "run_number": 1,
        "running_since": utcnow(),
        "lease_owner": dead,
        "lease_expires_at": utcnow() + timedelta(seconds=60),
    }
    await client.create(ProcessRecord(process_id="again", name="again", **held))
    await client.create(ProcessRecord(process_id="over", name="over", **held))
    ran = asyncio.Event()

    async def job(ctx: ProcessContext) -> None:
        ran.set()

    definitions_ = (
        task("again", job, on_worker_lost="retry"),
        task("over", job, on_worker_lost="fail"),
    )
    async with worker(store_url, *definitions_, poll_interval=0.02, reaper_interval=60) as w:
        await eventually(lambda: _is(client, "again", S.DONE), timeout=5)
        assert ran.is_set() and w.reaped == 2
    again = await state_of(client, "again")
    assert again.lost_count == 1 and again.run_number == 2
    over = await state_of(client, "over")
    assert over.state is S.FAILED and over.error is not None
    assert "worker-lost" in over.error and dead in over.error and "exited" in over.error


async def test_a_launch_never_deletes_the_children_of_the_run_it_started(
    client: Store,
) -> None:
    """A relaunch clears the previous run's children after its ``scheduled`` write; a
    worker that claimed and started the new run in between (and made a child) keeps it."""
    await client.create(ProcessRecord(process_id="root", name="root", state=S.DONE, run_number=1))
    await client.create(
        ProcessRecord(process_id="root/old", name="old", parent_id="root", root_id="root", depth=1)
    )
    original = client.transition

    async def then_a_worker_starts_it(pid: str, expected: Any, to: Any, /, **kw: Any) -> Any:
        record = await original(pid, expected, to, **kw)
        if to is S.SCHEDULED:
            [claimed] = await client.claim("w", 30, 1, start=True)
            assert claimed.state is S.RUNNING
            await client.delete("root/old")  # the new run replaces the old child...
            await client.create(  # ...with its own
                ProcessRecord(
                    process_id="root/new", name="new", parent_id="root", root_id="root", depth=1
                ),
                parent_owner="w",
            )
        return record

    client.transition = then_a_worker_starts_it  # type: ignore[method-assign]
    await launch(client, "root")
    assert await client.get("root/new") is not None


async def test_a_tasks_own_lease_outlives_the_workers_when_renewals_fail(
    store_url: tuple[str, str], client: Store
) -> None:
    """``TaskInstance(lease_seconds=)`` is the lease its runs carry (on the record and in
    the expiry a claim writes); when the worker cannot renew, each run is stopped before
    its own lease runs out: the worker-lease run first, the long-lease one keeps going and
    is renewed again once the store answers."""
    ended: dict[str, str] = {}

    def blocking(name: str) -> Any:
        async def execute(ctx: ProcessContext) -> None:
            try:
                await asyncio.Event().wait()
            finally:
                ended[name] = ctx.scope.context.cancel_message or "?"

        return execute

    w = worker(
        store_url,
        task("plain", blocking("plain")),
        task("long", blocking("long"), lease_seconds=4.0),
        poll_interval=0.02,
    )
    async with w:
        await launch(client, "plain")
        await launch(client, "long")
        await eventually(lambda: _is(client, "plain", S.RUNNING))
        await eventually(lambda: _is(client, "long", S.RUNNING))
        long = await state_of(client, "long")
        plain = await state_of(client, "plain")
        assert long.lease_seconds == 4.0 and plain.lease_seconds is None
        assert long.lease_expires_at is not None and plain.lease_expires_at is not None
        assert long.lease_expires_at - plain.lease_expires_at > timedelta(seconds=3)

        renew_held = w.store.renew_held
        failing = True

        async def flaky_renewal(
            worker: str, lease_seconds: float
        ) -> list[tuple[str, ProcessState]]:
            if failing:
                raise OSError("store unreachable (injected)")
            return await renew_held(worker, lease_seconds)

        w.store.renew_held = flaky_renewal  # type: ignore[method-assign]
        async with asyncio.timeout(5):
            while "plain" not in ended:  # noqa: ASYNC110 - the run's finally sets it
                await asyncio.sleep(0.02)
        assert ended["plain"].startswith("lease-lost: no renewal for")
        assert "long" not in ended and w.engine.is_running_locally("long")
        failing = False
        renewed_since = long.lease_expires_at
        await eventually(lambda: _lease_after(client, "long", renewed_since), timeout=5)
        assert "long" not in ended and w.engine.is_running_locally("long")


async def _lease_after(store: Store, process_id: str, when: Any) -> bool:
    record = await store.get(process_id)
    return (
        record is not None
        and record.lease_expires_at is not None
        and (record.lease_expires_at > when)
    )


async def test_a_worker_refuses_a_task_lease_under_three_renewals(
    store_url: tuple[str, str],
) -> None:
    """A lease override that one late renewal could lose is refused at start, by name."""
    w = worker(store_url, task("tight", lease_seconds=0.5), renew_interval=0.2)
    with pytest.raises(
        InvalidDefinition, match=r"'tight': lease_seconds \(0.5\) must be at least 3"
    ):
        await w.start()
    await w.stop()
