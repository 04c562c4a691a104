"""One self-contained HTML file for people: summary, chart, filters, every finding, waivers.

No network: CSS and JS are inlined from data files beside this module, the chart is inline SVG,
and a Content-Security-Policy forbids any fetch. A JSON block (`#obelisk-report-meta`) carries
the subject, times and counts so tools (and `report sign`) can read them without scraping.
"""

from __future__ import annotations

import json
from collections import Counter
from functools import lru_cache
from importlib import resources
from typing import TYPE_CHECKING

from obelisk.core.findings import Severity, Status
from obelisk.reports.model import SEVERITY_ORDER, STATUS_ORDER, Bundle, benchmarks_of, scan_date, sort_key
from obelisk.reports.options import RenderOptions

if TYPE_CHECKING:
    import jinja2

STATUS_LABEL = {Status.PASS: "Pass", Status.FAIL: "Fail", Status.ERROR: "Error", Status.SKIP: "N/A",
                Status.MANUAL: "Manual", Status.WAIVED: "Waived"}
STATUS_COLOR = {Status.FAIL: "#c62828", Status.ERROR: "#ef6c00", Status.WAIVED: "#7b1fa2",
                Status.MANUAL: "#1565c0", Status.SKIP: "#9e9e9e", Status.PASS: "#2e7d32"}
BENCHMARK_LABEL = {"cis-1.12": "CIS Kubernetes Benchmark 1.12", "stig-k8s": "DISA Kubernetes STIG",
                   "obelisk-runtime": "Container runtime (obelisk)",
                   "kernel-hardening": "Kernel hardening", "ima": "IMA runtime integrity",
                   "attestation": "Remote attestation"}
REFERENCE_LABEL = {"cis": "CIS", "stig": "STIG", "stig-rule": "Rule", "stig-version": "STIG ID", "cci": "CCI",
                   "nist-800-53": "NIST 800-53", "kspp": "KSPP"}

META_ID = "obelisk-report-meta"
CAT_OF = {"high": "CAT I", "medium": "CAT II", "low": "CAT III"}
# Waivers that end within this many days of the scan are flagged in the register.
EXPIRY_WARNING_DAYS = 30


@lru_cache(maxsize=1)
def _template() -> tuple[jinja2.Template, str, str]:
    import jinja2

    files = resources.files("obelisk.reports") / "templates"
    env = jinja2.Environment(autoescape=True, trim_blocks=True, lstrip_blocks=True,
                             undefined=jinja2.StrictUndefined)
    env.filters["benchmarks"] = lambda f: " ".join(benchmarks_of(f))
    env.globals.update(CAT={"critical": "CAT I", "high": "CAT I", "medium": "CAT II", "low": "CAT III"},
                       STATUS_LABEL=STATUS_LABEL, BENCHMARK_LABEL=BENCHMARK_LABEL, REFERENCE_LABEL=REFERENCE_LABEL,
                       Status=Status)
    template = env.from_string((files / "report.html.j2").read_text(encoding="utf-8"))
    css = (files / "report.css").read_text(encoding="utf-8")
    js = (files / "report.js").read_text(encoding="utf-8")
    return template, css, js


def _bar_chart(rows: list[tuple[str, Counter[Status]]]) -> dict:
    """Geometry of a horizontal stacked bar chart: one bar per benchmark, segments per status."""
    width, label_w, bar_h, gap = 720, 230, 22, 12
    scale_w = width - label_w - 60
    top = max((sum(c.values()) for _, c in rows), default=1) or 1
    bars = []
    for i, (name, counts) in enumerate(rows):
        y = i * (bar_h + gap)
        x: float = label_w
        segments = []
        for status in STATUS_ORDER:
            n = counts.get(status, 0)
            if not n:
                continue
            w = max(n / top * scale_w, 1.5)
            segments.append({"x": round(x, 1), "w": round(w, 1), "color": STATUS_COLOR[status],
                             "label": f"{STATUS_LABEL[status]}: {n}", "n": n, "status": status.value})
            x += w
        bars.append({"name": BENCHMARK_LABEL.get(name, name), "y": y, "segments": segments,
                     "total": sum(counts.values()), "end": round(x, 1)})
    return {"width": width, "height": max(len(rows) * (bar_h + gap), bar_h), "bar_h": bar_h, "bars": bars,
            "label_w": label_w}


def _donut(counts: Counter[Status]) -> list[dict]:
    """Arcs of the overall status donut (stroke-dasharray on a circle of circumference 100)."""
    total = sum(counts.values()) or 1
    offset = 25.0  # start at 12 o'clock
    arcs = []
    for status in STATUS_ORDER:
        n = counts.get(status, 0)
        if not n:
            continue
        share = n / total * 100
        arcs.append({"color": STATUS_COLOR[status], "dash": f"{share:.3f} {100 - share:.3f}",
                     "offset": f"{offset:.3f}", "label": f"{STATUS_LABEL[status]}: {n}"})
        offset -= share
    return arcs


