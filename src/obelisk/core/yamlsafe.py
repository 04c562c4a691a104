"""Reading YAML: the one loader. Safe, bounded size, one-line errors naming the file and line.

It uses libyaml (`yaml.CSafeLoader`, about 5x faster: profiles and the check catalogue are
read on every run) when PyYAML was built with it, else the pure-Python `yaml.SafeLoader`;
both construct only plain data, and both report errors the same way here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from obelisk.core.errors import InputError

MAX_YAML_BYTES = 16 * 1024 * 1024
MAX_YAML_DEPTH = 64
MAX_YAML_NODES = 1_000_000  # counted as expanded: aliases count each time they are used (YAML bombs)

_BASE: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _Loader(_BASE):  # type: ignore[misc, valid-type]
    """The safe loader, floats as YAML reads them."""


class _StringKeyLoader(_BASE):  # type: ignore[misc, valid-type]
    """The safe loader that keeps scalars like 5.10 or 1.2 as written when they are ids.

    YAML reads `5.10` as the float 5.1; ids and kernel versions must stay strings, so floats keep their text.
    """


def _float_as_text(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> str:
    return loader.construct_scalar(node)


_StringKeyLoader.add_constructor("tag:yaml.org,2002:float", _float_as_text)


def load_yaml(text: str | bytes, source: str = "<yaml>", *, floats_as_text: bool = False) -> Any:
    if len(text) > MAX_YAML_BYTES:
        raise InputError(f"larger than {MAX_YAML_BYTES} bytes", source=source)
    loader = _StringKeyLoader if floats_as_text else _Loader
    try:
        doc = yaml.load(text, Loader=loader)  # noqa: S506 - both loaders derive from a safe loader
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        line = f" line {mark.line + 1}" if mark is not None else ""
        raise InputError(f"invalid YAML at{line}: {_one_line(exc.problem)}", source=source) from None
    except yaml.reader.ReaderError as exc:
        raise InputError(f"invalid YAML: {exc.reason} (byte {exc.position})", source=source) from None
    except UnicodeDecodeError as exc:
        raise InputError("invalid YAML: invalid UTF-8", source=source, offset=exc.start) from None
    except RecursionError:
        raise InputError(f"invalid YAML: nested deeper than {MAX_YAML_DEPTH} levels", source=source) from None
    except (yaml.YAMLError, ValueError, OverflowError) as exc:  # ValueError: integers over 4,300 digits
        raise InputError(f"invalid YAML: {_one_line(str(exc))}", source=source) from None
    check_shape(doc, source)
    return doc


def _one_line(text: object) -> str:
    lines = str(text or "").strip().splitlines()
    return lines[0][:200] if lines else "malformed"


def check_shape(doc: Any, source: str) -> None:
    """Refuse documents nested deeper than MAX_YAML_DEPTH, with more than MAX_YAML_NODES nodes once
    aliases are expanded (a "billion laughs" document is small but expands without end), or with an
    integer longer than 128 digits. Iterative: hostile depth cannot exhaust the stack here."""
    stack: list[tuple[Any, int]] = [(doc, 0)]
    nodes = 0
    while stack:
        node, depth = stack.pop()
        nodes += 1
        if nodes > MAX_YAML_NODES:
            raise InputError(f"YAML expands to more than {MAX_YAML_NODES} nodes (aliases?)", source=source)
        if depth > MAX_YAML_DEPTH:
            raise InputError(f"YAML nested deeper than {MAX_YAML_DEPTH} levels", source=source)
        if isinstance(node, dict):
            stack.extend((k, depth + 1) for k in node)
            stack.extend((v, depth + 1) for v in node.values())
        elif isinstance(node, list):
            stack.extend((v, depth + 1) for v in node)
        elif isinstance(node, int) and not isinstance(node, bool) and node.bit_length() > 425:
            raise InputError("YAML integer longer than 128 digits", source=source)


def load_yaml_file(path: str | Path, *, floats_as_text: bool = False) -> Any:
    from obelisk.core.inputs import read_bounded

    data = read_bounded(path, "YAML file", MAX_YAML_BYTES)
    return load_yaml(data, str(path), floats_as_text=floats_as_text)
