"""Code shared by the store backends: argument checks, encoding, and the transient-retry helper.

Nothing here is part of the :class:`~taskwarden.abc.Store` contract; backends use it so that
they refuse the same inputs with the same errors.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from importlib import resources
from typing import Any, TypeVar

from taskwarden.errors import (
    ConfigurationError,
    InvalidDefinition,
    InvalidTransition,
    LeaseLost,
    SchemaError,
    StoreError,
)
from taskwarden.model import CancelationReason, OperationStatus, RunRecord
from taskwarden.processes import (
    DEFINITION_FIELDS,
    END_STATES,
    RUNTIME_FIELDS,
    LogEntry,
    ProcessRecord,
    ProcessState,
    can_transition,
    decode_cursor,
)

__all__ = [
    "BOOL_FIELDS",
    "GUARD_FIELDS",
    "JSON_FIELDS",
    "MAX_LOG_DEFAULT",
    "PROCESS_COLUMNS",
    "PROCESS_FIELDS",
    "RUN_COLUMNS",
    "RUN_FIELDS",
    "TIME_FIELDS",
    "Guard",
    "ServedIds",
    "check_definition_fields",
    "check_edges",
    "check_guard",
    "check_limit",
    "check_metadata_filter",
    "check_runtime_fields",
    "decode_dt",
    "decode_log",
    "duplicate_process",
    "encode_dt",
    "encode_log",
    "field_encoder",
    "guard_sql",
    "implied_sets",
    "json_dumps",
    "json_loads",
    "list_filters",
    "load_migrations",
    "log_from_json",
    "log_to_json",
    "metadata_matches",
    "parse_cursor",
    "pending_migrations",
    "process_values",
    "progress_refused",
    "record_decoder",
    "retry_transient",
    "retry_transient_sync",
    "run_decoder",
    "run_values",
    "split_statements",
    "state_filter",
    "store_not_open",
    "table_names",
    "transition_defaults",
    "transition_refused",
]

logger = logging.getLogger("taskwarden.stores")

T = TypeVar("T")

MAX_LOG_DEFAULT = 1000
"""How many log entries a process keeps unless the engine says otherwise."""

_PREFIX_RE = re.compile(r"^[a-z_][a-z0-9_]{0,40}$")


def table_names(prefix: str) -> tuple[str, str, str]:
    """``(processes, runs, schema_version)`` table names for ``prefix``.

    Raises ConfigurationError for a prefix that is not a safe SQL identifier.
    """
    if not _PREFIX_RE.match(prefix):
        raise ConfigurationError(
            f"invalid table prefix {prefix!r}: use lowercase letters, digits and underscores, "
            "starting with a letter or underscore (at most 41 characters)"
        )
    return f"{prefix}_processes", f"{prefix}_runs", f"{prefix}_schema_version"


# -- columns and migrations ---------------------------------------------------------------

PROCESS_FIELDS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(ProcessRecord))
"""The record's fields in declaration order (the column order of every backend)."""

PROCESS_COLUMNS: tuple[str, ...] = tuple(
    "sort_order" if name == "order" else name for name in PROCESS_FIELDS
)
"""The SQL column of each field (``order`` is a reserved word, so ``sort_order``)."""

_UPDATED_AT = PROCESS_FIELDS.index("updated_at")

RUN_FIELDS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(RunRecord))
"""The run record's fields in declaration order."""

RUN_COLUMNS: tuple[str, ...] = tuple("idx" if name == "index" else name for name in RUN_FIELDS)
"""The SQL column of each run field (``index`` is a reserved word, so ``idx``)."""

TIME_FIELDS: frozenset[str] = frozenset(
    {
        "running_since",
        "done_at",
        "failed_at",
        "stopped_at",
        "created_at",
        "lease_expires_at",
        "last_cron_tick",
        "updated_at",
        "next_attempt_at",
    }
)
"""Process fields holding datetimes."""

JSON_FIELDS: frozenset[str] = frozenset({"params", "metadata"})
"""Process fields holding JSON objects (``log`` is JSON too, as a list of entries)."""

BOOL_FIELDS: frozenset[str] = frozenset(
    {"cancellable", "adhoc", "ephemeral", "special", "resumable"}
)
"""Process fields holding booleans."""


