"""The result model every checker in obelisk returns: `Finding`s gathered in a `Report`.

Kernel checks, IMA log verification, CIS/STIG scans and attestation all produce these
records, and every report format (reports component) renders them. The results file
(`obelisk.report/1`) is the `parse`/`serialize` pair below: `parse(serialize(report)) == report`.
"""

from __future__ import annotations

import datetime as _dt
import json
from collections import Counter
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any, TypeVar

from obelisk import __version__
from obelisk.core.errors import InputError

SCHEMA_VERSION = "obelisk.report/1"


class Status(StrEnum):
    PASS = "pass"
    FAIL = "fail"
    ERROR = "error"  # the check could not be evaluated (unreadable file, malformed input)
    SKIP = "skip"  # not applicable to this target
    MANUAL = "manual"  # needs a person; the finding says what to look at
    WAIVED = "waived"  # failed, but covered by an unexpired waiver


class Severity(StrEnum):
    CRITICAL = "critical"
    HIGH = "high"  # DISA CAT I
    MEDIUM = "medium"  # DISA CAT II
    LOW = "low"  # DISA CAT III
    INFO = "info"


# Which statuses make a command exit 1.
FAILING = frozenset({Status.FAIL, Status.ERROR})


@dataclass(frozen=True)
class Reference:
    """A pointer into a benchmark or control catalogue.

    scheme: "cis", "stig" (V-ID), "stig-rule", "stig-version" (CNTR-K8-...), "cci",
    "nist-800-53", "kspp", "url", ... ; id is always a string ("1.2.10", not 1.21).
    """

    scheme: str
    id: str

    def to_json(self) -> dict[str, str]:
        return {"scheme": self.scheme, "id": self.id}

    @classmethod
    def from_json(cls, data: Any, where: str = "reference") -> Reference:
        d = _mapping(data, where)
        return cls(scheme=_str(d, "scheme", where), id=_str(d, "id", where))


@dataclass(frozen=True)
class Evidence:
    """What a finding was decided on: a file, a process flag, a log entry, a quote field."""

    kind: str  # "file", "flag", "process", "log-entry", "config", "quote", ...
    source: str  # path, pid, URL: where it was read
    detail: str = ""  # the value, line or excerpt that was read (never secrets)
    location: str = ""  # line number, offset, entry number within the source

    def to_json(self) -> dict[str, str]:
        return {"kind": self.kind, "source": self.source, "detail": self.detail, "location": self.location}

    @classmethod
    def from_json(cls, data: Any, where: str = "evidence") -> Evidence:
        d = _mapping(data, where)
        return cls(kind=_str(d, "kind", where), source=_str(d, "source", where),
                   detail=_str(d, "detail", where, ""), location=_str(d, "location", where, ""))


@dataclass(frozen=True)
class Waiver:
    """An approved exception: turns a failure into `waived` until it expires."""

    id: str  # the finding id it covers
    reason: str
    approver: str
    expires: _dt.date

    def expired(self, today: _dt.date) -> bool:
        return today > self.expires

    def to_json(self) -> dict[str, str]:
        return {"id": self.id, "reason": self.reason, "approver": self.approver,
                "expires": self.expires.isoformat()}

    @classmethod
    def from_json(cls, data: Any, where: str = "waiver") -> Waiver:
        d = _mapping(data, where)
        wid, reason, approver = _str(d, "id", where), _str(d, "reason", where), _str(d, "approver", where)
        expires = d.get("expires")
        if expires is None:
            raise InputError(f"{where}.expires: missing")
        if isinstance(expires, _dt.date):
            date = expires
        else:
            try:
                date = _dt.date.fromisoformat(str(expires))
            except ValueError:
                raise InputError(f"{where}.expires: not a date (YYYY-MM-DD): {expires!r}") from None
        return cls(id=wid, reason=reason, approver=approver, expires=date)


@dataclass(frozen=True)
class Finding:
    id: str  # stable across runs: "cis-1.2.1", "kernel.kconfig.CONFIG_MODULES", "ima.entry.17"
    title: str
    status: Status
    severity: Severity = Severity.MEDIUM
    target: str = ""  # what was checked: a path, a component, a node
    observed: str | None = None
    expected: str | None = None
    evidence: tuple[Evidence, ...] = ()
    remediation: str = ""
    references: tuple[Reference, ...] = ()
    benchmark: str = ""  # "cis-1.12", "stig-k8s", "kernel-hardening", "ima", "attestation"
    section: str = ""  # "control-plane", "etcd", "worker", "kconfig", ...
    detail: str = ""  # why this status: the explanation a person reads first
    waiver: Waiver | None = None

    def refs(self, scheme: str) -> list[str]:
        return [r.id for r in self.references if r.scheme == scheme]

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": self.id,
            "title": self.title,
            "status": self.status.value,
            "severity": self.severity.value,
            "target": self.target,
            "observed": self.observed,
            "expected": self.expected,
            "evidence": [e.to_json() for e in self.evidence],
            "remediation": self.remediation,
            "references": [r.to_json() for r in self.references],
            "benchmark": self.benchmark,
            "section": self.section,
            "detail": self.detail,
        }
        if self.waiver is not None:
            out["waiver"] = self.waiver.to_json()
        return out

    @classmethod
    def from_json(cls, data: Any, where: str = "finding") -> Finding:
        d = _mapping(data, where)
        fid = _str(d, "id", where)
        where = f"{where} {fid!r}"
        evidence_where = f"{where}.evidence"
        return cls(
            id=fid,
            title=_str(d, "title", where),
            status=_enum(Status, d, "status", where),
            severity=_enum(Severity, d, "severity", where, Severity.MEDIUM),
            target=_str(d, "target", where, ""),
            observed=_opt_str(d, "observed", where),
            expected=_opt_str(d, "expected", where),
            evidence=tuple(Evidence.from_json(e, evidence_where) for e in _list(d, "evidence", where)),
            remediation=_str(d, "remediation", where, ""),
            references=tuple(Reference.from_json(r, f"{where}.references") for r in _list(d, "references", where)),
            benchmark=_str(d, "benchmark", where, ""),
            section=_str(d, "section", where, ""),
            detail=_str(d, "detail", where, ""),
            waiver=Waiver.from_json(d["waiver"], f"{where}.waiver") if d.get("waiver") is not None else None,
        )


