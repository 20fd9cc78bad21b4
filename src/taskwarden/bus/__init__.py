"""The bus: events and remote commands between processes, picked by URL.

    >>> import asyncio
    >>> async def demo() -> object:
    ...     async with open_bus("memory://") as bus:
    ...         async with bus.subscribe("orders.*") as sub:
    ...             await bus.publish("orders.created", {"id": 1})
    ...             message = await anext(sub)
    ...             return message.topic, dict(message.payload)
    >>> asyncio.run(demo())
    ('orders.created', {'id': 1})

Backends are imported only when their URL is used, so the drivers stay optional.
"""

from __future__ import annotations

from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from taskwarden.abc import Bus, BusMessage, BusSubscription
from taskwarden.errors import ConfigurationError, MissingExtra

__all__ = ["BUS_SCHEMES", "Bus", "BusMessage", "BusSubscription", "open_bus"]

#: The URL schemes :func:`open_bus` understands.
BUS_SCHEMES = ("local", "memory", "redis", "rediss", "postgresql", "postgres")


def _split_prefix(url: str) -> tuple[str, str | None]:
    """Take the ``prefix`` query parameter off a URL (drivers reject unknown ones)."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    prefix = next((value for key, value in query if key == "prefix"), None)
    rest = urlencode([(key, value) for key, value in query if key != "prefix"])
    return urlunsplit(parts._replace(query=rest)), prefix


def open_bus(url: str) -> Bus:
    """Create (not yet opened) the bus a URL names; use it with ``async with``.

    * ``local://`` the process-wide in-process hub, ``local://name`` a named one;
    * ``memory://`` a new private in-process hub;
    * ``redis://host:port/db`` (or ``rediss://``) a :class:`~taskwarden.bus.redis.RedisBus`;
    * ``postgresql://user@host/db`` a :class:`~taskwarden.bus.postgres.PostgresBus`.

    A ``?prefix=name`` query parameter isolates the network backends' channels and keys
    (default ``taskwarden``): buses only talk to buses with the same prefix. Raises
    ``ConfigurationError`` for an unknown scheme and ``MissingExtra`` when the driver is not
    installed.
    """
    scheme = urlsplit(url).scheme.lower()
    if scheme not in BUS_SCHEMES:
        raise ConfigurationError(
            f"unknown bus URL {url!r}: use one of "
            + ", ".join(f"{name}://" for name in BUS_SCHEMES)
        )
    stripped, prefix = _split_prefix(url)
    if scheme in ("local", "memory"):
        from taskwarden.bus.local import LocalBus, LocalHub

        if scheme == "memory":
            return LocalBus(LocalHub())
        return LocalBus(LocalHub.named(urlsplit(url).netloc or "default"))
    if scheme in ("redis", "rediss"):
        try:
            from taskwarden.bus.redis import RedisBus
        except ModuleNotFoundError as exc:
            if exc.name != "redis" and not (exc.name or "").startswith("redis."):
                raise
            raise MissingExtra("the Redis bus", "redis") from exc
        return RedisBus(stripped, prefix=prefix or "taskwarden")
    try:
        from taskwarden.bus.postgres import PostgresBus
    except ModuleNotFoundError as exc:
        if exc.name != "asyncpg":
            raise
        raise MissingExtra("the PostgreSQL bus", "postgres") from exc
    return PostgresBus(stripped, prefix=prefix or "taskwarden")
