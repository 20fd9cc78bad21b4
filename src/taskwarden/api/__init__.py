"""The taskwarden service: a REST API that optio's clients recognise, with live streams.

``create_app(store, bus=..., engine=..., tokens=...)`` returns a FastAPI app to run with
uvicorn or to mount under any path of another ASGI application. Needs the ``server`` extra.
"""

from __future__ import annotations

try:
    import fastapi  # noqa: F401
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    from taskwarden.errors import MissingExtra

    raise MissingExtra("the taskwarden service", "server") from exc

from taskwarden.api.app import create_app
from taskwarden.api.broadcaster import Broadcaster

__all__ = ["Broadcaster", "create_app"]