def load_migrations(dialect: str, prefix: str) -> list[tuple[int, list[str]]]:
    """The migrations shipped for ``dialect`` (``sqlite`` or ``postgres``), in order.

    Each is ``(version, statements)``, read from ``stores/sql/<dialect>_<NNNN>_*.sql`` with
    the table names of ``prefix`` (``{processes}``, ``{runs}``, ``{workers}``, ``{prefix}``)
    filled in, split into statements by
    :func:`split_statements`.
    """
    processes, runs, _ = table_names(prefix)
    folder = resources.files("taskwarden.stores").joinpath("sql")
    found: list[tuple[int, list[str]]] = []
    for entry in folder.iterdir():
        name = entry.name
        if not (name.startswith(f"{dialect}_") and name.endswith(".sql")):
            continue
        version = int(name.split("_")[1])
        text = entry.read_text(encoding="utf-8")
        body = "\n".join(line for line in text.splitlines() if not line.startswith("--"))
        body = body.replace("{processes}", processes).replace("{runs}", runs)
        body = body.replace("{workers}", f"{prefix}_workers").replace("{prefix}", prefix)
        found.append((version, split_statements(body)))
    found.sort()
    return found


def split_statements(body: str) -> list[str]:
    """Split SQL at the semicolons that end statements: those inside a ``$$``-quoted
    function body belong to it."""
    statements: list[str] = []
    current: list[str] = []
    for part in body.split(";"):
        current.append(part)
        text = ";".join(current)
        if text.count("$$") % 2 == 0:
            if text.strip():
                statements.append(text.strip())
            current = []
    if current and ";".join(current).strip():
        statements.append(";".join(current).strip())
    return statements


def process_values(
    record: ProcessRecord, encode_field: Callable[[str, Any], Any], updated_at: Any
) -> list[Any]:
    """A record's values in PROCESS_COLUMNS order, encoded; ``updated_at`` (encoded
    already) replaces the record's own."""
    values = [encode_field(field, getattr(record, field)) for field in PROCESS_FIELDS]
    values[_UPDATED_AT] = updated_at
    return values


def pending_migrations(
    migrations: list[tuple[int, list[str]]], current: int, *, database: str, prefix: str
) -> list[tuple[int, list[str]]]:
    """The migrations newer than ``current``; SchemaError when ``current`` is newer than
    any (``database`` names the database in the message)."""
    latest = migrations[-1][0]
    if current > latest:
        raise SchemaError(
            f"{database} has schema version {current} (prefix {prefix!r}), "
            f"newer than this taskwarden knows ({latest}): upgrade taskwarden"
        )
    return [(version, statements) for version, statements in migrations if version > current]


def run_values(
    run: RunRecord,
    encode_time: Callable[[datetime], Any],
    *,
    process_id: str | None = None,
    run_number: int | None = None,
) -> tuple[Any, ...]:
    """A run's values in ``RUN_COLUMNS[1:]`` order (no index), metadata as JSON text.

    ``process_id`` and ``run_number`` fill the run's own when those are None.
    """
    return (
        run.operation_id,
        run.name,
        run.kind,
        OperationStatus(run.status).value,
        encode_time(run.started_at),
        None if run.ended_at is None else encode_time(run.ended_at),
        run.duration,
        run.result,
        run.error,
        run.traceback,
        None if run.cancel_reason is None else CancelationReason(run.cancel_reason).value,
        run.cancel_message,
        run.parent_id,
        json_dumps(run.metadata, "run metadata"),
        run.process_id if run.process_id is not None else process_id,
        run.run_number if run.run_number is not None else run_number,
    )


# -- time and JSON ------------------------------------------------------------------------


def to_utc(value: datetime) -> datetime:
    """``value`` in UTC; a naive datetime is refused (it is ambiguous)."""
    if value.tzinfo is None:
        raise ConfigurationError(
            f"naive datetime {value!r}: pass a timezone-aware one (e.g. datetime.now(UTC))"
        )
    return value.astimezone(UTC)


def encode_dt(value: datetime | None) -> str | None:
    """A fixed-width ISO-8601 UTC string, so text comparison orders like time does."""
    if value is None:
        return None
    if value.tzinfo is not UTC:
        value = to_utc(value)
    return value.isoformat(timespec="microseconds")


def decode_dt(value: str | None) -> datetime | None:
    """Inverse of :func:`encode_dt`."""
    return None if value is None else datetime.fromisoformat(value)


_COMPACT = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)
"""One encoder for every call: json.dumps with non-default options builds one per call."""


