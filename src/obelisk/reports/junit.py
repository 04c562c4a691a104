"""JUnit XML for CI: one testsuite per benchmark, one testcase per finding.

fail -> <failure>, error -> <error>, skip/manual/waived -> <skipped> with the reason (a waived
failure must not break the pipeline, but stays visible), pass -> an empty testcase.
"""

from __future__ import annotations

from obelisk.core.findings import Finding, Status
from obelisk.reports.model import Bundle
from obelisk.reports.options import RenderOptions
from obelisk.reports.xmlsafe import xml_text


def _failure_text(f: Finding) -> str:
    lines = []
    if f.target:
        lines.append(f"target: {f.target}")
    if f.observed is not None or f.expected is not None:
        lines.append(f"observed: {f.observed}")
        lines.append(f"expected: {f.expected}")
    if f.detail:
        lines.append(f.detail)
    for e in f.evidence:
        lines.append(f"evidence ({e.kind}) {e.source}" + (f":{e.location}" if e.location else "")
                     + (f": {e.detail}" if e.detail else ""))
    if f.remediation:
        lines.append(f"remediation: {f.remediation}")
    refs = ", ".join(f"{r.scheme}:{r.id}" for r in f.references)
    if refs:
        lines.append(f"references: {refs}")
    return _clean("\n".join(lines))


def _clean(text: str | None) -> str:
    return xml_text(text)


def _skip_message(f: Finding) -> str:
    if f.status is Status.WAIVED and f.waiver is not None:
        return (f"waived: {f.waiver.reason} (approved by {f.waiver.approver} until "
                f"{f.waiver.expires.isoformat()})")
    if f.status is Status.MANUAL:
        return "manual review required" + (f": {f.detail}" if f.detail else "")
    return "not applicable" + (f": {f.detail}" if f.detail else "")


def render(bundle: Bundle, options: RenderOptions) -> bytes:
    from lxml import etree

    report = bundle.report
    suites: dict[str, list[Finding]] = {}
    for f in report.findings:
        suites.setdefault(f.benchmark or "other", []).append(f)
    root = etree.Element("testsuites", name=_clean(f"obelisk {report.subject.kind} {report.subject.name}"),
                         tests=str(len(report.findings)),
                         failures=str(sum(f.status is Status.FAIL for f in report.findings)),
                         errors=str(sum(f.status is Status.ERROR for f in report.findings)),
                         skipped=str(sum(f.status in (Status.SKIP, Status.MANUAL, Status.WAIVED)
                                         for f in report.findings)),
                         time="0")
    for name, findings in suites.items():
        suite = etree.SubElement(root, "testsuite", name=_clean(name), tests=str(len(findings)),
                                 failures=str(sum(f.status is Status.FAIL for f in findings)),
                                 errors=str(sum(f.status is Status.ERROR for f in findings)),
                                 skipped=str(sum(f.status in (Status.SKIP, Status.MANUAL, Status.WAIVED)
                                                 for f in findings)),
                                 timestamp=_clean(report.generated_at.removesuffix("Z")), time="0",
                                 hostname=_clean(report.subject.name))
        props = etree.SubElement(suite, "properties")
        for key, value in (("subject", f"{report.subject.kind}:{report.subject.name}"),
                           ("subject.digest", report.subject.digest), ("tool.version", report.tool_version)):
            etree.SubElement(props, "property", name=key, value=_clean(value))
        for f in findings:
            classname = f"{name}.{f.section}" if f.section else name
            case = etree.SubElement(suite, "testcase", classname=_clean(classname),
                                    name=_clean(f"{f.id}: {f.title}" + (f" [{f.target}]" if f.target else "")),
                                    time="0")
            if f.status is Status.FAIL:
                el = etree.SubElement(case, "failure", message=_clean(f.detail or f.title), type=f.severity.value)
                el.text = _failure_text(f)
            elif f.status is Status.ERROR:
                el = etree.SubElement(case, "error", message=_clean(f.detail or "check could not be evaluated"),
                                      type="error")
                el.text = _failure_text(f)
            elif f.status in (Status.SKIP, Status.MANUAL, Status.WAIVED):
                etree.SubElement(case, "skipped", message=_clean(_skip_message(f)))
    return etree.tostring(root, encoding="UTF-8", xml_declaration=True, pretty_print=True)
