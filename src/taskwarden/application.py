"""The application that ``taskwarden worker`` and ``taskwarden serve`` run: ``PKG.MODULE:ATTR``.

One form: ``ATTR`` names an :class:`Application` object in an importable module::

    # myapp/tasks.py
    from taskwarden import Application

    async def get_tasks(services, metadata_filter=None):
        return [TaskInstance(execute=resize, process_id="resize", name="Resize")]

    application = Application(get_tasks, services={"bucket": "images"})

and then ``taskwarden worker --app myapp.tasks:application``.
"""

from __future__ import annotations

import importlib
import sys
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from taskwarden.errors import ConfigurationError

if TYPE_CHECKING:
    from taskwarden.engine.engine import GetTaskDefinitions

__all__ = ["Application", "ApplicationNotFound", "load_application"]


class ApplicationNotFound(ConfigurationError):
    """``--app PKG.MODULE:ATTR`` does not name an :class:`Application`; the message says
    what was wrong (the form, the import, the attribute or its type) and what to do."""


@dataclass(slots=True)
class Application:
    """What a worker or a server hosts: the definitions and the services they get.

    Args:
        get_task_definitions: ``async (services, metadata_filter=None) ->
            list[TaskInstance]`` (a one-argument ``(services)`` function works too).
        services: passed to every task as ``ctx.services``.
        name: a label for logs and the worker record (default: the reference).
    """

    get_task_definitions: GetTaskDefinitions
    services: dict[str, Any] = field(default_factory=dict)
    name: str | None = None


def load_application(reference: str) -> Application:
    """Import ``PKG.MODULE:ATTR`` and return the :class:`Application` it names.

    The current folder is importable, as with ``python -m``.

    Raises:
        ApplicationNotFound: the reference is malformed, the module does not import, the
            attribute is missing, or it is not an Application.
    """
    module_name, sep, attr = reference.partition(":")
    if (
        not sep
        or not module_name
        or not attr
        or not all(part.isidentifier() for part in (*module_name.split("."), *attr.split(".")))
    ):
        raise ApplicationNotFound(
            f"--app {reference!r} is not of the form PKG.MODULE:ATTR "
            "(for example myapp.tasks:application)"
        )
    if "" not in sys.path:
        sys.path.insert(0, "")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ApplicationNotFound(
            f"--app {reference!r}: module {module_name!r} cannot be imported ({exc}); run from "
            "the folder that contains it or add it to PYTHONPATH"
        ) from None
    target: Any = module
    for part in attr.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise ApplicationNotFound(
                f"--app {reference!r}: module {module_name!r} has no attribute {attr!r}"
            ) from None
    if isinstance(target, Application):
        if target.name is None:
            target.name = reference
        return target
    hint = f"; wrap it: {attr} = Application({attr}_function)" if callable(target) else ""
    raise ApplicationNotFound(
        f"--app {reference!r} names a {type(target).__name__}, not a taskwarden.Application{hint}"
    )