def json_dumps(value: Any, what: str) -> str:
    """Compact JSON for ``value``; InvalidDefinition names ``what`` when it is not JSON."""
    try:
        return _COMPACT.encode(value)
    except (TypeError, ValueError) as exc:
        raise InvalidDefinition(
            f"{what} must hold JSON values only (str, numbers, bools, None, lists, dicts): {exc}"
        ) from exc


class ServedIds:
    """The process ids a worker claims from, as one text for the claim statement (JSON,
    or a PostgreSQL array literal).

    A worker sends the same list at every claim; with thousands of definitions, binding it
    as an array (the driver checks each element) or encoding it again each time is most of
    a claim's cost on the client. The last list is kept with its text (and its digest).
    """

    __slots__ = ("_digest", "_ids", "_text")

    def __init__(self) -> None:
        self._ids: tuple[str, ...] | None = None
        self._text = "[]"
        self._digest = ""

    def digest(self, process_ids: Collection[str]) -> str:
        """A name for the list's content (the same list, the same name, in every process);
        the list's text is :meth:`encode` with ``array_literal``."""
        text = self.encode(process_ids, array_literal=True)
        if not self._digest:
            self._digest = hashlib.blake2b(text.encode(), digest_size=16).hexdigest()
        return self._digest

    def encode(self, process_ids: Collection[str], *, array_literal: bool = False) -> str:
        """``process_ids`` as a JSON array, or with ``array_literal`` as PostgreSQL's
        ``{"a","b"}`` text (cached while the same ids come again)."""
        ids = process_ids if isinstance(process_ids, tuple) else tuple(process_ids)
        if ids != self._ids:
            if array_literal:
                quoted = ('"' + pid.replace("\\", "\\\\").replace('"', '\\"') + '"' for pid in ids)
                self._text = "{" + ",".join(quoted) + "}"
            else:
                self._text = json.dumps(list(ids), separators=(",", ":"))
            self._ids, self._digest = ids, ""
        return self._text


def log_to_json(entries: Iterable[LogEntry]) -> list[dict[str, Any]]:
    """Log entries as JSON-ready dicts (the seed's shape)."""
    return [entry.to_document() for entry in entries]


def log_from_json(items: Iterable[Mapping[str, Any]]) -> tuple[LogEntry, ...]:
    """Inverse of :func:`log_to_json`."""
    return tuple(map(LogEntry.from_document, items))


# -- row codecs: one piece for every SQL backend, parametrised by how it stores values ----

_fromiso = datetime.fromisoformat
_json_loads = json.loads


def json_loads(text: str) -> Any:
    """``json.loads`` with a fast path for the empty object and list."""
    # Most params, metadata and logs are empty; skipping the decoder for them is a
    # measurable share of a transition's cost.
    if text == "{}":
        return {}
    if text == "[]":
        return []
    return _json_loads(text)


def decode_log(items: Iterable[Mapping[str, Any]]) -> tuple[LogEntry, ...]:
    """A decoded ``log`` column as entries (levels kept as the stored strings)."""
    if not items:
        return ()
    return tuple(
        LogEntry(
            timestamp=_fromiso(item["timestamp"]),
            level=item["level"],
            message=item["message"],
            data=item.get("data"),
        )
        for item in items
    )


def encode_log(entries: Any) -> str:
    """A log (entries) as the JSON text every backend stores."""
    return json_dumps(log_to_json(entries), "log data") if entries else "[]"


def _json_encoder(field: str) -> Callable[[Any], str]:
    def encode(value: Any) -> str:
        if not value and isinstance(value, dict):
            return "{}"
        return json_dumps(value, field)

    return encode


def field_encoder(
    *, time: Callable[[datetime], Any], boolean: Callable[[Any], Any]
) -> Callable[[str, Any], Any]:
    """``encode_field(field, value)``: a process field's value as a backend stores it.

    JSON fields become compact JSON text, the state its value, None stays None; ``time``
    and ``boolean`` encode datetimes and booleans, the rest passes unchanged.
    """
    encoders: dict[str, Callable[[Any], Any]] = {
        **dict.fromkeys(TIME_FIELDS, time),
        **{field: _json_encoder(field) for field in JSON_FIELDS},
        **dict.fromkeys(BOOL_FIELDS, boolean),
        "log": encode_log,
        "state": lambda value: ProcessState(value).value,
    }
    get = encoders.get

    def encode_field(field: str, value: Any) -> Any:
        if value is None:
            return None
        encode = get(field)
        return value if encode is None else encode(value)

    return encode_field


