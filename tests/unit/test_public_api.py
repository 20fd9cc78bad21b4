"""The package's public surface: ``__all__`` is exact, and the core loads no optional stack."""

from __future__ import annotations

import subprocess
import sys

import taskwarden


def test_all_lists_exactly_the_public_names() -> None:
    assert set(taskwarden.__all__) - {"__version__"} == set(taskwarden._LAZY)
    assert len(taskwarden.__all__) == len(set(taskwarden.__all__))
    for name in taskwarden.__all__:
        assert getattr(taskwarden, name) is not None
    public = {name for name in vars(taskwarden) if not name.startswith("_")}
    modules = {name for name in public if type(getattr(taskwarden, name)).__name__ == "module"}
    typing_names = {"annotations", "TYPE_CHECKING", "Any"}
    assert public - modules - typing_names - set(taskwarden.__all__) == set()
    assert set(taskwarden.__all__) <= set(dir(taskwarden))


def test_importing_the_package_imports_what_is_used_only() -> None:
    """``import taskwarden`` loads no engine, supervisor or store (the CLI starts fast);
    a name's module loads on its first use."""
    code = (
        "import sys, taskwarden\n"
        "print(sorted(m for m in sys.modules if m.startswith('taskwarden.')))\n"
        "taskwarden.RetryPolicy\n"
        "print('taskwarden.engine.retries' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    first, used = out.stdout.strip().splitlines()
    assert first == "[]" and used == "True"


def test_every_public_object_has_a_docstring() -> None:
    missing = [
        name
        for name in taskwarden.__all__
        if callable(getattr(taskwarden, name)) and not getattr(taskwarden, name).__doc__
    ]
    assert missing == []


def test_importing_the_core_loads_no_driver_web_or_terminal_library() -> None:
    code = (
        "import sys, taskwarden, taskwarden.scope, taskwarden.registry, taskwarden.history\n"
        "heavy = ('rich', 'asyncpg', 'psycopg', 'redis', 'fastapi', 'starlette', 'uvicorn',"
        " 'anyio', 'prometheus_client')\n"
        "print(','.join(sorted(m for m in sys.modules if m.split('.')[0] in heavy)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
