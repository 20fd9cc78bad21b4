"""Remote control: typed commands over a bus, refusals as reason codes, events, heartbeats,
and a process in one OS process launched and cancelled from another."""

from __future__ import annotations

import asyncio
import signal
import statistics
import sys
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from taskwarden.abc import Bus, BusSubscription
from taskwarden.bus import open_bus
from taskwarden.engine import Engine, ProcessContext, TaskInstance
from taskwarden.errors import ConfigurationError
from taskwarden.registry import OperationRegistry
from taskwarden.remote import RemoteClient, RemoteControl
from tests.store_support import temporary_database

BOUND = 10.0
ROOT = Path(__file__).resolve().parents[2]


async def _wait_forever(ctx: ProcessContext) -> None:
    await ctx.wait_cancelled()


async def _quick(ctx: ProcessContext) -> None:
    ctx.report_progress(100, "done")


async def _definitions(services: object) -> list[TaskInstance]:
    return [
        TaskInstance(execute=_wait_forever, process_id="waits", name="Waits"),
        TaskInstance(execute=_quick, process_id="quick", name="Quick"),
        TaskInstance(execute=_wait_forever, process_id="pinned", name="Pinned", cancellable=False),
    ]


@dataclass
class Node:
    engine: Engine
    bus: Bus
    control: RemoteControl


async def _node(store: str, bus_url: str, **options: Any) -> Node:
    engine = Engine(
        store,
        get_task_definitions=_definitions,
        registry=OperationRegistry(),
        cancel_grace=0.0,
        engine_id=f"engine-{uuid.uuid4().hex[:6]}",
    )
    await engine.init()
    bus = open_bus(bus_url)
    await bus.open()
    control = RemoteControl(engine, bus, heartbeat_interval=0.05, **options)
    await control.start()
    return Node(engine, bus, control)


async def _close(node: Node) -> None:
    await node.control.stop()
    await node.engine.shutdown()
    await node.bus.close()


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[tuple[Node, RemoteClient]]:
    hub = f"local://remote-{uuid.uuid4().hex[:8]}"
    node = await _node(f"sqlite:///{tmp_path / 'a.db'}", hub)
    client_bus = open_bus(hub)
    await client_bus.open()
    yield node, RemoteClient(client_bus, timeout=BOUND)
    await client_bus.close()
    await _close(node)


async def _next_state(sub: BusSubscription, process_id: str, state: str) -> None:
    async for message in sub:
        if message.payload["process_id"] == process_id and message.payload["state"] == state:
            return


async def test_launch_returns_the_process_document(served: tuple[Node, RemoteClient]) -> None:
    node, client = served
    async with node.bus.subscribe("taskwarden.process.changed") as events:
        result = await client.launch("quick")
        assert result.ok and result.process is not None
        assert result.process["processId"] == "quick"
        assert result.process["status"]["state"] in {"scheduled", "running", "done"}
        await asyncio.wait_for(_next_state(events, "quick", "done"), BOUND)
    fetched = await client.get_process("quick")
    assert fetched.ok and fetched.process is not None
    assert fetched.process["status"]["state"] == "done"


async def test_refusals_arrive_as_reason_codes(served: tuple[Node, RemoteClient]) -> None:
    node, client = served
    missing = await client.cancel("no-such-process")
    assert (missing.ok, missing.reason) == (False, "not-found")
    assert missing.message and "no-such-process" in missing.message

    dismiss_idle = await client.dismiss("quick")
    assert (dismiss_idle.ok, dismiss_idle.reason) == (False, "invalid-state")

    assert (await client.launch("pinned")).ok
    pinned = await client.cancel("pinned")
    assert (pinned.ok, pinned.reason) == (False, "not-cancellable")

    assert (await client.block_launches()).ok
    blocked = await client.launch("quick")
    assert (blocked.ok, blocked.reason) == (False, "launch-blocked")
    assert (await client.unblock_launches()).ok
    assert (await client.launch("quick")).ok
    await node.engine.cancel_local("pinned")  # the engine itself may stop it on shutdown


