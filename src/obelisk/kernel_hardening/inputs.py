"""The other inputs of `kernel check`: kernel command lines and sysctl settings.

Both are parsed from files or read from the running machine (/proc/cmdline, /proc/sys).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from obelisk.core.errors import InputError
from obelisk.core.inputs import read_bounded

MAX_BYTES = 1024 * 1024


def _read_text(path: str | Path, what: str) -> str:
    data = read_bounded(path, what, MAX_BYTES)
    if b"\x00" in data:
        raise InputError(f"binary data: not a {what}", source=str(path))
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"not UTF-8 text (offset {exc.start}): not a {what}", source=str(path)) from None


def normalize_param(name: str) -> str:
    """The kernel treats '-' and '_' alike in parameter names."""
    return name.replace("-", "_")


@dataclass(frozen=True)
class Cmdline:
    text: str
    params: dict[str, str | None]  # name -> value (None for a bare flag); the last occurrence wins
    source: str = ""

    def get(self, name: str) -> tuple[bool, str | None]:
        key = normalize_param(name)
        return (key in self.params, self.params.get(key))


def parse_cmdline(text: str, source: str = "<cmdline>") -> Cmdline:
    params: dict[str, str | None] = {}
    i, n = 0, len(text)
    while i < n:
        while i < n and text[i].isspace():
            i += 1
        if i >= n:
            break
        start, quoted = i, False
        while i < n and (quoted or not text[i].isspace()):
            if text[i] == '"':
                quoted = not quoted
            i += 1
        token = text[start:i].replace('"', "")
        if token == "--":  # the rest goes to init
            break
        name, eq, value = token.partition("=")
        params[normalize_param(name)] = value if eq else None
    return Cmdline(text=text.strip(), params=params, source=source)


def read_cmdline(path: str | Path) -> Cmdline:
    return parse_cmdline(_read_text(path, "kernel command line"), str(path))


@dataclass(frozen=True)
class Sysctls:
    values: dict[str, str]  # dotted key -> value (whitespace collapsed)
    lines: dict[str, int]
    source: str = ""
    running: bool = False

    def get(self, key: str) -> str | None:
        return self.values.get(key)


def normalize_key(key: str) -> str:
    return key.strip().strip("/").replace("/", ".")


def parse_sysctl_conf(text: str, source: str = "<sysctl>") -> Sysctls:
    """sysctl.conf / sysctl.d syntax: `key = value`, `#` and `;` comments, `-key` ignore-errors."""
    values: dict[str, str] = {}
    lines: dict[str, int] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        key, eq, value = line.partition("=")
        if not eq or not key.strip():
            raise InputError(f"line {number}: expected 'key = value': {line[:60]!r}", source=source)
        key = normalize_key(key.lstrip("-"))
        values[key] = " ".join(value.split())
        lines[key] = number
    return Sysctls(values=values, lines=lines, source=source)


def read_sysctl_file(path: str | Path) -> Sysctls:
    return parse_sysctl_conf(_read_text(path, "sysctl file"), str(path))


def read_running_sysctls(keys: list[str], proc_sys: str | Path = "/proc/sys") -> Sysctls:
    values = {}
    for key in keys:
        path = Path(proc_sys, *key.split("."))
        try:
            values[key] = " ".join(path.read_text().split())
        except OSError:
            continue  # not present in this kernel
    return Sysctls(values=values, lines={}, source=str(proc_sys), running=True)
