"""Cancelable scopes: track any block of async code as an operation, and cancel it for real.

``async with Cancelable(name="import") as op:`` makes the block an operation: it gets an id,
registers in an :class:`~taskwarden.registry.OperationRegistry`, becomes the current
operation (a context variable, so scopes opened inside it, in the same task or in tasks it
starts, become its children) and is recorded in the history when it ends.

Cancelling is a ladder. First cooperative: :meth:`Cancelable.should_continue` turns False,
:meth:`Cancelable.wait_cancelled` returns, the cancel callbacks run, and every live child is
cancelled with reason ``PARENT``. Then, after ``grace_period`` seconds (zero, the default,
means at once), the scope's task is cancelled for real, so code that never looks at the flag
still stops. A scope cancelled by its own sources exits quietly, as ``asyncio.timeout`` does;
a cancellation that comes from outside propagates unchanged.
"""

from __future__ import annotations

import asyncio
import logging
import math
import signal
import threading
import time
import traceback
from collections.abc import Awaitable, Callable, Iterable
from contextvars import ContextVar, Token
from types import TracebackType
from typing import TYPE_CHECKING, Any

from taskwarden.errors import ConfigurationError
from taskwarden.model import CancelationReason, OperationContext, OperationStatus, ProgressCallback

if TYPE_CHECKING:
    from taskwarden.registry import OperationRegistry

__all__ = [
    "CancelCallback",
    "Cancelable",
    "CancelationToken",
    "current_operation",
    "validate_percent",
]

logger = logging.getLogger("taskwarden.scope")

CancelCallback = Callable[["Cancelable"], Any]
"""Called with the scope when it is cancelled; may return an awaitable."""

Condition = Callable[[], "bool | Awaitable[bool]"]

_current: ContextVar[Cancelable | None] = ContextVar("taskwarden_operation", default=None)

# Background work started by callbacks: kept referenced until done, failures logged.
_background: set[asyncio.Task[Any]] = set()


def current_operation() -> Cancelable | None:
    """The innermost scope around the calling code, or None outside any scope."""
    return _current.get()


def validate_percent(percent: float | None) -> float | None:
    """Return ``percent`` as a float if it is None or a number in 0..100; else ValueError."""
    if percent is None:
        return None
    if isinstance(percent, bool) or not isinstance(percent, int | float):
        raise ValueError(
            f"progress percent must be a number from 0 to 100 or None, got {percent!r}"
        )
    value = float(percent)
    if math.isnan(value) or not 0.0 <= value <= 100.0:
        raise ValueError(f"progress percent must be between 0 and 100 or None, got {percent!r}")
    return value


def _run_callback(callback: Callable[..., Any], *args: Any) -> None:
    try:
        outcome = callback(*args)
    except Exception:
        logger.exception("callback %r failed", callback)
        return
    if asyncio.iscoroutine(outcome):
        task = asyncio.get_running_loop().create_task(outcome)
        _background.add(task)
        task.add_done_callback(_forget_background)


def _forget_background(task: asyncio.Task[Any]) -> None:
    _background.discard(task)
    if not task.cancelled() and task.exception() is not None:
        logger.error("callback task failed", exc_info=task.exception())


