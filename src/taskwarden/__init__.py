"""taskwarden: the control plane for async work.

Track, launch, cancel, supervise and watch every long-running operation of an application.
This module is the curated public API: everything a user needs is importable from here.
"""

from __future__ import annotations

from taskwarden.errors import (
    BusError,
    ChildProcessCancelled,
    ChildProcessFailed,
    ConfigurationError,
    InvalidDefinition,
    InvalidTransition,
    LaunchBlocked,
    MissingExtra,
    NoResumeSupport,
    NotCancellable,
    OperationNotFound,
    ProcessNotFound,
    RequestTimeout,
    SchemaError,
    ShutdownTimeout,
    StoreError,
    TaskwardenError,
)
from taskwarden.history import ExecutionHistory, ExecutionRegistry
from taskwarden.model import (
    CancelationReason,
    OperationContext,
    OperationStatus,
    RunRecord,
)
from taskwarden.registry import OperationRegistry
from taskwarden.scope import Cancelable, CancelationToken, current_operation

__version__ = "0.1.0"

__all__ = [
    "BusError",
    "Cancelable",
    "CancelationReason",
    "CancelationToken",
    "ChildProcessCancelled",
    "ChildProcessFailed",
    "ConfigurationError",
    "ExecutionHistory",
    "ExecutionRegistry",
    "InvalidDefinition",
    "InvalidTransition",
    "LaunchBlocked",
    "MissingExtra",
    "NoResumeSupport",
    "NotCancellable",
    "OperationContext",
    "OperationNotFound",
    "OperationRegistry",
    "OperationStatus",
    "ProcessNotFound",
    "RequestTimeout",
    "RunRecord",
    "SchemaError",
    "ShutdownTimeout",
    "StoreError",
    "TaskwardenError",
    "__version__",
    "current_operation",
]
