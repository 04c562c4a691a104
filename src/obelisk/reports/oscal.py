"""NIST OSCAL assessment results (JSON) that compliance-trestle validates.

Layout: one result for the merged scan. Each obelisk finding is an observation (method TEST,
the checked system as subject, evidence as relevant-evidence, obelisk as the originating tool).
Each NIST SP 800-53 control that findings bear on (their `nist-800-53` references, and their CCIs
mapped through DISA's CCI list when given) is an OSCAL finding targeting the control's objective
(`ac-3_obj`), satisfied only when every related observation passed. Waived failures leave the
control not-satisfied with the waiver named: an accepted risk is not a satisfied control.
"""

from __future__ import annotations

import datetime as _dt
from typing import Any

from obelisk.core.findings import Finding, Status
from obelisk.reports.cci import display_control, finding_controls
from obelisk.reports.checklist import stable_uuid
from obelisk.reports.model import Bundle
from obelisk.reports.options import RenderOptions, dump_json

NS = "https://obelisk.dev/ns/oscal"
_FALLBACK_OSCAL_VERSION = "1.1.2"


def oscal_version() -> str:
    """The OSCAL version the installed compliance-trestle validates against."""
    try:
        from trestle.oscal import OSCAL_VERSION
    except ImportError:  # trestle is a declared dependency; stay usable without it
        return _FALLBACK_OSCAL_VERSION
    return OSCAL_VERSION


def _line(text: str) -> str:
    """OSCAL titles are one line without surrounding space."""
    if text and "\n" not in text and not text[0].isspace() and not text[-1].isspace():
        return text  # the common case, already one trimmed line
    one = " ".join(text.split())
    return one or "untitled"


def _time(value: str, fallback: str) -> str:
    """An RFC 3339 time with a zone, as OSCAL requires; the fallback when the input has none."""
    try:
        parsed = _dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return fallback
    return value if parsed.tzinfo is not None else fallback


def _prop(name: str, value: str) -> dict:
    return {"name": name, "ns": NS, "value": _line(value)}


def _observation(f: Finding, uid: str, system_uuid: str, tool_uuid: str, collected: str) -> dict:
    description = f.detail or f.title
    remarks = []
    if f.observed is not None or f.expected is not None:
        remarks.append(f"Observed: {f.observed}\nExpected: {f.expected}")
    if f.remediation:
        remarks.append(f"Remediation: {f.remediation}")
    if f.waiver is not None:
        remarks.append(f"Waiver: {f.waiver.reason} (approved by {f.waiver.approver}, expires "
                       f"{f.waiver.expires.isoformat()})")
    props = [_prop("finding-id", f.id), _prop("status", f.status.value), _prop("severity", f.severity.value)]
    if f.benchmark:
        props.append(_prop("benchmark", f.benchmark))
    if f.section:
        props.append(_prop("section", f.section))
    if f.target:
        props.append(_prop("target", f.target))
    props.extend(_prop("reference", f"{r.scheme}:{r.id}") for r in f.references)
    obs: dict = {
        "uuid": uid,
        "title": _line(f"{f.id}: {f.title}"),
        "description": description,
        "props": props,
        "methods": ["TEST"],
        "types": ["finding"],
        "origins": [{"actors": [{"type": "tool", "actor-uuid": tool_uuid}]}],
        "subjects": [{"subject-uuid": system_uuid, "type": "component"}],
        "collected": collected,
    }
    evidence = []
    for e in f.evidence:
        where = f"{e.source}:{e.location}" if e.location else e.source
        evidence.append({"description": f"{e.kind} {where}" + (f": {e.detail}" if e.detail else "")})
    if evidence:
        obs["relevant-evidence"] = evidence
    if remarks:
        obs["remarks"] = "\n\n".join(remarks)
    return obs


def _risk_statement(f: Finding) -> str:
    parts = []
    if f.observed is not None or f.expected is not None:
        parts.append(f"Observed {f.observed!s} where {f.expected!s} is required on {f.target or 'the subject'}.")
    if f.remediation:
        parts.append(f"Remediation: {f.remediation}")
    if f.waiver is not None and f.status is Status.WAIVED:
        parts.append(f"Risk accepted: {f.waiver.reason}; approved by {f.waiver.approver}, expires "
                     f"{f.waiver.expires.isoformat()}.")
    return " ".join(parts) or f.title


def control_state(findings: list[Finding]) -> tuple[str, str, str]:
    """(state, reason, remarks) for one control from the findings that bear on it."""
    statuses = {f.status for f in findings}
    failed = [f.id for f in findings if f.status in (Status.FAIL, Status.ERROR)]
    waived = [f for f in findings if f.status is Status.WAIVED]
    manual = [f.id for f in findings if f.status is Status.MANUAL]
    if failed:
        return "not-satisfied", "fail", "Failed checks: " + ", ".join(failed)
    if waived:
        return ("not-satisfied", "other", "Accepted risks: " + "; ".join(
            f"{f.id} ({f.waiver.approver} until {f.waiver.expires.isoformat()})" if f.waiver else f.id
            for f in waived))
    if manual:
        return "not-satisfied", "other", "Needs manual review: " + ", ".join(manual)
    if Status.PASS in statuses:
        return "satisfied", "pass", "All automated checks passed."
    return "not-satisfied", "other", "All related checks were not applicable."


