"""``taskwarden resync --app PKG.MODULE:ATTR [--clean]``: bring the store in line with
an application's definitions.

A resync needs the definitions, which only the application has: without ``--app`` the
command refuses (exit 1, reason ``no-engine``, as the API of a server without one does).
With it, the definitions are loaded and the engine's own resync runs on the store (no
engine is started: nothing is claimed, recovered or run), then the command reports what
changed, from the records before and after.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from taskwarden.cli.common import (
    EXIT_USAGE,
    CommandError,
    add_common_options,
    emit_json,
    run_command,
)
from taskwarden.cli.ps import parse_metadata

if TYPE_CHECKING:
    from taskwarden.abc import Store
    from taskwarden.application import Application
    from taskwarden.processes import ProcessRecord

__all__ = ["ResyncReport", "register"]

EXIT_REFUSED = 1

# What a definition sets on its record (``engine.definitions.definition_fields``), and
# ``adhoc``, which a resync clears on a record that a definition now declares.
_DEFINED = (
    "name",
    "description",
    "params",
    "metadata",
    "cancellable",
    "special",
    "warning",
    "schedule",
    "resumable",
    "on_worker_lost",
    "lost_retries",
    "lease_seconds",
    "adhoc",
)
_PAGE = 500


def register(commands: Any) -> None:
    """Add the ``resync`` command to the CLI's subparsers."""
    parser = commands.add_parser(
        "resync",
        help="bring the store's records in line with an application's definitions",
        description="Load the definitions of the application PKG.MODULE:ATTR and resync "
        "the store with them: new definitions get idle records, changed ones are updated "
        "(never their runtime state); with --clean, every record that is not active is "
        "deleted first and rebuilt. Prints what was created, updated, recreated and "
        "removed.",
    )
    add_common_options(parser)
    parser.add_argument(
        "--app",
        metavar="PKG.MODULE:ATTR",
        default=None,
        help="the Application whose definitions to sync (as `taskwarden worker --app`)",
    )
    parser.add_argument(
        "--clean",
        action="store_true",
        help="delete every record that is not active first, then rebuild from the definitions",
    )
    parser.add_argument(
        "--prune",
        action="store_true",
        help="also delete the inactive records no definition of this application declares "
        "(off by default: the fleet's workers may serve other applications)",
    )
    parser.add_argument(
        "--metadata",
        action="append",
        type=parse_metadata,
        metavar="KEY=VALUE",
        help="only the definitions and records whose metadata[KEY] equals VALUE "
        "(repeatable, ANDed)",
    )
    parser.set_defaults(handler=_run)


@dataclass(slots=True, kw_only=True)
class ResyncReport:
    """What a resync changed in the store: root records by process id."""

    clean: bool
    prune: bool
    created: list[str] = field(default_factory=list)
    updated: list[tuple[str, list[str]]] = field(default_factory=list)
    recreated: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    unchanged: int = 0

    def to_document(self) -> dict[str, Any]:
        """The ``--json`` document."""
        return {
            "clean": self.clean,
            "prune": self.prune,
            "created": self.created,
            "updated": [{"processId": pid, "fields": fields} for pid, fields in self.updated],
            "recreated": self.recreated,
            "removed": self.removed,
            "unchanged": self.unchanged,
        }


def _run(args: argparse.Namespace) -> int:
    if args.app is None:
        print(
            "taskwarden resync: refused (no-engine): a resync needs the task definitions, "
            "which this command does not have: pass --app PKG.MODULE:ATTR (the application "
            "`taskwarden worker --app` runs), or POST /api/processes/resync on a server "
            "started with --app",
            file=sys.stderr,
        )
        return EXIT_REFUSED
    from taskwarden.application import load_application
    from taskwarden.errors import ConfigurationError

    try:
        application = load_application(args.app)
    except ConfigurationError as exc:
        print(f"taskwarden resync: {exc}", file=sys.stderr)
        return EXIT_USAGE

    async def body(store: Store, args: argparse.Namespace) -> int:
        return await _resync(store, args, application)

    return run_command(args, body)


_Snapshot = dict[str, tuple[Any, tuple[Any, ...]]]


async def _snapshot(store: Store) -> _Snapshot:
    """Every root record's creation time and defined fields, a page at a time."""
    records: _Snapshot = {}
    cursor: str | None = None
    while True:
        page = await store.list(limit=_PAGE, cursor=cursor)
        roots: list[ProcessRecord] = [record for record in page if record.depth == 0]
        for record in roots:
            records[record.process_id] = (
                record.created_at,
                tuple(getattr(record, name) for name in _DEFINED),
            )
        # Store order is by depth first: past the roots, nothing more to read.
        if len(page) < _PAGE or len(roots) < len(page):
            return records
        cursor = page[-1].cursor


def _compare(before: _Snapshot, after: _Snapshot, report: ResyncReport) -> None:
    for process_id in sorted(after):
        if process_id not in before:
            report.created.append(process_id)
            continue
        (was_created, was), (created, now) = before[process_id], after[process_id]
        if was_created != created:
            report.recreated.append(process_id)
            continue
        fields = [name for name, old, new in zip(_DEFINED, was, now, strict=True) if old != new]
        if fields:
            report.updated.append((process_id, fields))
        else:
            report.unchanged += 1
    report.removed.extend(sorted(set(before) - set(after)))


async def _resync(store: Store, args: argparse.Namespace, application: Application) -> int:
    from taskwarden.engine import Engine
    from taskwarden.errors import StoreError, TaskwardenError
    from taskwarden.registry import OperationRegistry

    before = await _snapshot(store)
    engine = Engine(
        store,
        get_task_definitions=application.get_task_definitions,
        services=application.services,
        registry=OperationRegistry(),
    )
    engine.prune_undefined = args.prune
    metadata = dict(args.metadata) if args.metadata else None
    try:
        await engine.resync(clean=args.clean, metadata_filter=metadata)
    except StoreError:
        raise
    except TaskwardenError as exc:
        raise CommandError(EXIT_REFUSED, f"refused ({exc.reason}): {exc}") from None
    except Exception as exc:
        raise CommandError(
            EXIT_REFUSED,
            f"refused (definitions-failed): {args.app}'s get_task_definitions raised "
            f"{type(exc).__name__}: {exc}; nothing was changed",
        ) from None
    report = ResyncReport(clean=args.clean, prune=args.prune)
    _compare(before, await _snapshot(store), report)
    if args.json:
        emit_json(report.to_document())
        return 0
    for label, ids in (("created", report.created), ("recreated", report.recreated)):
        for process_id in ids:
            print(f"{label:<10} {process_id}")
    for process_id, fields in report.updated:
        print(f"{'updated':<10} {process_id}: {', '.join(fields)}")
    for process_id in report.removed:
        print(f"{'removed':<10} {process_id}")
    counts = (
        f"{len(report.created)} created, {len(report.updated)} updated, "
        f"{len(report.recreated)} recreated, {len(report.removed)} removed, "
        f"{report.unchanged} unchanged"
    )
    print(f"taskwarden resync: {args.app}: {counts}", file=sys.stderr)
    return 0
