"""optio's ``metadataFilter``: a small predicate language over a process's metadata.

A filter is JSON. A predicate is ``{"AND": [p, ...]}``, ``{"OR": [p, ...]}``,
``{"NOT": p}``, or a leaf ``{"metadata.<dotted.path>": {op: value, ...}}`` whose operators
(``eq``, ``ne``, ``in``, ``nin``, ``exists``, ``gt``, ``gte``, ``lt``, ``lte``) must all
hold. The legacy flat form ``{"key": scalar, ...}`` means "each key equals its value".

:func:`parse_filter` validates once and returns a callable, so a stream evaluates a
client's filter on every change without parsing it again.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

from taskwarden.errors import ConfigurationError

__all__ = ["MetadataPredicate", "parse_filter", "store_equalities"]

MetadataPredicate = Callable[[Mapping[str, Any]], bool]
"""Takes a process's metadata, says whether it matches."""

_MISSING = object()
_OPERATORS = frozenset({"eq", "ne", "in", "nin", "exists", "gt", "gte", "lt", "lte"})
_SCALARS = (str, int, float, bool, type(None))


def parse_filter(text: str | None) -> MetadataPredicate | None:
    """Parse a ``metadataFilter`` query value; None or empty means no filter.

    Raises:
        ConfigurationError: the text is not JSON or not a valid predicate; the message
            names the part that is wrong.
    """
    if text is None or not text.strip():
        return None
    try:
        tree = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigurationError(f"metadataFilter is not valid JSON: {exc.msg}") from None
    return _compile(tree, "metadataFilter")


def store_equalities(text: str | None) -> dict[str, str | int | float | bool] | None:
    """The filter as the stores' own metadata filter, when it is one: every key a top-level
    key that must equal a non-null scalar (``{"team": "data"}`` or
    ``{"metadata.team": {"eq": "data"}}``). None for anything richer, which only the
    predicate of :func:`parse_filter` can evaluate. Call it on a filter that parsed."""
    if text is None or not text.strip():
        return {}
    tree = json.loads(text)
    if not isinstance(tree, dict) or any(key in ("AND", "OR", "NOT") for key in tree):
        return None
    equal: dict[str, str | int | float | bool] = {}
    for key, spec in tree.items():
        name = key.removeprefix("metadata.")
        if isinstance(spec, dict):
            if spec.keys() != {"eq"}:
                return None
            spec = spec["eq"]
        if "." in name or not isinstance(spec, str | int | float | bool):
            return None
        equal[name] = spec
    return equal


def _compile(node: Any, where: str) -> MetadataPredicate:
    if not isinstance(node, dict) or not node:
        raise ConfigurationError(f"{where} must be a non-empty JSON object")
    if len(node) == 1 and next(iter(node)) in ("AND", "OR", "NOT"):
        key, value = next(iter(node.items()))
        if key == "NOT":
            inner = _compile(value, f"{where}.NOT")
            return lambda metadata: not inner(metadata)
        if not isinstance(value, list) or not value:
            raise ConfigurationError(f"{where}.{key} must be a non-empty list of predicates")
        parts = [_compile(item, f"{where}.{key}[{i}]") for i, item in enumerate(value)]
        if key == "AND":
            return lambda metadata: all(part(metadata) for part in parts)
        return lambda metadata: any(part(metadata) for part in parts)
    leaves = [_leaf(key, value, where) for key, value in node.items()]
    return lambda metadata: all(leaf(metadata) for leaf in leaves)


def _leaf(key: str, spec: Any, where: str) -> MetadataPredicate:
    if "$" in key:
        raise ConfigurationError(f"{where}: '$' is not allowed in a path ({key!r})")
    path = key.removeprefix("metadata.").split(".")
    if not all(path):
        raise ConfigurationError(f"{where}: {key!r} is not a dotted path")
    if not isinstance(spec, dict):
        if not isinstance(spec, _SCALARS):
            raise ConfigurationError(f"{where}.{key} must be a scalar or an operator object")
        spec = {"eq": spec}
    if not spec:
        raise ConfigurationError(f"{where}.{key} needs at least one operator")
    unknown = set(spec) - _OPERATORS
    if unknown:
        raise ConfigurationError(
            f"{where}.{key}: unknown operator {sorted(unknown)[0]!r}; "
            f"use one of {', '.join(sorted(_OPERATORS))}"
        )
    for op, operand in spec.items():
        if op in ("in", "nin"):
            if not isinstance(operand, list) or not all(isinstance(v, _SCALARS) for v in operand):
                raise ConfigurationError(f"{where}.{key}.{op} must be a list of scalars")
        elif op == "exists":
            if not isinstance(operand, bool):
                raise ConfigurationError(f"{where}.{key}.exists must be true or false")
        elif not isinstance(operand, _SCALARS):
            raise ConfigurationError(f"{where}.{key}.{op} must be a scalar")
    checks = [(op, operand) for op, operand in spec.items()]

    def matches(metadata: Mapping[str, Any]) -> bool:
        value: Any = metadata
        for part in path:
            value = value.get(part, _MISSING) if isinstance(value, Mapping) else _MISSING
        return all(_holds(op, operand, value) for op, operand in checks)

    return matches


def _same_kind(a: Any, b: Any) -> bool:
    # A bool is not a number here (True must not equal 1), as in the stores' equality.
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool)
    numbers = (int, float)
    if isinstance(a, numbers) and isinstance(b, numbers):
        return True
    return type(a) is type(b)


def _equal(a: Any, b: Any) -> bool:
    return _same_kind(a, b) and bool(a == b)


def _holds(op: str, operand: Any, value: Any) -> bool:
    present = value is not _MISSING
    if op == "exists":
        return present is operand
    if op == "eq":
        return present and _equal(value, operand)
    if op == "ne":
        return not (present and _equal(value, operand))
    if op == "in":
        return present and any(_equal(value, item) for item in operand)
    if op == "nin":
        return not (present and any(_equal(value, item) for item in operand))
    if not present or not _same_kind(value, operand) or value is None:
        return False
    if op == "gt":
        return bool(value > operand)
    if op == "gte":
        return bool(value >= operand)
    if op == "lt":
        return bool(value < operand)
    return bool(value <= operand)
