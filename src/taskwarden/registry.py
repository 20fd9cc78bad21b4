"""The registry of live operations in this OS process.

Every :class:`~taskwarden.scope.Cancelable` joins a registry when it enters and leaves it when
it exits, handing its finished context to the registry's
:class:`~taskwarden.history.ExecutionHistory`. Lookups by id, name and parent cost what they
return, not the size of the registry. All state is guarded by one ``threading.Lock`` (never
an asyncio lock), so the registry can be read from any thread and shared by event loops
running in several threads at once.
"""

from __future__ import annotations

import fnmatch
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, ClassVar

from taskwarden.history import ExecutionHistory, get_default_history
from taskwarden.model import CancelationReason, OperationContext, OperationStatus, parse_sequence

if TYPE_CHECKING:
    from taskwarden.scope import Cancelable

__all__ = ["OperationNode", "OperationRegistry", "RegistryStats", "StuckOperation"]

_GLOB_CHARS = re.compile(r"[*?\[]")


@dataclass(slots=True, kw_only=True)
class OperationNode:
    """One live operation and its live children, as returned by :meth:`OperationRegistry.tree`."""

    context: OperationContext
    children: list[OperationNode] = field(default_factory=list)


@dataclass(frozen=True, slots=True, kw_only=True)
class StuckOperation:
    """A live operation running longer than a threshold, and where it is awaiting."""

    context: OperationContext
    elapsed: float
    stack: tuple[str, ...]
    """``file:line in function`` frames of its task's coroutine, outermost first."""


@dataclass(frozen=True, slots=True, kw_only=True)
class RegistryStats:
    """A summary of the live operations."""

    active: int
    by_status: dict[str, int]
    longest_running: OperationContext | None
    longest_elapsed: float
    finished_in_history: int


