"""The in-process bus: every :class:`LocalBus` on one hub sees the others' messages.

``open_bus("local://")`` joins the process-wide default hub (``local://name`` a named one),
``open_bus("memory://")`` a fresh private hub, handy in tests. Payloads go through JSON on
publish, exactly like the network backends, so code that works here works over Redis.
"""

from __future__ import annotations

import asyncio
import itertools
import weakref
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, ClassVar

from taskwarden.abc import RequestHandler
from taskwarden.bus.base import (
    BaseBus,
    compile_pattern,
    decode_payload,
    encode_payload,
    pick_pattern,
    unwrap_reply,
    validate_topic,
)
from taskwarden.errors import RequestTimeout

__all__ = ["LocalBus", "LocalHub"]


class LocalHub:
    """Connects the :class:`LocalBus` instances of one process that share it."""

    __slots__ = ("__weakref__", "_rotation", "buses")

    _named: ClassVar[weakref.WeakValueDictionary[str, LocalHub]] = weakref.WeakValueDictionary()

    def __init__(self) -> None:
        self.buses: set[LocalBus] = set()
        self._rotation = itertools.count()

    @classmethod
    def named(cls, name: str) -> LocalHub:
        """The process-wide hub called ``name`` (created on first use)."""
        hub = cls._named.get(name)
        if hub is None:
            hub = cls()
            cls._named[name] = hub
        return hub

    def route(self, topic: str) -> tuple[LocalBus, RequestHandler] | None:
        """Pick the one server for ``topic``: best pattern, then round robin among buses."""
        servers: dict[str, list[tuple[LocalBus, RequestHandler]]] = {}
        for bus in self.buses:
            for pattern, handler in bus._handlers.items():
                servers.setdefault(pattern, []).append((bus, handler))
        chosen = pick_pattern(topic, servers)
        if chosen is None:
            return None
        candidates = servers[chosen]
        return candidates[next(self._rotation) % len(candidates)]


class LocalBus(BaseBus):
    """A bus within one OS process; see :class:`taskwarden.abc.Bus` for the guarantees.

    Nothing is lost here unless a subscription's buffer overflows, and there is no
    connection to lose. A request runs its handler in a task owned by the serving bus, so a
    requester that times out does not cancel it (as over the network).
    """

    def __init__(self, hub: LocalHub | None = None) -> None:
        super().__init__()
        self.hub = hub if hub is not None else LocalHub()

    async def open(self) -> None:
        """Join the hub. Idempotent."""
        self._closing = False
        self._is_open = True
        self.hub.buses.add(self)

    async def close(self) -> None:
        """Leave the hub, end subscriptions, let running handlers finish. Idempotent."""
        if not self._is_open:
            return
        self._closing = True
        self.hub.buses.discard(self)
        self._handlers.clear()
        self._end_subscriptions()
        await self._drain_handler_tasks()
        self._is_open = False

    async def publish(self, topic: str, payload: Mapping[str, Any]) -> None:
        """Deliver to the matching subscriptions of every bus on the hub, synchronously."""
        self._require_open()
        validate_topic(topic)
        decoded = decode_payload(encode_payload(payload))
        received_at = datetime.now(UTC)
        for bus in self.hub.buses:
            if bus._subscriptions:
                bus._dispatch(topic, decoded, received_at)

    def drop_subscriptions(self) -> int:
        """End every subscription of this bus, as a lost connection would; for tests.

        Returns how many were ended. Code that must keep listening (the worker registry)
        is expected to notice the end of iteration and subscribe again.
        """
        count = len(self._subscriptions)
        self._end_subscriptions()
        return count

    async def request(
        self,
        topic: str,
        payload: Mapping[str, Any],
        *,
        timeout: float = 5.0,  # noqa: ASYNC109 - part of the Bus contract
    ) -> Mapping[str, Any]:
        """Run the one matching handler on the hub; see :meth:`Bus.request`."""
        self._require_open()
        validate_topic(topic)
        decoded = decode_payload(encode_payload(payload))
        route = self.hub.route(topic)
        if route is None:
            raise RequestTimeout(
                f"no bus serves {topic!r}: call serve() with a matching pattern first"
            )
        server, handler = route
        done: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()

        async def handle() -> None:
            envelope = await server._run_handler(handler, topic, decoded)
            if not done.done():
                done.set_result(decode_payload(encode_payload(envelope)))

        server._spawn(handle(), name=f"taskwarden-bus-request:{topic}")
        try:
            async with asyncio.timeout(timeout):
                envelope = await done
        except TimeoutError:
            raise RequestTimeout(
                f"no reply to {topic!r} within {timeout:g}s: the handler is still running; "
                "raise the timeout or make the handler faster"
            ) from None
        return unwrap_reply(topic, envelope)

    async def serve(self, pattern: str, handler: RequestHandler) -> None:
        """Register ``handler`` for requests matching ``pattern``."""
        self._require_open()
        compile_pattern(pattern)
        self._handlers[pattern] = handler

    async def unserve(self, pattern: str) -> None:
        """Stop serving ``pattern``."""
        self._handlers.pop(pattern, None)
