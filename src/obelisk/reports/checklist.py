"""STIG checklist entries (one per STIG rule) from findings: what CKL and CKLB both render.

Several findings may bear on one STIG rule (the same rule checked on the API server and on each
kubelet); the rule's status is the worst of them: Open if any failed or was waived (a waiver is a
documented exception, tracked as an open item, not a pass), Not_Reviewed if any could not be
evaluated or needs a person, NotAFinding if any passed, Not_Applicable if all were skipped.
With DISA's XCCDF file, every rule of the benchmark gets an entry (Not_Reviewed when obelisk has
no finding for it) and titles, discussion, check and fix text come from that file.
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass

from obelisk.core.errors import InputError
from obelisk.core.findings import Finding, Report, Severity, Status
from obelisk.reports.stig_benchmark import StigBenchmark, StigRule

NOT_A_FINDING = "NotAFinding"
OPEN = "Open"
NOT_APPLICABLE = "Not_Applicable"
NOT_REVIEWED = "Not_Reviewed"

_STATUS = {
    Status.PASS: NOT_A_FINDING,
    Status.FAIL: OPEN,
    Status.WAIVED: OPEN,
    Status.ERROR: NOT_REVIEWED,
    Status.MANUAL: NOT_REVIEWED,
    Status.SKIP: NOT_APPLICABLE,
}
_PRECEDENCE = (OPEN, NOT_REVIEWED, NOT_A_FINDING, NOT_APPLICABLE)

# DISA severities are CAT I/II/III = high/medium/low; critical folds into high, info into low.
_DISA_SEVERITY = {Severity.CRITICAL: "high", Severity.HIGH: "high", Severity.MEDIUM: "medium",
                  Severity.LOW: "low", Severity.INFO: "low"}

# Stable UUIDs: the same subject and rule give the same checklist ids on every run.
_NAMESPACE = uuid.UUID("6f1c0a52-4b8e-5d0e-9c55-0b3e1f5a7d21")


@dataclass(frozen=True)
class ChecklistEntry:
    vuln_id: str
    rule_id: str
    version: str
    severity: str
    group_title: str
    title: str
    discussion: str
    check: str
    fix: str
    ccis: tuple[str, ...]
    status: str
    finding_details: str
    comments: str
    weight: str = "10.0"
    check_ref: str = "M"
    legacy_ids: tuple[str, ...] = ()


@dataclass(frozen=True)
class Checklist:
    host_name: str
    fqdn: str
    target_comment: str
    stig_id: str
    title: str
    version: str
    release_info: str
    filename: str
    stig_uuid: str
    entries: tuple[ChecklistEntry, ...]


def stable_uuid(*parts: str) -> str:
    """uuid5 (RFC 4122 name-based, SHA-1) of the parts; same as uuid.uuid5, without the object churn."""
    h = bytearray(hashlib.sha1(_NAMESPACE.bytes + "|".join(parts).encode("utf-8", "surrogatepass")).digest()[:16])
    h[6] = (h[6] & 0x0F) | 0x50
    h[8] = (h[8] & 0x3F) | 0x80
    x = h.hex()
    return f"{x[:8]}-{x[8:12]}-{x[12:16]}-{x[16:20]}-{x[20:]}"


def rule_status(findings: list[Finding]) -> str:
    statuses = {_STATUS[f.status] for f in findings}
    for status in _PRECEDENCE:
        if status in statuses:
            return status
    return NOT_REVIEWED


def _finding_details(findings: list[Finding]) -> str:
    """What was read and decided, per finding: the text an assessor reads in STIG Viewer."""
    blocks = []
    for f in findings:
        lines = [f"[{f.status.value.upper()}] {f.id}: {f.title}" + (f" ({f.target})" if f.target else "")]
        if f.detail:
            lines.append(f.detail)
        if f.observed is not None or f.expected is not None:
            lines.append(f"Observed: {f.observed if f.observed is not None else '(none)'}")
            lines.append(f"Expected: {f.expected if f.expected is not None else '(none)'}")
        for e in f.evidence:
            where = f"{e.source}:{e.location}" if e.location else e.source
            lines.append(f"Evidence ({e.kind}) {where}" + (f": {e.detail}" if e.detail else ""))
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def _comments(findings: list[Finding], tool: str) -> str:
    lines = [f"Evaluated automatically by {tool}."]
    for f in findings:
        if f.waiver is not None:
            state = "Risk accepted" if f.status is Status.WAIVED else "Waiver on file but not applied"
            lines.append(f"{state} for {f.id}: {f.waiver.reason} (approved by {f.waiver.approver}, "
                         f"expires {f.waiver.expires.isoformat()}).")
        if f.status is Status.ERROR:
            lines.append(f"{f.id} could not be evaluated automatically; review manually.")
        if f.status is Status.MANUAL:
            lines.append(f"{f.id} requires manual review.")
    return "\n".join(lines)


def _worst_severity(findings: list[Finding]) -> str:
    order = ("high", "medium", "low")
    sevs = {_DISA_SEVERITY[f.severity] for f in findings}
    return next((s for s in order if s in sevs), "medium")


def stig_rule_refs(finding: Finding) -> dict[str, tuple[str, str]]:
    """{V-ID: (rule id, STIG version)} of one finding.

    A check may satisfy several STIG rules; its references then list each rule as a run
    `stig, stig-rule, stig-version`. A rule id is matched to its V-ID by number
    (SV-242458r..._rule belongs to V-242458), else by position in that run.
    """
    out: dict[str, list[str]] = {}
    current: str | None = None
    rules = [r.id for r in finding.references if r.scheme == "stig-rule"]
    for ref in finding.references:
        if ref.scheme == "stig":
            current = ref.id
            out.setdefault(current, ["", ""])
        elif ref.scheme == "stig-version" and current is not None and not out[current][1]:
            out[current][1] = ref.id
        elif ref.scheme == "stig-rule" and current is not None and not out[current][0]:
            out[current][0] = ref.id
    for vid, pair in out.items():
        number = vid.removeprefix("V-")
        by_number = next((r for r in rules if r.removeprefix("SV-").split("r", 1)[0] == number), "")
        if by_number:
            pair[0] = by_number
    return {vid: (rule, version) for vid, (rule, version) in out.items()}


def _rule_ref(findings: list[Finding], vuln_id: str, index: int) -> str:
    for f in findings:
        value = stig_rule_refs(f).get(vuln_id, ("", ""))[index]
        if value:
            return value
    return ""


def stig_findings(report: Report) -> dict[str, list[Finding]]:
    """{V-ID: findings} for every finding that names a STIG rule, in report order."""
    out: dict[str, list[Finding]] = {}
    for f in report.findings:
        for vid in dict.fromkeys(f.refs("stig")):
            out.setdefault(vid, []).append(f)
    return out


def build_checklist(report: Report, benchmark: StigBenchmark | None = None) -> Checklist:
    tool = f"{report.tool} {report.tool_version}".strip()
    by_vuln = stig_findings(report)
    entries: list[ChecklistEntry] = []
    if benchmark is not None:
        for rule in benchmark.rules:
            entries.append(_entry_from_rule(rule, by_vuln.get(rule.vuln_id, []), tool))
        known = {r.vuln_id for r in benchmark.rules}
        # Findings naming rules absent from the given release still appear, from our own data.
        entries.extend(_entry_from_findings(vid, fs, tool) for vid, fs in by_vuln.items() if vid not in known)
    else:
        entries.extend(_entry_from_findings(vid, fs, tool) for vid, fs in sorted(by_vuln.items(),
                                                                                 key=lambda kv: _vnum(kv[0])))
    if not entries:
        raise InputError("no finding references a STIG rule (reference scheme 'stig'); give --stig-benchmark "
                         "FILE for a checklist of every rule of DISA's benchmark")
    s = report.subject
    if benchmark is not None:
        stig_id, title, version = benchmark.benchmark_id, benchmark.title, benchmark.version
        release_info, filename = benchmark.release_info, benchmark.filename
    else:
        stig_id, title, version, release_info, filename = ("Kubernetes_STIG", "Kubernetes STIG", "", "", "")
    comment = (f"{s.kind} {s.name}" + (f", digest {s.digest}" if s.digest else "")
               + f"; scanned {report.generated_at} by {tool}")
    return Checklist(host_name=s.name, fqdn=dict(s.attributes).get("fqdn", ""), target_comment=comment,
                     stig_id=stig_id, title=title, version=version, release_info=release_info,
                     filename=filename, stig_uuid=stable_uuid(s.name, s.digest, stig_id, version),
                     entries=tuple(entries))


def _vnum(vid: str) -> tuple[int, str]:
    digits = "".join(ch for ch in vid if "0" <= ch <= "9")
    return (int(digits) if digits else 0, vid)


def _entry_from_rule(rule: StigRule, findings: list[Finding], tool: str) -> ChecklistEntry:
    if findings:
        status, details, comments = rule_status(findings), _finding_details(findings), _comments(findings, tool)
    else:
        status, details, comments = NOT_REVIEWED, "", f"No automated check in {tool}; review manually."
    return ChecklistEntry(vuln_id=rule.vuln_id, rule_id=rule.rule_id, version=rule.version,
                          severity=rule.severity, group_title=rule.group_title, title=rule.title,
                          discussion=rule.discussion, check=rule.check, fix=rule.fix, ccis=rule.ccis,
                          status=status, finding_details=details, comments=comments, weight=rule.weight,
                          check_ref=rule.check_ref, legacy_ids=rule.legacy_ids)


def _entry_from_findings(vuln_id: str, findings: list[Finding], tool: str) -> ChecklistEntry:
    first = findings[0]
    ccis = tuple(dict.fromkeys(c for f in findings for c in f.refs("cci")))
    return ChecklistEntry(vuln_id=vuln_id, rule_id=_rule_ref(findings, vuln_id, 0),
                          version=_rule_ref(findings, vuln_id, 1), severity=_worst_severity(findings),
                          group_title=vuln_id, title=first.title, discussion="",
                          check=first.expected or "", fix=first.remediation, ccis=ccis,
                          status=rule_status(findings), finding_details=_finding_details(findings),
                          comments=_comments(findings, tool))
