"""The public contracts of taskwarden's pluggable backends.

Each abstract method's docstring states what every backend guarantees: atomicity, ordering,
delivery, and what it raises. Shared implementation code lives in the backends' ``base``
modules, never here.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from types import TracebackType
from typing import Any, Self


@dataclass(frozen=True, slots=True, kw_only=True)
class BusMessage:
    """One message taken from a bus subscription (or handed to a request handler).

    ``payload`` is the decoded JSON object the publisher sent; treat it as read-only, the
    local bus hands the same object to every subscriber. ``received_at`` is the UTC wall time
    at which this process took the message off the wire.
    """

    topic: str
    payload: Mapping[str, Any]
    received_at: datetime


#: A request handler: takes the request, returns the reply payload (a JSON object).
RequestHandler = Callable[[BusMessage], Awaitable[Mapping[str, Any]]]


class BusSubscription(ABC):
    """A bounded stream of the messages whose topic matches one pattern.

    Use it as an async context manager (entering it makes the subscription active) and an
    async iterator::

        async with bus.subscribe("system.*.health") as sub:
            async for message in sub:
                ...

    Guarantees: every message published after ``__aenter__`` returns, while the bus is
    connected, is delivered (at most once). The buffer holds at most ``max_buffer`` messages;
    when a slow consumer lets it fill, the **oldest** buffered message is dropped and
    :attr:`dropped` counts it, so memory stays bounded and the consumer sees the most recent
    state. Iteration ends when the subscription or its bus is closed.
    """

    @property
    @abstractmethod
    def pattern(self) -> str:
        """The topic pattern this subscription matches."""

    @property
    @abstractmethod
    def dropped(self) -> int:
        """How many messages were dropped because the buffer was full."""

    @abstractmethod
    async def start(self) -> None:
        """Make the subscription active; on return, later publishes reach it. Idempotent."""

    @abstractmethod
    async def close(self) -> None:
        """Stop receiving, drop what is buffered and end iteration. Idempotent."""

    @abstractmethod
    async def __anext__(self) -> BusMessage:
        """Wait for the next message; ``StopAsyncIteration`` once closed."""

    def __aiter__(self) -> Self:
        """The subscription is its own iterator."""
        return self

    async def __aenter__(self) -> Self:
        """Start the subscription and return it."""
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Close the subscription."""
        await self.close()


class Bus(ABC):
    """Publish / subscribe for events and request / reply for commands, between processes.

    Topics are dot-separated tokens (``system.worker-1.health``). Patterns add two wildcards:
    ``*`` matches exactly one token and ``>`` (last token only) matches one or more trailing
    tokens, so ``system.*.health`` matches ``system.api.health`` but not ``system.health``,
    and ``system.>`` matches both ``system.api`` and ``system.api.health``.

    Delivery guarantees, the same on every backend:

    * **Events** (:meth:`publish` / :meth:`subscribe`) are *at most once*: a message reaches
      the subscriptions that were active when it was published and whose bus was connected.
      Messages published while a subscriber is disconnected are lost; the subscription
      itself survives the reconnection and keeps receiving afterwards.
    * **Ordering**: messages published by one bus instance, each ``publish`` awaited before
      the next, reach every subscription in publish order. There is no order across
      publishers.
    * **Requests** (:meth:`request` / :meth:`serve`): each request is handled by *exactly one*
      server among all the buses serving a matching pattern (never two), and its reply
      reaches only the requester. If that server dies before replying, the request is not
      handled again; the requester gets :class:`~taskwarden.errors.RequestTimeout` and may
      retry. Handlers should therefore be safe to call again (idempotent) when it matters.

    Payloads are JSON objects (``Mapping[str, Any]`` of JSON-able values). Use the bus as an
    async context manager, or call :meth:`open` and :meth:`close`.
    """

    @abstractmethod
    async def open(self) -> None:
        """Connect. Raises :class:`~taskwarden.errors.BusError` if the server is unreachable."""

    @abstractmethod
    async def close(self) -> None:
        """End every subscription and served pattern, then disconnect. Idempotent."""

    async def __aenter__(self) -> Self:
        """Open the bus and return it."""
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Close the bus."""
        await self.close()

    @abstractmethod
    async def publish(self, topic: str, payload: Mapping[str, Any]) -> None:
        """Send ``payload`` to every active subscription whose pattern matches ``topic``.

        At most once, ordered per publisher (see the class docstring). Returns once the
        message has been handed to the server (or, on the local bus, to the subscriptions'
        buffers); never waits for subscribers to consume it. Raises
        :class:`~taskwarden.errors.InvalidPayload` if the payload is not a JSON object,
        :class:`~taskwarden.errors.ConfigurationError` for a malformed topic (empty token or a
        wildcard), and :class:`~taskwarden.errors.BusError` if the server stays unreachable
        after a short retry.
        """

    @abstractmethod
    def subscribe(self, pattern: str, *, max_buffer: int = 1000) -> BusSubscription:
        """Return a subscription to the topics matching ``pattern``, not yet started.

        Enter it (``async with``) or call ``start()`` before relying on delivery. The buffer
        keeps at most ``max_buffer`` messages and drops the oldest on overflow (counted in
        ``dropped``). The subscription survives reconnections of the bus. Raises
        :class:`~taskwarden.errors.ConfigurationError` for a malformed pattern.
        """

    @abstractmethod
    async def request(
        self,
        topic: str,
        payload: Mapping[str, Any],
        *,
        # The timeout travels with the request so the server can skip expired ones.
        timeout: float = 5.0,  # noqa: ASYNC109
    ) -> Mapping[str, Any]:
        """Send a request to exactly one server of ``topic`` and return its reply payload.

        Raises :class:`~taskwarden.errors.RequestTimeout` if no reply arrives within
        ``timeout`` seconds, at once when the bus can tell that nothing serves ``topic``;
        :class:`~taskwarden.errors.RemoteHandlerError` if the handler raised (the message
        carries the remote error's type and text).
        """

    @abstractmethod
    async def serve(self, pattern: str, handler: RequestHandler) -> None:
        """Handle the requests whose topic matches ``pattern`` with ``handler``.

        When several buses (in one or many processes) serve matching patterns, each request
        goes to exactly one of them. Handlers run concurrently; an exception in a handler is
        sent back to the requester as :class:`~taskwarden.errors.RemoteHandlerError` and
        does not stop serving. Serving the same pattern twice on one bus replaces the handler.
        """

    @abstractmethod
    async def unserve(self, pattern: str) -> None:
        """Stop handling ``pattern`` on this bus; requests being handled finish. Idempotent."""
