"""The ``instrumented_task`` decorator: count the runs, runtime and errors of a coroutine."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, ParamSpec, TypeVar, overload

from taskwarden.supervisor.core import Supervisor, current_supervisor

__all__ = ["instrumented_task"]

P = ParamSpec("P")
T = TypeVar("T")


@overload
def instrumented_task(
    func: Callable[P, Awaitable[T]], /
) -> Callable[P, Coroutine[Any, Any, T]]: ...


@overload
def instrumented_task(
    *, name: str | None = None, supervisor: Supervisor | None = None
) -> Callable[[Callable[P, Awaitable[T]]], Callable[P, Coroutine[Any, Any, T]]]: ...


def instrumented_task(
    func: Callable[P, Awaitable[T]] | None = None,
    /,
    *,
    name: str | None = None,
    supervisor: Supervisor | None = None,
) -> (
    Callable[P, Coroutine[Any, Any, T]]
    | Callable[[Callable[P, Awaitable[T]]], Callable[P, Coroutine[Any, Any, T]]]
):
    """Record every call of an async function as a run: its runtime and its error, if any.

    Use it bare (``@instrumented_task``) or with options
    (``@instrumented_task(name="poll", supervisor=supervisor)``). Each call adds one run to
    :meth:`Supervisor.get_task_metrics` of ``name`` (default: the function's qualified
    name) in ``supervisor``; without one, in the supervisor running the calling critical
    task, else in :meth:`Supervisor.get_instance`. Runtime is measured on that supervisor's
    clock. Exceptions, cancellation included, propagate unchanged; an exception is counted
    as an error, a cancellation is not.

    Args:
        func: the function, when used bare.
        name: the metrics name.
        supervisor: where to record.
    """

    def decorate(fn: Callable[P, Awaitable[T]]) -> Callable[P, Coroutine[Any, Any, T]]:
        label = name if name is not None else getattr(fn, "__qualname__", repr(fn))

        @functools.wraps(fn)
        async def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
            target = supervisor or current_supervisor() or Supervisor.get_instance()
            clock = target.clock
            started = clock.now()
            error: Exception | None = None
            try:
                return await fn(*args, **kwargs)
            except Exception as exc:
                error = exc
                raise
            finally:
                target.record_run(label, clock.now() - started, error)

        return wrapper

    if func is not None:
        return decorate(func)
    return decorate
