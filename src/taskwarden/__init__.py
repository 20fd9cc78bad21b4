"""taskwarden: the control plane for async work."""

from __future__ import annotations

from taskwarden.errors import (
    TaskwardenError,
)
from taskwarden.model import CancelationReason, OperationContext, OperationStatus, RunRecord

__all__ = [
    "CancelationReason",
    "OperationContext",
    "OperationStatus",
    "RunRecord",
    "TaskwardenError",
]