def record_decoder(
    *,
    json: Callable[[Any], Any],
    boolean: Callable[[Any], bool],
    time: Callable[[Any], datetime | None],
    required_time: Callable[[Any], datetime],
    log: Callable[[Any], tuple[LogEntry, ...]],
) -> Callable[[Sequence[Any]], ProcessRecord]:
    """``record_from_row(row)``: a row in PROCESS_COLUMNS order as a record.

    The arguments decode what the backend stores: JSON columns, booleans, nullable and
    required times, and the log.
    """

    def record_from_row(row: Sequence[Any]) -> ProcessRecord:
        return ProcessRecord(
            process_id=row[0],
            name=row[1],
            description=row[2],
            params=json(row[3]),
            metadata=json(row[4]),
            parent_id=row[5],
            root_id=row[6],
            depth=row[7],
            order=row[8],
            cancellable=boolean(row[9]),
            adhoc=boolean(row[10]),
            ephemeral=boolean(row[11]),
            special=boolean(row[12]),
            warning=row[13],
            schedule=row[14],
            state=ProcessState(row[15]),
            error=row[16],
            running_since=time(row[17]),
            done_at=time(row[18]),
            duration=row[19],
            failed_at=time(row[20]),
            stopped_at=time(row[21]),
            progress_percent=row[22],
            progress_message=row[23],
            log=log(row[24]),
            created_at=required_time(row[25]),
            run_number=row[26],
            lease_owner=row[27],
            lease_expires_at=time(row[28]),
            last_cron_tick=time(row[29]),
            updated_at=required_time(row[30]),
            resumable=boolean(row[31]),
            on_worker_lost=row[32],
            lost_retries=row[33],
            lost_count=row[34],
            attempt=row[35],
            next_attempt_at=time(row[36]),
            lease_seconds=row[37],
        )

    return record_from_row


def run_decoder(
    *,
    json: Callable[[Any], Any],
    time: Callable[[Any], datetime | None],
    required_time: Callable[[Any], datetime],
) -> Callable[[Sequence[Any]], RunRecord]:
    """``run_from_row(row)``: a row in RUN_COLUMNS order as a run record (see
    :func:`record_decoder` for the arguments)."""

    def run_from_row(row: Sequence[Any]) -> RunRecord:
        return RunRecord(
            index=row[0],
            operation_id=row[1],
            name=row[2],
            kind=row[3],
            status=OperationStatus(row[4]),
            started_at=required_time(row[5]),
            ended_at=time(row[6]),
            duration=row[7],
            result=row[8],
            error=row[9],
            traceback=row[10],
            cancel_reason=None if row[11] is None else CancelationReason(row[11]),
            cancel_message=row[12],
            parent_id=row[13],
            metadata=json(row[14]),
            process_id=row[15],
            run_number=row[16],
        )

    return run_from_row


# -- argument checks ----------------------------------------------------------------------


def check_definition_fields(fields: Mapping[str, Any]) -> None:
    """Refuse anything but definition fields (InvalidDefinition)."""
    unknown = set(fields) - DEFINITION_FIELDS
    if unknown:
        raise InvalidDefinition(
            f"update_definition cannot change {sorted(unknown)}: only definition fields "
            f"{sorted(DEFINITION_FIELDS)} (runtime state changes through transition())"
        )


def check_runtime_fields(fields: Mapping[str, Any]) -> None:
    """Refuse anything but runtime fields in a transition (InvalidDefinition)."""
    unknown = set(fields) - RUNTIME_FIELDS
    if unknown:
        raise InvalidDefinition(
            f"transition cannot set {sorted(unknown)}: only runtime fields "
            f"{sorted(RUNTIME_FIELDS)} (definitions change through update_definition())"
        )


def store_not_open() -> StoreError:
    """The error of a verb called on a store that is not open."""
    return StoreError("the store is not open: call await store.open() or use async with")


def duplicate_process(process_id: str) -> InvalidDefinition:
    """The error of ``create()`` for an id that is taken."""
    return InvalidDefinition(
        f"a process with id {process_id!r} exists: pick another id, or update_definition() it"
    )