class CancelationToken:
    """A manual cancel switch, usable from any task or thread.

    Pass it to one or more scopes (``Cancelable(token=token)`` or
    :meth:`Cancelable.with_token`); :meth:`cancel_sync` (or ``await cancel()``) cancels
    every scope it is linked to, now and later ones that enter after it fired.
    """

    __slots__ = ("_event_loops", "_lock", "_scopes", "is_cancelled", "message", "reason")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._scopes: set[Cancelable] = set()
        self._event_loops: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = []
        self.is_cancelled = False
        self.reason: CancelationReason | None = None
        self.message = ""

    def cancel_sync(
        self, reason: CancelationReason = CancelationReason.MANUAL, message: str = ""
    ) -> bool:
        """Cancel the linked scopes; returns False if the token had already fired."""
        with self._lock:
            if self.is_cancelled:
                return False
            self.is_cancelled = True
            self.reason = reason
            self.message = message
            scopes = list(self._scopes)
            waiters = list(self._event_loops)
        for scope in scopes:
            scope.cancel_sync(reason, message)
        for loop, event in waiters:
            loop.call_soon_threadsafe(event.set)
        return True

    async def cancel(
        self, reason: CancelationReason = CancelationReason.MANUAL, message: str = ""
    ) -> bool:
        """Cancel the linked scopes (the async spelling of :meth:`cancel_sync`)."""
        return self.cancel_sync(reason, message)

    async def wait(self) -> None:
        """Return once the token has fired."""
        event = asyncio.Event()
        with self._lock:
            if self.is_cancelled:
                return
            self._event_loops.append((asyncio.get_running_loop(), event))
        await event.wait()

    def _link(self, scope: Cancelable) -> bool:
        with self._lock:
            if not self.is_cancelled:
                self._scopes.add(scope)
                return False
        return True

    def _unlink(self, scope: Cancelable) -> None:
        with self._lock:
            self._scopes.discard(scope)


class _SignalDispatcher:
    """One loop signal handler per signal, fanned out to every scope listening to it."""

    def __init__(self) -> None:
        self._listeners: dict[int, set[Cancelable]] = {}

    def add(self, loop: asyncio.AbstractEventLoop, signum: int, scope: Cancelable) -> None:
        listeners = self._listeners.get(signum)
        if listeners is None:
            if threading.current_thread() is not threading.main_thread():
                raise ConfigurationError(
                    "signal sources work only in the main thread's event loop: "
                    "use a CancelationToken to cancel from other threads"
                )
            listeners = self._listeners[signum] = set()
            loop.add_signal_handler(signum, self._fire, signum)
        listeners.add(scope)

    def remove(self, loop: asyncio.AbstractEventLoop, signum: int, scope: Cancelable) -> None:
        listeners = self._listeners.get(signum)
        if listeners is None:
            return
        listeners.discard(scope)
        if not listeners:
            del self._listeners[signum]
            loop.remove_signal_handler(signum)

    def _fire(self, signum: int) -> None:
        name = signal.Signals(signum).name
        for scope in list(self._listeners.get(signum, ())):
            scope.cancel_sync(CancelationReason.SIGNAL, f"received {name}")


_signals = _SignalDispatcher()


