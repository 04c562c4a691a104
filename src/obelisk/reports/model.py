"""Load one or more results files (`obelisk.report/1`) and merge them into one report to render.

A node is usually checked by several commands (kernel, IMA log, CIS/STIG scan, attestation);
the auditor wants one document. The merged report keeps where each finding came from
(`Source`: file name, sha256, command, time) so a rendered report can name its inputs.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from obelisk import __version__
from obelisk.core import findings as report_format
from obelisk.core.errors import InputError
from obelisk.core.findings import Finding, Report, Severity, Status, Subject
from obelisk.core.jsonsafe import load_json

# Display and sort orders shared by every format.
STATUS_ORDER: tuple[Status, ...] = (Status.FAIL, Status.ERROR, Status.WAIVED, Status.MANUAL, Status.SKIP,
                                    Status.PASS)
SEVERITY_ORDER: tuple[Severity, ...] = (Severity.CRITICAL, Severity.HIGH, Severity.MEDIUM, Severity.LOW,
                                        Severity.INFO)
_STATUS_RANK = {s: i for i, s in enumerate(STATUS_ORDER)}
_SEVERITY_RANK = {s: i for i, s in enumerate(SEVERITY_ORDER)}

# Largest results file read; a real scan of one node is a few MB.
MAX_RESULTS_BYTES = 256 * 1024 * 1024


@dataclass(frozen=True)
class Source:
    """One results file that went into a merged report."""

    path: str
    sha256: str
    command: str
    generated_at: str
    subject: Subject
    findings: int


@dataclass(frozen=True)
class Bundle:
    """A merged report plus where it came from: what every renderer receives."""

    report: Report
    sources: tuple[Source, ...] = ()

    @property
    def benchmarks(self) -> list[str]:
        return sorted({b for f in self.report.findings for b in benchmarks_of(f)})


def benchmarks_of(finding: Finding) -> list[str]:
    """A check can belong to several benchmarks at once ("cis-1.12,stig-k8s")."""
    names = [b.strip() for b in finding.benchmark.split(",") if b.strip()]
    return names or ["other"]


def severity_rank(severity: Severity) -> int:
    return _SEVERITY_RANK[severity]


def status_rank(status: Status) -> int:
    return _STATUS_RANK[status]


def sort_key(finding: Finding) -> tuple[int, int, str, str]:
    """Worst first: failures before passes, critical before info, then by id."""
    return (_STATUS_RANK[finding.status], _SEVERITY_RANK[finding.severity], finding.benchmark, finding.id)


def load_report(path: str | Path) -> tuple[Report, Source]:
    from obelisk.core.inputs import read_bounded

    p = Path(path)
    data = read_bounded(p, "results file", MAX_RESULTS_BYTES)
    report = _parse_report(data, str(p))
    source = Source(path=p.name, sha256=hashlib.sha256(data).hexdigest(), command=report.command,
                    generated_at=report.generated_at, subject=report.subject, findings=len(report.findings))
    return report, source


_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")
_SURROGATE = re.compile("[\ud800-\udfff]")


def _scrub(value: Any) -> Any:
    """Replace lone surrogates (valid JSON escapes, but not text) so every output can encode."""
    if isinstance(value, str):
        return _SURROGATE.sub("\ufffd", value)
    if isinstance(value, list):
        return [_scrub(v) for v in value]
    if isinstance(value, dict):
        return {_scrub(k): _scrub(v) for k, v in value.items()}
    return value


def _parse_report(data: bytes, source: str) -> Report:
    if not _SURROGATE_ESCAPE.search(data):
        return report_format.parse(data, source=source)
    doc = load_json(data, source)
    try:
        return Report.from_json(_scrub(doc))
    except InputError as exc:
        raise InputError(str(exc), source=source) from None


def merge(reports: list[Report], sources: list[Source] | None = None) -> Bundle:
    """One report from several: the node subject wins, other subjects become attributes.

    The merged time is the latest input time (when the evidence was last collected), never the
    time of rendering, so re-rendering a report does not make old evidence look fresh.
    """
    if not reports:
        raise InputError("no results files given")
    if len(reports) == 1:
        return Bundle(report=reports[0], sources=tuple(sources or ()))
    subject = _merged_subject([r.subject for r in reports])
    findings = tuple(f for r in reports for f in r.findings)
    times = sorted(r.generated_at for r in reports if r.generated_at)
    commands = [r.command for r in reports if r.command]
    versions = sorted({r.tool_version for r in reports if r.tool_version})
    merged = Report(findings=findings, subject=subject, tool="obelisk",
                    tool_version=", ".join(versions) or __version__,
                    generated_at=times[-1] if times else "",
                    command=" + ".join(dict.fromkeys(commands)))
    return Bundle(report=merged, sources=tuple(sources or ()))


def load_bundle(paths: list[str | Path]) -> Bundle:
    loaded = [load_report(p) for p in paths]
    return merge([r for r, _ in loaded], [s for _, s in loaded])


def _merged_subject(subjects: list[Subject]) -> Subject:
    """The node (else the first) subject, with the others folded in as `kind.*` attributes."""
    primary = next((s for s in subjects if s.kind == "node"), subjects[0])
    attrs = dict(primary.attributes)
    for s in subjects:
        if s == primary:
            continue
        same = (s.kind, s.name) == (primary.kind, primary.name)
        for key, value in s.attributes:
            attrs.setdefault(key if same else f"{s.kind}.{key}", value)
        if not same:
            key = s.kind if attrs.get(s.kind, s.name) == s.name else f"{s.kind}.name"
            attrs.setdefault(key, s.name)
        if s.digest and s.digest != primary.digest:
            attrs.setdefault(f"{s.kind}.digest", s.digest)
    return Subject(kind=primary.kind, name=primary.name, digest=primary.digest,
                   attributes=tuple(sorted(attrs.items())))


def counts_by(findings: tuple[Finding, ...] | list[Finding],
              key: Callable[[Finding], str]) -> dict[str, Counter[Status]]:
    """{group: Counter(status)} for a grouping such as benchmark or severity."""
    out: dict[str, Counter[Status]] = {}
    for f in findings:
        out.setdefault(key(f), Counter())[f.status] += 1
    return out


def scan_date(report: Report) -> _dt.date:
    """The date the evidence was collected (UTC), or today when the report does not say."""
    try:
        return _dt.datetime.fromisoformat(report.generated_at.replace("Z", "+00:00")).date()
    except ValueError:
        return _dt.datetime.now(_dt.UTC).date()


def with_waivers(bundle: Bundle, path: str | Path) -> Bundle:
    """Apply a waivers file to the merged findings, judged at the scan date (not the render date)."""
    from dataclasses import replace

    from obelisk.core.waivers import apply_waivers, load_waivers

    report = bundle.report
    findings = apply_waivers(report.findings, load_waivers(path), today=scan_date(report))
    return replace(bundle, report=report.with_findings(findings))
