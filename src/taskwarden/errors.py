"""The exceptions taskwarden raises, all under one root.

Every refusal is a typed exception with a stable ``reason`` code, so a remote caller that
receives it as data can tell the cases apart without parsing messages::

    TaskwardenError                          reason
    ├── ConfigurationError (ValueError)      invalid-configuration
    │   └── MissingExtra (ImportError)       missing-extra
    ├── InvalidDefinition (ValueError)       invalid-definition
    ├── OperationNotFound (LookupError)      not-found
    ├── ProcessNotFound (LookupError)        not-found
    ├── InvalidTransition (ValueError)       invalid-state
    │   └── LeaseLost                        lease-lost
    ├── NotCancellable                       not-cancellable
    ├── LaunchBlocked                        launch-blocked
    ├── NoResumeSupport                      no-resume-support
    ├── ChildProcessFailed (RuntimeError)    child-failed
    │   └── ChildProcessCancelled            child-cancelled
    ├── StoreError (OSError)                 store-error
    │   └── SchemaError                      schema-error
    ├── BusError (OSError)                   bus-error
    │   ├── RequestTimeout (TimeoutError)    timeout
    │   ├── InvalidPayload (ValueError)      invalid-payload
    │   └── RemoteHandlerError               handler-error
    └── ShutdownTimeout (TimeoutError)       shutdown-timeout
"""

from __future__ import annotations

from typing import ClassVar


class TaskwardenError(Exception):
    """Root of every exception taskwarden raises on purpose."""

    reason: ClassVar[str] = "error"


class ConfigurationError(TaskwardenError, ValueError):
    """A setting, URL or argument is invalid; the message says which and how to fix it."""

    reason = "invalid-configuration"


class MissingExtra(ConfigurationError, ImportError):
    """A backend needs an optional dependency that is not installed."""

    reason = "missing-extra"

    def __init__(self, feature: str, extra: str) -> None:
        super().__init__(
            f"{feature} needs an optional dependency: pip install 'taskwarden[{extra}]'"
        )
        self.feature = feature
        self.extra = extra


class InvalidDefinition(TaskwardenError, ValueError):
    """A task definition is invalid (a bad cron expression, a duplicate id, ...)."""

    reason = "invalid-definition"


class OperationNotFound(TaskwardenError, LookupError):
    """No live operation has the given id."""

    reason = "not-found"


class ProcessNotFound(TaskwardenError, LookupError):
    """No process record has the given process id."""

    reason = "not-found"

    def __init__(self, process_id: str, message: str | None = None) -> None:
        super().__init__(message or f"no process with id {process_id!r}: check the id, or resync")
        self.process_id = process_id


class InvalidTransition(TaskwardenError, ValueError):
    """A state change was refused because the record is not in an expected state."""

    reason = "invalid-state"

    def __init__(
        self,
        process_id: str,
        current: str | None,
        target: str,
        message: str | None = None,
    ) -> None:
        super().__init__(
            message
            or f"process {process_id!r} is {current!r}: it cannot become {target!r} from there"
        )
        self.process_id = process_id
        self.current = current
        self.target = target


class LeaseLost(InvalidTransition):
    """A fenced write was refused: the process is no longer leased by the writer (its lease
    expired and was reaped, and maybe another worker runs it now). The writer must stop its
    copy of the run and drop its result."""

    reason = "lease-lost"


class NotCancellable(TaskwardenError):
    """The process is defined with ``cancellable=False``, or is not in a cancellable state."""

    reason = "not-cancellable"

    def __init__(self, process_id: str, message: str | None = None) -> None:
        super().__init__(message or f"process {process_id!r} cannot be cancelled")
        self.process_id = process_id


class LaunchBlocked(TaskwardenError):
    """Launches are blocked (``block_launches()``); unblock them to launch again."""

    reason = "launch-blocked"

    def __init__(self, process_id: str) -> None:
        super().__init__(
            f"launching {process_id!r} refused: launches are blocked; call unblock_launches()"
        )
        self.process_id = process_id


class NoResumeSupport(TaskwardenError):
    """The process cannot be resumed after its worker died."""

    reason = "no-resume-support"


class ChildProcessFailed(TaskwardenError, RuntimeError):
    """A child process failed and the parent did not ask to survive failures."""

    reason = "child-failed"

    def __init__(self, process_id: str, state: str, error: str | None = None) -> None:
        detail = f": {error}" if error else ""
        super().__init__(f"child process {process_id!r} ended {state}{detail}")
        self.process_id = process_id
        self.state = state
        self.error = error


class ChildProcessCancelled(ChildProcessFailed):
    """A child process was cancelled and the parent did not ask to survive cancels."""

    reason = "child-cancelled"


class StoreError(TaskwardenError, OSError):
    """The store failed (connection lost, database error); the cause is chained."""

    reason = "store-error"


class SchemaError(StoreError):
    """The database schema is newer than this version of taskwarden, or a migration failed."""

    reason = "schema-error"


class BusError(TaskwardenError, OSError):
    """The bus failed to publish, subscribe or deliver; the cause is chained."""

    reason = "bus-error"


class RequestTimeout(BusError, TimeoutError):
    """A request over the bus got no reply within its timeout."""

    reason = "timeout"


class InvalidPayload(BusError, ValueError):
    """A bus payload is not a JSON object of JSON-able values; send plain dicts."""

    reason = "invalid-payload"


class RemoteHandlerError(BusError):
    """The server's request handler raised; ``remote_type`` names the remote exception."""

    reason = "handler-error"

    def __init__(self, topic: str, remote_type: str, remote_message: str) -> None:
        super().__init__(
            f"the handler of {topic!r} failed with {remote_type}: {remote_message}; "
            "see the serving process's log"
        )
        self.topic = topic
        self.remote_type = remote_type
        self.remote_message = remote_message


class ShutdownTimeout(TaskwardenError, TimeoutError):
    """Shutdown did not finish within its deadline; the message names what was left."""

    reason = "shutdown-timeout"
