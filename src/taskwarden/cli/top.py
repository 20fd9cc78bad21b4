"""``taskwarden top``: a live full-screen view of what runs, what failed, the workers and
the throughput, until ``q`` (or Ctrl-C, or SIGTERM).

It polls the store every ``--interval`` seconds, with bounded queries only (see
:mod:`taskwarden.cli.top_panels`), so a store of 10,000 processes costs what a store of ten
does. With a bus (``--bus`` / ``$TASKWARDEN_BUS``) it also refreshes early when a worker
announces a change on ``taskwarden.process.*``, at most every :data:`MIN_GAP` seconds.
``--once`` prints one frame (``--json``: its data) and exits.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from typing import TYPE_CHECKING, Any

from taskwarden.cli.common import (
    EXIT_UNAVAILABLE,
    EXIT_USAGE,
    CommandError,
    add_common_options,
    emit_json,
    redact,
    run_command,
    store_url,
)

if TYPE_CHECKING:
    from rich.console import Console
    from rich.live import Live

    from taskwarden.abc import Bus, BusSubscription, Store
    from taskwarden.cli.top_panels import Sampler, Snapshot

__all__ = ["MIN_GAP", "register"]

MIN_GAP = 0.2
"""The least seconds between two refreshes: a burst of bus events is one redraw."""
_PREFIX = "taskwarden"


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be more than 0 seconds, got {text}")
    return value


def register(commands: Any) -> None:
    """Add the ``top`` command to the CLI's subparsers."""
    parser = commands.add_parser(
        "top",
        help="a live view of running processes, failures, workers and throughput",
        description="A live full-screen view of the running processes with their progress, "
        "the latest failures, the workers and the throughput, refreshed every --interval "
        "seconds (and on the bus's change events with --bus). Press q to quit. --once "
        "prints one frame; --once --json its data as one JSON document.",
    )
    add_common_options(parser)
    parser.add_argument(
        "--bus",
        metavar="URL",
        default=None,
        help="also refresh on the workers' change events (default: $TASKWARDEN_BUS)",
    )
    parser.add_argument(
        "-i",
        "--interval",
        type=_seconds,
        default=1.0,
        metavar="SECONDS",
        help="seconds between reads of the store (default 1)",
    )
    parser.add_argument("--once", action="store_true", help="print one frame and exit")
    parser.add_argument(
        "--stale-after",
        type=_seconds,
        default=30.0,
        metavar="SECONDS",
        help="a worker not renewed for this long is stale (default 30)",
    )
    parser.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    problem = None
    if args.json and not args.once:
        problem = "--json prints one frame's data: add --once"
    elif not args.once and not sys.stdout.isatty():
        problem = "stdout is not a terminal: pass --once to print one frame"
    if problem is not None:
        print(f"taskwarden top: {problem}", file=sys.stderr)
        return EXIT_USAGE
    # q, Ctrl-C and SIGTERM are how a live view is meant to end: success.
    return run_command(args, _top, interrupt_code=0)


async def _top(store: Store, args: argparse.Namespace) -> int:
    from taskwarden.cli.common import console
    from taskwarden.cli.top_panels import Sampler, frame, snapshot_document

    sampler = Sampler(store, stale_after=args.stale_after)
    label = redact(store_url(args))
    if args.once:
        snapshot = await sampler.sample()
        if args.json:
            emit_json(snapshot_document(snapshot, args.stale_after))
        else:
            console().print(frame(snapshot, store=label))
        return 0
    view = _LiveView(sampler, args.interval, label)
    async with _bus(args) as bus:
        await view.run(bus)
    return 0


@contextlib.asynccontextmanager
async def _bus(args: argparse.Namespace) -> AsyncIterator[Bus | None]:
    url = args.bus or os.environ.get("TASKWARDEN_BUS")
    if not url:
        yield None
        return
    from taskwarden.bus import open_bus
    from taskwarden.errors import BusError, ConfigurationError

    try:
        bus = open_bus(url)
        await bus.open()
    except ConfigurationError as exc:
        code = EXIT_UNAVAILABLE if isinstance(exc, ImportError) else EXIT_USAGE
        raise CommandError(code, str(exc)) from None
    except BusError as exc:
        raise CommandError(
            EXIT_UNAVAILABLE, f"cannot reach the bus at {redact(url)}: {exc}"
        ) from None
    try:
        yield bus
    finally:
        await bus.close()


