"""The Redis bus: pub/sub for events, streams with a consumer group for requests.

Layout under the prefix ``P`` (default ``taskwarden``):

* events go to the channel ``P:ev:<topic>``; a subscription psubscribes a glob that covers
  its pattern and filters exactly on receipt;
* ``P:services`` is the set of served patterns; a request for a topic goes to the stream
  ``P:rq:<pattern>`` of the pattern that :func:`~taskwarden.bus.base.pick_pattern` picks,
  read by the consumer group ``servers``, so exactly one server gets it; it is acknowledged
  and deleted once replied to;
* replies go to the list ``P:rp:<bus id>`` of the requester, which one task pops.

A lost connection is retried with backoff; the pub/sub connection re-subscribes every glob
and the server loops re-create their group and re-register their pattern, so a Redis
restart (which may lose every key) costs the messages sent meanwhile, not the subscriptions.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Mapping
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from taskwarden.abc import RequestHandler
from taskwarden.bus.base import (
    BaseBus,
    QueueSubscription,
    cancel_and_wait,
    compile_pattern,
    decode_payload,
    encode_payload,
    pick_pattern,
    unwrap_reply,
    validate_topic,
)
from taskwarden.errors import BusError, InvalidPayload, RequestTimeout

__all__ = ["RedisBus"]

log = logging.getLogger("taskwarden.bus.redis")

_GROUP = "servers"
_TRANSIENT = (RedisConnectionError, RedisTimeoutError, OSError)
_GLOB_SPECIALS = str.maketrans({c: "\\" + c for c in "*?[]\\^"})
#: How long a requester trusts its copy of the served patterns.
_SERVICES_TTL = 1.0
_MAX_STREAM_LENGTH = 10_000


def _glob_for(prefix: str, pattern: str) -> str:
    """A Redis glob covering ``pattern`` (wildcards widen; exact filtering follows)."""
    tokens = [t if t in ("*", ">") else t.translate(_GLOB_SPECIALS) for t in pattern.split(".")]
    return (
        prefix.translate(_GLOB_SPECIALS)
        + ":ev:"
        + ".".join("*" if t in ("*", ">") else t for t in tokens)
    )


class RedisBus(BaseBus):
    """A bus over Redis (redis-py asyncio); see :class:`taskwarden.abc.Bus`.

    ``url`` is a redis-py URL; ``prefix`` isolates deployments (and tests) sharing a server.
    ``reconnect_delay`` is the first wait before reconnecting, doubled up to ``max_delay``.

    Housekeeping, when a server starts serving and every ``reclaim_after`` seconds while it
    serves: requests left unacknowledged for ``reclaim_after`` seconds by a server that
    died are taken over and, once past their deadline, acknowledged and deleted (never
    handled: a request goes to one server at most); consumers with nothing pending and idle
    for ``forget_consumers_after`` seconds (the names of dead buses) are removed.
    """

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "taskwarden",
        reconnect_delay: float = 0.05,
        max_delay: float = 2.0,
        reclaim_after: float = 60.0,
        forget_consumers_after: float = 86_400.0,
    ) -> None:
        super().__init__()
        self.url = url
        self._reclaim_after = reclaim_after
        self._forget_after = forget_consumers_after
        #: Expired requests left unacknowledged by dead servers that this bus cleared.
        self.reclaimed = 0
        self.prefix = prefix
        self.bus_id = uuid.uuid4().hex[:16]
        self._reconnect_delay = reconnect_delay
        self._max_delay = max_delay
        self._redis: aioredis.Redis | None = None
        self._pubsub: Any = None
        self._globs: dict[str, set[QueueSubscription]] = {}
        self._confirmed: dict[str, asyncio.Future[None]] = {}
        self._loops: dict[str, asyncio.Task[None]] = {}
        self._stopping: set[str] = set()
        self._blocked_ids: dict[str, int] = {}
        self._pending: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._services: tuple[float, frozenset[str]] = (0.0, frozenset())
        self._reply_key = f"{prefix}:rp:{self.bus_id}"
        self.reconnects = 0

    # -- lifecycle -----------------------------------------------------------------------

    @property
    def client(self) -> aioredis.Redis:
        """The redis-py client (for diagnostics); ``BusError`` if the bus is not open."""
        self._require_open()
        assert self._redis is not None
        return self._redis

    @property
    def _r(self) -> aioredis.Redis:
        if self._redis is None:
            raise BusError("RedisBus is not open: call open() or use 'async with'")
        return self._redis

    async def open(self) -> None:
        """Connect, start the pub/sub reader and the reply reader."""
        if self._is_open:
            return
        self._redis = aioredis.Redis.from_url(
            self.url,
            retry=Retry(ExponentialBackoff(cap=0.5, base=0.02), 4),
            retry_on_error=[RedisConnectionError, RedisTimeoutError],
            health_check_interval=30,
        )
        try:
            await self._redis.ping()
        except RedisError as exc:
            await self._redis.aclose()
            self._redis = None
            raise BusError(f"cannot reach Redis at {self.url}: {exc}; is it running?") from exc
        self._is_open = True
        self._closing = False
        self._stopping.clear()
        ready = asyncio.get_running_loop().create_future()
        self._loops["pubsub"] = asyncio.create_task(
            self._pubsub_loop(ready), name=f"taskwarden-redis-pubsub:{self.bus_id}"
        )
        self._loops["replies"] = asyncio.create_task(
            self._reply_loop(), name=f"taskwarden-redis-replies:{self.bus_id}"
        )
        await ready

    async def close(self) -> None:
        """Stop serving, end subscriptions, stop the readers and disconnect. Idempotent."""
        if not self._is_open:
            return
        self._closing = True
        self._handlers.clear()
        for name in [n for n in self._loops if n.startswith("serve:")]:
            await self._stop_loop(name)
        await self._drain_handler_tasks()
        self._end_subscriptions()
        self._globs.clear()
        for name in list(self._loops):
            await self._stop_loop(name)
        with contextlib.suppress(RedisError):
            await self._r.delete(self._reply_key)
        for future in self._pending.values():
            future.cancel()
        self._pending.clear()
        if self._redis is not None:
            await self._redis.aclose()
            self._redis = None
        self._is_open = False

    def _blocking_client(self) -> aioredis.Redis:
        """A one-connection client for a blocking command, woken rather than cancelled.

        Cancelling redis-py in the middle of a blocking read can leave the task stuck, so
        loops that block are stopped by waking them (a sentinel, ``CLIENT UNBLOCK``). It
        does not retry on its own, so the loop knows when the connection (and its id)
        changed.
        """
        return aioredis.Redis.from_url(
            self.url, single_connection_client=True, retry=Retry(ExponentialBackoff(), 0)
        )

    async def _stop_loop(self, name: str) -> None:
        """Ask a loop to stop, wake it from its blocking read, and wait for it."""
        task = self._loops.pop(name, None)
        if task is None:
            return
        self._stopping.add(name)
        try:
            if name == "pubsub":
                await self._r.publish(f"{self.prefix}:ctl:{self.bus_id}", b"stop")
            elif name == "replies":
                await self._r.lpush(self._reply_key, b"")
            elif name in self._blocked_ids:
                await self._r.client_unblock(self._blocked_ids[name])
        except RedisError as exc:
            log.info("could not wake redis bus loop %s: %r", name, exc)
        done, _ = await asyncio.wait({task}, timeout=2.0)
        if not done:
            log.warning("redis bus loop %s did not stop when woken; cancelling it", name)
            await cancel_and_wait(task)
        elif not task.cancelled() and task.exception() is not None:
            log.error("redis bus loop %s failed", name, exc_info=task.exception())
        self._stopping.discard(name)

    def _backoff(self, attempt: int) -> float:
        return float(min(self._max_delay, self._reconnect_delay * (2 ** min(attempt, 10))))

    # -- events --------------------------------------------------------------------------

    async def publish(self, topic: str, payload: Mapping[str, Any]) -> None:
        """PUBLISH to ``<prefix>:ev:<topic>`` (at most once; redis-py retries briefly)."""
        self._require_open()
        validate_topic(topic)
        data = encode_payload(payload)
        try:
            await self._r.publish(f"{self.prefix}:ev:{topic}", data)
        except RedisError as exc:
            raise BusError(f"publishing {topic!r} to Redis failed: {exc}") from exc

    async def _attach(self, subscription: QueueSubscription) -> None:
        await super()._attach(subscription)
        glob = _glob_for(self.prefix, subscription.pattern)
        members = self._globs.setdefault(glob, set())
        members.add(subscription)
        if glob not in self._confirmed:
            self._confirmed[glob] = asyncio.get_running_loop().create_future()
            try:
                if self._pubsub is not None:
                    await self._pubsub.psubscribe(glob)
            except _TRANSIENT as exc:
                # The reader loop reconnects and subscribes every glob, confirming this one.
                log.info("redis psubscribe deferred until reconnect: %r", exc)
        try:
            async with asyncio.timeout(30):
                await asyncio.shield(self._confirmed[glob])
        except TimeoutError:
            await self._detach(subscription)
            raise BusError(
                f"Redis did not confirm the subscription to {subscription.pattern!r} in 30s"
            ) from None

    async def _detach(self, subscription: QueueSubscription) -> None:
        await super()._detach(subscription)
        glob = _glob_for(self.prefix, subscription.pattern)
        members = self._globs.get(glob)
        if members is None:
            return
        members.discard(subscription)
        if not members:
            del self._globs[glob]
            self._confirmed.pop(glob, None)
            if self._pubsub is not None:
                # If the connection is gone, the next one will not re-subscribe it anyway.
                with contextlib.suppress(*_TRANSIENT):
                    await self._pubsub.punsubscribe(glob)

    async def _pubsub_loop(self, ready: asyncio.Future[None]) -> None:
        attempt = 0
        control = f"{self.prefix}:ctl:{self.bus_id}"
        while "pubsub" not in self._stopping:
            pubsub: Any = self._r.pubsub()
            try:
                await pubsub.subscribe(control)
                # Publish the connection before listing globs: a subscription attached from
                # here on psubscribes itself, one attached before is in the list.
                self._pubsub = pubsub
                globs = list(self._globs)
                if globs:
                    await pubsub.psubscribe(*globs)
                if not ready.done():
                    ready.set_result(None)
                while "pubsub" not in self._stopping:
                    message = await pubsub.get_message(timeout=None)
                    if message is None:
                        continue
                    kind = message["type"]
                    if kind == "pmessage":
                        attempt = 0
                        self._on_event(message["pattern"], message["channel"], message["data"])
                    elif kind == "psubscribe":
                        future = self._confirmed.get(message["channel"].decode())
                        if future is not None and not future.done():
                            future.set_result(None)
                    elif kind == "subscribe":
                        attempt = 0
            except _TRANSIENT as exc:
                self._pubsub = None
                self.reconnects += 1
                delay = self._backoff(attempt)
                attempt += 1
                log.warning("redis pub/sub connection lost (%r); reconnecting in %.2fs", exc, delay)
                for glob, future in list(self._confirmed.items()):
                    if future.done():
                        self._confirmed[glob] = asyncio.get_running_loop().create_future()
                await asyncio.sleep(delay)
            finally:
                self._pubsub = None
                await asyncio.shield(pubsub.aclose())

    def _on_event(self, glob: bytes, channel: bytes, data: bytes) -> None:
        members = self._globs.get(glob.decode())
        if not members:
            return
        topic = channel.decode()[len(self.prefix) + 4 :]
        try:
            payload = decode_payload(data)
        except InvalidPayload as exc:
            log.warning("dropping undecodable event on %s: %s", topic, exc)
            return
        self._dispatch(topic, payload, subscriptions=members)

    # -- requests ------------------------------------------------------------------------

    async def _route(self, topic: str) -> str | None:
        fetched_at, patterns = self._services
        pattern = pick_pattern(topic, patterns)
        if pattern is not None and time.monotonic() - fetched_at < _SERVICES_TTL:
            return pattern
        members: Any = await self._r.smembers(f"{self.prefix}:services")
        patterns = frozenset(m.decode() for m in members)
        self._services = (time.monotonic(), patterns)
        return pick_pattern(topic, patterns)

    async def request(
        self,
        topic: str,
        payload: Mapping[str, Any],
        *,
        timeout: float = 5.0,  # noqa: ASYNC109 - part of the Bus contract
    ) -> Mapping[str, Any]:
        """XADD the request to its pattern's stream and wait for the reply; see :class:`Bus`."""
        self._require_open()
        validate_topic(topic)
        data = encode_payload(payload)
        try:
            pattern = await self._route(topic)
        except RedisError as exc:
            raise BusError(f"routing request {topic!r} failed: {exc}") from exc
        if pattern is None:
            raise RequestTimeout(
                f"no bus serves {topic!r}: call serve() with a matching pattern first"
            )
        request_id = uuid.uuid4().hex
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        try:
            await self._r.xadd(
                f"{self.prefix}:rq:{pattern}",
                {
                    "id": request_id,
                    "topic": topic,
                    "payload": data,
                    "reply_to": self._reply_key,
                    "deadline": repr(time.time() + timeout),
                },
                maxlen=_MAX_STREAM_LENGTH,
                approximate=True,
            )
            async with asyncio.timeout(timeout):
                envelope = await future
        except TimeoutError:
            raise RequestTimeout(
                f"no reply to {topic!r} within {timeout:g}s: is a server running and "
                "connected to the same Redis and prefix?"
            ) from None
        except RedisError as exc:
            raise BusError(f"sending request {topic!r} failed: {exc}") from exc
        finally:
            self._pending.pop(request_id, None)
        return unwrap_reply(topic, envelope)

    async def _reply_loop(self) -> None:
        attempt = 0
        blocking = self._blocking_client()
        try:
            while "replies" not in self._stopping:
                try:
                    popped = await blocking.blpop([self._reply_key], timeout=0)
                    attempt = 0
                except _TRANSIENT as exc:
                    delay = self._backoff(attempt)
                    attempt += 1
                    log.warning("redis reply reader lost its connection (%r); retrying", exc)
                    await asyncio.sleep(delay)
                    continue
                if popped is None or not popped[1]:
                    continue  # the wake-up sentinel
                try:
                    envelope = decode_payload(popped[1])
                except InvalidPayload:
                    log.warning("dropping an undecodable reply")
                    continue
                future = self._pending.get(str(envelope.pop("id", "")))
                if future is not None and not future.done():
                    future.set_result(envelope)
        finally:
            await asyncio.shield(blocking.aclose())

    async def serve(self, pattern: str, handler: RequestHandler) -> None:
        """Join the consumer group of ``pattern``'s stream and register the pattern."""
        self._require_open()
        compile_pattern(pattern)
        self._handlers[pattern] = handler
        name = f"serve:{pattern}"
        if name in self._loops:
            return
        ready = asyncio.get_running_loop().create_future()
        self._loops[name] = asyncio.create_task(
            self._serve_loop(pattern, ready), name=f"taskwarden-redis-{name}"
        )
        await ready

    async def unserve(self, pattern: str) -> None:
        """Leave ``pattern``'s consumer group; requests being handled finish."""
        self._handlers.pop(pattern, None)
        await self._stop_loop(f"serve:{pattern}")

    async def _serve_loop(self, pattern: str, ready: asyncio.Future[None]) -> None:
        name = f"serve:{pattern}"
        stream = f"{self.prefix}:rq:{pattern}"
        attempt = 0
        blocking = self._blocking_client()
        try:
            while name not in self._stopping:
                try:
                    try:
                        await self._r.xgroup_create(stream, _GROUP, id="$", mkstream=True)
                    except ResponseError as exc:
                        if "BUSYGROUP" not in str(exc):
                            raise
                    await self._r.sadd(f"{self.prefix}:services", pattern)
                    self._blocked_ids[name] = int(await blocking.client_id())
                    housekept = time.monotonic()
                    await self._housekeep_safely(stream)
                    if not ready.done():
                        ready.set_result(None)
                    block_ms = max(1, int(self._reclaim_after * 1000))
                    while name not in self._stopping:
                        batch: Any = await blocking.xreadgroup(
                            _GROUP, self.bus_id, {stream: ">"}, count=32, block=block_ms
                        )
                        attempt = 0
                        if time.monotonic() - housekept >= self._reclaim_after:
                            housekept = time.monotonic()
                            await self._housekeep_safely(stream)
                        for _, entries in batch or ():
                            for entry_id, fields in entries:
                                self._spawn(
                                    self._handle(pattern, stream, entry_id, fields),
                                    name=f"taskwarden-redis-request:{pattern}",
                                )
                except ResponseError as exc:
                    if "NOGROUP" in str(exc):
                        log.warning("redis lost the group of %s; re-creating it", stream)
                        continue
                    # Keep serving: a refused command must not silently end the loop.
                    delay = self._backoff(attempt)
                    attempt += 1
                    log.error("redis server loop of %s: %s; retrying", pattern, exc)
                    await asyncio.sleep(delay)
                except _TRANSIENT as exc:
                    delay = self._backoff(attempt)
                    attempt += 1
                    log.warning("redis server loop of %s lost its connection (%r)", pattern, exc)
                    await asyncio.sleep(delay)
        finally:
            self._blocked_ids.pop(name, None)
            await asyncio.shield(blocking.aclose())

    async def _housekeep_safely(self, stream: str) -> None:
        try:
            await self._housekeep(stream)
        except ResponseError as exc:
            log.warning("housekeeping of %s failed: %s", stream, exc)

    async def _housekeep(self, stream: str) -> None:
        """Clear expired requests stranded by dead servers; forget long-idle consumers."""
        start: Any = "0-0"
        now = time.time()
        for _ in range(100):  # bounded: at most 10,000 entries per pass
            claimed: Any = await self._r.xautoclaim(
                stream, _GROUP, self.bus_id, int(self._reclaim_after * 1000), start, count=100
            )
            start, entries = claimed[0], claimed[1]
            expired = [
                entry_id
                for entry_id, fields in entries
                if fields is None or float(fields.get(b"deadline", 0) or 0) < now
            ]
            if expired:
                async with self._r.pipeline(transaction=False) as pipe:
                    pipe.xack(stream, _GROUP, *expired)
                    pipe.xdel(stream, *expired)
                    await pipe.execute()
                self.reclaimed += len(expired)
            if start in (b"0-0", "0-0"):
                break
        consumers: Any = await self._r.xinfo_consumers(stream, _GROUP)
        for consumer in consumers:
            consumer_name = consumer["name"]
            if isinstance(consumer_name, bytes):
                consumer_name = consumer_name.decode()
            if (
                consumer_name != self.bus_id
                and not consumer["pending"]
                and consumer["idle"] >= self._forget_after * 1000
            ):
                await self._r.xgroup_delconsumer(stream, _GROUP, consumer_name)

    async def _handle(
        self, pattern: str, stream: str, entry_id: bytes, fields: dict[bytes, bytes]
    ) -> None:
        try:
            topic = fields[b"topic"].decode()
            deadline = float(fields[b"deadline"])
            reply_to = fields[b"reply_to"].decode()
            request_id = fields[b"id"].decode()
            payload = decode_payload(fields[b"payload"])
        except (KeyError, ValueError) as exc:
            log.warning("dropping malformed request %s on %s: %r", entry_id, stream, exc)
            await self._r.xack(stream, _GROUP, entry_id)
            return
        envelope: dict[str, Any] | None = None
        if time.time() <= deadline:
            handler = self._handlers.get(pattern)
            if handler is not None:
                envelope = await self._run_handler(handler, topic, payload)
        async with self._r.pipeline(transaction=False) as pipe:
            if envelope is not None:
                envelope["id"] = request_id
                pipe.rpush(reply_to, encode_payload(envelope))
                pipe.pexpire(reply_to, max(1000, int((deadline - time.time()) * 1000) + 1000))
            pipe.xack(stream, _GROUP, entry_id)
            pipe.xdel(stream, entry_id)
            try:
                await pipe.execute()
            except RedisError as exc:
                log.warning("could not reply to request %s on %s: %r", request_id, stream, exc)
