"""The PostgreSQL bus: LISTEN/NOTIFY, for deployments with no Redis.

Under the prefix ``P`` (default ``taskwarden``) it uses three channels: ``P:ev`` carries
every event, ``P:rq`` announces requests, and ``P:rp:<bus id>`` carries the replies to one
requester. A notification holds a small JSON envelope ``{t: topic, b: bus id, s: sequence,
p: payload}``; when the payload would push it past the 8 kB NOTIFY limit, the body goes to
the table ``taskwarden_bus_bodies`` and the envelope carries its id (``r``) instead.

Requests are rows of ``taskwarden_bus_requests``; a server claims one with
``DELETE ... RETURNING``, so exactly one server gets it. A server also sweeps the table
when it starts serving and after every reconnection, so an announcement it missed while
disconnected is not lost before the request's deadline.

The listening connection is watched: when it drops (server restart,
``pg_terminate_backend``) it is re-opened with backoff and LISTENs again; subscriptions
live in this process, so none is lost.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import asyncpg

from taskwarden.abc import RequestHandler
from taskwarden.bus.base import (
    BaseBus,
    cancel_and_wait,
    compile_pattern,
    decode_payload,
    encode_payload,
    unwrap_reply,
    validate_topic,
)
from taskwarden.errors import BusError, ConfigurationError, InvalidPayload, RequestTimeout

__all__ = ["MAX_INLINE_BYTES", "PostgresBus"]

log = logging.getLogger("taskwarden.bus.postgres")

#: Envelopes up to this many UTF-8 bytes travel inline; NOTIFY refuses 8000 and more.
MAX_INLINE_BYTES = 7000
_BODY_RETENTION = "5 minutes"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS taskwarden_bus_bodies (
    id bigserial PRIMARY KEY,
    created_at timestamptz NOT NULL DEFAULT now(),
    body text NOT NULL
);
CREATE TABLE IF NOT EXISTS taskwarden_bus_requests (
    id bigserial PRIMARY KEY,
    prefix text NOT NULL,
    topic text NOT NULL,
    body text NOT NULL,
    reply_channel text NOT NULL,
    request_key text NOT NULL,
    deadline timestamptz NOT NULL
);
CREATE INDEX IF NOT EXISTS taskwarden_bus_requests_prefix
    ON taskwarden_bus_requests (prefix, deadline);
"""

_TRANSIENT = (
    OSError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.CannotConnectNowError,
    asyncpg.AdminShutdownError,
)