@contextlib.contextmanager
def _keys(loop: asyncio.AbstractEventLoop, on_quit: Callable[[], None]) -> Iterator[None]:
    """While inside, ``q`` on a terminal stdin calls ``on_quit``: the terminal is in
    cbreak mode (keys arrive at once, unechoed; Ctrl-C still signals) and restored on
    the way out, whatever happens. Without a terminal, nothing is read."""
    if not sys.stdin.isatty():
        yield
        return
    import termios
    import tty

    fd = sys.stdin.fileno()
    saved = termios.tcgetattr(fd)

    def readable() -> None:
        try:
            data = os.read(fd, 64)
        except OSError:
            data = b""
        if not data:  # the terminal went away: stop watching it
            loop.remove_reader(fd)
        elif b"q" in data.lower():
            on_quit()

    try:
        tty.setcbreak(fd, termios.TCSANOW)
        loop.add_reader(fd, readable)
        yield
    finally:
        loop.remove_reader(fd)
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def _terminal() -> Console:
    from rich.console import Console

    # Unlike common.console(), NO_COLOR keeps the screen live: only the colours go.
    return Console(highlight=False, emoji=False, no_color=bool(os.environ.get("NO_COLOR")))


class _LiveView:
    """The refresh loop: sample, draw, then wait for the interval, a change event, a
    resize or the end."""

    def __init__(self, sampler: Sampler, interval: float, store: str) -> None:
        self.sampler = sampler
        self.interval = interval
        self.store = store
        self.quit = asyncio.Event()
        self.wake = asyncio.Event()

    def stop(self) -> None:
        self.quit.set()
        self.wake.set()

    async def run(self, bus: Bus | None) -> None:
        from rich.live import Live

        out = _terminal()
        loop = asyncio.get_running_loop()
        status = f"every {self.interval:g}s" + (" and on bus events" if bus else "")
        status += ", q quits" if sys.stdin.isatty() else ", Ctrl-C quits"
        with contextlib.ExitStack() as cleanup:
            for signum in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(signum, self.stop)
                cleanup.callback(loop.remove_signal_handler, signum)
            loop.add_signal_handler(signal.SIGWINCH, self.wake.set)
            cleanup.callback(loop.remove_signal_handler, signal.SIGWINCH)
            cleanup.enter_context(_keys(loop, self.stop))
            async with contextlib.AsyncExitStack() as feeds:
                if bus is not None:
                    # Subscribed before the first read, so no change falls in between.
                    changes = await feeds.enter_async_context(
                        bus.subscribe(f"{_PREFIX}.process.*", max_buffer=64)
                    )
                    follower = loop.create_task(self._follow(changes), name="taskwarden-top-bus")
                    feeds.push_async_callback(_reap, follower)
                with Live(console=out, screen=True, auto_refresh=False) as live:
                    await self._refresh(live, out, status)

    async def _follow(self, changes: BusSubscription) -> None:
        async for _ in changes:
            self.wake.set()

    async def _refresh(self, live: Live, out: Console, status: str) -> None:
        from taskwarden.cli.top_panels import running_rows, screen
        from taskwarden.errors import StoreError

        loop = asyncio.get_running_loop()
        snapshot = None
        while not self.quit.is_set():
            started = loop.time()
            self.wake.clear()
            problem = None
            try:
                snapshot = await self._sample(running_rows(out.size.height)) or snapshot
            except StoreError as exc:
                problem = f"the store failed: {exc}; retrying"
            view = screen(snapshot, console=out, store=self.store, status=status, problem=problem)
            live.update(view, refresh=True)
            await self._pause(self.wake, self.interval)
            gap = started + MIN_GAP - loop.time()
            if gap > 0:
                await self._pause(self.quit, gap)

    async def _sample(self, rows: int) -> Snapshot | None:
        """A sample, or None when the view ends first: q is not kept waiting by a store
        that is slow to answer (or retrying)."""
        sampling = asyncio.ensure_future(self.sampler.sample(rows))
        quitting = asyncio.ensure_future(self.quit.wait())
        try:
            await asyncio.wait({sampling, quitting}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            quitting.cancel()
            if not sampling.done():
                sampling.cancel()
                await asyncio.wait({sampling})
        return None if sampling.cancelled() else sampling.result()

    @staticmethod
    async def _pause(event: asyncio.Event, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await event.wait()


async def _reap(task: asyncio.Task[None]) -> None:
    """Cancel ``task`` and wait for its end (a bus failure only loses the early refreshes:
    polling goes on)."""
    task.cancel()
    await asyncio.wait({task})
    if not task.cancelled():
        task.exception()
