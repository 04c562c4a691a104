"""Plain-text rendering of a Report for terminals and logs."""

from __future__ import annotations

from obelisk.core.findings import Report, Status

_MARK = {
    Status.PASS: "PASS",
    Status.FAIL: "FAIL",
    Status.ERROR: "ERROR",
    Status.SKIP: "SKIP",
    Status.MANUAL: "MANUAL",
    Status.WAIVED: "WAIVED",
}


def render_text(report: Report, *, verbose: bool = False) -> str:
    """One line per finding (passes only with verbose), then a summary line."""
    lines = []
    s = report.subject
    lines.append(f"{report.command or report.tool}: {s.kind} {s.name}" + (f" ({s.digest})" if s.digest else ""))
    for f in report.findings:
        if f.status is Status.PASS and not verbose:
            continue
        line = f"{_MARK[f.status]:6} {f.id}: {f.title}"
        if f.target:
            line += f" [{f.target}]"
        lines.append(line)
        if f.status in (Status.FAIL, Status.ERROR, Status.WAIVED):
            if f.observed is not None or f.expected is not None:
                lines.append(f"       observed: {f.observed!s}  expected: {f.expected!s}")
            if f.detail:
                lines.append(f"       {f.detail}")
            if f.waiver is not None:
                lines.append(f"       waiver: {f.waiver.reason} (approved by {f.waiver.approver} "
                             f"until {f.waiver.expires.isoformat()})")
    counts = report.counts()
    summary = ", ".join(f"{counts.get(st, 0)} {st.value}" for st in Status if counts.get(st, 0))
    lines.append(f"{len(report.findings)} checks: {summary or 'none'}")
    return "\n".join(lines) + "\n"
