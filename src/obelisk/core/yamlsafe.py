"""Reading untrusted YAML: safe loader, bounded size, one-line errors naming the file and line."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from obelisk.core.errors import InputError

MAX_YAML_BYTES = 16 * 1024 * 1024


class _StringKeyLoader(yaml.SafeLoader):
    """SafeLoader that keeps scalars like 5.10 or 1.2 as written when they are ids.

    YAML reads `5.10` as the float 5.1; ids must stay strings, so floats keep their text.
    """


def _float_as_text(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> str:
    return loader.construct_scalar(node)


_StringKeyLoader.add_constructor("tag:yaml.org,2002:float", _float_as_text)


def load_yaml(text: str | bytes, source: str = "<yaml>", *, floats_as_text: bool = False) -> Any:
    if len(text) > MAX_YAML_BYTES:
        raise InputError(f"larger than {MAX_YAML_BYTES} bytes", source=source)
    loader = _StringKeyLoader if floats_as_text else yaml.SafeLoader
    try:
        return yaml.load(text, Loader=loader)  # noqa: S506 - both loaders are SafeLoader subclasses
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        line = f" line {mark.line + 1}" if mark is not None else ""
        raise InputError(f"invalid YAML at{line}: {exc.problem}", source=source) from None
    except (yaml.YAMLError, UnicodeDecodeError, RecursionError) as exc:
        raise InputError(f"invalid YAML: {exc}", source=source) from None


def load_yaml_file(path: str | Path, *, floats_as_text: bool = False) -> Any:
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise InputError(f"cannot read: {exc.strerror}", source=str(path)) from None
    return load_yaml(data, str(path), floats_as_text=floats_as_text)
