"""Store backends, picked by URL with :func:`open_store`.

============================  ===============================================
URL                           backend
============================  ===============================================
``memory://``                 :class:`~taskwarden.stores.memory.MemoryStore`
``sqlite:///path/to.db``      :class:`~taskwarden.stores.sqlite.SQLiteStore`
``sqlite://`` (no path)       SQLite at ``./taskwarden.db``
``postgresql://...``          :class:`~taskwarden.stores.postgres.PostgresStore`
``postgres://...``            the same
============================  ===============================================

A relative SQLite path (``sqlite:///data/tw.db``) is relative to the working directory; an
absolute one takes four slashes (``sqlite:////var/lib/tw.db``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from taskwarden.errors import ConfigurationError, MissingExtra

if TYPE_CHECKING:
    from taskwarden.abc import Store
    from taskwarden.clock import Clock

__all__ = ["DEFAULT_SQLITE_PATH", "VALID_SCHEMES", "open_store"]

DEFAULT_SQLITE_PATH = "./taskwarden.db"
"""Where ``sqlite://`` without a path keeps its file."""

VALID_SCHEMES = ("memory://", "sqlite:///path", "postgresql://...", "postgres://...")
"""The URL forms :func:`open_store` understands (shown in its error message)."""


def open_store(url: str, *, prefix: str = "taskwarden", clock: Clock | None = None) -> Store:
    """Build the store that ``url`` names; it is not opened yet.

    Open it with ``await store.open()`` or ``async with open_store(url) as store:``.
    ``prefix`` starts every table name; ``clock`` decides lease expiry (tests pass a
    ``FakeClock``).

    Raises:
        ConfigurationError: the scheme is unknown (the message lists the valid forms).
        MissingExtra: the backend's driver is not installed (``taskwarden[postgres]``).
    """
    scheme, sep, rest = url.partition("://")
    scheme = scheme.lower()
    if not sep:
        scheme = ""
    if scheme == "memory":
        from taskwarden.stores.memory import MemoryStore

        return MemoryStore(prefix=prefix, clock=clock)
    if scheme == "sqlite":
        from taskwarden.stores.sqlite import SQLiteStore

        path = rest[1:] if rest.startswith("/") else rest
        return SQLiteStore(path or DEFAULT_SQLITE_PATH, prefix=prefix, clock=clock)
    if scheme in ("postgresql", "postgres"):
        try:
            from taskwarden.stores.postgres import PostgresStore
        except ImportError as exc:
            if exc.name != "asyncpg":
                raise
            raise MissingExtra("the PostgreSQL store", "postgres") from exc
        return PostgresStore(url, prefix=prefix, clock=clock)
    raise ConfigurationError(f"unknown store URL {url!r}: use one of {', '.join(VALID_SCHEMES)}")
