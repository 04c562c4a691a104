"""Hardening profiles: Kconfig options, command-line parameters and sysctls, as data.

A profile is a YAML file in `profiles/` (or any path). Each entry names the option, the value
it must have, where the recommendation comes from, the kernel versions it exists in, the names
it had before a rename, and why it matters. `extends` pulls in other profiles; a later entry
with the same kind and name replaces an earlier one.

The keys each kind of entry accepts are declared once (`FIELDS`); an unknown or misspelt key at
any level (the profile, an entry, a `renamed_from` alias) is refused with one line naming the
file, the entry and its option, and the key.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from obelisk.core.errors import InputError
from obelisk.core.findings import Severity
from obelisk.core.yamlsafe import load_yaml_file

PROFILE_DIR = Path(__file__).with_name("profiles")
KINDS = ("kconfig", "cmdline", "sysctl")
SOURCES = ("kspp", "clipos", "grapheneos", "cis", "kubernetes", "obelisk", "site")

Version = tuple[int, ...]


def parse_version(text: str | None) -> Version | None:
    """'6.1', '6.1.0-13-amd64', '5.10.209' -> (6, 1), (6, 1, 0), (5, 10, 209)."""
    if text is None:
        return None
    m = re.match(r"^\s*(\d+)\.(\d+)(?:\.(\d+))?", str(text))
    if not m:
        return None
    return tuple(int(g) for g in m.groups() if g is not None)


def _vtext(v: Version | None) -> str:
    return ".".join(map(str, v)) if v else ""


@dataclass(frozen=True)
class Alias:
    """A former name of an option, used by kernels before `until`."""

    name: str
    until: Version | None = None


@dataclass(frozen=True)
class Requirement:
    kind: str  # kconfig | cmdline | sysctl
    name: str  # CONFIG_FOO, a command-line parameter, a sysctl key
    source: str
    why: str
    profile: str
    value: str | None = None
    one_of: tuple[str, ...] = ()
    at_least: int | None = None
    present: bool = False  # cmdline: a flag that must appear
    absent: bool = False  # cmdline: a parameter that must not appear
    not_in: tuple[str, ...] = ()  # may be absent; if present, not one of these
    since: Version | None = None
    until: Version | None = None
    renamed_from: tuple[Alias, ...] = ()
    severity: Severity = Severity.MEDIUM
    section: str = ""
    moot_if: tuple[tuple[str, str], ...] = ()  # all CONFIG_X=v hold -> the requirement is moot
    satisfied_by_kconfig: tuple[tuple[str, str], ...] = ()  # cmdline: a config that makes it unnecessary
    # what is given up, when the entry widens what a hardening baseline would allow (required when it
    # overrides a parent profile's entry with another condition: a profile never drops one silently)
    tradeoff: str = ""

    @property
    def id(self) -> str:
        return f"kernel.{self.kind}.{self.name}"

    @property
    def names(self) -> tuple[str, ...]:
        """Every name the option has had, newest first."""
        return (self.name, *(a.name for a in self.renamed_from))

    def name_for(self, version: Version | None) -> str:
        """The option's name in kernel `version` (the newest name when unknown)."""
        if version is not None:
            for alias in sorted(self.renamed_from, key=lambda a: a.until or (999,)):
                if alias.until is not None and version < alias.until:
                    return alias.name
        return self.name

    def exists_in(self, version: Version | None) -> bool:
        if version is None:
            return True
        since = self.since
        if since is not None and version < since and not any(
                a.until is not None and version < a.until for a in self.renamed_from):
            return False
        return self.until is None or version < self.until

    @property
    def explained(self) -> str:
        """Why the requirement holds, and what it gives up when it is a trade-off."""
        return f"{self.why} Trade-off: {self.tradeoff}" if self.tradeoff else self.why

    @property
    def expected(self) -> str:
        if self.value is not None:
            return f"{self.value}" if self.kind != "cmdline" else f"{self.name}={self.value}"
        if self.one_of:
            return "one of " + ", ".join(self.one_of)
        if self.at_least is not None:
            return f">= {self.at_least}"
        if self.present:
            return "present"
        if self.absent:
            return "absent"
        if self.not_in:
            return "not " + ", ".join(self.not_in)
        return ""

    def accepts(self, observed: str | None) -> bool:
        """Does the observed value (None: not set / not present) satisfy the requirement?"""
        if self.kind == "cmdline":
            if self.present:
                return observed is not None
            if self.absent:
                return observed is None
            if self.not_in:
                return observed is None or observed not in self.not_in
        if self.kind == "kconfig" and observed is None:
            observed = "n"
        if self.value is not None:
            return observed == self.value
        if self.one_of:
            return observed in self.one_of
        if self.at_least is not None:
            return _as_int(observed) is not None and _as_int(observed) >= self.at_least  # type: ignore[operator]
        return False

    def requested_value(self) -> str | None:
        """The single value `kernel config` asks for (None for cmdline-style conditions)."""
        if self.value is not None:
            return self.value
        if self.one_of:
            return self.one_of[0]
        if self.at_least is not None:
            return str(self.at_least)
        return None


