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
from asyncio import current_task
from asyncio.events import _get_running_loop
from collections.abc import Awaitable, Callable, Iterable
from contextvars import ContextVar
from types import TracebackType
from typing import TYPE_CHECKING, Any

from taskwarden.errors import ConfigurationError
from taskwarden.model import (
    CancelationReason,
    OperationContext,
    OperationStatus,
    ProgressCallback,
    _sequence,
)

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

_now = time.time

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


class _Sources:
    """What only some scopes use, kept off the common path (and out of its memory)."""

    __slots__ = (
        "callbacks",
        "cancelled_event",
        "condition",
        "condition_interval",
        "condition_task",
        "deadline_handle",
        "force_handle",
        "grace_period",
        "signals",
        "timeout",
        "token",
    )

    def __init__(self) -> None:
        self.timeout: float | None = None
        self.token: CancelationToken | None = None
        self.signals: tuple[int, ...] = ()
        self.condition: Condition | None = None
        self.condition_interval = 0.1
        self.grace_period = 0.0
        self.callbacks: list[CancelCallback] | None = None
        self.deadline_handle: asyncio.TimerHandle | None = None
        self.force_handle: asyncio.TimerHandle | None = None
        self.condition_task: asyncio.Task[None] | None = None
        self.cancelled_event: asyncio.Event | None = None


_UNSET: Any = object()


