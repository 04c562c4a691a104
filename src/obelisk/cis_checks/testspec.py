"""A check's `test` as a typed record: one frozen dataclass per test kind, parsed strictly.

Each kind's record is a `Spec` subclass registered beside its evaluator in engine.py; `parse_test`
turns a catalogue's `test` mapping into that record, refusing unknown kinds, unknown or missing keys
and values of the wrong type, with one line naming where in the catalogue.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass
from typing import Any

from obelisk.core.errors import InputError

Scalar = str | int | bool  # YAML scalars a catalogue may give as a value (floats stay text)


@dataclass(frozen=True)
class Spec:
    """A check's `test`: its kind and, in the subclass registered for the kind, its parameters.

    Field annotations are the schema: a field without a default is required, `X | None` is
    optional, `tuple[X, ...]` is a YAML list, `Spec` a nested test; `choices` in a field's
    metadata lists the values it accepts; `__post_init__` checks what spans fields.
    """

    kind: str


SPECS: dict[str, type[Spec]] = {}  # kind -> its record; filled by engine.evaluator


def choices(*values: str) -> dict[str, tuple[str, ...]]:
    return {"choices": values}


_SCHEMAS: dict[str, tuple[dict[str, dataclasses.Field], dict[str, Any]]] = {}


def _schema(kind: str) -> tuple[dict[str, dataclasses.Field], dict[str, Any]]:
    """The fields of the record of `kind`, and their resolved annotations."""
    if kind not in _SCHEMAS:
        spec = SPECS[kind]
        _SCHEMAS[kind] = {f.name: f for f in dataclasses.fields(spec)}, typing.get_type_hints(spec)
    return _SCHEMAS[kind]


def parse_test(data: Any, where: str) -> Spec:
    """A catalogue's `test` mapping as the typed record of its kind; InputError naming `where` and the key."""
    if not isinstance(data, dict) or "kind" not in data:
        raise InputError(f"{where}: expected a mapping with 'kind'")
    kind = data["kind"]
    spec = SPECS.get(kind) if isinstance(kind, str) else None
    if spec is None:
        raise InputError(f"{where}.kind: unknown test kind {kind!r} (known: {', '.join(sorted(SPECS))})")
    fields, hints = _schema(kind)
    unknown = [str(k) for k in data if k not in fields]
    if unknown:
        allowed = ", ".join(n for n in fields if n != "kind") or "no other key"
        raise InputError(f"{where}: unknown key {unknown[0]!r} for kind {kind!r} (allowed: {allowed})")
    missing = [n for n, f in fields.items()
               if n not in data and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:
        raise InputError(f"{where}: kind {kind!r} needs key {missing[0]!r}")
    values = {}
    for name, raw in data.items():
        value = _typed(raw, hints[name], f"{where}.{name}")
        allowed_values = fields[name].metadata.get("choices")
        if allowed_values and value not in allowed_values:
            raise InputError(f"{where}.{name}: {value!r} is not one of {', '.join(allowed_values)}")
        values[name] = value
    try:
        return spec(**values)
    except ValueError as exc:
        raise InputError(f"{where}: {exc}") from None


_TYPE_NAMES = {str: "a string", int: "an integer", bool: "true or false"}


def _type_name(hint: Any) -> str:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):  # None: the key may be left out
        return " or ".join(_type_name(a) for a in typing.get_args(hint) if a is not type(None))
    if typing.get_origin(hint) is tuple:
        return "a list"
    if hint is Spec:
        return "a test mapping"
    return _TYPE_NAMES.get(hint, str(hint))


def _typed(value: Any, hint: Any, where: str) -> Any:
    """`value` read from YAML, checked against a field's annotation (lists become tuples)."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        arms = typing.get_args(hint)
        for arm in arms:  # the arm whose outer type matches decides, so nested errors keep their detail
            if _outer_match(value, arm):
                return _typed(value, arm, where)
    elif origin is tuple:
        if isinstance(value, list):
            item = typing.get_args(hint)[0]
            return tuple(_typed(v, item, f"{where}[{i}]") for i, v in enumerate(value))
    elif hint is Spec:
        return parse_test(value, where)
    elif _outer_match(value, hint):
        return value
    raise InputError(f"{where}: expected {_type_name(hint)}, got {_yaml_type(value)}")


def _outer_match(value: Any, hint: Any) -> bool:
    if typing.get_origin(hint) is tuple:
        return isinstance(value, list)
    if hint is Spec:
        return isinstance(value, dict)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is type(None):
        return value is None
    return isinstance(value, hint)


def _yaml_type(value: Any) -> str:
    if value is None:
        return "nothing"
    return {dict: "a mapping", list: "a list", str: "a string", bool: "true/false", int: "an integer"}.get(
        type(value), type(value).__name__)
