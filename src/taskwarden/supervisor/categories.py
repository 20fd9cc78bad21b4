"""Naming and categorizing the asyncio tasks of an event loop by name prefix."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from typing import Any

from taskwarden.errors import ConfigurationError
from taskwarden.supervisor.config import TaskCategory

__all__ = ["DEFAULT_CATEGORY_PREFIXES", "TaskCategorizer", "get_task_name"]

DEFAULT_CATEGORY_PREFIXES: Mapping[str, TaskCategory] = {
    # asyncio's default names ("Task-12"): tasks started without a name, mostly plumbing.
    "Task-": TaskCategory.SYSTEM,
    "taskwarden-": TaskCategory.SYSTEM,
}
"""Prefixes every :class:`TaskCategorizer` knows unless told otherwise."""


def get_task_name(task: asyncio.Task[Any]) -> str:
    """A readable name for ``task``: its name, or its coroutine's qualified name if unnamed."""
    name = task.get_name()
    if name and name not in ("None", "unnamed"):
        return name
    coro = task.get_coro()
    return str(getattr(coro, "__qualname__", coro))


class TaskCategorizer:
    """Sorts asyncio tasks into :class:`TaskCategory` by the prefixes of their names.

    The longest matching prefix wins, so ``{"bot.": SYSTEM, "bot.gateway.": GATEWAY}``
    files ``bot.gateway.shard-0`` under gateway. A name no prefix matches is ``UNKNOWN``.

    >>> categorizer = TaskCategorizer({"gateway-": TaskCategory.GATEWAY})
    >>> categorizer.category_of("gateway-shard-0").value
    'gateway'
    >>> categorizer.category_of("Task-7").value
    'system'
    >>> categorizer.category_of("mystery").value
    'unknown'

    Args:
        prefixes: prefix to category, added to (and overriding) ``defaults``.
        defaults: the prefixes known before ``prefixes``; pass ``{}`` to start empty.
    """

    __slots__ = ("_prefixes",)

    def __init__(
        self,
        prefixes: Mapping[str, TaskCategory | str] | None = None,
        *,
        defaults: Mapping[str, TaskCategory] = DEFAULT_CATEGORY_PREFIXES,
    ) -> None:
        merged: dict[str, TaskCategory] = dict(defaults)
        for prefix, category in (prefixes or {}).items():
            if not isinstance(prefix, str) or not prefix:
                raise ConfigurationError(
                    f"category prefixes must be non-empty strings, got {prefix!r}"
                )
            try:
                merged[prefix] = TaskCategory(category)
            except ValueError:
                choices = ", ".join(c.value for c in TaskCategory)
                raise ConfigurationError(
                    f"unknown task category {category!r} for prefix {prefix!r}: use one of "
                    f"{choices}"
                ) from None
        # Longest first: the first match is the most specific one.
        self._prefixes = tuple(sorted(merged.items(), key=lambda item: -len(item[0])))

    @property
    def prefixes(self) -> dict[str, TaskCategory]:
        """The prefixes in effect, most specific first."""
        return dict(self._prefixes)

    def category_of(self, name: str) -> TaskCategory:
        """The category of a task named ``name``."""
        for prefix, category in self._prefixes:
            if name.startswith(prefix):
                return category
        return TaskCategory.UNKNOWN

    def categorize(
        self, tasks: Iterable[asyncio.Task[Any]]
    ) -> dict[TaskCategory, list[asyncio.Task[Any]]]:
        """The unfinished ``tasks`` grouped by category (every category present as a key)."""
        grouped: dict[TaskCategory, list[asyncio.Task[Any]]] = {c: [] for c in TaskCategory}
        for task in tasks:
            if not task.done():
                grouped[self.category_of(get_task_name(task))].append(task)
        return grouped
