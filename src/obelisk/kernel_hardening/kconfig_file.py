"""Kernel .config files: parse (plain or gzip, as /proc/config.gz) and serialize.

`parse` is strict: a file that is not a kernel configuration gets one line naming the file
and line, never a traceback; size and decompressed size are bounded.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

from obelisk.core.errors import InputError

MAX_CONFIG_BYTES = 8 * 1024 * 1024
MAX_CONFIG_RATIO = 100  # /proc/config.gz inflates about 5:1

_SET = re.compile(r"^CONFIG_([A-Za-z0-9_]+)=(.*)$")
_UNSET = re.compile(r"^# CONFIG_([A-Za-z0-9_]+) is not set\s*$")
_VERSION = re.compile(r"^# Linux/\S+ (\d+\.\d+(?:\.\d+)?\S*) Kernel Configuration")


@dataclass(frozen=True)
class KernelConfig:
    """Option values keyed by name with the CONFIG_ prefix; 'n' for `# CONFIG_X is not set`.

    String values are unquoted (`CONFIG_X="a b"` -> `a b`).
    """

    values: dict[str, str]
    lines: dict[str, int] = field(default_factory=dict)  # option -> line number
    version: str | None = None  # from the header, e.g. "6.1.0"
    source: str = ""

    def get(self, name: str) -> str | None:
        return self.values.get(name)

    def is_set(self, name: str) -> bool:
        return self.values.get(name, "n") != "n"


def unquote(raw: str) -> str:
    raw = raw.strip()
    if len(raw) >= 2 and raw[0] == raw[-1] == '"':
        return raw[1:-1].replace('\\"', '"').replace("\\\\", "\\")
    return raw


def quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def decompress_if_gzip(data: bytes, source: str) -> bytes:
    if data[:2] != b"\x1f\x8b":
        return data
    from obelisk.core.decompress import inflate

    return inflate(data, "gzip", limit=MAX_CONFIG_BYTES, ratio=MAX_CONFIG_RATIO, source=source, what="gzip data")


def parse(data: bytes, source: str = "<config>") -> KernelConfig:
    if len(data) > MAX_CONFIG_BYTES:
        raise InputError(f"larger than {MAX_CONFIG_BYTES} bytes: not a kernel configuration", source=source)
    data = decompress_if_gzip(data, source)
    if b"\x00" in data:
        raise InputError("binary data: not a kernel configuration", source=source)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"not a kernel configuration: not UTF-8 text (offset {exc.start})", source=source) from None
    values: dict[str, str] = {}
    lines: dict[str, int] = {}
    version = None
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if not stripped:
            continue
        m = _SET.match(stripped)
        if m:
            values["CONFIG_" + m.group(1)] = unquote(m.group(2))
            lines["CONFIG_" + m.group(1)] = number
            continue
        m = _UNSET.match(stripped)
        if m:
            values["CONFIG_" + m.group(1)] = "n"
            lines["CONFIG_" + m.group(1)] = number
            continue
        if stripped.startswith("#"):
            v = _VERSION.match(stripped)
            if v:
                version = v.group(1)
            continue
        raise InputError(f"line {number}: not a kernel configuration line: {stripped[:60]!r}", source=source)
    if not values:
        raise InputError("no CONFIG_ options: not a kernel configuration", source=source)
    return KernelConfig(values=values, lines=lines, version=version, source=source)


def read(path: str | os.PathLike[str]) -> KernelConfig:
    from obelisk.core.inputs import read_bounded

    return parse(read_bounded(path, "kernel configuration", MAX_CONFIG_BYTES), str(path))


def serialize(values: dict[str, str], types: dict[str, str] | None = None) -> str:
    """Write options as .config lines; `types` (name -> 'string', ...) decides quoting."""
    out = []
    for name, value in values.items():
        if value == "n":
            out.append(f"# {name} is not set")
        elif (types or {}).get(name) == "string":
            out.append(f"{name}={quote(value)}")
        else:
            out.append(f"{name}={value}")
    return "\n".join(out) + "\n"


def meaningful_lines(text: str) -> list[str]:
    """The option lines of a .config (comments other than 'is not set' and blanks dropped)."""
    out = []
    for line in text.splitlines():
        s = line.strip()
        if s.startswith("CONFIG_") or _UNSET.match(s):
            out.append(s)
    return out
