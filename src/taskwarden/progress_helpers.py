"""``on_child_progress`` callbacks for child processes (seed 004's ``progress_helpers``).

Re-exported from :mod:`taskwarden.engine.progress_helpers`, so the seed's
``from optio_core.progress_helpers import ...`` becomes
``from taskwarden.progress_helpers import ...``.
"""

from __future__ import annotations

from taskwarden.engine.progress_helpers import (
    average_progress,
    mapped_progress,
    sequential_progress,
)

__all__ = ["average_progress", "mapped_progress", "sequential_progress"]
