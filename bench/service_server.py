#!/usr/bin/env python3
"""``taskwarden serve`` for ``bench_service.py``, with the server's store calls counted.

    BENCH_STORE_CALLS=FILE python bench/service_server.py serve --store URL [--bus URL] ...

Runs the real command (``taskwarden.cli.main``) in this process after wrapping every
public coroutine method of the SQLite and PostgreSQL stores with a counter; a daemon thread
writes the counts as JSON to ``$BENCH_STORE_CALLS`` every 0.2 s, so the driver reads the
server's own store load (the feed's and the routes') beside PostgreSQL's counters.

``BENCH_COALESCE`` (seconds), when set, replaces ``create_app``'s default ``coalesce``: a
diagnostic for what the latency would be with another setting; the table's main rows run
with the defaults.
"""

from __future__ import annotations

import functools
import inspect
import json
import os
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))

SKIP = frozenset({"open", "close", "ping"})


def _count_calls(path: Path) -> None:
    from taskwarden.stores.postgres import PostgresStore
    from taskwarden.stores.sqlite import SQLiteStore

    counts: dict[str, list[int]] = {}
    for cls in (SQLiteStore, PostgresStore):
        for name, method in inspect.getmembers(cls, inspect.iscoroutinefunction):
            if name.startswith("_") or name in SKIP:
                continue
            cell = counts.setdefault(name, [0])
            setattr(cls, name, _counted(method, cell))

    def dump() -> None:
        tmp = path.with_suffix(".tmp")
        while True:  # a daemon thread: it ends with the process
            snapshot = {name: cell[0] for name, cell in counts.items()}
            tmp.write_text(json.dumps({"t": time.monotonic(), "calls": snapshot}))
            os.replace(tmp, path)
            time.sleep(0.2)

    threading.Thread(target=dump, name="bench-store-calls", daemon=True).start()


def _counted(method: Callable[..., Any], cell: list[int]) -> Callable[..., Any]:
    @functools.wraps(method)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        cell[0] += 1
        return await method(*args, **kwargs)

    return wrapper


def main() -> int:
    calls = os.environ.get("BENCH_STORE_CALLS")
    if calls:
        _count_calls(Path(calls))
    coalesce = os.environ.get("BENCH_COALESCE")
    if coalesce:
        import taskwarden.cli.serving as serving

        serving.create_app = functools.partial(serving.create_app, coalesce=float(coalesce))  # type: ignore[assignment]
    from taskwarden.cli import main as cli_main

    return cli_main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
