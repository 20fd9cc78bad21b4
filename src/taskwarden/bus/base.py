"""Code shared by the bus backends: topics and patterns, JSON, the bounded subscription.

Nothing here is part of the contract (that is :class:`taskwarden.abc.Bus`); backends build
on :class:`BaseBus`, which keeps the local subscriptions and served handlers, dispatches
received messages and runs request handlers.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

from taskwarden.abc import Bus, BusMessage, BusSubscription, RequestHandler
from taskwarden.errors import (
    BusError,
    ConfigurationError,
    InvalidPayload,
    RemoteHandlerError,
)

__all__ = [
    "DEFAULT_MAX_BUFFER",
    "BaseBus",
    "QueueSubscription",
    "cancel_and_wait",
    "compile_pattern",
    "decode_payload",
    "encode_payload",
    "pick_pattern",
    "reply_envelope",
    "unwrap_reply",
    "validate_topic",
]

log = logging.getLogger("taskwarden.bus")

#: Messages a subscription buffers before it drops the oldest.
DEFAULT_MAX_BUFFER = 1000

Matcher = Callable[[str], bool]


def validate_topic(topic: str) -> str:
    """Return ``topic`` if it is a publishable topic, else raise ``ConfigurationError``.

    A topic is one or more non-empty tokens separated by dots, with no wildcard.
    """
    if not topic or "" in topic.split(".") or "*" in topic or ">" in topic or " " in topic:
        raise ConfigurationError(
            f"invalid topic {topic!r}: use non-empty dot-separated tokens without spaces, "
            "'*' or '>' (wildcards belong in subscription patterns)"
        )
    return topic


@lru_cache(maxsize=4096)
def compile_pattern(pattern: str) -> Matcher:
    """Compile a topic pattern once into a fast predicate over topics.

    ``*`` matches exactly one token and ``>`` (only as the last token) one or more trailing
    tokens; every other token matches itself. Raises ``ConfigurationError`` if malformed.

        >>> compile_pattern("system.*.health")("system.api.health")
        True
        >>> compile_pattern("system.>")("system")
        False
    """
    tokens = pattern.split(".") if pattern else [""]
    for index, token in enumerate(tokens):
        bad_wildcard = (("*" in token or ">" in token) and token not in ("*", ">")) or (
            token == ">" and index != len(tokens) - 1
        )
        if not token or " " in token or bad_wildcard:
            raise ConfigurationError(
                f"invalid pattern {pattern!r}: use dot-separated tokens, where '*' is a whole "
                "token matching one token and '>' is the last token matching the rest"
            )
    if "*" not in tokens and ">" not in tokens:
        return pattern.__eq__
    parts = []
    for token in tokens:
        if token == "*":
            parts.append(r"[^.]+")
        elif token == ">":
            parts.append(r".+")
        else:
            parts.append(re.escape(token))
    regex = re.compile(r"\.".join(parts))

    def matches(topic: str) -> bool:
        return regex.fullmatch(topic) is not None

    return matches


def pick_pattern(topic: str, patterns: Iterable[str]) -> str | None:
    """Choose which served pattern gets a request for ``topic``, the same way everywhere.

    An exact topic wins, then the pattern with the most literal tokens, then the
    alphabetically first, so every requester routes a topic to the same service.
    """
    best: tuple[int, str] | None = None
    for pattern in patterns:
        if not compile_pattern(pattern)(topic):
            continue
        tokens = pattern.split(".")
        literal = sum(1 for t in tokens if t not in ("*", ">"))
        score = -1_000_000 if pattern == topic else -literal
        if best is None or (score, pattern) < best:
            best = (score, pattern)
    return None if best is None else best[1]


def encode_payload(payload: Mapping[str, Any]) -> str:
    """Encode a payload as compact JSON; ``InvalidPayload`` if it is not a JSON object."""
    if not isinstance(payload, Mapping):
        raise InvalidPayload(
            f"a bus payload must be a mapping (a JSON object), not {type(payload).__name__}"
        )
    try:
        return json.dumps(payload, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise InvalidPayload(
            f"bus payload is not JSON-serializable ({exc}): send str, numbers, bools, None, "
            "lists and dicts only (convert datetimes to ISO strings)"
        ) from exc


def decode_payload(data: str | bytes) -> dict[str, Any]:
    """Decode a JSON object received from the wire; ``InvalidPayload`` if it is not one."""
    try:
        value = json.loads(data)
    except ValueError as exc:
        raise InvalidPayload(f"received bus data is not JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise InvalidPayload(f"received bus data is a {type(value).__name__}, not an object")
    return value


def reply_envelope(reply: Mapping[str, Any] | None, error: BaseException | None) -> dict[str, Any]:
    """The wire form of a reply: the payload, or the handler's error as data."""
    if error is not None:
        return {"ok": False, "type": type(error).__name__, "message": str(error)}
    return {"ok": True, "reply": reply}


