"""The Bus contract, one suite run against every backend: local, Redis and PostgreSQL.

Each test opens its buses under a fresh prefix (a fresh hub for the local bus), so tests
never see each other's messages even on a shared server.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from typing import Any

import asyncpg
import pytest

from taskwarden.abc import Bus, BusMessage, BusSubscription
from taskwarden.bus import open_bus
from taskwarden.bus.local import LocalBus, LocalHub
from taskwarden.bus.postgres import PostgresBus
from taskwarden.bus.redis import RedisBus
from taskwarden.errors import (
    ConfigurationError,
    InvalidPayload,
    RemoteHandlerError,
    RequestTimeout,
)

WAIT = 5.0  # upper bound for anything that should happen "now"


class Buses:
    """Opens buses of one backend that talk to each other; closes them all at the end."""

    def __init__(self, kind: str, url: str | None) -> None:
        self.kind = kind
        self.url = url
        self.prefix = "t" + uuid.uuid4().hex[:12]
        self.hub = LocalHub()
        self.opened: list[Bus] = []

    def make(self) -> Bus:
        if self.kind == "local":
            return LocalBus(self.hub)
        assert self.url is not None
        return open_bus(f"{self.url}?prefix={self.prefix}")

    async def open(self) -> Bus:
        bus = self.make()
        await bus.open()
        self.opened.append(bus)
        return bus

    async def close(self) -> None:
        for bus in reversed(self.opened):
            await bus.close()


@pytest.fixture(
    params=[
        "local",
        pytest.param("redis", marks=pytest.mark.redis),
        pytest.param("postgres", marks=pytest.mark.postgres),
    ]
)
async def buses(request: pytest.FixtureRequest) -> AsyncIterator[Buses]:
    """A factory of connected buses of one backend, isolated from other tests."""
    kind: str = request.param
    url = None
    if kind == "redis":
        url = request.getfixturevalue("redis_server_url")
    elif kind == "postgres":
        url = request.getfixturevalue("postgres_server_url")
    factory = Buses(kind, url)
    try:
        yield factory
    finally:
        await factory.close()


async def next_message(subscription: BusSubscription) -> BusMessage:
    return await asyncio.wait_for(anext(subscription), WAIT)


async def collect_until_end(subscription: BusSubscription) -> list[str]:
    """Topics received before the message whose payload has ``end``."""
    topics: list[str] = []
    while True:
        message = await next_message(subscription)
        if message.payload.get("end"):
            return topics
        topics.append(message.topic)


PATTERN_CASES = [
    # pattern, published topics, the ones that must arrive, a topic the pattern matches
    ("a.*.c", ["a.b.c", "a.c", "a.b.x.c", "a.x.c", "b.b.c", "a.b.c.d"], ["a.b.c", "a.x.c"]),
    ("a.>", ["a", "a.b", "a.b.c", "b.a", "ab.c"], ["a.b", "a.b.c"]),
    ("a.b", ["a.b", "a.b.c", "a", "a.bb"], ["a.b"]),
    ("*.b.>", ["x.b.c", "x.b", "x.y.b.c", "y.b.c.d"], ["x.b.c", "y.b.c.d"]),
    ("*", ["a", "a.b", "b"], ["a", "b"]),
    ("a?[x]", ["a?[x]", "ab[x]", "a?x"], ["a?[x]"]),
]


async def test_patterns_match_star_as_one_token_and_gt_as_the_rest(buses: Buses) -> None:
    """``*`` matches exactly one token, ``>`` one or more trailing ones, literals themselves
    (including characters that are special in Redis globs)."""
    publisher, subscriber = await buses.open(), await buses.open()
    for pattern, published, expected in PATTERN_CASES:
        end_topic = expected[0]
        async with subscriber.subscribe(pattern) as subscription:
            for topic in published:
                await publisher.publish(topic, {"topic": topic})
            await publisher.publish(end_topic, {"end": True})
            assert await collect_until_end(subscription) == expected, pattern


async def test_subscriber_sees_the_payload_and_a_utc_receive_time(buses: Buses) -> None:
    """A message carries its topic, the decoded JSON payload, and an aware receive time."""
    publisher, subscriber = await buses.open(), await buses.open()
    payload = {"n": 1, "s": "é", "l": [1, 2.5, None, True], "d": {"x": "y"}}
    async with subscriber.subscribe("orders.*") as subscription:
        await publisher.publish("orders.created", payload)
        message = await next_message(subscription)
    assert message.topic == "orders.created"
    assert dict(message.payload) == payload
    assert message.received_at.utcoffset() is not None


async def test_messages_from_one_publisher_arrive_in_publish_order(buses: Buses) -> None:
    """Awaited publishes from one bus reach a subscriber in order, none missing."""
    publisher, subscriber = await buses.open(), await buses.open()
    async with subscriber.subscribe("seq.>", max_buffer=1000) as subscription:
        for i in range(300):
            await publisher.publish(f"seq.{i % 3}", {"i": i})
        received = [(await next_message(subscription)).payload["i"] for _ in range(300)]
    assert received == list(range(300))


async def test_a_full_buffer_drops_the_oldest_and_counts_it(buses: Buses) -> None:
    """With ``max_buffer=5``, 20 unread messages leave the newest 5 and ``dropped == 15``."""
    publisher, subscriber = await buses.open(), await buses.open()
    small = subscriber.subscribe("flood.*", max_buffer=5)
    large = subscriber.subscribe("flood.*", max_buffer=100)
    async with small, large:
        for i in range(20):
            await publisher.publish("flood.x", {"i": i})
        # Both subscriptions are fed by the same dispatch: once the large one has the
        # last message, the small one has seen all twenty.
        for _ in range(20):
            await next_message(large)
        assert small.dropped == 15
        assert [(await next_message(small)).payload["i"] for _ in range(5)] == list(range(15, 20))
        assert large.dropped == 0


async def test_large_payloads_are_delivered_whole(buses: Buses) -> None:
    """A 100 kB payload (beyond PostgreSQL's 8 kB NOTIFY limit) arrives intact."""
    publisher, subscriber = await buses.open(), await buses.open()
    body = {"blob": "x" * 100_000, "small": 1}
    async with subscriber.subscribe("big") as subscription:
        await publisher.publish("big", body)
        await publisher.publish("big", {"after": True})
        first = await next_message(subscription)
        second = await next_message(subscription)
    assert dict(first.payload) == body
    assert dict(second.payload) == {"after": True}


async def test_closing_a_subscription_ends_it_and_stops_delivery(buses: Buses) -> None:
    """After ``close()`` a subscription yields nothing more; others on the pattern still do."""
    publisher, subscriber = await buses.open(), await buses.open()
    leaving = subscriber.subscribe("u.*")
    staying = subscriber.subscribe("u.*")
    async with staying:
        await leaving.start()
        await publisher.publish("u.a", {"i": 1})
        assert (await next_message(leaving)).payload == {"i": 1}
        await leaving.close()
        await publisher.publish("u.a", {"i": 2})
        with pytest.raises(StopAsyncIteration):
            await asyncio.wait_for(anext(leaving), WAIT)
        assert (await next_message(staying)).payload == {"i": 1}
        assert (await next_message(staying)).payload == {"i": 2}


async def test_closing_the_bus_ends_its_subscriptions(buses: Buses) -> None:
    """Iteration over a subscription stops when its bus closes."""
    bus = await buses.open()
    subscription = bus.subscribe("z.>")
    await subscription.start()
    await bus.close()
    with pytest.raises(StopAsyncIteration):
        await asyncio.wait_for(anext(subscription), WAIT)


async def test_invalid_topics_patterns_and_payloads_are_refused(buses: Buses) -> None:
    """Wildcards in a topic, malformed patterns and non-JSON payloads raise typed errors."""
    bus = await buses.open()
    for topic in ("", "a..b", "a.*", "a.>", "a b"):
        with pytest.raises(ConfigurationError):
            await bus.publish(topic, {})
    for pattern in ("", "a..b", "a.>.b", "a*", "x.>y"):
        with pytest.raises(ConfigurationError):
            bus.subscribe(pattern)
    with pytest.raises(InvalidPayload):
        await bus.publish("a", {"when": object()})
    with pytest.raises(InvalidPayload):
        await bus.publish("a", ["not", "a", "mapping"])  # type: ignore[arg-type]


async def echo(message: BusMessage) -> Mapping[str, Any]:
    return {"topic": message.topic, "echo": dict(message.payload)}


async def test_request_gets_the_reply_of_the_serving_handler(buses: Buses) -> None:
    """``request`` returns what the handler of a matching pattern returned."""
    client, server = await buses.open(), await buses.open()
    await server.serve("cmd.>", echo)
    reply = await client.request("cmd.launch.job", {"id": 7}, timeout=WAIT)
    assert reply == {"topic": "cmd.launch.job", "echo": {"id": 7}}


async def test_large_requests_and_replies_travel_whole(buses: Buses) -> None:
    """A 50 kB request and its 50 kB reply cross the bus intact."""
    client, server = await buses.open(), await buses.open()
    await server.serve("cmd.big", echo)
    body = {"blob": "y" * 50_000}
    reply = await client.request("cmd.big", body, timeout=WAIT)
    assert reply == {"topic": "cmd.big", "echo": body}


async def test_a_failing_handler_raises_remote_handler_error(buses: Buses) -> None:
    """The handler's exception comes back as ``RemoteHandlerError`` naming its type."""
    client, server = await buses.open(), await buses.open()

    async def broken(message: BusMessage) -> Mapping[str, Any]:
        raise KeyError("no such job")

    await server.serve("cmd.broken", broken)
    with pytest.raises(RemoteHandlerError) as caught:
        await client.request("cmd.broken", {}, timeout=WAIT)
    assert caught.value.remote_type == "KeyError"
    assert "no such job" in caught.value.remote_message


async def test_a_slow_handler_makes_the_request_time_out(buses: Buses) -> None:
    """No reply within ``timeout`` raises ``RequestTimeout`` (a ``TimeoutError``)."""
    client, server = await buses.open(), await buses.open()
    release = asyncio.Event()

    async def slow(message: BusMessage) -> Mapping[str, Any]:
        await release.wait()
        return {}

    await server.serve("cmd.slow", slow)
    started = time.monotonic()
    with pytest.raises(RequestTimeout):
        await client.request("cmd.slow", {}, timeout=0.3)
    assert time.monotonic() - started < WAIT
    release.set()


async def test_a_request_nobody_serves_times_out(buses: Buses) -> None:
    """With no server for the topic, ``request`` raises ``RequestTimeout`` within its timeout."""
    client = await buses.open()
    with pytest.raises(RequestTimeout):
        await asyncio.wait_for(client.request("cmd.nobody", {}, timeout=0.3), WAIT)


async def test_each_request_is_handled_by_exactly_one_of_two_servers(buses: Buses) -> None:
    """Two buses serve the same pattern: every request is handled once, never twice."""
    client, first, second = await buses.open(), await buses.open(), await buses.open()
    handled: dict[str, list[int]] = {"first": [], "second": []}

    def handler(name: str) -> Callable[[BusMessage], Any]:
        async def handle(message: BusMessage) -> Mapping[str, Any]:
            handled[name].append(int(message.payload["n"]))
            return {"by": name}

        return handle

    await first.serve("work.*", handler("first"))
    await second.serve("work.*", handler("second"))
    replies = await asyncio.gather(
        *(client.request("work.item", {"n": n}, timeout=WAIT) for n in range(40))
    )
    everything = handled["first"] + handled["second"]
    assert sorted(everything) == list(range(40))
    assert all(reply["by"] in ("first", "second") for reply in replies)


async def test_unserve_stops_handling(buses: Buses) -> None:
    """After ``unserve`` the bus no longer answers; serving again restores it."""
    client, server = await buses.open(), await buses.open()
    await server.serve("cmd.x", echo)
    assert (await client.request("cmd.x", {}, timeout=WAIT))["topic"] == "cmd.x"
    await server.unserve("cmd.x")
    with pytest.raises(RequestTimeout):
        await client.request("cmd.x", {}, timeout=0.3)
    await server.serve("cmd.x", echo)
    assert (await client.request("cmd.x", {}, timeout=WAIT))["topic"] == "cmd.x"


async def test_a_bus_talks_to_itself(buses: Buses) -> None:
    """One bus can subscribe to its own events and serve its own requests."""
    bus = await buses.open()
    await bus.serve("self.cmd", echo)
    async with bus.subscribe("self.event") as subscription:
        await bus.publish("self.event", {"i": 1})
        assert (await next_message(subscription)).payload == {"i": 1}
    assert (await bus.request("self.cmd", {"q": 1}, timeout=WAIT))["echo"] == {"q": 1}


async def test_unknown_bus_url_lists_the_valid_schemes() -> None:
    """``open_bus`` refuses an unknown scheme and names the ones it knows."""
    with pytest.raises(ConfigurationError, match=r"redis://.*postgresql://"):
        open_bus("kafka://somewhere")


async def test_local_urls_share_a_hub_and_memory_urls_do_not() -> None:
    """``local://name`` buses see each other; every ``memory://`` bus is on its own."""
    one, two = open_bus("local://shared-test"), open_bus("local://shared-test")
    three = open_bus("memory://")
    assert isinstance(one, LocalBus) and isinstance(two, LocalBus)
    assert isinstance(three, LocalBus)
    assert one.hub is two.hub and three.hub is not one.hub
    assert isinstance(open_bus("redis://127.0.0.1:1/0?prefix=p"), RedisBus)
    assert isinstance(open_bus("postgresql://u@127.0.0.1:1/db?prefix=p"), PostgresBus)


@pytest.mark.redis
async def test_redis_clears_expired_requests_stranded_by_a_dead_server(
    redis_server_url: str,
) -> None:
    """A request read but never acknowledged by a server that died is acknowledged and
    deleted by a live server once past its deadline, and never handled; one still within
    its deadline is left alone."""
    prefix = "t" + uuid.uuid4().hex[:12]
    server = RedisBus(redis_server_url, prefix=prefix, reclaim_after=0.001)
    async with server:
        handled: list[str] = []

        async def record(message: BusMessage) -> Mapping[str, Any]:
            handled.append(message.topic)
            return {}

        await server.serve("cmd.x", record)
        await server.unserve("cmd.x")
        stream = f"{prefix}:rq:cmd.x"
        raw = server.client
        for deadline in (time.time() - 1, time.time() + 3600):
            await raw.xadd(
                stream,
                {
                    "id": "r",
                    "topic": "cmd.x",
                    "payload": "{}",
                    "reply_to": "nowhere",
                    "deadline": repr(deadline),
                },
            )
        stranded: Any = await raw.xreadgroup("servers", "dead-server", {stream: ">"}, count=10)
        assert len(stranded[0][1]) == 2
        await server.serve("cmd.x", record)
        assert server.reclaimed == 1
        assert await raw.xlen(stream) == 1
        assert handled == []


# -- reconnection ------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class RestartableRedis:
    """A redis-server of this test alone, which the test stops and starts on one port."""

    def __init__(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.skip("redis-server is not installed")
        self.binary = binary
        self.port = _free_port()
        self.root = tempfile.mkdtemp(prefix="taskwarden-redis-restart-")
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                *(self.binary, "--port", str(self.port), "--bind", "127.0.0.1"),
                *("--save", "", "--appendonly", "no", "--dir", self.root),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), 0.2),
            ):
                return
            time.sleep(0.02)
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(10)
            self.proc = None