@dataclass(frozen=True)
class Subject:
    """What a report is about: a node, an image, a kernel, a file tree."""

    kind: str  # "node", "image", "kernel", "tree", "log", ...
    name: str
    digest: str = ""  # e.g. the image manifest's sha256
    attributes: tuple[tuple[str, str], ...] = ()  # kernel version, hostname, ... (sorted pairs)

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "name": self.name, "digest": self.digest,
                "attributes": dict(self.attributes)}

    @classmethod
    def from_json(cls, data: Any, where: str = "subject") -> Subject:
        d = _mapping(data, where)
        attrs = d.get("attributes") or {}
        if not isinstance(attrs, dict):
            raise InputError(f"{where}.attributes: expected an object")
        return cls(kind=_str(d, "kind", where), name=_str(d, "name", where),
                   digest=_str(d, "digest", where, ""),
                   attributes=tuple(sorted((str(k), str(v)) for k, v in attrs.items())))


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


@dataclass(frozen=True)
class Report:
    findings: tuple[Finding, ...]
    subject: Subject
    tool: str = "obelisk"
    tool_version: str = __version__
    generated_at: str = field(default_factory=_now)  # RFC 3339 UTC
    command: str = ""  # which obelisk command produced it

    def counts(self) -> Counter[Status]:
        return Counter(f.status for f in self.findings)

    @property
    def failed(self) -> bool:
        return any(f.status in FAILING for f in self.findings)

    def exit_code(self) -> int:
        return 1 if self.failed else 0

    def with_findings(self, findings: tuple[Finding, ...]) -> Report:
        return replace(self, findings=findings)

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA_VERSION,
            "tool": self.tool,
            "tool_version": self.tool_version,
            "generated_at": self.generated_at,
            "command": self.command,
            "subject": self.subject.to_json(),
            "summary": {s.value: self.counts().get(s, 0) for s in Status},
            "findings": [f.to_json() for f in self.findings],
        }

    @classmethod
    def from_json(cls, data: Any, where: str = "report") -> Report:
        d = _mapping(data, where)
        schema = d.get("schema")
        if schema != SCHEMA_VERSION:
            raise InputError(f"{where}.schema: expected {SCHEMA_VERSION!r}, got {schema!r}")
        findings = tuple(Finding.from_json(f, f"{where}.findings[{i}]")
                         for i, f in enumerate(_list(d, "findings", where)))
        return cls(findings=findings, subject=Subject.from_json(d.get("subject"), f"{where}.subject"),
                   tool=_str(d, "tool", where, "obelisk"), tool_version=_str(d, "tool_version", where, ""),
                   generated_at=_str(d, "generated_at", where, ""), command=_str(d, "command", where, ""))


def serialize(report: Report, *, compact: bool = False) -> str:
    """A report as `obelisk.report/1` JSON (what `--format json` prints and `obelisk report` reads).

    `compact`: no indentation, for machines (the fleet stores a report per round; the C encoder is about
    ten times faster than the indenting one)."""
    if compact:
        return json.dumps(report.to_json(), separators=(",", ":")) + "\n"
    return json.dumps(report.to_json(), indent=2, sort_keys=False) + "\n"


def parse(text: str | bytes, source: str = "report") -> Report:
    from obelisk.core.jsonsafe import load_json

    data = load_json(text, source)
    try:
        return Report.from_json(data)
    except InputError as exc:
        raise InputError(str(exc), source=source) from None


# --- strict field readers: a malformed results file names the field, never a KeyError ---

def _mapping(data: Any, where: str) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise InputError(f"{where}: expected an object, got {type(data).__name__}")
    return data


_MISSING = object()
_E = TypeVar("_E", bound=StrEnum)


def _str(d: dict[str, Any], key: str, where: str, default: Any = _MISSING) -> str:
    value = d.get(key, _MISSING)
    if value is _MISSING or value is None:
        if default is _MISSING:
            raise InputError(f"{where}.{key}: missing")
        return default
    if not isinstance(value, str):
        raise InputError(f"{where}.{key}: expected a string, got {type(value).__name__}")
    return value


def _opt_str(d: dict[str, Any], key: str, where: str) -> str | None:
    value = d.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise InputError(f"{where}.{key}: expected a string or null, got {type(value).__name__}")
    return value


def _list(d: dict[str, Any], key: str, where: str) -> list[Any]:
    value = d.get(key, [])
    if not isinstance(value, list):
        raise InputError(f"{where}.{key}: expected a list")
    return value


def _enum(enum: type[_E], d: dict[str, Any], key: str, where: str, default: Any = _MISSING) -> _E:
    value = d.get(key, _MISSING)
    if value is _MISSING and default is not _MISSING:
        return default
    try:
        return enum(value)
    except ValueError:
        allowed = ", ".join(e.value for e in enum)
        raise InputError(f"{where}.{key}: {value!r} is not one of {allowed}") from None
