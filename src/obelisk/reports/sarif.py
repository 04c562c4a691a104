"""SARIF 2.1.0 for code-scanning dashboards.

Every finding is a result (SARIF's `kind` says pass / fail / review / notApplicable / open), so a
dashboard sees what was checked, not only what failed. A waiver is a SARIF suppression
(`external`, `accepted`, with its justification). File evidence becomes a physical location.
"""

from __future__ import annotations

import re
from pathlib import PurePosixPath
from typing import Any
from urllib.parse import quote

from obelisk.core.findings import Finding, Severity, Status
from obelisk.reports.model import Bundle
from obelisk.reports.options import RenderOptions, dump_json

SCHEMA_URI = "https://json.schemastore.org/sarif-2.1.0.json"
INFORMATION_URI = "https://github.com/obelisk/obelisk"

_KIND = {Status.PASS: "pass", Status.FAIL: "fail", Status.WAIVED: "fail", Status.ERROR: "open",
         Status.MANUAL: "review", Status.SKIP: "notApplicable"}
_LEVEL = {Severity.CRITICAL: "error", Severity.HIGH: "error", Severity.MEDIUM: "warning",
          Severity.LOW: "note", Severity.INFO: "note"}
# GitHub code scanning reads a CVSS-like number from rule properties.
_SECURITY_SEVERITY = {Severity.CRITICAL: "9.5", Severity.HIGH: "8.0", Severity.MEDIUM: "5.5",
                      Severity.LOW: "3.0", Severity.INFO: "0.0"}


def _rule(f: Finding) -> dict:
    rule: dict = {
        "id": f.id,
        "name": "".join(part.capitalize() for part in f.id.replace(".", "-").replace("_", "-").split("-")),
        "shortDescription": {"text": f.title},
        "fullDescription": {"text": f.expected and f"{f.title}. Expected: {f.expected}" or f.title},
        "defaultConfiguration": {"level": _LEVEL[f.severity]},
        "properties": {
            "tags": list(dict.fromkeys(["security", *(t for t in (f.benchmark, f.section) if t)])),
            "security-severity": _SECURITY_SEVERITY[f.severity],
            "precision": "high",
            "references": [f"{r.scheme}:{r.id}" for r in f.references],
        },
    }
    if f.remediation:
        rule["help"] = {"text": f.remediation}
    return rule


_LINE = re.compile(r"^(?:line\s*)?([0-9]+)$", re.I | re.ASCII)
# Evidence kinds whose source is a file on the checked system.
_FILE_KINDS = frozenset({"file", "config", "manifest", "log-entry"})


def _location(f: Finding) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for e in f.evidence:
        if e.kind not in _FILE_KINDS or not e.source or " " in e.source or "://" in e.source:
            continue
        path = PurePosixPath(e.source)
        uri = ("file://" if path.is_absolute() else "") + quote(str(path))
        physical: dict = {"artifactLocation": {"uri": uri}}
        m = _LINE.match(e.location.strip())
        if m and int(m.group(1)) > 0:
            physical["region"] = {"startLine": int(m.group(1))}
        out.append({"physicalLocation": physical})
    if not out and f.target:
        out.append({"logicalLocations": [{"name": f.target, "kind": "resource"}]})
    return out


def _message(f: Finding) -> str:
    parts = [f.title]
    if f.detail:
        parts.append(f.detail)
    if f.observed is not None or f.expected is not None:
        parts.append(f"Observed: {f.observed}; expected: {f.expected}.")
    return " — ".join(parts)


def _result(f: Finding, index: int) -> dict:
    kind = _KIND[f.status]
    result: dict = {
        "ruleId": f.id,
        "ruleIndex": index,
        "kind": kind,
        "level": _LEVEL[f.severity] if kind == "fail" else "none",
        "message": {"text": _message(f)},
        "properties": {"status": f.status.value, "severity": f.severity.value, "target": f.target,
                       "evidence": [e.to_json() for e in f.evidence]},
    }
    locations = _location(f)
    if locations:
        result["locations"] = locations
    if f.waiver is not None and f.status is Status.WAIVED:
        result["suppressions"] = [{
            "kind": "external", "status": "accepted",
            "justification": f"{f.waiver.reason} (approved by {f.waiver.approver} until "
                             f"{f.waiver.expires.isoformat()})",
        }]
    return result


def render(bundle: Bundle, options: RenderOptions) -> bytes:
    report = bundle.report
    rules: list[dict] = []
    index: dict[str, int] = {}
    results = []
    for f in report.findings:
        if f.id not in index:
            index[f.id] = len(rules)
            rules.append(_rule(f))
        results.append(_result(f, index[f.id]))
    s = report.subject
    doc = {
        "$schema": SCHEMA_URI,
        "version": "2.1.0",
        "runs": [{
            "tool": {"driver": {"name": "obelisk", "version": report.tool_version.split(",")[0].strip() or "0",
                                "informationUri": INFORMATION_URI, "rules": rules}},
            "automationDetails": {"id": f"obelisk/{s.kind}/{s.name}/{report.generated_at}"},
            "invocations": [{"executionSuccessful": True,
                             **({"endTimeUtc": report.generated_at} if report.generated_at else {}),
                             **({"commandLine": f"obelisk {report.command}"} if report.command else {})}],
            "properties": {"subject": s.to_json(), "sources": [src.path for src in bundle.sources]},
            "results": results,
        }],
    }
    return dump_json(doc, len(report.findings))
