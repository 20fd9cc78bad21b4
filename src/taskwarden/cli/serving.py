"""The running side of ``taskwarden serve``: the store, the embedded worker, uvicorn.

Imported when the command runs (it needs the ``server`` extra). The order of a stop, on
Ctrl-C or SIGTERM, is what makes it quick even with browsers connected:

1. the app's change feed is closed, so every open stream sends its final ``shutdown``
   frame and ends (uvicorn alone would wait for streaming responses for ever);
2. uvicorn stops: no new connections, requests in flight get :data:`GRACE` seconds;
3. the embedded worker drains (``--drain``) and its engine shuts down, leaving every record
   it ran terminal; then the store and the bus are closed.

Every step is bounded, so a repeated signal (``timeout`` sends SIGTERM twice) changes
nothing: it does not use uvicorn's forced exit, which would skip the app's lifespan end.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import uvicorn

from taskwarden.api import create_app
from taskwarden.cli.common import EXIT_UNAVAILABLE, EXIT_USAGE, CommandError, redact
from taskwarden.errors import BusError, InvalidDefinition, StoreError

if TYPE_CHECKING:
    from taskwarden.abc import Bus, Store
    from taskwarden.application import Application
    from taskwarden.worker import Worker

__all__ = ["GRACE", "ServeSettings", "serve"]

GRACE = 3.0
"""Seconds uvicorn gives requests in flight once the streams are closed."""
STARTUP_BOUND = 30.0
DEMO_ENGINE: dict[str, Any] = {"cancel_grace": 1.0, "shutdown_timeout": 3.0}
"""The demo's tasks stop within a second of a cancel: a short ladder keeps stops quick."""


@dataclass
class ServeSettings:
    """What ``serve`` runs, from its checked options."""

    store: str
    bus: str | None = None
    application: Application | None = None
    demo: bool = False
    tokens: dict[str, str] = field(default_factory=dict)
    drain: float = 0.0
    root_path: str = ""
    """The prefix a proxy serves the app under and strips (uvicorn's ``root_path``)."""
    proxy_headers: bool = True
    """Whether X-Forwarded-Proto / -For from ``forwarded_allow_ips`` are believed."""
    forwarded_allow_ips: str | None = None
    """The proxies believed; None: ``$FORWARDED_ALLOW_IPS``, else loopback (uvicorn's)."""
    session_max_age: float = 12 * 3600.0