def unwrap_reply(topic: str, envelope: Mapping[str, Any]) -> Mapping[str, Any]:
    """Return the reply payload of an envelope, or raise ``RemoteHandlerError``."""
    if envelope.get("ok"):
        reply = envelope.get("reply")
        return reply if isinstance(reply, Mapping) else {}
    raise RemoteHandlerError(
        topic, str(envelope.get("type", "Exception")), str(envelope.get("message", ""))
    )


async def cancel_and_wait(task: asyncio.Task[Any]) -> None:
    """Cancel a background task and wait for it, without swallowing our own cancellation.

    Its failure, if it failed rather than being cancelled, is logged.
    """
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        current = asyncio.current_task()
        if current is not None and current.cancelling():
            raise
    except Exception:
        log.exception("bus task %s failed", task.get_name())


class QueueSubscription(BusSubscription):
    """The subscription every backend hands out: a bounded deque that drops the oldest.

    The bus calls :meth:`deliver` (synchronous, never blocks) for each matching message and
    :meth:`end` when it closes; ``attach`` / ``detach`` register it with the bus.
    """

    __slots__ = (
        "_attach",
        "_buffer",
        "_closed",
        "_detach",
        "_dropped",
        "_max_buffer",
        "_pattern",
        "_started",
        "_waiter",
        "matches",
    )

    def __init__(
        self,
        pattern: str,
        *,
        max_buffer: int,
        attach: Callable[[QueueSubscription], Awaitable[None]],
        detach: Callable[[QueueSubscription], Awaitable[None]],
    ) -> None:
        if max_buffer < 1:
            raise ConfigurationError(f"max_buffer must be at least 1, not {max_buffer}")
        self.matches = compile_pattern(pattern)
        self._pattern = pattern
        self._max_buffer = max_buffer
        self._buffer: deque[BusMessage] = deque()
        self._dropped = 0
        self._closed = False
        self._started = False
        self._waiter: asyncio.Future[None] | None = None
        self._attach = attach
        self._detach = detach

    @property
    def pattern(self) -> str:
        """The topic pattern this subscription matches."""
        return self._pattern

    @property
    def dropped(self) -> int:
        """Messages dropped (oldest first) because the buffer was full."""
        return self._dropped

    @property
    def closed(self) -> bool:
        """True once closed by its owner or ended by the bus."""
        return self._closed

    async def start(self) -> None:
        """Register with the bus; on return, later publishes reach this subscription."""
        if self._started or self._closed:
            return
        self._started = True
        try:
            await self._attach(self)
        except BaseException:
            self._started = False
            raise

    def deliver(self, message: BusMessage) -> None:
        """Buffer ``message``, dropping the oldest one if the buffer is full."""
        if self._closed:
            return
        if len(self._buffer) >= self._max_buffer:
            self._buffer.popleft()
            self._dropped += 1
        self._buffer.append(message)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def end(self) -> None:
        """Stop iteration (the bus closed or dropped this subscription)."""
        self._closed = True
        self._buffer.clear()
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def close(self) -> None:
        """Unregister from the bus and end iteration. Idempotent."""
        was_started = self._started and not self._closed
        self.end()
        if was_started:
            await self._detach(self)

    async def __anext__(self) -> BusMessage:
        """Next buffered message, waiting for one; ``StopAsyncIteration`` once closed."""
        if not self._started:
            await self.start()
        while True:
            if self._buffer:
                return self._buffer.popleft()
            if self._closed:
                raise StopAsyncIteration
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None