async def test_cancel_and_group_cancel(served: tuple[Node, RemoteClient]) -> None:
    node, client = served
    async with node.bus.subscribe("taskwarden.process.changed") as events:
        assert (await client.launch("waits")).ok
        await asyncio.wait_for(_next_state(events, "waits", "running"), BOUND)
        result = await client.cancel("waits")
        assert result.ok
        await asyncio.wait_for(_next_state(events, "waits", "cancelled"), BOUND)
    missing_metadata = await client.cancel_group({})
    assert (missing_metadata.ok, missing_metadata.reason) == (False, "invalid-configuration")
    nothing = await client.cancel_group({"team": "none"})
    assert nothing.ok and nothing.data == {"cancelled": []}


async def test_application_commands_share_the_server(served: tuple[Node, RemoteClient]) -> None:
    node, client = served

    async def greet(args: Mapping[str, Any]) -> Mapping[str, Any]:
        if not args.get("name"):
            raise ConfigurationError("greet needs a name")
        return {"greeting": f"hello {args['name']}"}

    await node.control.register("greet", greet)
    ok = await client.call("greet", name="ops")
    assert ok.ok and ok.data == {"greeting": "hello ops"}
    refused = await client.call("greet")
    assert (refused.ok, refused.reason) == (False, "invalid-configuration")


async def test_engine_publishes_its_heartbeat(served: tuple[Node, RemoteClient]) -> None:
    node, _ = served
    async with node.bus.subscribe("system.*.health") as beats:
        message = await asyncio.wait_for(anext(beats), BOUND)
    assert message.payload["kind"] == "engine"
    assert message.payload["engine"] == node.engine.engine_id
    assert message.topic == f"system.{node.control.worker_name}.health"


async def test_cancel_reaches_the_engine_that_runs_the_process(tmp_path: Path) -> None:
    """Two engines on one store: the one that takes the command does not run the process,
    so it broadcasts the cancel and the owner stops the run at once."""
    store = f"sqlite:///{tmp_path / 'shared.db'}"
    hub = f"local://remote-{uuid.uuid4().hex[:8]}"
    runner = await _node(store, hub, serve_commands=False)
    commander = await _node(store, hub)
    try:
        async with runner.bus.subscribe("taskwarden.process.changed") as events:
            await runner.engine.launch("waits")
            await asyncio.wait_for(_next_state(events, "waits", "running"), BOUND)
            client = RemoteClient(commander.bus, timeout=BOUND)
            assert (await client.cancel("waits")).ok
            await asyncio.wait_for(_next_state(events, "waits", "cancelled"), BOUND)
    finally:
        await _close(commander)
        await _close(runner)


# -- across OS processes, over the real servers -------------------------------------------


async def _launch_and_cancel_across_processes(store: str, bus_url: str) -> list[float]:
    prefix = f"t{uuid.uuid4().hex[:8]}"
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.integration.remote_engine_proc",
        store,
        bus_url,
        prefix,
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
    )
    latencies: list[float] = []
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 30)
        assert line.strip() == b"ready"
        async with open_bus(bus_url) as bus:
            client = RemoteClient(bus, prefix=prefix, timeout=BOUND)
            async with bus.subscribe(f"{prefix}.process.changed") as events:
                for _ in range(5):
                    launched = await client.launch("long")
                    assert launched.ok, launched
                    await asyncio.wait_for(_next_state(events, "long", "running"), BOUND)
                    started = time.perf_counter()
                    cancelled = await client.cancel("long")
                    assert cancelled.ok, cancelled
                    await asyncio.wait_for(_next_state(events, "long", "cancelled"), BOUND)
                    latencies.append(time.perf_counter() - started)
                    assert (await client.dismiss("long")).ok
                record = await client.get_process("long")
                assert record.process is not None
                assert record.process["status"]["state"] == "idle"
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 30) == 0
    return latencies


