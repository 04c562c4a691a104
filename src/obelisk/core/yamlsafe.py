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
        return yaml.load(text, Loader=loader)  # noqa: S506 - both loaders derive from a safe loader
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        line = f" line {mark.line + 1}" if mark is not None else ""
        raise InputError(f"invalid YAML at{line}: {exc.problem}", source=source) from None
    except (yaml.YAMLError, UnicodeDecodeError, RecursionError) as exc:
        raise InputError(f"invalid YAML: {exc}", source=source) from None


def load_yaml_file(path: str | Path, *, floats_as_text: bool = False) -> Any:
    from obelisk.core.inputs import read_bounded

    data = read_bounded(path, "YAML file", MAX_YAML_BYTES)
    return load_yaml(data, str(path), floats_as_text=floats_as_text)