class OperationRegistry:
    """The live operations of this OS process, indexed by id, name and parent.

    Use :meth:`get_instance` for the process-wide default (what scopes join unless told
    otherwise), or make explicit instances and pass them as ``Cancelable(registry=...)``
    so tests never share state.

    Args:
        history: where finished operations go; a new bounded one by default.
        history_size: the bound of that default history.
    """

    _instance: ClassVar[OperationRegistry | None] = None
    _instance_lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(
        self, *, history: ExecutionHistory | None = None, history_size: int = 10_000
    ) -> None:
        # Keyed by the per-process sequence number inside each id: formatting every id up
        # front would cost more than the rest of registering.
        self._active: dict[int, Cancelable] = {}
        self._foreign_ids: dict[str, Cancelable] = {}  # scopes given an id of their own
        # A name maps to its one live scope, or to a list when several share it: most names
        # are unique, and a container per name would double the memory of a pending scope.
        self._by_name: dict[str, Cancelable | list[Cancelable]] = {}
        self.history = (
            history if history is not None else ExecutionHistory(max_entries=history_size)
        )
        # One lock for the registry and its history: finishing an operation leaves the
        # active set and enters the history in one critical section.
        self._lock = self.history._lock

    @classmethod
    def get_instance(cls) -> OperationRegistry:
        """The process-wide default registry (created on first use)."""
        instance = cls._instance
        if instance is None:
            with cls._instance_lock:
                instance = cls._instance
                if instance is None:
                    # Shares the seed 001 facade's history, so ExecutionRegistry shows scopes.
                    instance = cls._instance = cls(history=get_default_history())
        return instance

    @classmethod
    def set_instance(cls, registry: OperationRegistry | None) -> None:
        """Replace the process-wide default (None: a fresh one is made on next use)."""
        with cls._instance_lock:
            cls._instance = registry

    # ------------------------------------------------------------------ called by scopes
    def _add(self, scope: Cancelable) -> None:
        name = scope.name
        with self._lock:
            self._active[scope._seq] = scope
            if scope._id is not None:
                self._foreign_ids[scope._id] = scope
            existing = self._by_name.get(name)
            if existing is None:
                self._by_name[name] = scope
            elif isinstance(existing, list):
                existing.append(scope)
            else:
                self._by_name[name] = [existing, scope]

    def _finish(self, scope: Cancelable) -> None:
        name = scope.name
        history = self.history
        with self._lock:
            if self._active.pop(scope._seq, None) is not None:
                if self._foreign_ids and scope._id is not None:
                    self._foreign_ids.pop(scope._id, None)
                by_name = self._by_name
                existing = by_name.get(name)
                if existing is scope:
                    del by_name[name]
                elif isinstance(existing, list):
                    existing.remove(scope)
                    if len(existing) == 1:
                        by_name[name] = existing[0]
            history._record_locked(scope)
            sinks = history._sinks
        if sinks:
            history._notify(scope, sinks)

    def _lookup(self, operation_id: str) -> Cancelable | None:
        if self._foreign_ids:
            found = self._foreign_ids.get(operation_id)
            if found is not None:
                return found
        sequence = parse_sequence(operation_id)
        if sequence is None:
            return None
        scope = self._active.get(sequence)
        return scope if scope is not None and scope.id == operation_id else None

    # ------------------------------------------------------------------ lookups
    def __len__(self) -> int:
        return len(self._active)

    def get_active_operations(self) -> list[OperationContext]:
        """The contexts of every live operation, oldest first."""
        with self._lock:
            scopes = list(self._active.values())
        return list(scopes)

    def get_operation(self, operation_id: str) -> OperationContext | None:
        """The live operation with this id, or None."""
        return self._lookup(operation_id)

    def get_scope(self, operation_id: str) -> Cancelable | None:
        """The live scope (to cancel it, add callbacks...) with this id, or None."""
        return self._lookup(operation_id)

    def get_operation_by_name(self, name: str) -> OperationContext | None:
        """The most recently started live operation with this name, or None."""
        with self._lock:
            found = self._by_name.get(name)
            if isinstance(found, list):
                found = found[-1]
        return found.context if found is not None else None

    def get_operations_by_name(self, name: str) -> list[OperationContext]:
        """Every live operation with this name, oldest first."""
        return [scope.context for scope in self._scopes_named(name)]

    def get_children(self, operation_id: str) -> list[OperationContext]:
        """The live registered children of an operation (empty if it is not live)."""
        scope = self._lookup(operation_id)
        if scope is None:
            return []
        return [child for child in scope.children if child._registry is self]

    async def get_history(
        self,
        limit: int | None = None,
        status: OperationStatus | str | None = None,
        since: float | datetime | None = None,
    ) -> list[OperationContext]:
        """Finished operations, newest first; ``since`` keeps those that ended after it."""
        return self.history.query(limit=limit, status=status, since=since)

    def tree(self) -> list[OperationNode]:
        """The live operations as a forest: roots are those with no live registered parent."""
        with self._lock:
            scopes = list(self._active.values())
        nodes = {scope.id: OperationNode(context=scope) for scope in scopes}
        roots: list[OperationNode] = []
        for scope in scopes:
            node = nodes[scope.id]
            parent_id = scope.context.parent_id
            parent_node = nodes.get(parent_id) if parent_id is not None else None
            if parent_node is None:
                roots.append(node)
            else:
                parent_node.children.append(node)
        return roots

    def render_tree(self) -> Any:
        """The live tree as a ``rich.tree.Tree`` (needs ``rich``)."""
        from rich.tree import Tree

        top = Tree(f"[bold]{len(self._active)} live operation(s)")

        def add(branch: Tree, node: OperationNode) -> None:
            ctx = node.context
            progress = f" {ctx.progress_percent:.0f}%" if ctx.progress_percent is not None else ""
            label = (
                f"[cyan]{ctx.name}[/] [dim]{ctx.id[-10:]}[/] {ctx.status.value}{progress} "
                f"[dim]{ctx.elapsed_time:.2f}s[/]"
            )
            if ctx.progress_message:
                label += f" [italic]{ctx.progress_message}[/]"
            sub = branch.add(label)
            for child in node.children:
                add(sub, child)

        for root in self.tree():
            add(top, root)
        return top

    def stats(self) -> RegistryStats:
        """Counts of live operations by status and the longest running one."""
        with self._lock:
            scopes = list(self._active.values())
        by_status: dict[str, int] = {}
        longest: OperationContext | None = None
        for scope in scopes:
            ctx = scope.context
            by_status[ctx.status.value] = by_status.get(ctx.status.value, 0) + 1
            if longest is None or ctx.start_time < longest.start_time:
                longest = ctx
        return RegistryStats(
            active=len(scopes),
            by_status=by_status,
            longest_running=longest,
            longest_elapsed=longest.elapsed_time if longest is not None else 0.0,
            finished_in_history=len(self.history),
        )

    def find_stuck(self, threshold: float, *, stack_limit: int = 20) -> list[StuckOperation]:
        """Live operations running longer than ``threshold`` seconds, longest first.

        Each comes with the frames where its task's coroutine is suspended, so a stuck
        ``await`` can be found without a debugger.
        """
        now = time.time()
        with self._lock:
            scopes = [s for s in self._active.values() if now - s.context.start_time > threshold]
        stuck = []
        for scope in scopes:
            frames: list[str] = []
            task = scope.task
            if task is not None and not task.done():
                for frame in task.get_stack(limit=stack_limit):
                    code = frame.f_code
                    frames.append(f"{code.co_filename}:{frame.f_lineno} in {code.co_name}")
            stuck.append(
                StuckOperation(
                    context=scope.context,
                    elapsed=now - scope.context.start_time,
                    stack=tuple(frames),
                )
            )
        stuck.sort(key=lambda item: item.elapsed, reverse=True)
        return stuck

    # ------------------------------------------------------------------ actions
    async def cancel_all(
        self,
        name_pattern: str | None = None,
        min_age_seconds: float | None = None,
        max_age_seconds: float | None = None,
        filter_func: Callable[[Cancelable], bool] | None = None,
        reason: CancelationReason = CancelationReason.MANUAL,
        message: str | None = None,
    ) -> int:
        """Cancel every live operation that matches all the given filters.

        Args:
            name_pattern: a glob (``user_123_*``); an exact name uses the name index.
            min_age_seconds: only operations running at least this long.
            max_age_seconds: only operations running at most this long.
            filter_func: called with each candidate scope; true keeps it.
            reason: the cancel reason recorded on each.
            message: the cancel message recorded on each.

        Returns:
            How many operations this call cancelled.
        """
        return self.cancel_all_sync(
            name_pattern=name_pattern,
            min_age_seconds=min_age_seconds,
            max_age_seconds=max_age_seconds,
            filter_func=filter_func,
            reason=reason,
            message=message,
        )

    def cancel_all_sync(
        self,
        name_pattern: str | None = None,
        min_age_seconds: float | None = None,
        max_age_seconds: float | None = None,
        filter_func: Callable[[Cancelable], bool] | None = None,
        reason: CancelationReason = CancelationReason.MANUAL,
        message: str | None = None,
    ) -> int:
        """:meth:`cancel_all` for synchronous code and other threads."""
        if name_pattern is not None and not _GLOB_CHARS.search(name_pattern):
            candidates = self._scopes_named(name_pattern)
        else:
            with self._lock:
                candidates = list(self._active.values())
            if name_pattern is not None:
                match = re.compile(fnmatch.translate(name_pattern)).match
                candidates = [s for s in candidates if match(s.context.name)]
        now = time.time()
        if min_age_seconds is not None:
            candidates = [s for s in candidates if now - s.context.start_time >= min_age_seconds]
        if max_age_seconds is not None:
            candidates = [s for s in candidates if now - s.context.start_time <= max_age_seconds]
        if filter_func is not None:
            candidates = [s for s in candidates if filter_func(s)]
        text = message if message is not None else "cancelled by cancel_all"
        return sum(1 for scope in candidates if scope.cancel_sync(reason, text))

    async def cleanup_completed(self, max_age_seconds: float | None = None) -> int:
        """Forget finished operations (all, or those that ended over ``max_age_seconds`` ago).

        Returns how many were removed from the history, so their memory can be freed.
        """
        cutoff = None if max_age_seconds is None else time.time() - max_age_seconds
        return self.history.prune(ended_before=cutoff)

    def clear(self) -> None:
        """Forget every operation, live and finished (live scopes keep running untracked)."""
        with self._lock:
            self._active.clear()
            self._foreign_ids.clear()
            self._by_name.clear()
        self.history.clear()

    def _scopes_named(self, name: str) -> list[Cancelable]:
        with self._lock:
            found = self._by_name.get(name)
            if found is None:
                return []
            return list(found) if isinstance(found, list) else [found]

    def __repr__(self) -> str:
        return f"<OperationRegistry active={len(self._active)} finished={len(self.history)}>"