def transition_refused(
    process_id: str,
    state: str,
    target: str,
    expected_owner: str | None,
    lease_owner: str | None,
    *,
    guard: Guard = (),
    expected: Collection[str] = (),
) -> InvalidTransition:  # a LeaseLost when the owner differs
    """Why a compare-and-set on a record in ``state`` lost: the lease is someone else's
    (when an owner was expected), a field differs from ``guard`` (the state was one of
    ``expected``), or else the state is not an expected one."""
    if expected_owner is not None and lease_owner != expected_owner:
        return LeaseLost(
            process_id,
            state,
            target,
            f"process {process_id!r} is leased by {lease_owner!r}, not {expected_owner!r}: "
            "its lease was lost",
        )
    if guard and state in expected:
        wanted = ", ".join(f"{name}={value!r}" for name, value in guard)
        return InvalidTransition(
            process_id, state, target, f"process {process_id!r} does not have {wanted}"
        )
    return InvalidTransition(process_id, state, target)


Guard = tuple[tuple[str, bool | None], ...]
"""A transition's ``expected_fields``, checked and sorted: ``((name, value), ...)``."""

GUARD_FIELDS: frozenset[str] = frozenset({"parent_id", "cancellable"})
"""The fields a transition's ``expected_fields`` may name."""


def check_guard(process_id: str, expected_fields: Mapping[str, bool | None] | None) -> Guard:
    """``expected_fields`` as a :data:`Guard`; InvalidTransition (``current=None``), before
    any I/O, for a field outside :data:`GUARD_FIELDS` or a value other than None or a bool."""
    if not expected_fields:
        return ()
    for name, value in expected_fields.items():
        if name not in GUARD_FIELDS or not (value is None or isinstance(value, bool)):
            raise InvalidTransition(
                process_id,
                None,
                "?",
                f"transition of {process_id!r}: expected_fields takes {sorted(GUARD_FIELDS)} "
                f"with None or a bool, got {name}={value!r}",
            )
    return tuple(sorted(expected_fields.items()))


def guard_sql(guard: Guard, *, alias: str = "", true: str = "TRUE", false: str = "FALSE") -> str:
    """The ``AND ...`` conditions of ``guard`` (columns read through table ``alias``; the
    dialect's boolean literals), or an empty string."""
    conditions = []
    for name, value in guard:
        if value is None:
            conditions.append(f" AND {alias}{name} IS NULL")
        else:
            conditions.append(f" AND {alias}{name} = {true if value else false}")
    return "".join(conditions)


def progress_refused(process_id: str, expected_owner: str, lease_owner: str | None) -> LeaseLost:
    """Why a fenced progress write was refused: the lease is not the writer's."""
    return LeaseLost(
        process_id,
        None,
        "progress",
        f"process {process_id!r} is leased by {lease_owner!r}, not {expected_owner!r}: its "
        "lease was lost, so this progress belongs to no current attempt",
    )


def child_refused(
    child_id: str, parent_id: str | None, expected_owner: str, owner: str | None
) -> LeaseLost:
    """Why a fenced create of a child was refused: its parent is not leased by the writer."""
    return LeaseLost(
        child_id,
        None,
        "created",
        f"child {child_id!r} was not created: its parent {parent_id!r} is leased by "
        f"{owner!r}, not {expected_owner!r} (the parent's lease was lost)",
    )


_valid_edges: dict[tuple[Any, ...], frozenset[ProcessState]] = {}


def check_edges(
    process_id: str, expected_states: Collection[ProcessState], to_state: ProcessState
) -> frozenset[ProcessState]:
    """Validate every ``expected -> to_state`` edge against the table; return the set.

    Raises InvalidTransition (``current=None``) for an empty set or an edge not in the
    table, before any I/O.
    """
    key = (to_state, *expected_states)
    known = _valid_edges.get(key)
    if known is not None:
        return known
    expected = frozenset(ProcessState(state) for state in expected_states)
    target = ProcessState(to_state)
    if not expected:
        raise InvalidTransition(
            process_id, None, target, f"transition of {process_id!r}: expected_states is empty"
        )
    bad = sorted(state for state in expected if not can_transition(state, target))
    if bad:
        raise InvalidTransition(
            process_id,
            bad[0],
            target,
            f"transition of {process_id!r} from {bad} to {target.value!r} is not in the "
            "transition table (taskwarden.processes.TRANSITIONS)",
        )
    if len(_valid_edges) < 4096:  # bounded: the table has few distinct valid calls
        _valid_edges[key] = expected
    return expected


def transition_defaults(to_state: ProcessState, fields: Mapping[str, Any]) -> tuple[bool, bool]:
    """``(increment_run_number, clear_lease)`` that a transition implies unless overridden."""
    increment = to_state is ProcessState.RUNNING and "run_number" not in fields
    clear = (to_state is ProcessState.IDLE or to_state in END_STATES) and not (
        {"lease_owner", "lease_expires_at"} & fields.keys()
    )
    return increment, clear


