"""What each request of a resolution became: as findings, and as text for `obelisk kernel config`."""

from __future__ import annotations

from obelisk.core.findings import Evidence, Finding, Reference, Report, Severity, Status, Subject
from obelisk.kernel_hardening.resolve import APPLIED, DROPPED, MOOT, NOT_APPLICABLE, Resolution

_STATUS = {APPLIED: Status.PASS, NOT_APPLICABLE: Status.SKIP, MOOT: Status.SKIP, DROPPED: Status.FAIL}


def findings(res: Resolution) -> tuple[Finding, ...]:
    out = []
    for o in res.outcomes:
        req = o.request.requirement
        detail = {APPLIED: f"{o.request.name}={o.result}", NOT_APPLICABLE: f"not applicable: {o.reason}",
                  MOOT: o.reason, DROPPED: f"dropped ({o.request.name}={o.result}): {o.reason}"}[o.status]
        if o.request.name in res.closure:
            detail += " (dependency closure)"
        out.append(Finding(
            id=f"kernel.kconfig.{req.name if req else o.request.name}",
            title=f"{o.request.name} = {o.request.value}",
            status=_STATUS[o.status], severity=req.severity if req else Severity.MEDIUM,
            target=o.request.origin, observed=o.result, expected=o.request.value,
            evidence=(Evidence(kind="kconfig", source=o.location.rsplit(":", 1)[0],
                               location=o.location.rsplit(":", 1)[-1]),) if o.location else (),
            references=(Reference(scheme=req.source, id=req.name),) if req else (),
            benchmark="kernel-hardening", section="kconfig", detail=detail,
            remediation=(req.explained if req else ""),
        ))
    return tuple(out)


def resolution_report(res: Resolution, *, output: str, profile: str, tree: str) -> Report:
    """The explanation of one resolution as a report (what `kernel config --report` writes)."""
    return Report(findings=findings(res), command="obelisk kernel config",
                  subject=Subject(kind="kernel-config", name=output,
                                  attributes=(("base", res.base), ("kernel_version", res.version),
                                              ("profile", profile), ("source", tree))))


def render_text(res: Resolution, *, output: str, profile: str, verbose: bool = False) -> str:
    """What each request became, one line each (applied ones only when verbose), and the counts."""
    lines = [f"kernel config: {output} ({res.version}, base {res.base}, profile {profile})"]
    for o in res.outcomes:
        if o.status == APPLIED and not verbose:
            continue
        mark = {APPLIED: "applied", NOT_APPLICABLE: "n/a", MOOT: "moot", DROPPED: "DROPPED"}[o.status]
        where = f" [{o.location}]" if o.location else ""
        lines.append(f"{mark:8} {o.request.name}={o.request.value}{where}: {o.reason or o.result}")
    counts = {s: len(res.by_status(s)) for s in (APPLIED, DROPPED, NOT_APPLICABLE, MOOT)}
    lines.append(f"{len(res.outcomes)} requests: {counts[APPLIED]} applied, {counts[DROPPED]} dropped "
                 f"(explained above), {counts[NOT_APPLICABLE]} not applicable, {counts[MOOT]} moot; "
                 f"{len(res.closure)} dependencies added")
    return "\n".join(lines) + "\n"