def _as_int(text: str | None) -> int | None:
    if text is None:
        return None
    try:
        return int(text, 0)
    except ValueError:
        return None


@dataclass(frozen=True)
class Profile:
    name: str
    description: str
    requirements: tuple[Requirement, ...]
    path: str = ""

    def of_kind(self, kind: str) -> tuple[Requirement, ...]:
        return tuple(r for r in self.requirements if r.kind == kind)

    def kconfig_request(self, name: str) -> Requirement | None:
        for r in self.requirements:
            if r.kind == "kconfig" and name in r.names:
                return r
        return None


# the keys of one entry, per kind; the conditions (exactly one per entry) are the first keys after name
_CONDITIONS = ("value", "one_of", "at_least")
_CMDLINE_CONDITIONS = ("present", "absent", "not_in")
_COMMON = ("source", "why", "since", "until", "renamed_from", "severity", "section", "moot_if", "tradeoff")
FIELDS: dict[str, tuple[str, ...]] = {
    "kconfig": ("name", *_CONDITIONS, *_COMMON),
    "cmdline": ("name", *_CONDITIONS, *_CMDLINE_CONDITIONS, *_COMMON, "satisfied_by_kconfig"),
    "sysctl": ("name", *_CONDITIONS, *_COMMON),
}
ALIAS_FIELDS = ("name", "until")
TOP_FIELDS = ("name", "description", "extends", *KINDS)
_KCONFIG_NAME = re.compile(r"CONFIG_[A-Za-z0-9_]+")


def available_profiles() -> list[str]:
    return sorted(p.stem for p in PROFILE_DIR.glob("*.yaml"))


def load_profile(name_or_path: str) -> Profile:
    """A built-in profile by name, or a profile file by path; `extends` resolved."""
    return _load(name_or_path, ())


def _locate(name_or_path: str) -> Path:
    if "/" in name_or_path or name_or_path.endswith((".yaml", ".yml")):
        path = Path(name_or_path)
        if not path.is_file():
            raise InputError("profile file not found", source=name_or_path)
        return path
    path = PROFILE_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        raise InputError(f"unknown profile {name_or_path!r} (available: {', '.join(available_profiles())})")
    return path


def _inside_roots(path: Path, parent: str, field: str, where: str) -> str:
    """A profile extended by path: a .yaml file in the extending profile's directory (or below it), or in
    the built-in profile directory. Anything else (../../etc/shadow) is refused without being opened."""
    resolved = (path.parent / parent).resolve()
    roots = (path.parent.resolve(), PROFILE_DIR.resolve())
    if resolved.suffix not in (".yaml", ".yml") or not any(resolved.is_relative_to(r) for r in roots):
        raise InputError(f"{field}: a parent profile must be a .yaml file beside this profile (or below it)",
                         source=where)
    return str(resolved)


