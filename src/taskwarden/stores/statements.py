"""SQL text shared by the SQL stores: the WHERE clause builder and the list, count and
history statements, the definition update (with the in-memory store's twin of the text
search)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

from taskwarden.model import OperationStatus
from taskwarden.processes import ProcessRecord
from taskwarden.stores.base import (
    PROCESS_COLUMNS,
    RUN_COLUMNS,
    check_definition_fields,
    check_limit,
)

__all__ = [
    "SqlWhere",
    "count_statement",
    "definition_update",
    "history_statement",
    "list_statement",
    "search_matches",
]


# -- SQL statements -----------------------------------------------------------------------


class SqlWhere:
    """The WHERE clauses of one SQL statement and their arguments.

    ``numbered`` picks PostgreSQL's placeholders (``$1``, ``$2``...) over SQLite's ``?``;
    either way the arguments are in the order the placeholders appear.
    """

    __slots__ = ("args", "clauses", "numbered")

    def __init__(self, *, numbered: bool) -> None:
        self.numbered = numbered
        self.clauses: list[str] = []
        self.args: list[Any] = []

    def arg(self, value: Any) -> str:
        """Add an argument; return its placeholder."""
        self.args.append(value)
        return f"${len(self.args)}" if self.numbered else "?"

    def add(self, clause: str) -> None:
        """Add a clause (all are joined with AND)."""
        self.clauses.append(clause)

    def equal(self, column: str, value: Any, operator: str = "=") -> None:
        """Add ``column <operator> value`` unless ``value`` is None (no filter then)."""
        if value is not None:
            self.clauses.append(f"{column} {operator} {self.arg(value)}")

    def statement(self, head: str, order_by: str, limit: int | None) -> str:
        """``head``, then the clauses, ``ORDER BY order_by`` and the limit if any."""
        sql = head
        if self.clauses:
            sql += " WHERE " + " AND ".join(self.clauses)
        sql += f" ORDER BY {order_by}"
        if limit is not None:
            sql += f" LIMIT {self.arg(limit)}"
        return sql


def list_statement(
    where: SqlWhere,
    head: str,
    *,
    root_id: str | None,
    parent_id: str | None,
    after: tuple[int, int, str] | None,
    limit: int | None,
    roots_only: bool = False,
    search: str | None = None,
) -> str:
    """Finish a ``list()`` query on ``where`` (which holds the backend's own state and
    metadata clauses): the tree and text filters, the keyset position, the order and the
    limit."""
    _tree_and_text(where, root_id, parent_id, roots_only, search)
    if after is not None:
        depth, order, last_id = (where.arg(value) for value in after)
        where.add(f"(depth, sort_order, process_id) > ({depth}, {order}, {last_id})")
    return where.statement(head, "depth, sort_order, process_id", limit)


def count_statement(
    where: SqlWhere,
    table: str,
    *,
    root_id: str | None,
    parent_id: str | None,
    roots_only: bool = False,
    search: str | None = None,
) -> str:
    """Finish a ``count()`` query on ``where`` (the backend's state and metadata clauses)."""
    _tree_and_text(where, root_id, parent_id, roots_only, search)
    sql = f"SELECT count(*) FROM {table}"
    if where.clauses:
        sql += " WHERE " + " AND ".join(where.clauses)
    return sql


def _tree_and_text(
    where: SqlWhere,
    root_id: str | None,
    parent_id: str | None,
    roots_only: bool,
    search: str | None,
) -> None:
    where.equal("root_id", root_id)
    where.equal("parent_id", parent_id)
    if roots_only:
        where.add("parent_id IS NULL")
    if search:
        # instr / strpos rather than LIKE: the text needs no escaping of % and _.
        find = "strpos" if where.numbered else "instr"
        text = search.lower()
        in_name, in_id = where.arg(text), where.arg(text)
        where.add(f"({find}(lower(name), {in_name}) > 0 OR {find}(lower(process_id), {in_id}) > 0)")


def search_matches(record: ProcessRecord, search: str | None) -> bool:
    """``list(search=...)`` in Python: the text in the name or the id, ignoring case."""
    if not search:
        return True
    text = search.lower()
    return text in record.name.lower() or text in record.process_id.lower()


def history_statement(
    runs_table: str,
    encode_time: Callable[[datetime], Any],
    *,
    numbered: bool,
    process_id: str | None,
    name: str | None,
    status: OperationStatus | None,
    since: datetime | None,
    limit: int | None,
    until: datetime | None = None,
    before: int | None = None,
) -> tuple[str, list[Any]]:
    """``(sql, args)`` of a ``query_history()`` query, newest first (ConfigurationError for
    a bad limit); ``encode_time`` encodes the times, ``numbered`` as for :class:`SqlWhere`."""
    check_limit(limit)
    where = SqlWhere(numbered=numbered)
    where.equal("process_id", process_id)
    where.equal("name", name)
    where.equal("status", None if status is None else OperationStatus(status).value)
    where.equal("started_at", None if since is None else encode_time(since), ">=")
    where.equal("started_at", None if until is None else encode_time(until), "<")
    where.equal("idx", before, "<")
    sql = where.statement(f"SELECT {', '.join(RUN_COLUMNS)} FROM {runs_table}", "idx DESC", limit)
    return sql, where.args


def definition_update(
    table: str,
    process_id: str,
    fields: Mapping[str, Any],
    updated_at: datetime,
    encode_field: Callable[[str, Any], Any],
    *,
    numbered: bool,
) -> tuple[str, list[Any]]:
    """``(sql, args)`` setting the definition ``fields`` and ``updated_at`` of one process
    and returning its row in PROCESS_COLUMNS order; ``numbered`` as for :class:`SqlWhere`.

    Checks the fields (InvalidDefinition) and encodes the values with ``encode_field``.
    """
    check_definition_fields(fields)
    params = SqlWhere(numbered=numbered)
    sets = ", ".join(
        f"{'sort_order' if name == 'order' else name} = {params.arg(encode_field(name, value))}"
        for name, value in {**fields, "updated_at": updated_at}.items()
    )
    sql = (
        f"UPDATE {table} SET {sets} WHERE process_id = {params.arg(process_id)} "
        f"RETURNING {', '.join(PROCESS_COLUMNS)}"
    )
    return sql, params.args
