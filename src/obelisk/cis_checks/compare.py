"""Comparisons a check applies to an effective value: the `op`s of the catalogue, as Kubernetes reads values."""

from __future__ import annotations

import re
from typing import Any

from obelisk.core.errors import InputError

_BOOL = {"true": "true", "t": "true", "1": "true", "false": "false", "f": "false", "0": "false"}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_UNIT = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str) -> float | None:
    """Go time.ParseDuration: '5m', '4h0m0s', '300s', '0'. None if not a duration."""
    text = text.strip()
    if text in ("0", "+0", "-0"):
        return 0.0
    sign = -1.0 if text.startswith("-") else 1.0
    body = text.lstrip("+-")
    if not body:
        return None
    total, pos = 0.0, 0
    for m in _DURATION.finditer(body):
        if m.start() != pos:
            return None
        total += float(m.group(1)) * _UNIT[m.group(2)]
        pos = m.end()
    return sign * total if pos == len(body) else None


def split_items(value: str) -> list[str]:
    """A comma-separated flag value as its items (`a, b,` -> [a, b])."""
    return [v.strip() for v in value.split(",") if v.strip()]


def _int(value: str) -> int | None:
    try:
        return int(value.strip())
    except ValueError:
        return None


OPS = ("set", "unset", "eq", "ne", "contains", "contains_all", "excludes", "in", "subset", "gte", "lte",
       "duration_gte", "duration_gt", "startswith")


def check_value(op: str, value: Any) -> None:
    """A comparison's `value` fits its `op`: none for set/unset, a list for in/subset, else one value."""
    if op in ("set", "unset"):
        if value is not None:
            raise ValueError(f"op {op!r} takes no value" + (" (op is 'set' when not given)" if op == "set" else ""))
    elif op in ("in", "subset", "contains_all"):
        if not isinstance(value, tuple):
            raise ValueError(f"op {op!r} needs a list as value")
    elif value is None or isinstance(value, tuple):
        raise ValueError(f"op {op!r} needs a single value")


def compare(op: str, observed: str | None, expected: Any) -> bool:
    """observed: the effective value as text, None when unset with no default."""
    if op == "set":
        return observed is not None and observed != ""
    if op == "unset":
        return observed is None
    if observed is None:
        return False
    if op in ("eq", "ne"):
        exp = str(expected)
        a, b = observed, exp
        if exp.lower() in _BOOL and observed.lower() in _BOOL and exp.lower() in ("true", "false"):
            a, b = _BOOL[observed.lower()], _BOOL[exp.lower()]
        return (a == b) if op == "eq" else (a != b)
    if op == "contains":
        return str(expected) in split_items(observed)
    if op == "contains_all":
        items = split_items(observed)
        return all(str(e) in items for e in expected)
    if op == "excludes":
        return str(expected) not in split_items(observed)
    if op == "in":
        return observed in [str(e) for e in expected]
    if op == "subset":
        items = split_items(observed)
        return bool(items) and all(i in [str(e) for e in expected] for i in items)
    if op in ("gte", "lte"):
        n_obs, n_exp = _int(observed), _int(str(expected))
        if n_obs is None or n_exp is None:
            return False
        return n_obs >= n_exp if op == "gte" else n_obs <= n_exp
    if op in ("duration_gte", "duration_gt"):
        d_obs, d_exp = parse_duration(observed), parse_duration(str(expected))
        if d_obs is None or d_exp is None:
            return False
        return d_obs >= d_exp if op == "duration_gte" else d_obs > d_exp
    if op == "startswith":
        return observed.startswith(str(expected))
    raise InputError(f"unknown comparison {op!r}")


def describe(op: str, expected: Any) -> str:
    exp = ",".join(str(e) for e in expected) if isinstance(expected, (list, tuple)) else str(expected)
    return {
        "set": "set", "unset": "not set", "eq": exp, "ne": f"not {exp}", "contains": f"includes {exp}",
        "contains_all": f"includes all of {exp}",
        "excludes": f"does not include {exp}", "in": f"one of {exp}", "subset": f"only from {exp}",
        "gte": f">= {exp}", "lte": f"<= {exp}", "duration_gte": f">= {exp}", "duration_gt": f"> {exp}",
        "startswith": f"{exp}...",
    }.get(op, f"{op} {exp}")