def _load(name_or_path: str, chain: tuple[str, ...]) -> Profile:
    path = _locate(name_or_path)
    key = str(path.resolve())
    if key in chain:
        raise InputError("profile extends itself (cycle)", source=str(path))
    data = load_yaml_file(path, floats_as_text=True)  # versions like 5.10 stay text
    where = str(path)
    if not isinstance(data, dict):
        raise InputError("a profile is a mapping with name, kconfig, cmdline, sysctl", source=where)
    unknown = [str(k) for k in data if k not in TOP_FIELDS]
    if unknown:
        shown = repr(unknown[0]) if re.fullmatch(r"[A-Za-z0-9_.-]{1,40}", unknown[0]) else "(not shown)"
        raise InputError(f"unknown top-level field {shown} (allowed: {', '.join(TOP_FIELDS)})",
                         source=where)
    for key in ("name", "description"):
        if data.get(key) is not None and not isinstance(data[key], str):
            raise InputError(f"{key}: expected a string", source=where)
    name = str(data.get("name") or path.stem)
    merged: dict[tuple[str, str], Requirement] = {}
    extends = data.get("extends") or []
    if not isinstance(extends, list) or not all(isinstance(e, str) for e in extends):
        raise InputError("extends: expected a list of profile names", source=where)
    for i, parent in enumerate(extends):
        parent_path = str(parent)
        if "/" in parent_path or parent_path.endswith((".yaml", ".yml")):
            parent_path = _inside_roots(path, parent_path, f"extends[{i}]", where)
        for req in _load(parent_path, (*chain, key)).requirements:
            merged[(req.kind, req.name)] = req
    for kind in KINDS:
        entries = data.get(kind) or []
        if not isinstance(entries, list):
            raise InputError(f"{kind}: expected a list", source=where)
        for i, entry in enumerate(entries):
            req = _requirement(kind, entry, f"{kind}[{i}]", where, name)
            # a renamed option overrides any entry known under one of its names
            for n in req.names:
                for k in [k for k in merged if k[0] == kind and n in merged[k].names]:
                    parent = merged.pop(k)
                    if parent.expected != req.expected and not req.tradeoff:
                        raise InputError(f"{kind}[{i}] ({req.name}): overrides profile {parent.profile}'s "
                                         f"{parent.name} (expected {parent.expected}) with {req.expected}: say "
                                         "what that gives up in `tradeoff`", source=where)
            merged[(kind, req.name)] = req
    return Profile(name=name, description=str(data.get("description") or "").strip(),
                   requirements=tuple(merged.values()), path=str(path))