class _Server(uvicorn.Server):
    """uvicorn's server without its signal handling: ``serve`` decides the stop order."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def serve(settings: ServeSettings, sock: socket.socket, *, host: str) -> int:
    """Run the service on ``sock`` until Ctrl-C or SIGTERM; returns the exit code."""
    # The engine's and the feed's notices go to stderr; uvicorn says only what is wrong.
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(name)s: %(message)s")
    try:
        return asyncio.run(_Host(settings, sock, host).run())
    except (StoreError, BusError) as exc:
        raise CommandError(
            EXIT_UNAVAILABLE,
            f"cannot reach the store or the bus: {exc}; check the URLs (--store / "
            "TASKWARDEN_STORE, --bus / TASKWARDEN_BUS) and that the servers run",
        ) from None
    except InvalidDefinition as exc:
        raise CommandError(EXIT_USAGE, f"the application's definitions: {exc}") from None
    finally:
        sock.close()


class _Host:
    """One server's life: open, serve, stop in order (see the module docstring)."""

    def __init__(self, settings: ServeSettings, sock: socket.socket, host: str) -> None:
        self.settings = settings
        self.sock = sock
        self.host = host
        self.stop_requested = asyncio.Event()
        self.bus: Bus | None = None
        self.store: Store | None = None
        self.worker: Worker | None = None

    async def run(self) -> int:
        try:
            await self._open()
            assert self.store is not None
            engine = self.worker.engine if self.worker is not None else None
            app = create_app(
                self.store,
                bus=self.bus,
                engine=engine,
                tokens=self.settings.tokens or None,
                session_max_age=self.settings.session_max_age,
            )
            feed = app.state.taskwarden.feed
            await feed.start()  # here rather than in the lifespan: a failure is reported
            return await self._serve(app, feed)
        finally:
            await self._close()

    async def _open(self) -> None:
        settings = self.settings
        if settings.bus is not None:
            from taskwarden.bus import open_bus

            self.bus = open_bus(settings.bus)
            await self.bus.open()
        application = settings.application
        if application is None:
            from taskwarden.stores import open_store

            self.store = open_store(settings.store)
            await self.store.open()
            return
        from taskwarden.worker import Worker

        self.worker = Worker(
            settings.store,
            get_task_definitions=application.get_task_definitions,
            services=application.services,
            bus=self.bus,
            name=f"serve@{socket.gethostname()}",
            drain_timeout=settings.drain,
            **(DEMO_ENGINE if settings.demo else {}),
        )
        try:
            await self.worker.start()
        except BaseException:
            worker, self.worker = self.worker, None
            with contextlib.suppress(Exception):
                await worker.store.close()
            raise
        self.store = self.worker.store
        if settings.demo:
            from taskwarden.cli.demo_app import launch_demo

            await launch_demo(self.worker.engine)

    async def _serve(self, app: Any, feed: Any) -> int:
        port = self.sock.getsockname()[1]
        config = uvicorn.Config(
            app,
            host=self.host,
            port=port,
            log_level="warning",
            timeout_graceful_shutdown=int(GRACE),
            lifespan="on",
            root_path=self.settings.root_path,
            proxy_headers=self.settings.proxy_headers,
            forwarded_allow_ips=self.settings.forwarded_allow_ips,
        )
        server = _Server(config)
        serving = asyncio.create_task(server.serve(sockets=[self.sock]), name="tw-serve")
        async with asyncio.timeout(STARTUP_BOUND):
            while not server.started and not serving.done():  # noqa: ASYNC110 - no event
                await asyncio.sleep(0.02)
        if serving.done():
            serving.result()
            return EXIT_USAGE
        self._announce(port)
        with self._signals():
            stop = asyncio.create_task(self.stop_requested.wait())
            await asyncio.wait({serving, stop}, return_when=asyncio.FIRST_COMPLETED)
            stop.cancel()
            began = time.monotonic()
            await feed.close()  # every stream sends its final frame and ends
            server.should_exit = True
            try:
                await asyncio.wait_for(asyncio.shield(serving), GRACE + 2)
            except TimeoutError:
                serving.cancel()
            await self._stop_worker()
            print(
                f"taskwarden serve: stopped in {time.monotonic() - began:.1f} s",
                file=sys.stderr,
                flush=True,
            )
        return 0

    def _announce(self, port: int) -> None:
        shown = f"[{self.host}]" if ":" in self.host else self.host
        settings = self.settings
        if settings.demo:
            what = "the demo application"
        elif settings.application is not None:
            what = f"an engine for {settings.application.name}"
        else:
            what = "no engine (a client of the store)"
        auth = "tokens required" if settings.tokens else "open, no token"
        under = (
            f"(for a proxy that serves it at {settings.root_path}/) " if settings.root_path else ""
        )
        print(
            f"taskwarden serve: dashboard at http://{shown}:{port}/{under} "
            f"(store {redact(settings.store)}, {what}, {auth}); Ctrl-C stops",
            file=sys.stderr,
            flush=True,
        )

    @contextlib.contextmanager
    def _signals(self) -> Iterator[None]:
        loop = asyncio.get_running_loop()
        installed: list[int] = []
        if threading.current_thread() is threading.main_thread():
            for signum in (int(signal.SIGTERM), int(signal.SIGINT)):
                with contextlib.suppress(NotImplementedError, RuntimeError):
                    loop.add_signal_handler(signum, self._on_signal)
                    installed.append(signum)
        try:
            yield
        finally:
            for signum in installed:
                loop.remove_signal_handler(signum)

    def _on_signal(self) -> None:
        self.stop_requested.set()

    async def _stop_worker(self) -> None:
        worker, self.worker = self.worker, None
        if worker is not None:
            await worker.stop()
            self.store = None  # the worker closed the store it opened

    async def _close(self) -> None:
        if self.worker is not None:
            with contextlib.suppress(Exception):
                await self._stop_worker()
        if self.store is not None:
            store, self.store = self.store, None
            with contextlib.suppress(Exception):
                await store.close()
        if self.bus is not None:
            bus, self.bus = self.bus, None
            with contextlib.suppress(Exception):
                await bus.close()