@pytest.mark.redis
@pytest.mark.slow
async def test_launch_and_cancel_from_another_process_over_redis(
    redis_server_url: str, tmp_path: Path
) -> None:
    latencies = await _launch_and_cancel_across_processes(
        f"sqlite:///{tmp_path / 'remote.db'}", redis_server_url
    )
    assert len(latencies) == 5
    assert statistics.median(latencies) < BOUND


@pytest.mark.postgres
@pytest.mark.slow
async def test_launch_and_cancel_from_another_process_over_postgres(
    postgres_server_url: str,
) -> None:
    with temporary_database(postgres_server_url, "tw_remote") as url:
        latencies = await _launch_and_cancel_across_processes(url, url)
    assert len(latencies) == 5


async def test_init_with_a_bus_serves_the_default_engine(tmp_path: Path) -> None:
    """The seed's ``init(..., redis_url=...)`` spelling works with any bus URL."""
    import taskwarden

    hub = f"local://remote-{uuid.uuid4().hex[:8]}"
    await taskwarden.init(
        store=f"sqlite:///{tmp_path / 'facade.db'}",
        redis_url=hub,
        get_task_definitions=_definitions,
        registry=OperationRegistry(),
    )
    try:
        control = taskwarden.get_remote_control()
        assert isinstance(control, RemoteControl)
        async with open_bus(hub) as bus:
            client = RemoteClient(bus, timeout=BOUND)
            async with bus.subscribe("taskwarden.process.changed") as events:
                assert (await client.launch("quick")).ok
                await asyncio.wait_for(_next_state(events, "quick", "done"), BOUND)
    finally:
        await taskwarden.shutdown()
    assert taskwarden.get_remote_control() is None


async def _gated_launch(node: Node) -> tuple[asyncio.Event, asyncio.Event]:
    """Make the engine's launch command stay busy after its write until ``gate`` is set."""
    gate, written = asyncio.Event(), asyncio.Event()
    original = node.engine.launch

    async def launch_then_wait(process_id: str) -> None:
        await original(process_id)
        written.set()
        await gate.wait()

    node.engine.launch = launch_then_wait  # type: ignore[method-assign]
    return gate, written


async def test_state_changes_of_a_command_are_published_once_it_is_handled(
    tmp_path: Path,
) -> None:
    hub = f"local://remote-{uuid.uuid4().hex[:8]}"
    node = await _node(f"sqlite:///{tmp_path / 'held.db'}", hub, hold_events=BOUND)
    try:
        gate, written = await _gated_launch(node)
        client = RemoteClient(node.bus, timeout=BOUND)
        async with node.bus.subscribe("taskwarden.process.changed") as events:
            command = asyncio.create_task(client.launch("quick"))
            await asyncio.wait_for(written.wait(), BOUND)
            # The local bus delivers synchronously: a marker published now comes before any
            # event the control publishes later, and after any it already published.
            await node.bus.publish("taskwarden.process.changed", {"process_id": "marker"})
            first = await asyncio.wait_for(anext(events), BOUND)
            assert first.payload["process_id"] == "marker"
            gate.set()
            assert (await asyncio.wait_for(command, BOUND)).ok
            await asyncio.wait_for(_next_state(events, "quick", "scheduled"), BOUND)
    finally:
        await _close(node)


async def test_hold_events_zero_publishes_while_the_command_runs(tmp_path: Path) -> None:
    hub = f"local://remote-{uuid.uuid4().hex[:8]}"
    node = await _node(f"sqlite:///{tmp_path / 'unheld.db'}", hub, hold_events=0)
    try:
        gate, _ = await _gated_launch(node)
        client = RemoteClient(node.bus, timeout=BOUND)
        async with node.bus.subscribe("taskwarden.process.changed") as events:
            command = asyncio.create_task(client.launch("quick"))
            await asyncio.wait_for(_next_state(events, "quick", "scheduled"), BOUND)
            assert not command.done()  # still handling: the event did not wait for it
            gate.set()
            assert (await asyncio.wait_for(command, BOUND)).ok
    finally:
        await _close(node)
