"""Shared fixtures: real servers (see ``tests/servers.py``)."""

from __future__ import annotations

from tests.servers import postgres_server_url, redis_server_url

__all__ = ["postgres_server_url", "redis_server_url"]