@pytest.fixture
def restartable_redis() -> Iterator[RestartableRedis]:
    server = RestartableRedis()
    server.start()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(server.root, ignore_errors=True)


async def wait_until_delivered(
    publisher: Bus, subscription: BusSubscription, topic: str
) -> BusMessage:
    """Publish probes until one arrives: the first after the subscriber reconnected."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            await publisher.publish(topic, {"probe": True})
        try:
            return await asyncio.wait_for(anext(subscription), 0.2)
        except TimeoutError:
            continue
    raise AssertionError("the subscription never received anything after the restart")


async def wait_until_answered(client: Bus, topic: str) -> Mapping[str, Any]:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            return await client.request(topic, {}, timeout=0.3)
        except (RequestTimeout, OSError):
            continue
    raise AssertionError("no request was answered after the restart")


@pytest.mark.redis
@pytest.mark.slow
async def test_redis_bus_survives_a_server_restart(restartable_redis: RestartableRedis) -> None:
    """Killing and restarting redis-server loses neither subscriptions nor served patterns."""
    url = f"{restartable_redis.url}?prefix=restart"
    async with open_bus(url) as publisher, open_bus(url) as subscriber:
        await subscriber.serve("cmd.ping", echo)
        async with subscriber.subscribe("r.*") as subscription:
            await publisher.publish("r.before", {})
            assert (await next_message(subscription)).topic == "r.before"
            restartable_redis.stop()
            restartable_redis.start()
            message = await wait_until_delivered(publisher, subscription, "r.after")
            assert message.topic == "r.after"
            assert (await wait_until_answered(publisher, "cmd.ping"))["topic"] == "cmd.ping"


@pytest.mark.postgres
@pytest.mark.slow
async def test_postgres_bus_survives_its_listener_being_terminated(
    postgres_server_url: str,
) -> None:
    """``pg_terminate_backend`` on the listening connection: it reconnects and keeps going."""
    url = f"{postgres_server_url}?prefix=p{uuid.uuid4().hex[:10]}"
    async with open_bus(url) as publisher, open_bus(url) as subscriber:
        assert isinstance(subscriber, PostgresBus)
        await subscriber.serve("cmd.ping", echo)
        async with subscriber.subscribe("r.*") as subscription:
            await publisher.publish("r.before", {})
            assert (await next_message(subscription)).topic == "r.before"
            admin = await asyncpg.connect(postgres_server_url)
            try:
                killed = await admin.fetchval(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE application_name = $1",
                    subscriber.listener_application_name,
                )
            finally:
                await admin.close()
            assert killed == 1
            message = await wait_until_delivered(publisher, subscription, "r.after")
            assert message.topic == "r.after"
            assert subscriber.reconnects >= 1
            assert (await wait_until_answered(publisher, "cmd.ping"))["topic"] == "cmd.ping"
