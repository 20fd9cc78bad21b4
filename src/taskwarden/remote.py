"""Remote control of an engine over a bus: typed commands in, typed results out.

An application that runs an :class:`~taskwarden.engine.Engine` with a bus serves its
commands with :class:`RemoteControl`; any other process holding a bus on the same server
sends them with :class:`RemoteClient`::

    async with open_bus("redis://localhost") as bus:
        client = RemoteClient(bus)
        result = await client.cancel("nightly-report")
        if not result.ok:
            print(result.reason)          # "not-found", "not-cancellable", ...

Each command is a request on ``<prefix>.engine.<verb>`` handled by exactly one engine; the
reply is ``{"ok": true, "process": <document>}`` or ``{"ok": false, "reason": <code>,
"message": <text>}``, where the reason is the ``reason`` code of the engine's
:class:`~taskwarden.errors.TaskwardenError`. Applications add their own verbs with
:meth:`RemoteControl.register` on the same server.

Engines sharing a store may each serve commands; a cancel handled by an engine that does not
run the process is broadcast on ``<prefix>.control.cancel``, so the engine running it stops
it at once.

While it runs, :class:`RemoteControl` also publishes every committed state change on
``<prefix>.process.changed`` (ids and the new state, never whole documents), the ids whose
progress or log was written on ``<prefix>.process.progress`` (a burst is one event), and the
engine's heartbeat on ``system.<engine>.health``. Changes made while a command is being handled are
published once it has been handled (or after ``hold_events`` seconds at most), in order, so
publishing does not compete with the command's own store writes: a remote cancel reaches
the running task sooner.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from taskwarden.abc import Bus, BusMessage, BusSubscription
from taskwarden.errors import BusError, ConfigurationError, TaskwardenError
from taskwarden.heartbeat import HeartbeatPublisher

if TYPE_CHECKING:
    from taskwarden.engine import Engine
    from taskwarden.processes import ProcessRecord

__all__ = ["ENGINE_COMMANDS", "CommandHandler", "CommandResult", "RemoteClient", "RemoteControl"]

logger = logging.getLogger("taskwarden.remote")

ENGINE_COMMANDS = (
    "launch",
    "cancel",
    "dismiss",
    "resync",
    "cancel_group",
    "cancel_group_and_wait",
    "block_launches",
    "unblock_launches",
    "get_process",
)

CommandHandler = Callable[[Mapping[str, Any]], Awaitable[Mapping[str, Any] | None]]
"""An application command: takes the arguments, returns a JSON object (or None)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class CommandResult:
    """The outcome of a remote command.

    ``ok`` True carries ``process`` (the record as the seed's JSON document) for commands
    about one process, ``data`` for the others; ``ok`` False carries the ``reason`` code of
    the refusal (``not-found``, ``not-cancellable``, ``launch-blocked``, ``invalid-state``,
    ...) and a ``message`` for people.
    """

    ok: bool
    process: Mapping[str, Any] | None = None
    data: Mapping[str, Any] | None = None
    reason: str | None = None
    message: str | None = None

    @classmethod
    def from_reply(cls, reply: Mapping[str, Any]) -> CommandResult:
        """Parse a reply payload."""
        return cls(
            ok=bool(reply.get("ok")),
            process=reply.get("process"),
            data=reply.get("data"),
            reason=reply.get("reason"),
            message=reply.get("message"),
        )


def _token(name: str) -> str:
    """``name`` as one topic token (no dots, spaces or wildcards)."""
    return "".join("-" if c in ".*> " else c for c in name)


def _refusal(exc: TaskwardenError) -> dict[str, Any]:
    return {"ok": False, "reason": exc.reason, "message": str(exc)}


def _process_id(args: Mapping[str, Any]) -> str:
    process_id = args.get("process_id")
    if not isinstance(process_id, str) or not process_id:
        raise ConfigurationError("the command needs a non-empty string 'process_id'")
    return process_id