def to_json(bundle: Bundle, options: RenderOptions) -> dict:
    report = bundle.report
    s = report.subject
    root_key = f"{s.kind}|{s.name}|{s.digest}|{report.generated_at}"
    system_uuid = stable_uuid(root_key, "system")
    tool_uuid = stable_uuid(root_key, "tool")
    plan_uuid = stable_uuid(root_key, "assessment-plan")
    collected = _time(report.generated_at, options.rendered_at)
    observations = []
    by_control: dict[str, list[tuple[Finding, str]]] = {}
    for i, f in enumerate(report.findings):
        uid = stable_uuid(root_key, "observation", str(i), f.id)
        observations.append(_observation(f, uid, system_uuid, tool_uuid, collected))
        for control in finding_controls(f, options.cci_map):
            by_control.setdefault(control, []).append((f, uid))
    # Failing checks are open risks; waived failures are approved deviations (the exceptions register).
    risks = []
    risk_of: dict[str, str] = {}
    for i, f in enumerate(report.findings):
        if f.status not in (Status.FAIL, Status.WAIVED):
            continue
        obs_uuid = observations[i]["uuid"]
        risk: dict[str, Any] = {
            "uuid": stable_uuid(root_key, "risk", str(i), f.id),
            "title": _line(f"{f.id}: {f.title}"),
            "description": f.detail or f.title,
            "statement": _risk_statement(f),
            "props": [_prop("severity", f.severity.value)],
            "status": "deviation-approved" if f.status is Status.WAIVED else "open",
            "related-observations": [{"observation-uuid": obs_uuid}],
        }
        if f.status is Status.WAIVED and f.waiver is not None:
            risk["deadline"] = f"{f.waiver.expires.isoformat()}T23:59:59Z"
        risks.append(risk)
        risk_of[obs_uuid] = risk["uuid"]
    findings = []
    for control, items in sorted(by_control.items(), key=lambda kv: control_sort(kv[0])):
        state, reason, remarks = control_state([f for f, _ in items])
        related_risks = [{"risk-uuid": risk_of[uid]} for _, uid in items if uid in risk_of]
        findings.append({
            "uuid": stable_uuid(root_key, "finding", control),
            "title": f"{display_control(control)}: {state}",
            "description": f"{len(items)} obelisk check(s) bear on NIST SP 800-53 Rev 5 {display_control(control)}.",
            "target": {"type": "objective-id", "target-id": f"{control}_obj",
                       "status": {"state": state, "reason": reason}, "remarks": remarks},
            "related-observations": [{"observation-uuid": uid} for _, uid in items],
            **({"related-risks": related_risks} if related_risks else {}),
        })
    selection: dict[str, Any]
    if by_control:
        selection = {"include-controls": [{"control-id": c} for c in sorted(by_control, key=control_sort)]}
    else:
        selection = {"include-all": {}}
    system_props = [_prop("subject-kind", s.kind)]
    if s.digest:
        system_props.append(_prop("digest", s.digest))
    system_props.extend(_prop("attribute", f"{k}={v}") for k, v in s.attributes if v.strip())
    times = sorted({_time(src.generated_at, collected) for src in bundle.sources}
                   | {collected}, key=lambda v: _dt.datetime.fromisoformat(v.replace("Z", "+00:00")))
    result: dict = {
        "uuid": stable_uuid(root_key, "result"),
        "title": _line(f"obelisk scan of {s.kind} {s.name}"),
        "description": f"Automated checks by obelisk {report.tool_version} ({report.command or 'report'}).",
        "start": times[0],
        "end": times[-1],
        "local-definitions": {"components": [
            {"uuid": system_uuid, "type": "this-system", "title": _line(s.name),
             "description": f"The {s.kind} that was checked.", "props": system_props,
             "status": {"state": "operational"}},
            {"uuid": tool_uuid, "type": "software", "title": "obelisk",
             "description": f"obelisk {report.tool_version}: automated assessment tool.",
             "status": {"state": "operational"}},
        ]},
        "reviewed-controls": {"control-selections": [selection]},
        "observations": observations or None,
        "risks": risks or None,
        "findings": findings or None,
    }
    result = {k: v for k, v in result.items() if v is not None}
    resources: list[dict[str, Any]] = [{"uuid": plan_uuid, "title": "Implied assessment plan",
                  "description": "obelisk runs its declared check catalogues (CIS Kubernetes Benchmark, DISA "
                                 "Kubernetes STIG, kernel hardening, IMA and attestation checks) against the "
                                 "subject; no separate OSCAL assessment plan exists."}]
    for src in bundle.sources:
        resources.append({"uuid": stable_uuid(root_key, "source", src.path, src.sha256),
                          "title": _line(f"results file {src.path}"),
                          "description": f"obelisk results ({src.command or 'unknown command'}), "
                                         f"{src.findings} findings, generated {src.generated_at}.",
                          "props": [_prop("sha256", src.sha256)]})
    return {"assessment-results": {
        "uuid": stable_uuid(root_key, "assessment-results"),
        "metadata": {
            "title": _line(options.title or f"Assessment results for {s.kind} {s.name}"),
            "last-modified": _time(options.rendered_at, collected),
            "version": _line(report.tool_version) if report.tool_version.strip() else "0",
            "oscal-version": oscal_version(),
            "props": [_prop("generator", f"obelisk {report.tool_version}")],
        },
        "import-ap": {"href": f"#{plan_uuid}"},
        "results": [result],
        "back-matter": {"resources": resources},
    }}


def control_sort(control: str) -> tuple:
    family, _, rest = control.partition("-")
    number, _, enh = rest.partition(".")
    return (family, int(number) if number.isdigit() else 0, int(enh) if enh.isdigit() else 0)


def render(bundle: Bundle, options: RenderOptions) -> bytes:
    return dump_json(to_json(bundle, options), len(bundle.report.findings))
