"""One row per finding, for spreadsheets; references split into one column per scheme.

Cells hold text read from the checked node, so anything a spreadsheet would run as a formula
is prefixed with a quote (CSV injection).
"""

from __future__ import annotations

import csv
import io

from obelisk.core.findings import Finding
from obelisk.reports.model import Bundle
from obelisk.reports.options import RenderOptions

REFERENCE_COLUMNS = ("cis", "stig", "stig-rule", "stig-version", "cci", "nist-800-53")
COLUMNS = ("id", "title", "status", "severity", "benchmark", "section", "target", "observed", "expected",
           "detail", "remediation", *REFERENCE_COLUMNS, "other_references", "evidence",
           "waiver_approver", "waiver_expires", "waiver_reason", "subject", "scanned_at")

_FORMULA_START = ("=", "+", "@", "\t", "\r")


def _cell(value: str | None) -> str:
    if not value:
        return ""
    if value.startswith(_FORMULA_START) or (value.startswith("-") and not _is_number(value)):
        return "'" + value
    return value


def _is_number(value: str) -> bool:
    try:
        float(value)
    except ValueError:
        return False
    return True


def _row(f: Finding, subject: str, scanned_at: str) -> list[str]:
    refs = {scheme: "; ".join(f.refs(scheme)) for scheme in REFERENCE_COLUMNS}
    other = "; ".join(f"{r.scheme}:{r.id}" for r in f.references if r.scheme not in REFERENCE_COLUMNS)
    evidence = "\n".join(f"{e.kind} {e.source}" + (f":{e.location}" if e.location else "")
                         + (f" = {e.detail}" if e.detail else "") for e in f.evidence)
    w = f.waiver
    values = [f.id, f.title, f.status.value, f.severity.value, f.benchmark, f.section, f.target, f.observed,
              f.expected, f.detail, f.remediation, *(refs[s] for s in REFERENCE_COLUMNS), other, evidence,
              w.approver if w else "", w.expires.isoformat() if w else "", w.reason if w else "", subject,
              scanned_at]
    return [_cell(v) for v in values]


def render(bundle: Bundle, options: RenderOptions) -> bytes:
    report = bundle.report
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(COLUMNS)
    subject = f"{report.subject.kind}:{report.subject.name}"
    for f in report.findings:
        writer.writerow(_row(f, subject, report.generated_at))
    # UTF-8 with BOM so that spreadsheet programs do not guess a legacy code page.
    return ("\ufeff" + out.getvalue()).encode("utf-8")
