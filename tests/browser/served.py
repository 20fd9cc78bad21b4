"""A service on a loopback port, run by uvicorn in a thread with its own event loop, so a
synchronous browser test can drive the page while the app works."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Coroutine
from concurrent.futures import Future
from typing import Any, TypeVar

import uvicorn

T = TypeVar("T")


class ServedLoop:
    """Runs coroutines on its own loop (:meth:`call`) and an ASGI app on a free loopback
    port (:meth:`serve`). Subclasses define ``start()`` (which serves) and ``stop()``;
    :meth:`close` runs ``stop()`` and ends the loop."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.server: uvicorn.Server | None = None
        self.serving: asyncio.Task[None] | None = None

    def call(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on the loop and wait for its result."""
        future: Future[T] = asyncio.run_coroutine_threadsafe(coro, self.loop)
        return future.result(timeout=30)

    async def serve(self, app: Any) -> int:
        """Start uvicorn with ``app`` on a free loopback port; return the port."""
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        self.serving = asyncio.create_task(self.server.serve(sockets=[sock]))
        async with asyncio.timeout(10):
            while not self.server.started:  # noqa: ASYNC110 - uvicorn offers no event
                await asyncio.sleep(0.01)
        return port

    async def stop_serving(self) -> None:
        """Stop uvicorn (streams are closed by the app's feed first, by the caller)."""
        if self.server is not None and self.serving is not None:
            self.server.should_exit = True
            await self.serving

    async def stop(self) -> None:
        """What the subclass started: stop it."""
        await self.stop_serving()

    def close(self) -> None:
        """``stop()`` on the loop, then end the loop and its thread."""
        try:
            self.call(self.stop())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(timeout=10)
            self.loop.close()