class BaseBus(Bus):
    """Keeps subscriptions and handlers, dispatches messages, runs request handlers.

    Backends implement the transport and call :meth:`_dispatch` for every received event.
    """

    def __init__(self) -> None:
        self._subscriptions: set[QueueSubscription] = set()
        self._handlers: dict[str, RequestHandler] = {}
        self._handler_tasks: set[asyncio.Task[None]] = set()
        self._is_open = False
        self._closing = False

    # -- subscriptions -------------------------------------------------------------------

    def subscribe(self, pattern: str, *, max_buffer: int = DEFAULT_MAX_BUFFER) -> QueueSubscription:
        """A bounded, drop-oldest subscription to ``pattern`` (see :class:`Bus`)."""
        return QueueSubscription(
            pattern, max_buffer=max_buffer, attach=self._attach, detach=self._detach
        )

    async def _attach(self, subscription: QueueSubscription) -> None:
        self._require_open()
        self._subscriptions.add(subscription)

    async def _detach(self, subscription: QueueSubscription) -> None:
        self._subscriptions.discard(subscription)

    def _dispatch(
        self,
        topic: str,
        payload: Mapping[str, Any],
        received_at: datetime | None = None,
        subscriptions: Iterable[QueueSubscription] | None = None,
    ) -> None:
        """Hand one received event to every matching subscription."""
        message: BusMessage | None = None
        for subscription in self._subscriptions if subscriptions is None else subscriptions:
            if subscription.matches(topic):
                if message is None:
                    message = BusMessage(
                        topic=topic,
                        payload=payload,
                        received_at=received_at or datetime.now(UTC),
                    )
                subscription.deliver(message)

    def _end_subscriptions(self) -> None:
        for subscription in list(self._subscriptions):
            subscription.end()
        self._subscriptions.clear()

    # -- requests ------------------------------------------------------------------------

    def _handler_for(self, topic: str) -> RequestHandler | None:
        pattern = pick_pattern(topic, self._handlers)
        return None if pattern is None else self._handlers[pattern]

    async def _run_handler(
        self, handler: RequestHandler, topic: str, payload: Mapping[str, Any]
    ) -> dict[str, Any]:
        """Run a handler and return the reply envelope; its errors become data."""
        message = BusMessage(topic=topic, payload=payload, received_at=datetime.now(UTC))
        try:
            reply = await handler(message)
            encode_payload(reply)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("request handler for %s failed: %r", topic, exc, exc_info=exc)
            return reply_envelope(None, exc)
        return reply_envelope(reply, None)

    def _spawn(self, coro: Awaitable[None], name: str) -> None:
        """Run a handler task that the bus owns: tracked, logged, awaited on close."""

        async def runner() -> None:
            await coro

        task = asyncio.get_running_loop().create_task(runner(), name=name)
        self._handler_tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._handler_tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("bus task %s failed", task.get_name(), exc_info=task.exception())

    async def _drain_handler_tasks(self, grace: float = 5.0) -> None:
        """Let running handlers finish within ``grace`` seconds, then cancel the rest."""
        tasks = set(self._handler_tasks)
        if not tasks:
            return
        _, pending = await asyncio.wait(tasks, timeout=grace)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending)

    # -- state ---------------------------------------------------------------------------

    @property
    def is_open(self) -> bool:
        """True between a successful ``open()`` and the start of ``close()``."""
        return self._is_open and not self._closing

    def _require_open(self) -> None:
        if not self._is_open or self._closing:
            raise BusError(f"{type(self).__name__} is not open: call open() or use 'async with'")