class PostgresBus(BaseBus):
    """A bus over PostgreSQL LISTEN/NOTIFY (asyncpg); see :class:`taskwarden.abc.Bus`.

    ``dsn`` is an asyncpg / libpq URL; ``prefix`` isolates deployments sharing a database
    (at most 40 characters, since channel names are capped at 63 bytes).
    """

    def __init__(
        self,
        dsn: str,
        *,
        prefix: str = "taskwarden",
        reconnect_delay: float = 0.05,
        max_delay: float = 2.0,
    ) -> None:
        super().__init__()
        if not prefix or len(prefix.encode()) > 40:
            raise ConfigurationError(f"bus prefix {prefix!r} must be 1 to 40 bytes long")
        self.dsn = dsn
        self.prefix = prefix
        self.bus_id = uuid.uuid4().hex[:16]
        self._reconnect_delay = reconnect_delay
        self._max_delay = max_delay
        self._events = f"{prefix}:ev"
        self._requests = f"{prefix}:rq"
        self._replies = f"{prefix}:rp:{self.bus_id}"
        self._pool: asyncpg.Pool | None = None
        self._listener: asyncpg.Connection | None = None
        self._inbox: asyncio.Queue[tuple[str, str]] = asyncio.Queue()
        self._tasks: list[asyncio.Task[None]] = []
        self._pending: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._sequence = itertools.count(1)
        self._last_cleanup = 0.0
        self._listener_lost: asyncio.Future[None] | None = None
        self.reconnects = 0
        #: Large bodies whose row was gone when the notification arrived (expired).
        self.lost_bodies = 0
        #: Events known missed: gaps in a publisher's sequence (e.g. while reconnecting).
        self.missed = 0
        self._last_sequence: dict[str, int] = {}

    @property
    def listener_application_name(self) -> str:
        """The ``application_name`` of the listening connection (for ``pg_stat_activity``)."""
        return f"taskwarden-bus-{self.bus_id}"

    # -- lifecycle -----------------------------------------------------------------------

    async def open(self) -> None:
        """Create the tables if needed, open a pool and the listening connection."""
        if self._is_open:
            return
        try:
            self._pool = await asyncpg.create_pool(self.dsn, min_size=1, max_size=4)
            async with self._pool.acquire() as conn, conn.transaction():
                # Concurrent CREATE TABLE IF NOT EXISTS can still collide: serialize it.
                await conn.execute("SELECT pg_advisory_xact_lock(7226530414)")
                await conn.execute(_SCHEMA)
            await self._listen()
        except (*_TRANSIENT, asyncpg.PostgresError) as exc:
            await self._close_connections()
            raise BusError(f"cannot open the PostgreSQL bus at {self.dsn}: {exc}") from exc
        self._is_open = True
        self._closing = False
        self._tasks = [
            asyncio.create_task(self._dispatch_loop(), name=f"taskwarden-pg-events:{self.bus_id}"),
            asyncio.create_task(self._watch_loop(), name=f"taskwarden-pg-watch:{self.bus_id}"),
        ]

    async def _listen(self) -> None:
        listener = await asyncpg.connect(
            self.dsn, server_settings={"application_name": self.listener_application_name}
        )
        lost = asyncio.get_running_loop().create_future()

        def on_lost(_: object) -> None:
            if not lost.done():
                lost.set_result(None)

        listener.add_termination_listener(on_lost)
        for channel in (self._events, self._requests, self._replies):
            await listener.add_listener(channel, self._on_notify)
        self._listener = listener
        self._listener_lost = lost

    def _on_notify(self, _conn: object, _pid: int, channel: str, payload: str) -> None:
        self._inbox.put_nowait((channel, payload))

    async def close(self) -> None:
        """Stop serving and listening, end subscriptions, close connections. Idempotent."""
        if not self._is_open:
            return
        self._closing = True
        self._handlers.clear()
        await self._drain_handler_tasks()
        self._end_subscriptions()
        for task in self._tasks:
            await cancel_and_wait(task)
        self._tasks = []
        for future in self._pending.values():
            future.cancel()
        self._pending.clear()
        await self._close_connections()
        self._is_open = False

    async def _close_connections(self) -> None:
        if self._listener is not None:
            listener, self._listener = self._listener, None
            try:
                await asyncio.wait_for(listener.close(), 5)
            except (*_TRANSIENT, TimeoutError):
                listener.terminate()
        if self._pool is not None:
            pool, self._pool = self._pool, None
            try:
                await asyncio.wait_for(pool.close(), 5)
            except (*_TRANSIENT, TimeoutError):
                pool.terminate()

    @property
    def pool(self) -> asyncpg.Pool:
        """The asyncpg pool; ``BusError`` if the bus is not open."""
        if self._pool is None:
            raise BusError("PostgresBus is not open: call open() or use 'async with'")
        return self._pool

    async def _watch_loop(self) -> None:
        """Re-open the listening connection whenever it drops, with backoff."""
        attempt = 0
        while True:
            assert self._listener_lost is not None
            await self._listener_lost
            self.reconnects += 1
            log.warning("PostgreSQL bus listener lost; reconnecting")
            if self._listener is not None:
                self._listener.terminate()
                self._listener = None
            while True:
                delay = min(self._max_delay, self._reconnect_delay * 2 ** min(attempt, 10))
                await asyncio.sleep(delay)
                try:
                    await self._listen()
                except (*_TRANSIENT, asyncpg.PostgresError) as exc:
                    attempt += 1
                    log.warning("PostgreSQL bus reconnect failed (%r); retrying", exc)
                    continue
                attempt = 0
                break
            if self._handlers:
                self._spawn(self._sweep(), name="taskwarden-pg-sweep")

    async def _execute(self, query: str, *args: Any) -> Any:
        """Run one statement on the pool, retrying once on a dropped connection."""
        for attempt in range(4):
            try:
                return await self.pool.fetchval(query, *args)
            except _TRANSIENT as exc:
                # Each failure discards one dead pooled connection; a restart leaves several.
                if attempt == 3:
                    raise BusError(f"PostgreSQL bus query failed: {exc}") from exc
                await asyncio.sleep(self._reconnect_delay * 2**attempt)
            except asyncpg.PostgresError as exc:
                raise BusError(f"PostgreSQL bus query failed: {exc}") from exc
        raise AssertionError("unreachable")

    # -- events --------------------------------------------------------------------------

    def _envelope(self, fields: dict[str, Any], payload_json: str) -> tuple[str, str | None]:
        """The inline envelope, or (envelope without payload, body to store)."""
        head = encode_payload(fields)
        inline = head[:-1] + ',"p":' + payload_json + "}"
        if len(inline.encode()) <= MAX_INLINE_BYTES:
            return inline, None
        return head, payload_json

    async def _notify(self, channel: str, fields: dict[str, Any], payload_json: str) -> None:
        envelope, body = self._envelope(fields, payload_json)
        if body is None:
            await self._execute("SELECT pg_notify($1, $2)", channel, envelope)
            return
        # One statement: the notification is sent at commit, when the body is visible.
        await self._execute(
            """
            WITH stored AS (INSERT INTO taskwarden_bus_bodies (body) VALUES ($3) RETURNING id)
            SELECT pg_notify($1, left($2, -1) || ',"r":' || id || '}') FROM stored
            """,
            channel,
            envelope,
            body,
        )
        await self._cleanup()

    async def _cleanup(self, *, force: bool = False) -> None:
        """At most every 30 s: delete old bodies and requests whose requester gave up."""
        now = time.monotonic()
        if not force and now - self._last_cleanup < 30:
            return
        self._last_cleanup = now
        await self._execute(
            "DELETE FROM taskwarden_bus_bodies "
            f"WHERE created_at < now() - interval '{_BODY_RETENTION}'"
        )
        await self._execute(
            "DELETE FROM taskwarden_bus_requests WHERE deadline < now() - interval '1 minute'"
        )

    async def publish(self, topic: str, payload: Mapping[str, Any]) -> None:
        """NOTIFY ``<prefix>:ev`` (large payloads by reference); at most once."""
        self._require_open()
        validate_topic(topic)
        data = encode_payload(payload)
        await self._notify(
            self._events, {"t": topic, "b": self.bus_id, "s": next(self._sequence)}, data
        )

    async def _dispatch_loop(self) -> None:
        """Decode notifications in arrival order, fetching stored bodies, and route them."""
        while True:
            channel, raw = await self._inbox.get()
            received_at = datetime.now(UTC)
            try:
                envelope = decode_payload(raw)
                payload = await self._body(envelope)
            except (InvalidPayload, KeyError, ValueError, TypeError) as exc:
                log.warning("dropping undecodable notification on %s: %r", channel, exc)
                continue
            except BusError as exc:
                log.warning("could not fetch a stored bus body: %s", exc)
                continue
            if payload is None:
                self.lost_bodies += 1
                continue
            if channel == self._events:
                self._count_gap(envelope)
                self._dispatch(str(envelope.get("t", "")), payload, received_at)
            elif channel == self._replies:
                future = self._pending.get(str(envelope.get("k", "")))
                if future is not None and not future.done():
                    future.set_result(payload)
            elif channel == self._requests:
                topic = str(envelope.get("t", ""))
                if self._handler_for(topic) is not None:
                    self._spawn(self._claim(int(payload["id"])), name=f"taskwarden-pg-rq:{topic}")

    def _count_gap(self, envelope: Mapping[str, Any]) -> None:
        publisher, sequence = envelope.get("b"), envelope.get("s")
        if not isinstance(publisher, str) or not isinstance(sequence, int):
            return
        last = self._last_sequence.get(publisher)
        if last is not None and sequence > last + 1:
            self.missed += sequence - last - 1
        if len(self._last_sequence) > 10_000:
            self._last_sequence.clear()  # publishers come and go; never grow unbounded
        self._last_sequence[publisher] = sequence

    async def _body(self, envelope: dict[str, Any]) -> dict[str, Any] | None:
        if "p" in envelope:
            payload = envelope["p"]
            if not isinstance(payload, dict):
                raise InvalidPayload("notification payload is not an object")
            return payload
        if "r" in envelope:
            body = await self._execute(
                "SELECT body FROM taskwarden_bus_bodies WHERE id = $1", int(envelope["r"])
            )
            return None if body is None else decode_payload(body)
        raise InvalidPayload("notification has neither a payload nor a reference")

    # -- requests ------------------------------------------------------------------------

    async def request(
        self,
        topic: str,
        payload: Mapping[str, Any],
        *,
        timeout: float = 5.0,  # noqa: ASYNC109 - part of the Bus contract
    ) -> Mapping[str, Any]:
        """Insert the request, announce it, wait for the reply; see :class:`Bus`.

        PostgreSQL cannot tell that nothing serves ``topic``: that case times out.
        """
        self._require_open()
        validate_topic(topic)
        data = encode_payload(payload)
        key = uuid.uuid4().hex
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[key] = future
        request_id: int | None = None
        try:
            async with asyncio.timeout(timeout):
                request_id = await self._execute(
                    """
                    WITH rq AS (
                        INSERT INTO taskwarden_bus_requests
                            (prefix, topic, body, reply_channel, request_key, deadline)
                        VALUES ($1, $2, $3, $4, $5, now() + make_interval(secs => $6))
                        RETURNING id
                    )
                    SELECT id, pg_notify(
                        $7, '{"t":' || to_json($2::text)::text || ',"p":{"id":' || id || '}}'
                    ) FROM rq
                    """,
                    self.prefix,
                    topic,
                    data,
                    self._replies,
                    key,
                    float(timeout),
                    self._requests,
                )
                envelope = await future
        except TimeoutError:
            raise RequestTimeout(
                f"no reply to {topic!r} within {timeout:g}s: is a server running and "
                "connected to the same database and prefix?"
            ) from None
        finally:
            self._pending.pop(key, None)
            if request_id is not None and not future.done():
                await self._forget(request_id)
        return unwrap_reply(topic, envelope)

    async def _forget(self, request_id: int) -> None:
        try:
            await self._execute("DELETE FROM taskwarden_bus_requests WHERE id = $1", request_id)
        except BusError as exc:
            log.info("could not delete expired request %s: %s", request_id, exc)

    async def serve(self, pattern: str, handler: RequestHandler) -> None:
        """Handle the requests matching ``pattern``; picks up any already waiting."""
        self._require_open()
        compile_pattern(pattern)
        self._handlers[pattern] = handler
        await self._sweep()

    async def unserve(self, pattern: str) -> None:
        """Stop handling ``pattern``."""
        self._handlers.pop(pattern, None)

    async def _sweep(self) -> None:
        """Claim waiting requests that this bus serves (after a start or a reconnection)."""
        await self._cleanup()
        try:
            rows = await self.pool.fetch(
                "SELECT id, topic FROM taskwarden_bus_requests "
                "WHERE prefix = $1 AND deadline > now() ORDER BY id",
                self.prefix,
            )
        except (*_TRANSIENT, asyncpg.PostgresError) as exc:
            raise BusError(f"listing waiting requests failed: {exc}") from exc
        for row in rows:
            if self._handler_for(row["topic"]) is not None:
                self._spawn(self._claim(row["id"]), name=f"taskwarden-pg-rq:{row['topic']}")

    async def _claim(self, request_id: int) -> None:
        """Take the request if no other server did, run its handler, send the reply."""
        try:
            row = await self.pool.fetchrow(
                "DELETE FROM taskwarden_bus_requests WHERE id = $1 AND deadline > now() "
                "RETURNING topic, body, reply_channel, request_key",
                request_id,
            )
        except (*_TRANSIENT, asyncpg.PostgresError) as exc:
            log.warning("could not claim request %s: %r", request_id, exc)
            return
        if row is None:
            return  # another server won it, or it expired
        topic = row["topic"]
        handler = self._handler_for(topic)
        if handler is None:
            return
        envelope = await self._run_handler(handler, topic, decode_payload(row["body"]))
        reply = encode_payload(envelope)
        await self._notify(row["reply_channel"], {"k": row["request_key"]}, reply)