def _stig_coverage(bundle: Bundle, options: RenderOptions) -> dict | None:
    """With DISA's benchmark: how its rules stand, as the STIG Viewer checklist will show them."""
    if options.stig_benchmark is None:
        return None
    from obelisk.reports.checklist import build_checklist

    checklist = build_checklist(bundle.report, options.stig_benchmark)
    counts = Counter(e.status for e in checklist.entries)
    by_cat: dict[str, Counter[str]] = {}
    for e in checklist.entries:
        by_cat.setdefault(e.severity, Counter())[e.status] += 1
    b = options.stig_benchmark
    return {"title": b.title, "version": b.version, "release": b.release_info, "total": len(checklist.entries),
            "counts": counts, "by_cat": [(CAT_OF.get(sev, sev), by_cat.get(sev, Counter()))
                                         for sev in ("high", "medium", "low")],
            "open": [e for e in checklist.entries if e.status == "Open"]}


def _controls(findings: list, options: RenderOptions) -> list[dict]:
    """NIST SP 800-53 controls the findings bear on, with the same verdict the OSCAL output gives."""
    from obelisk.reports.cci import display_control, finding_controls
    from obelisk.reports.oscal import control_sort, control_state

    by_control: dict[str, list] = {}
    for f in findings:
        for control in finding_controls(f, options.cci_map):
            by_control.setdefault(control, []).append(f)
    rows = []
    for control in sorted(by_control, key=control_sort):
        fs = by_control[control]
        state, reason, remarks = control_state(fs)
        if state == "satisfied":
            verdict, css = "satisfied", "pass"
        elif reason == "fail":
            verdict, css = "not satisfied", "fail"
        elif remarks.startswith("Accepted risks"):
            verdict, css = "risk accepted", "waived"
        elif remarks.startswith("Needs manual review"):
            verdict, css = "needs review", "manual"
        else:
            verdict, css = "not applicable", "skip"
        rows.append({"id": display_control(control), "state": state, "verdict": verdict, "css": css,
                     "remarks": remarks, "checks": len(fs),
                     "failing": sum(f.status in (Status.FAIL, Status.ERROR) for f in fs)})
    return rows


def _meta_json(data: dict) -> str:
    # Inside <script>: "<" escaped so that no value can close the element.
    return json.dumps(data, sort_keys=True).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def context(bundle: Bundle, options: RenderOptions) -> dict:
    report = bundle.report
    findings = sorted(report.findings, key=sort_key)
    counts = report.counts()
    by_benchmark: dict[str, Counter[Status]] = {}
    by_severity: dict[Severity, Counter[Status]] = {s: Counter() for s in SEVERITY_ORDER}
    for f in findings:
        for name in benchmarks_of(f):
            by_benchmark.setdefault(name, Counter())[f.status] += 1
        by_severity[f.severity][f.status] += 1
    benchmarks = sorted(by_benchmark.items(), key=lambda kv: BENCHMARK_LABEL.get(kv[0], kv[0]).lower())
    waivers = [f for f in report.findings if f.waiver is not None]
    scanned = scan_date(report)
    expiring = {f.id for f in waivers if f.status is Status.WAIVED and f.waiver is not None
                and (f.waiver.expires - scanned).days <= EXPIRY_WARNING_DAYS}
    failing = counts.get(Status.FAIL, 0) + counts.get(Status.ERROR, 0)
    controls = _controls(findings, options)
    stig = _stig_coverage(bundle, options)
    meta = {
        "schema": "obelisk.html-report/1",
        "subject": report.subject.to_json(),
        "generated_at": report.generated_at,
        "rendered_at": options.rendered_at,
        "tool_version": report.tool_version,
        "total": len(findings),
        "counts": {s.value: counts.get(s, 0) for s in Status},
        "benchmarks": {name: {s.value: c.get(s, 0) for s in Status} for name, c in benchmarks},
        "sources": [{"path": s.path, "sha256": s.sha256} for s in bundle.sources],
    }
    return {
        "report": report,
        "subject": report.subject,
        "findings": findings,
        "counts": counts,
        "total": len(findings),
        "failing": failing,
        "status_order": STATUS_ORDER,
        "severity_order": SEVERITY_ORDER,
        "status_color": STATUS_COLOR,
        "benchmarks": benchmarks,
        "by_severity": by_severity,
        "sections": sorted({f.section for f in findings if f.section}),
        "chart": _bar_chart(benchmarks),
        "donut": _donut(counts),
        "waivers": sorted(waivers, key=lambda f: (f.waiver.expires, f.id)),
        "expiring": expiring,
        "controls": controls,
        "stig": stig,
        "expiry_warning_days": EXPIRY_WARNING_DAYS,
        "sources": bundle.sources,
        "options": options,
        "title": options.title or f"Compliance report: {report.subject.name}",
        "meta_json": _meta_json(meta),
        "meta_id": META_ID,
    }


def render(bundle: Bundle, options: RenderOptions) -> bytes:
    template, css, js = _template()
    return template.render(css=css, js=js, **context(bundle, options)).encode("utf-8")


def read_meta(html: bytes) -> dict | None:
    """The metadata block of a report this module rendered, or None."""
    marker = f'<script type="application/json" id="{META_ID}">'.encode()
    start = html.find(marker)
    if start < 0:
        return None
    start += len(marker)
    end = html.find(b"</script>", start)
    if end < 0:
        return None
    try:
        data = json.loads(html[start:end])
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    return data if isinstance(data, dict) else None