def _metadata(args: Mapping[str, Any]) -> Mapping[str, Any]:
    metadata = args.get("metadata")
    if not isinstance(metadata, Mapping) or not metadata:
        raise ConfigurationError("the command needs a non-empty object 'metadata' to match")
    return metadata


class RemoteControl:
    """Serves an engine's commands (and the application's own) on a bus.

    Args:
        engine: the engine to control.
        bus: an open bus.
        prefix: the topic namespace; clients must use the same one.
        heartbeat_interval: seconds between the engine's heartbeats (None: no heartbeat).
        max_pending_events: state-change events buffered while the bus is slow; beyond it
            the oldest are dropped (and counted in :attr:`events_dropped`).
        serve_commands: False keeps this engine from taking commands (it still publishes,
            beats and obeys broadcast cancels), e.g. for an engine that only runs work.
        hold_events: seconds at most that state changes wait to be published while a
            command is being handled (0: publish at once).
    """

    def __init__(
        self,
        engine: Engine,
        bus: Bus,
        *,
        prefix: str = "taskwarden",
        heartbeat_interval: float | None = 5.0,
        max_pending_events: int = 10_000,
        serve_commands: bool = True,
        hold_events: float = 0.1,
    ) -> None:
        if not hold_events >= 0:
            raise ConfigurationError(f"hold_events must be seconds >= 0, got {hold_events!r}")
        self.engine = engine
        self.serve_commands = serve_commands
        self.bus = bus
        self.prefix = prefix
        self.events_dropped = 0
        self._served: list[str] = []
        self._cancel_watch: BusSubscription | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._events: deque[ProcessRecord] = deque()
        self._progressed: dict[str, None] = {}  # ordered set of ids whose progress flushed
        self._max_events = max_pending_events
        self._events_ready = asyncio.Event()
        self._hold_events = hold_events
        self._handling = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._heartbeat = (
            HeartbeatPublisher(
                bus,
                _token(engine.engine_id),
                interval=heartbeat_interval,
                extra=lambda: {
                    "kind": "engine",
                    "engine": engine.engine_id,
                    "active_runs": len(engine.active_runs()),
                },
            )
            if heartbeat_interval is not None
            else None
        )

    @property
    def worker_name(self) -> str:
        """The name this engine's heartbeats carry (its id, as one topic token)."""
        return _token(self.engine.engine_id)

    async def start(self) -> None:
        """Serve every engine command, watch broadcast cancels, publish events and beats."""
        loop = asyncio.get_running_loop()
        if self.serve_commands:
            for verb in ENGINE_COMMANDS:
                await self._serve(f"{self.prefix}.engine.{verb}", self._engine_handler(verb))
        self._cancel_watch = self.bus.subscribe(f"{self.prefix}.control.cancel", max_buffer=1000)
        await self._cancel_watch.start()
        self._tasks.append(
            loop.create_task(
                self._watch_cancels(self._cancel_watch), name="taskwarden-remote-cancels"
            )
        )
        self.engine.on_change.append(self._on_change)
        self.engine.on_progress.append(self._on_progress)
        self._tasks.append(loop.create_task(self._publish_events(), name="taskwarden-events"))
        if self._heartbeat is not None:
            await self._heartbeat.start()

    async def stop(self) -> None:
        """Stop serving (requests being handled finish), publishing and beating."""
        if self._on_change in self.engine.on_change:
            self.engine.on_change.remove(self._on_change)
        if self._on_progress in self.engine.on_progress:
            self.engine.on_progress.remove(self._on_progress)
        if self._heartbeat is not None:
            await self._heartbeat.stop()
        for topic in self._served:
            await self.bus.unserve(topic)
        self._served.clear()
        if self._cancel_watch is not None:
            await self._cancel_watch.close()
            self._cancel_watch = None
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        if tasks:
            # wait() neither raises the tasks' cancellation nor swallows one aimed at us.
            await asyncio.wait(tasks)
        for task in tasks:
            if not task.cancelled() and task.exception() is not None:
                logger.error("remote control task failed", exc_info=task.exception())

    async def __aenter__(self) -> RemoteControl:
        """Start serving."""
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        """Stop serving."""
        await self.stop()

    def _on_change(self, record: ProcessRecord) -> None:
        if len(self._events) >= self._max_events:
            self._events.popleft()
            self.events_dropped += 1
        self._events.append(record)
        self._events_ready.set()

    def _on_progress(self, process_id: str) -> None:
        # A set, not a queue: a burst of flushes of one process is one event on the bus.
        self._progressed[process_id] = None
        self._events_ready.set()

    async def _publish_progress(self) -> None:
        topic = f"{self.prefix}.process.progress"
        while self._progressed:
            process_id = next(iter(self._progressed))
            del self._progressed[process_id]
            try:
                await self.bus.publish(
                    topic, {"process_id": process_id, "engine": self.engine.engine_id}
                )
            except BusError as exc:
                self.events_dropped += 1
                logger.warning("progress of %s not published: %s", process_id, exc)

    async def _publish_events(self) -> None:
        topic = f"{self.prefix}.process.changed"
        while True:
            await self._events_ready.wait()
            self._events_ready.clear()
            if not self._idle.is_set() and self._hold_events > 0:
                # The command's store writes and this loop's publishing share one event loop
                # (and the GIL with a SQLite thread): publish once it has been handled.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._hold_events):
                        await self._idle.wait()
            while self._events:
                record = self._events.popleft()
                try:
                    await self.bus.publish(
                        topic,
                        {
                            "process_id": record.process_id,
                            "state": record.state.value,
                            "root_id": record.root_id,
                            "parent_id": record.parent_id,
                            "engine": self.engine.engine_id,
                        },
                    )
                except BusError as exc:
                    self.events_dropped += 1
                    logger.warning("state change of %s not published: %s", record.process_id, exc)
            await self._publish_progress()

    async def register(self, verb: str, handler: CommandHandler) -> None:
        """Serve an application command ``verb`` on ``<prefix>.app.<verb>``.

        A :class:`~taskwarden.errors.TaskwardenError` raised by the handler becomes a refusal
        with its reason code; its return value is the reply's ``data``.
        """

        async def handle(message: BusMessage) -> Mapping[str, Any]:
            try:
                data = await handler(message.payload)
            except TaskwardenError as exc:
                return _refusal(exc)
            return {"ok": True, "data": dict(data) if data is not None else None}

        await self._serve(f"{self.prefix}.app.{verb}", handle)

    async def _serve(self, topic: str, handler: Callable[[BusMessage], Awaitable[Any]]) -> None:
        await self.bus.serve(topic, handler)
        self._served.append(topic)

    def _engine_handler(self, verb: str) -> Callable[[BusMessage], Awaitable[Mapping[str, Any]]]:
        async def handle(message: BusMessage) -> Mapping[str, Any]:
            self._handling += 1
            self._idle.clear()
            try:
                return await self._dispatch(verb, message.payload)
            except TaskwardenError as exc:
                return _refusal(exc)
            finally:
                self._handling -= 1
                if not self._handling:
                    self._idle.set()

        return handle

    async def _dispatch(self, verb: str, args: Mapping[str, Any]) -> Mapping[str, Any]:
        engine = self.engine
        if verb in ("launch", "dismiss", "get_process"):
            process_id = _process_id(args)
            if verb == "launch":
                await engine.launch(process_id)
            elif verb == "dismiss":
                await engine.dismiss(process_id)
            return await self._process_reply(process_id)
        if verb == "cancel":
            process_id = _process_id(args)
            await engine.cancel(process_id)
            if process_id not in engine.active_runs():
                await self.bus.publish(
                    f"{self.prefix}.control.cancel",
                    {"process_id": process_id, "origin": engine.engine_id},
                )
            return await self._process_reply(process_id)
        if verb == "resync":
            await engine.resync(
                clean=bool(args.get("clean", False)), metadata_filter=args.get("metadata_filter")
            )
            return {"ok": True}
        if verb in ("cancel_group", "cancel_group_and_wait"):
            metadata = _metadata(args)
            if verb == "cancel_group":
                ids = await engine.cancel_group(metadata)
            else:
                ids = await engine.cancel_group_and_wait(metadata)
            return {"ok": True, "data": {"cancelled": list(ids)}}
        if verb == "block_launches":
            engine.block_launches()
            return {"ok": True, "data": {"blocked": True}}
        if verb == "unblock_launches":
            engine.unblock_launches()
            return {"ok": True, "data": {"blocked": False}}
        raise ConfigurationError(f"unknown engine command {verb!r}")  # pragma: no cover

    async def _process_reply(self, process_id: str) -> Mapping[str, Any]:
        from taskwarden.errors import ProcessNotFound

        record = await self.engine.get_process(process_id)
        if record is None:
            raise ProcessNotFound(process_id)
        return {"ok": True, "process": record.to_document()}

    async def _watch_cancels(self, subscription: BusSubscription) -> None:
        async for message in subscription:
            process_id = message.payload.get("process_id")
            if not isinstance(process_id, str):
                continue
            if message.payload.get("origin") == self.engine.engine_id:
                continue
            if process_id in self.engine.active_runs():
                try:
                    await self.engine.cancel_local(process_id, "cancelled by a remote request")
                except TaskwardenError as exc:
                    logger.warning("broadcast cancel of %s refused: %s", process_id, exc)