class Cancelable(OperationContext):
    """An async context manager that tracks its block as a cancelable operation.

    The scope is its own :class:`~taskwarden.model.OperationContext` (``op.context is op``),
    so tracking costs one object per operation.

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
        "_cancel_requested",
        "_cancelling",
        "_children",
        "_exited",
        "_forced",
        "_parent",
        "_registry",
        "_src",
        "_task",
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
        # The fields of OperationContext, set here rather than through its __init__: this
        # runs for every operation and each call level costs.
        self._seq = next(_sequence)
        self._id = operation_id
        self.name = name or "operation"
        self.kind = kind
        self.status = OperationStatus.PENDING
        self.start_time = 0.0
        self.end_time = None
        self.parent_id = None
        self.cancel_reason = None
        self.cancel_message = ""
        self.result = None
        self.exception = None
        self.traceback = None
        self.progress_percent = None
        self.progress_message = None
        self.index = None
        self._metadata = metadata
        self._progress_callbacks = list(on_progress) if on_progress is not None else None

        if auto_register is not None:
            register = auto_register
        if not register:
            self._registry: OperationRegistry | None = None
        elif registry is not None:
            self._registry = registry
        else:
            self._registry = _default_registry()
        self._parent: Cancelable | None = parent if parent is not None else _UNSET
        self._children: set[Cancelable] | None = None
        self._task: asyncio.Task[Any] | None = None
        self._cancel_requested = False
        self._forced = False
        self._exited = False
        self._cancelling = 0
        if (
            timeout is None
            and token is None
            and signals is None
            and condition is None
            and not grace_period
            and on_cancel is None
        ):
            self._src: _Sources | None = None
            return
        if timeout is not None and (not timeout >= 0 or math.isinf(timeout)):
            raise ValueError(f"timeout must be a finite number of seconds >= 0, got {timeout!r}")
        if not grace_period >= 0:
            raise ValueError(f"grace_period must be >= 0 seconds, got {grace_period!r}")
        if condition is not None and not condition_interval > 0:
            raise ValueError(f"condition_interval must be > 0, got {condition_interval!r}")
        src = self._src = _Sources()
        src.timeout = timeout
        src.token = token
        src.signals = tuple(signals) if signals is not None else ()
        src.condition = condition
        src.condition_interval = condition_interval
        src.grace_period = grace_period
        src.callbacks = list(on_cancel) if on_cancel is not None else None

    def _sources(self) -> _Sources:
        src = self._src
        if src is None:
            src = self._src = _Sources()
        return src

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
    def context(self) -> Cancelable:
        """The operation's context: the scope itself (the seed's ``op.context``)."""
        return self

    @property
    def parent(self) -> Cancelable | None:
        """The parent scope, if any (known once entered)."""
        parent = self._parent
        return None if parent is _UNSET else parent

    @property
    def children(self) -> list[Cancelable]:
        """The live child scopes."""
        return list(self._children) if self._children else []

    @property
    def task(self) -> asyncio.Task[Any] | None:
        """The task running the scope's block (None before it enters and after it exits)."""
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
        src = self._sources()
        if src.cancelled_event is None:
            src.cancelled_event = asyncio.Event()
        await src.cancelled_event.wait()

    def on_cancel(self, callback: CancelCallback) -> CancelCallback:
        """Register ``callback(scope)`` to run when the scope is cancelled (a decorator too)."""
        src = self._sources()
        if src.callbacks is None:
            src.callbacks = []
        src.callbacks.append(callback)
        return callback

    def on_progress(self, callback: ProgressCallback) -> ProgressCallback:
        """Register ``callback(operation_id, percent, message)`` for progress reports."""
        self.progress_callbacks.append(callback)
        return callback

    def report_progress(self, percent: float | None, message: str | None = None) -> None:
        """Record progress (``percent`` in 0..100, or None when unknown) and notify callbacks.

        Raises:
            ValueError: ``percent`` is not None and not a number from 0 to 100.
        """
        value = validate_percent(percent)
        self.progress_percent = value
        if message is not None:
            self.progress_message = message
        callbacks = self._progress_callbacks
        if callbacks:
            for callback in list(callbacks):
                _run_callback(callback, self.id, value, message)

    def set_result(self, result: Any) -> None:
        """Attach the block's result, so the history shows it."""
        self.result = result

    # ------------------------------------------------------------------ enter / exit
    async def __aenter__(self) -> Cancelable:
        task = current_task()
        if task is None:
            raise RuntimeError("Cancelable must be entered inside an asyncio task")
        if self.status is not OperationStatus.PENDING:
            raise RuntimeError(f"scope {self.name!r} was already entered once")
        self._task = task
        self._cancelling = task.cancelling()
        parent = self._parent
        if parent is _UNSET:
            parent = self._parent = _current.get()
        self.start_time = _now()
        self.status = OperationStatus.RUNNING
        _current.set(self)
        registry = self._registry
        if registry is not None:
            registry._add(self)
        if parent is not None:
            self.parent_id = parent.id
            if parent._children is None:
                parent._children = set()
            parent._children.add(self)
            if parent._cancel_requested:
                self._cancel(CancelationReason.PARENT, f"parent {parent.name!r} cancelled")
        src = self._src
        if src is not None:
            self._arm(task.get_loop(), src)
        return self

    def _arm(self, loop: asyncio.AbstractEventLoop, src: _Sources) -> None:
        if src.timeout is not None and not self._cancel_requested:
            src.deadline_handle = loop.call_later(src.timeout, self._on_timeout)
        token = src.token
        if token is not None and token._link(self):
            self._cancel(token.reason or CancelationReason.MANUAL, token.message)
        for signum in src.signals:
            _signals.add(loop, signum, self)
        if src.condition is not None:
            src.condition_task = loop.create_task(
                self._poll_condition(src.condition, src.condition_interval),
                name=f"taskwarden-condition:{self.name}",
            )
        if self._cancel_requested and not self._forced and src.force_handle is None:
            # Cancelled before it entered: run the rest of the ladder now that it can.
            self._cancel_requested = False
            self._cancel(self.cancel_reason or CancelationReason.MANUAL, self.cancel_message)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        self._exited = True
        if self._src is not None:
            self._stop_sources(self._src)
        parent = self._parent
        _current.set(parent)
        swallow = False
        task = self._task
        if (
            self._forced
            and task is not None
            and (
                task.uncancel() <= self._cancelling
                and exc_type is not None
                and issubclass(exc_type, asyncio.CancelledError)
            )
        ):
            swallow = True
        if exc_type is None:
            self.status = (
                OperationStatus.CANCELLED if self._cancel_requested else OperationStatus.COMPLETED
            )
        elif issubclass(exc_type, asyncio.CancelledError):
            self.status = OperationStatus.CANCELLED
            if not self._cancel_requested:
                self.cancel_message = "cancelled from outside the scope"
        else:
            self.status = OperationStatus.FAILED
            self.exception = exc
            if exc is not None:
                self.traceback = "".join(traceback.format_exception(exc_type, exc, tb))
        self.end_time = _now()
        if parent is not None and parent._children is not None:
            parent._children.discard(self)
        # A finished operation stays in the history: keep none of its live machinery.
        self._task = None
        self._parent = None
        self._children = None
        registry = self._registry
        if registry is not None:
            registry._finish(self)
        return swallow

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
        task = self._task
        if task is not None:
            loop = task.get_loop()
            if _get_running_loop() is not loop:
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
        self.cancel_reason = reason
        self.cancel_message = message
        src = self._src
        if src is not None and src.deadline_handle is not None:
            src.deadline_handle.cancel()
            src.deadline_handle = None
        task = self._task
        if task is None:  # cancelled before entering: __aenter__ finishes the job
            return True
        if src is not None:
            if src.cancelled_event is not None:
                src.cancelled_event.set()
            if src.callbacks:
                for callback in list(src.callbacks):
                    _run_callback(callback, self)
        if self._children:
            child_message = f"parent {self.name!r} cancelled" + (f": {message}" if message else "")
            for child in list(self._children):
                child.cancel_sync(CancelationReason.PARENT, child_message)
        if src is None or src.grace_period <= 0:
            self._force()
        else:
            src.force_handle = task.get_loop().call_later(src.grace_period, self._force)
        return True

    def _force(self) -> None:
        src = self._src
        if src is not None:
            src.force_handle = None
        task = self._task
        if self._exited or self._forced or task is None:
            return
        self._forced = True
        task.cancel(f"taskwarden: {self.name} cancelled ({self.cancel_reason})")

    def _on_timeout(self) -> None:
        src = self._src
        assert src is not None
        src.deadline_handle = None
        self._cancel(CancelationReason.TIMEOUT, f"timed out after {src.timeout:g} seconds")

    async def _poll_condition(self, condition: Condition, interval: float) -> None:
        while not self._cancel_requested:
            try:
                outcome = condition()
                if not isinstance(outcome, bool) and asyncio.iscoroutine(outcome):
                    outcome = await outcome
            except Exception:
                logger.exception("condition of %r failed; it is no longer checked", self.name)
                return
            if outcome:
                self._cancel(CancelationReason.CONDITION, "condition met")
                return
            await asyncio.sleep(interval)

    def _stop_sources(self, src: _Sources) -> None:
        if src.deadline_handle is not None:
            src.deadline_handle.cancel()
            src.deadline_handle = None
        if src.force_handle is not None:
            src.force_handle.cancel()
            src.force_handle = None
        if src.token is not None:
            src.token._unlink(self)
        if src.signals and self._task is not None:
            loop = self._task.get_loop()
            for signum in src.signals:
                _signals.remove(loop, signum, self)
        if src.condition_task is not None:
            src.condition_task.cancel()
            src.condition_task = None
        # An exited scope never runs them, and it may be kept long after (the registry's
        # history): what they refer to must not live as long as it does.
        src.callbacks = None
        src.condition = None

    def __repr__(self) -> str:
        return f"<Cancelable {self.name!r} id={self.id} {self.status.value}>"


_get_default_registry: Callable[[], OperationRegistry] | None = None


def _default_registry() -> OperationRegistry:
    global _get_default_registry
    getter = _get_default_registry
    if getter is None:  # imported late: the registry module imports this one
        from taskwarden.registry import OperationRegistry

        getter = _get_default_registry = OperationRegistry.get_instance
    return getter()