class Cancelable:
    """An async context manager that tracks its block as a cancelable operation.

    Args:
        name: what the operation is called in the registry and history.
        parent: the parent scope; by default the current one (see :func:`current_operation`).
        metadata: application data kept on the operation.
        timeout: seconds after entering before it is cancelled with reason ``TIMEOUT``.
        token: a :class:`CancelationToken` that cancels it with reason ``MANUAL``.
        signals: OS signals (main thread only) that cancel it with reason ``SIGNAL``.
        condition: a callable (sync or async) polled every ``condition_interval`` seconds;
            when it returns true the scope is cancelled with reason ``CONDITION``.
        grace_period: seconds between the cooperative cancel and cancelling the task for
            real; 0 cancels the task at once.
        registry: the registry to join; by default :meth:`OperationRegistry.get_instance`.
        register: False keeps the operation out of every registry and history.
        on_cancel: callbacks run (with the scope) when it is cancelled.
        on_progress: callbacks run on every progress report.

    Example::

        async with Cancelable(name="sync-users", timeout=30) as op:
            for page in pages:
                if not op.should_continue():
                    break
                await sync(page)
        print(op.context.status)
    """

    __slots__ = (
        "_cancel_callbacks",
        "_cancel_requested",
        "_cancelled_event",
        "_cancelling",
        "_children",
        "_condition",
        "_condition_interval",
        "_condition_task",
        "_ctx_token",
        "_deadline_handle",
        "_exited",
        "_force_handle",
        "_forced",
        "_grace_period",
        "_loop",
        "_parent",
        "_parent_given",
        "_registry",
        "_signals",
        "_task",
        "_thread_id",
        "_timeout",
        "_token",
        "context",
    )

    def __init__(
        self,
        name: str | None = None,
        *,
        parent: Cancelable | None = None,
        metadata: dict[str, Any] | None = None,
        timeout: float | None = None,
        token: CancelationToken | None = None,
        signals: Iterable[int] | None = None,
        condition: Condition | None = None,
        condition_interval: float = 0.1,
        grace_period: float = 0.0,
        registry: OperationRegistry | None = None,
        register: bool = True,
        auto_register: bool | None = None,
        on_cancel: Iterable[CancelCallback] | None = None,
        on_progress: Iterable[ProgressCallback] | None = None,
        operation_id: str | None = None,
        kind: str = "scope",
    ) -> None:
        if timeout is not None and (not timeout >= 0 or math.isinf(timeout)):
            raise ValueError(f"timeout must be a finite number of seconds >= 0, got {timeout!r}")
        if grace_period < 0:
            raise ValueError(f"grace_period must be >= 0 seconds, got {grace_period!r}")
        if condition is not None and condition_interval <= 0:
            raise ValueError(f"condition_interval must be > 0, got {condition_interval!r}")
        self.context = OperationContext(
            name=name or "operation", id=operation_id, metadata=metadata, kind=kind
        )
        if on_progress is not None:
            self.context.progress_callbacks.extend(on_progress)
        if auto_register is not None:
            register = auto_register
        if register and registry is None:
            from taskwarden.registry import OperationRegistry

            registry = OperationRegistry.get_instance()
        self._registry = registry if register else None
        self._parent: Cancelable | None = parent
        self._parent_given = parent is not None
        self._timeout = timeout
        self._token = token
        self._signals = tuple(signals) if signals is not None else ()
        self._condition = condition
        self._condition_interval = condition_interval
        self._grace_period = grace_period
        self._cancel_callbacks: list[CancelCallback] | None = (
            list(on_cancel) if on_cancel is not None else None
        )
        self._children: set[Cancelable] | None = None
        self._task: asyncio.Task[Any] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread_id = 0
        self._ctx_token: Token[Cancelable | None] | None = None
        self._deadline_handle: asyncio.TimerHandle | None = None
        self._force_handle: asyncio.TimerHandle | None = None
        self._condition_task: asyncio.Task[None] | None = None
        self._cancelled_event: asyncio.Event | None = None
        self._cancel_requested = False
        self._forced = False
        self._exited = False
        self._cancelling = 0

    # ------------------------------------------------------------------ constructors
    @classmethod
    def with_timeout(cls, timeout: float, name: str | None = None, **kwargs: Any) -> Cancelable:
        """A scope cancelled with reason ``TIMEOUT`` ``timeout`` seconds after it enters."""
        return cls(name, timeout=timeout, **kwargs)

    @classmethod
    def with_token(
        cls, token: CancelationToken, name: str | None = None, **kwargs: Any
    ) -> Cancelable:
        """A scope cancelled when ``token`` fires."""
        return cls(name, token=token, **kwargs)

    @classmethod
    def with_signal(cls, *signals: int, name: str | None = None, **kwargs: Any) -> Cancelable:
        """A scope cancelled when the process receives one of ``signals``."""
        return cls(name, signals=signals, **kwargs)

    @classmethod
    def with_condition(
        cls,
        condition: Condition,
        check_interval: float = 0.1,
        name: str | None = None,
        **kwargs: Any,
    ) -> Cancelable:
        """A scope cancelled once ``condition()`` returns true (polled every interval)."""
        return cls(name, condition=condition, condition_interval=check_interval, **kwargs)

    # ------------------------------------------------------------------ properties
    @property
    def id(self) -> str:
        """The operation id."""
        return self.context.id

    @property
    def name(self) -> str:
        """The operation name."""
        return self.context.name

    @property
    def status(self) -> OperationStatus:
        """The operation status."""
        return self.context.status

    @property
    def parent(self) -> Cancelable | None:
        """The parent scope, if any."""
        return self._parent

    @property
    def children(self) -> list[Cancelable]:
        """The live child scopes."""
        return list(self._children) if self._children else []

    @property
    def task(self) -> asyncio.Task[Any] | None:
        """The task running the scope's block (None before it enters)."""
        return self._task

    @property
    def is_cancelled(self) -> bool:
        """True once a cancel was requested (by any source)."""
        return self._cancel_requested

    def should_continue(self) -> bool:
        """False once a cancel was requested: poll it in loops to stop cooperatively."""
        return not self._cancel_requested

    async def wait_cancelled(self) -> None:
        """Return once a cancel is requested."""
        if self._cancel_requested:
            return
        if self._cancelled_event is None:
            self._cancelled_event = asyncio.Event()
        await self._cancelled_event.wait()

    def on_cancel(self, callback: CancelCallback) -> CancelCallback:
        """Register ``callback(scope)`` to run when the scope is cancelled (a decorator too)."""
        if self._cancel_callbacks is None:
            self._cancel_callbacks = []
        self._cancel_callbacks.append(callback)
        return callback

    def on_progress(self, callback: ProgressCallback) -> ProgressCallback:
        """Register ``callback(operation_id, percent, message)`` for progress reports."""
        self.context.progress_callbacks.append(callback)
        return callback

    def report_progress(self, percent: float | None, message: str | None = None) -> None:
        """Record progress (``percent`` in 0..100, or None when unknown) and notify callbacks.

        Raises:
            ValueError: ``percent`` is not None and not a number from 0 to 100.
        """
        value = validate_percent(percent)
        ctx = self.context
        ctx.progress_percent = value
        if message is not None:
            ctx.progress_message = message
        callbacks = ctx._progress_callbacks
        if callbacks:
            for callback in list(callbacks):
                _run_callback(callback, ctx.id, value, message)

    # ------------------------------------------------------------------ enter / exit
    async def __aenter__(self) -> Cancelable:
        task = asyncio.current_task()
        if task is None:
            raise RuntimeError("Cancelable must be entered inside an asyncio task")
        if self._task is not None:
            raise RuntimeError(f"scope {self.context.name!r} was already entered once")
        loop = task.get_loop()
        self._task = task
        self._loop = loop
        self._thread_id = threading.get_ident()
        self._cancelling = task.cancelling()
        ctx = self.context
        parent = self._parent if self._parent_given else _current.get()
        self._parent = parent
        ctx.start_time = time.time()
        ctx.status = OperationStatus.RUNNING
        self._ctx_token = _current.set(self)
        registry = self._registry
        if registry is not None:
            registry._add(self)
        if parent is not None:
            ctx.parent_id = parent.context.id
            if parent._children is None:
                parent._children = set()
            parent._children.add(self)
            if parent._cancel_requested:
                self._cancel(CancelationReason.PARENT, f"parent {parent.context.name!r} cancelled")
        if self._timeout is not None:
            self._deadline_handle = loop.call_later(self._timeout, self._on_timeout)
        if self._token is not None and self._token._link(self):
            self._cancel(self._token.reason or CancelationReason.MANUAL, self._token.message)
        for signum in self._signals:
            _signals.add(loop, signum, self)
        if self._condition is not None:
            self._condition_task = loop.create_task(
                self._poll_condition(), name=f"taskwarden-condition:{ctx.name}"
            )
        if self._cancel_requested and not self._forced and self._force_handle is None:
            # Cancelled before it entered: run the rest of the ladder now that it can.
            self._cancel_requested = False
            self._cancel(ctx.cancel_reason or CancelationReason.MANUAL, ctx.cancel_message)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        self._exited = True
        self._stop_sources()
        if self._ctx_token is not None:
            try:
                _current.reset(self._ctx_token)
            except ValueError:  # exited in another context than it entered (rare)
                _current.set(self._parent)
        swallow = False
        if self._forced:
            task = self._task
            assert task is not None
            if (
                task.uncancel() <= self._cancelling
                and exc_type is not None
                and issubclass(exc_type, asyncio.CancelledError)
            ):
                swallow = True
        ctx = self.context
        if exc_type is None:
            status = (
                OperationStatus.CANCELLED if self._cancel_requested else OperationStatus.COMPLETED
            )
        elif issubclass(exc_type, asyncio.CancelledError):
            status = OperationStatus.CANCELLED
            if not self._cancel_requested:
                ctx.cancel_message = "cancelled from outside the scope"
        else:
            status = OperationStatus.FAILED
            ctx.exception = exc
            if exc is not None:
                ctx.traceback = "".join(traceback.format_exception(exc_type, exc, tb))
        ctx.end_time = time.time()
        ctx.status = status
        parent = self._parent
        if parent is not None and parent._children is not None:
            parent._children.discard(self)
        registry = self._registry
        if registry is not None:
            registry._finish(self)
        return swallow

    def set_result(self, result: Any) -> None:
        """Attach the block's result, so the history shows it."""
        self.context.result = result

    # ------------------------------------------------------------------ cancelling
    async def cancel(
        self,
        reason: CancelationReason = CancelationReason.MANUAL,
        message: str = "",
    ) -> bool:
        """Cancel the operation (see the ladder in the module docstring).

        Returns False when it was already cancelled or has ended. Safe from any task.
        """
        return self.cancel_sync(reason, message)

    def cancel_sync(
        self,
        reason: CancelationReason = CancelationReason.MANUAL,
        message: str = "",
    ) -> bool:
        """Cancel the operation from synchronous code, in any thread.

        From a thread other than the scope's event loop the cancel is handed to that loop
        and this returns True if it was handed over (the scope may end first).
        """
        loop = self._loop
        if loop is not None and self._thread_id != threading.get_ident():
            if self._exited or self._cancel_requested:
                return False
            try:
                loop.call_soon_threadsafe(self._cancel, reason, message)
            except RuntimeError:  # the loop is closed: the scope is gone
                return False
            return True
        return self._cancel(reason, message)

    def _cancel(self, reason: CancelationReason, message: str) -> bool:
        if self._cancel_requested or self._exited:
            return False
        self._cancel_requested = True
        ctx = self.context
        ctx.cancel_reason = reason
        ctx.cancel_message = message
        if self._deadline_handle is not None:
            self._deadline_handle.cancel()
            self._deadline_handle = None
        if self._loop is None:  # cancelled before entering: __aenter__ finishes the job
            return True
        if self._cancelled_event is not None:
            self._cancelled_event.set()
        if self._cancel_callbacks:
            for callback in list(self._cancel_callbacks):
                _run_callback(callback, self)
        if self._children:
            child_message = f"parent {ctx.name!r} cancelled" + (f": {message}" if message else "")
            for child in list(self._children):
                child.cancel_sync(CancelationReason.PARENT, child_message)
        if self._grace_period <= 0:
            self._force()
        else:
            self._force_handle = self._loop.call_later(self._grace_period, self._force)
        return True

    def _force(self) -> None:
        self._force_handle = None
        if self._exited or self._forced or self._task is None:
            return
        self._forced = True
        ctx = self.context
        self._task.cancel(f"taskwarden: {ctx.name} cancelled ({ctx.cancel_reason})")

    def _on_timeout(self) -> None:
        self._deadline_handle = None
        self._cancel(CancelationReason.TIMEOUT, f"timed out after {self._timeout:g} seconds")

    async def _poll_condition(self) -> None:
        condition = self._condition
        assert condition is not None
        while not self._cancel_requested:
            try:
                outcome = condition()
                if not isinstance(outcome, bool) and asyncio.iscoroutine(outcome):
                    outcome = await outcome
            except Exception:
                logger.exception(
                    "condition of %r failed; it is no longer checked", self.context.name
                )
                return
            if outcome:
                self._cancel(CancelationReason.CONDITION, "condition met")
                return
            await asyncio.sleep(self._condition_interval)

    def _stop_sources(self) -> None:
        if self._deadline_handle is not None:
            self._deadline_handle.cancel()
            self._deadline_handle = None
        if self._force_handle is not None:
            self._force_handle.cancel()
            self._force_handle = None
        if self._token is not None:
            self._token._unlink(self)
        if self._signals and self._loop is not None:
            for signum in self._signals:
                _signals.remove(self._loop, signum, self)
        if self._condition_task is not None:
            self._condition_task.cancel()
            self._condition_task = None

    def __repr__(self) -> str:
        ctx = self.context
        return f"<Cancelable {ctx.name!r} id={ctx.id} {ctx.status.value}>"