class RemoteClient:
    """Sends commands to the engines serving ``prefix`` on a bus.

    Every method returns a :class:`CommandResult`; refusals are data, not exceptions. A
    :class:`~taskwarden.errors.RequestTimeout` is raised when no engine answers in time.
    """

    def __init__(self, bus: Bus, *, prefix: str = "taskwarden", timeout: float = 5.0) -> None:
        self.bus = bus
        self.prefix = prefix
        self.timeout = timeout

    async def _engine(self, verb: str, **args: Any) -> CommandResult:
        reply = await self.bus.request(f"{self.prefix}.engine.{verb}", args, timeout=self.timeout)
        return CommandResult.from_reply(reply)

    async def launch(self, process_id: str) -> CommandResult:
        """Launch a process."""
        return await self._engine("launch", process_id=process_id)

    async def cancel(self, process_id: str) -> CommandResult:
        """Cancel a scheduled or running process."""
        return await self._engine("cancel", process_id=process_id)

    async def dismiss(self, process_id: str) -> CommandResult:
        """Reset an ended process to idle."""
        return await self._engine("dismiss", process_id=process_id)

    async def get_process(self, process_id: str) -> CommandResult:
        """Fetch a process document."""
        return await self._engine("get_process", process_id=process_id)

    async def resync(
        self, clean: bool = False, metadata_filter: Mapping[str, Any] | None = None
    ) -> CommandResult:
        """Re-read the task definitions."""
        return await self._engine(
            "resync",
            clean=clean,
            metadata_filter=dict(metadata_filter) if metadata_filter else None,
        )

    async def cancel_group(self, metadata: Mapping[str, Any]) -> CommandResult:
        """Cancel every process whose metadata matches."""
        return await self._engine("cancel_group", metadata=dict(metadata))

    async def cancel_group_and_wait(self, metadata: Mapping[str, Any]) -> CommandResult:
        """Cancel every matching process and wait until they ended."""
        return await self._engine("cancel_group_and_wait", metadata=dict(metadata))

    async def block_launches(self) -> CommandResult:
        """Refuse launches until unblocked."""
        return await self._engine("block_launches")

    async def unblock_launches(self) -> CommandResult:
        """Accept launches again."""
        return await self._engine("unblock_launches")

    async def call(self, verb: str, **args: Any) -> CommandResult:
        """Send an application command registered with :meth:`RemoteControl.register`."""
        reply = await self.bus.request(f"{self.prefix}.app.{verb}", args, timeout=self.timeout)
        return CommandResult.from_reply(reply)