def _requirement(kind: str, entry: Any, where: str, source: str, profile: str) -> Requirement:
    if not isinstance(entry, dict):
        raise InputError(f"{where}: expected a mapping", source=source)
    name = entry.get("name")
    if isinstance(name, str) and name:
        where = f"{where} ({name})"
    allowed = FIELDS[kind]
    unknown = [str(k) for k in entry if k not in allowed]
    if unknown:
        raise InputError(f"{where}: unknown field {unknown[0]!r} in a {kind} entry (allowed: {', '.join(allowed)})",
                         source=source)
    if not isinstance(name, str) or not name:
        raise InputError(f"{where}: name: missing", source=source)
    if kind == "kconfig" and not _KCONFIG_NAME.fullmatch(name):
        raise InputError(f"{where}: name: a Kconfig option is written CONFIG_NAME", source=source)
    if kind == "sysctl" and not re.fullmatch(r"[A-Za-z0-9_.\-/*]+", name):
        raise InputError(f"{where}: name: not a sysctl key", source=source)
    conditions = [k for k in allowed if k in (*_CONDITIONS, *_CMDLINE_CONDITIONS) and k in entry]
    if len(conditions) != 1:
        options = [k for k in allowed if k in (*_CONDITIONS, *_CMDLINE_CONDITIONS)]
        raise InputError(f"{where}: exactly one of {', '.join(options)}", source=source)
    for flag in ("present", "absent"):
        if flag in entry and entry[flag] is not True:
            raise InputError(f"{where}: {flag}: expected true", source=source)
    if "value" in entry and not _scalar(entry["value"]):
        raise InputError(f"{where}: value: expected y, n, m, a string or a number", source=source)
    section = entry.get("section")
    if section is not None and not isinstance(section, str):
        raise InputError(f"{where}: section: expected a string", source=source)
    src = entry.get("source")
    if src not in SOURCES:
        raise InputError(f"{where}: source: {src!r} is not one of {', '.join(SOURCES)}", source=source)
    why = entry.get("why")
    if not isinstance(why, str) or not why.strip():
        raise InputError(f"{where}: why: say why the option matters", source=source)
    try:
        severity = Severity(entry.get("severity", "medium"))
    except ValueError:
        raise InputError(f"{where}: severity: {entry.get('severity')!r} is not one of "
                         f"{', '.join(s.value for s in Severity)}", source=source) from None
    at_least = entry.get("at_least")
    if at_least is not None and (not isinstance(at_least, int) or isinstance(at_least, bool)):
        raise InputError(f"{where}: at_least: expected an integer", source=source)

    def version(key: str, value: Any) -> Version | None:
        if value is None:
            return None
        v = parse_version(str(value))
        if v is None:
            raise InputError(f"{where}: {key}: not a kernel version: {value!r}", source=source)
        return v

    aliases = []
    renamed = entry.get("renamed_from") or []
    if not isinstance(renamed, list):
        raise InputError(f"{where}: renamed_from: expected a list of {{name, until}}", source=source)
    for j, alias in enumerate(renamed):
        at = f"{where}: renamed_from[{j}]"
        if not isinstance(alias, dict):
            raise InputError(f"{at}: expected {{name, until}}", source=source)
        if isinstance(alias.get("name"), str):
            at = f"{at} ({alias['name']})"
        unknown = [str(k) for k in alias if k not in ALIAS_FIELDS]
        if unknown:
            raise InputError(f"{at}: unknown field {unknown[0]!r} (allowed: {', '.join(ALIAS_FIELDS)})",
                             source=source)
        if not isinstance(alias.get("name"), str) or (kind == "kconfig" and not _KCONFIG_NAME.fullmatch(alias["name"])):
            raise InputError(f"{at}: name: expected the former option name", source=source)
        aliases.append(Alias(name=alias["name"], until=version("renamed_from.until", alias.get("until"))))

    tradeoff = entry.get("tradeoff", "")
    if not isinstance(tradeoff, str):
        raise InputError(f"{where}: tradeoff: expected a sentence saying what the entry gives up", source=source)

    def pairs(key: str) -> tuple[tuple[str, str], ...]:
        value = entry.get(key) or {}
        if not isinstance(value, dict):
            raise InputError(f"{where}: {key}: expected a mapping CONFIG_X: value", source=source)
        for k, v in value.items():
            if not isinstance(k, str) or not _KCONFIG_NAME.fullmatch(k):
                raise InputError(f"{where}: {key}: {k!r} is not a Kconfig option (CONFIG_NAME)", source=source)
            if not _scalar(v):
                raise InputError(f"{where}: {key}: {k}: expected y, n, m, a string or a number", source=source)
        return tuple((k, _text(v)) for k, v in value.items())

    def strings(key: str) -> tuple[str, ...]:
        value = entry.get(key) or []
        if not isinstance(value, list) or not all(_scalar(v) for v in value):
            raise InputError(f"{where}: {key}: expected a list of values", source=source)
        return tuple(_text(v) for v in value)

    return Requirement(
        kind=kind, name=name, source=src, why=why.strip(), profile=profile,
        value=_text(entry["value"]) if "value" in entry else None,
        one_of=strings("one_of"), at_least=at_least,
        present=bool(entry.get("present", False)), absent=bool(entry.get("absent", False)),
        not_in=strings("not_in"),
        since=version("since", entry.get("since")), until=version("until", entry.get("until")),
        renamed_from=tuple(aliases), severity=severity, section=str(entry.get("section") or kind),
        moot_if=pairs("moot_if"), satisfied_by_kconfig=pairs("satisfied_by_kconfig"),
        tradeoff=tradeoff.strip(),
    )


def _scalar(value: Any) -> bool:
    return isinstance(value, (str, int, float, bool))


def _text(value: Any) -> str:
    if value is True:
        return "y"
    if value is False:
        return "n"
    return str(value)


__all__ = ["Alias", "Profile", "Requirement", "available_profiles", "load_profile", "parse_version", "_vtext"]
