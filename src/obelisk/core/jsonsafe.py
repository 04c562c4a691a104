"""Reading JSON from untrusted files: the one loader. Bounded size, depth and numbers; one-line errors.

`json.loads` alone turns hostile documents into crashes far from the file: 100,000 nested
brackets raise RecursionError, an integer of more than 4,300 digits raises a bare ValueError,
`Infinity` becomes a float that later overflows. `load_json` refuses each of them as an
InputError naming the file and the byte offset (or the limit), before any record is built.
The limits are listed in docs/limits.md.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any

from obelisk.core.errors import InputError, ParseError

MAX_JSON_BYTES = 1 << 30  # a backstop: each kind of file has its own, lower cap (docs/limits.md)
MAX_DEPTH = 64
MAX_INT_DIGITS = 128


# A run of more than MAX_INT_DIGITS digits, found with C-speed byte operations: every digit becomes "0"
# (no other byte is one), then one substring search. (A regex `[0-9]{129}` does the same at a Python
# regex engine's cost per byte: 5 ms for a 100 KB document.)
_DIGITS_TO_ZERO = bytes.maketrans(b"0123456789", b"0" * 10)
_LONG_RUN = b"0" * (MAX_INT_DIGITS + 1)


class _Refused(ValueError):
    """A number or constant the loader refuses (raised from inside json's hooks)."""


def _int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise _Refused(f"integer of {len(text.lstrip('-'))} digits (limit {MAX_INT_DIGITS})")
    return int(text)


def _float(text: str) -> float:
    if len(text) > 4 * MAX_INT_DIGITS:
        raise _Refused(f"number of {len(text)} characters")
    value = float(text)
    if not math.isfinite(value):
        raise _Refused(f"number {text[:20]} out of range")
    return value


def _constant(text: str) -> float:
    raise _Refused(f"{text} is not JSON")


def check_depth(doc: Any, source: str | None, limit: int = MAX_DEPTH) -> None:
    """Refuse a parsed document nested deeper than `limit` (level by level: no recursion of our own)."""
    level = [doc] if isinstance(doc, dict | list) else []
    depth = 0
    while level:
        depth += 1
        if depth > limit:
            raise ParseError(f"not JSON: nested deeper than {limit} levels", source=source)
        nxt: list[Any] = []
        for node in level:
            values = node.values() if type(node) is dict else node
            nxt += [v for v in values if type(v) is dict or type(v) is list]
        level = nxt


def load_json(data: str | bytes, source: str | None = None, *, max_bytes: int = MAX_JSON_BYTES,
              max_depth: int = MAX_DEPTH, object_pairs_hook: Callable[[list[tuple[str, Any]]], Any] | None = None,
              what: str = "JSON") -> Any:
    """The JSON value in `data`; InputError (one line, naming `source` and the offset) for anything else."""
    if len(data) > max_bytes:
        raise ParseError(f"{what} larger than {max_bytes} bytes", source=source)
    # The integer hook costs a Python call per number: only when a long run of digits is present at all.
    raw = data.encode() if isinstance(data, str) else data
    long_digits = _LONG_RUN in raw.translate(_DIGITS_TO_ZERO)
    try:
        doc = json.loads(data, parse_int=_int if long_digits else None, parse_float=_float,
                         parse_constant=_constant, object_pairs_hook=object_pairs_hook)
    except json.JSONDecodeError as exc:
        raise ParseError(f"not {what}: {exc.msg} at offset {exc.pos}", source=source) from None
    except InputError as exc:  # raised by object_pairs_hook (duplicate keys, ...)
        raise ParseError(str(exc), source=source) from None
    except RecursionError:
        raise ParseError(f"not {what}: nested deeper than {max_depth} levels", source=source) from None
    except UnicodeDecodeError as exc:
        raise ParseError(f"not {what}: invalid UTF-8 at offset {exc.start}", source=source) from None
    except ValueError as exc:  # _Refused, or the interpreter's own integer-length limit
        raise ParseError(f"not {what}: {str(exc).splitlines()[0] if str(exc) else 'bad value'}",
                         source=source) from None
    check_depth(doc, source, max_depth)
    return doc


def load_json_file(path: str, what: str = "JSON file", *, max_bytes: int = MAX_JSON_BYTES,
                   max_depth: int = MAX_DEPTH) -> Any:
    from obelisk.core.inputs import read_bounded

    return load_json(read_bounded(path, what, max_bytes), str(path), max_bytes=max_bytes, max_depth=max_depth,
                     what="JSON")