def implied_sets(increment: bool, clear: bool, *, alias: str = "") -> list[str]:
    """The SQL assignments that :func:`transition_defaults` implies: the run number's
    increment (read through table ``alias``, e.g. ``"t."``) and the lease's release."""
    sets = []
    if increment:
        sets.append(f"run_number = {alias}run_number + 1")
    if clear:
        sets.append("lease_owner = NULL, lease_expires_at = NULL")
    return sets


def state_filter(
    state: ProcessState | Collection[ProcessState] | None,
) -> frozenset[ProcessState] | None:
    """Normalize ``list(state=...)``: None, one state or several, to a set (or None)."""
    if state is None:
        return None
    if isinstance(state, str):
        return frozenset({ProcessState(state)})
    return frozenset(ProcessState(item) for item in state)


def check_metadata_filter(metadata: Mapping[str, Any] | None) -> dict[str, Any]:
    """Validate a metadata filter: scalar values only (ConfigurationError otherwise)."""
    if not metadata:
        return {}
    for key, value in metadata.items():
        if not isinstance(value, str | int | float):
            raise ConfigurationError(
                f"metadata filter {key!r}={value!r}: values must be str, int, float or bool"
            )
    return dict(metadata)


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "str"
    return "other"


def metadata_matches(metadata: Mapping[str, Any], wanted: Mapping[str, Any]) -> bool:
    """True when every ``key: value`` of ``wanted`` equals ``metadata[key]`` (same kind:
    a bool matches only a bool, a number only a number)."""
    for key, value in wanted.items():
        if key not in metadata:
            return False
        have = metadata[key]
        if _kind(have) != _kind(value) or have != value:
            return False
    return True


def parse_cursor(cursor: str | None) -> tuple[int, int, str] | None:
    """Decode a keyset cursor; ConfigurationError for one no record produced."""
    if cursor is None:
        return None
    try:
        return decode_cursor(cursor)
    except ValueError:
        raise ConfigurationError(
            f"invalid cursor {cursor!r}: pass the .cursor of the last record of a page"
        ) from None


def check_limit(limit: int | None) -> None:
    """Refuse a negative limit (ConfigurationError)."""
    if limit is not None and limit < 0:
        raise ConfigurationError(f"limit must be None or >= 0, not {limit!r}")


def list_filters(
    state: ProcessState | Collection[ProcessState] | None,
    metadata: Mapping[str, Any] | None,
    limit: int | None,
    cursor: str | None,
) -> tuple[frozenset[ProcessState] | None, dict[str, Any], tuple[int, int, str] | None]:
    """Check ``list()``'s arguments: ``(states, metadata filter, keyset position)``.

    See :func:`state_filter`, :func:`check_metadata_filter`, :func:`parse_cursor` and
    :func:`check_limit` for what each refuses.
    """
    states = state_filter(state)
    wanted = check_metadata_filter(metadata)
    after = parse_cursor(cursor)
    check_limit(limit)
    return states, wanted, after


# -- transient errors ---------------------------------------------------------------------


async def retry_transient(
    call: Callable[[], Awaitable[T]],
    *,
    is_transient: Callable[[BaseException], bool],
    attempts: int = 4,
    delay: float = 0.02,
) -> T:
    """Await ``call()``, calling it again (with growing delays) while it fails transiently.

    The last error propagates unchanged; the caller wraps it in StoreError.
    """
    for attempt in range(1, attempts + 1):
        try:
            return await call()
        except Exception as exc:
            if attempt == attempts or not is_transient(exc):
                raise
            logger.warning("transient store error (attempt %d/%d): %r", attempt, attempts, exc)
            await asyncio.sleep(delay * 2 ** (attempt - 1))
    raise AssertionError("unreachable")  # pragma: no cover


def retry_transient_sync(
    call: Callable[[], T],
    *,
    is_transient: Callable[[BaseException], bool],
    attempts: int = 4,
    delay: float = 0.02,
) -> T:
    """:func:`retry_transient` for blocking code running in a store's own thread."""
    for attempt in range(1, attempts + 1):
        try:
            return call()
        except Exception as exc:
            if attempt == attempts or not is_transient(exc):
                raise
            logger.warning("transient store error (attempt %d/%d): %r", attempt, attempts, exc)
            time.sleep(delay * 2 ** (attempt - 1))
    raise AssertionError("unreachable")  # pragma: no cover
