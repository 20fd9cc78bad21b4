"""Ready-made ``on_child_progress`` callbacks that turn children's progress into the parent's.

Example::

    from taskwarden.engine.progress_helpers import sequential_progress

    on_progress = sequential_progress(ctx, 2)
    await ctx.run_child(step_one, f"{ctx.process_id}/1", "Step 1", on_child_progress=on_progress)
    await ctx.run_child(step_two, f"{ctx.process_id}/2", "Step 2", on_child_progress=on_progress)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from taskwarden.engine.children import ChildProgressCallback, ChildProgressInfo
from taskwarden.errors import ConfigurationError

if TYPE_CHECKING:
    from taskwarden.engine.context import ProcessContext

__all__ = ["average_progress", "mapped_progress", "sequential_progress"]

_TERMINAL = frozenset({"done", "failed", "cancelled"})


def _percent(info: ChildProgressInfo) -> float:
    if info.state in _TERMINAL:
        return 100.0
    return float(info.percent) if info.percent is not None else 0.0


def sequential_progress(ctx: ProcessContext, total_children: int) -> ChildProgressCallback:
    """Split the parent's 0-100 % into ``total_children`` equal slots, one per child in the
    order the children first report; each child's 0-100 % fills its slot.

    Pass the same callback to each of the sequential ``run_child`` calls.
    """
    if (
        isinstance(total_children, bool)
        or not isinstance(total_children, int)
        or total_children < 1
    ):
        raise ConfigurationError(f"total_children must be an int >= 1, got {total_children!r}")
    slots: dict[str, int] = {}

    def callback(infos: list[ChildProgressInfo]) -> None:
        for info in infos:
            slot = slots.setdefault(info.process_id, len(slots))
            slot = min(slot, total_children - 1)
            value = (slot * 100.0 + _percent(info)) / total_children
            ctx.report_progress(min(100.0, value))

    return callback


def average_progress(ctx: ProcessContext) -> ChildProgressCallback:
    """Parent percent = the average of the children's percents; children in a terminal
    state (done, failed, cancelled) count as 100 %."""

    def callback(infos: list[ChildProgressInfo]) -> None:
        if infos:
            ctx.report_progress(sum(_percent(info) for info in infos) / len(infos))

    return callback


def mapped_progress(
    ctx: ProcessContext, range_start: float, range_end: float
) -> ChildProgressCallback:
    """Map one child's 0-100 % onto the fraction range ``range_start``..``range_end`` (each
    0.0-1.0) of the parent: ``mapped_progress(ctx, 0.0, 0.25)`` fills the first quarter."""
    if not 0.0 <= range_start <= range_end <= 1.0:
        raise ConfigurationError(
            f"mapped_progress needs 0.0 <= range_start <= range_end <= 1.0, got "
            f"{range_start!r}..{range_end!r}"
        )

    def callback(infos: list[ChildProgressInfo]) -> None:
        if infos:
            fraction = _percent(infos[-1]) / 100.0
            ctx.report_progress((range_start + (range_end - range_start) * fraction) * 100.0)

    return callback
