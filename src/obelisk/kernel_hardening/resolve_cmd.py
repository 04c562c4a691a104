"""`obelisk kernel config`: write the resolved .config and report what each request became."""

from __future__ import annotations

import argparse
import sys

from obelisk.cli.common import output_format
from obelisk.core import atomic
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
            remediation=(req.why if req else ""),
        ))
    return tuple(out)


def run(args: argparse.Namespace) -> int:
    from obelisk.kernel_hardening.profile import load_profile
    from obelisk.kernel_hardening.resolve import check_tree_clean, resolve
    from obelisk.kernel_hardening.source import source_tree

    profile = load_profile(args.profile)
    tree = source_tree(args.kernel_source, quiet=args.quiet)
    check_tree_clean(tree)
    res = resolve(tree, profile, base=args.base, fragments=args.fragment)
    atomic.write_text(args.output, res.config_text)
    if args.input_out:
        atomic.write_text(args.input_out, res.input_text)
    report = Report(findings=findings(res), command="obelisk kernel config",
                    subject=Subject(kind="kernel-config", name=args.output,
                                    attributes=(("base", res.base), ("kernel_version", res.version),
                                                ("profile", profile.name), ("source", str(tree)))))
    if args.report:
        atomic.write_text(args.report, report.dumps())
    dropped = res.by_status(DROPPED)
    if output_format(args) == "json":
        sys.stdout.write(report.dumps())
    else:
        lines = [f"kernel config: {args.output} ({res.version}, base {res.base}, profile {profile.name})"]
        for o in res.outcomes:
            if o.status == APPLIED and not args.verbose:
                continue
            mark = {APPLIED: "applied", NOT_APPLICABLE: "n/a", MOOT: "moot", DROPPED: "DROPPED"}[o.status]
            where = f" [{o.location}]" if o.location else ""
            lines.append(f"{mark:8} {o.request.name}={o.request.value}{where}: {o.reason or o.result}")
        counts = {s: len(res.by_status(s)) for s in (APPLIED, DROPPED, NOT_APPLICABLE, MOOT)}
        lines.append(f"{len(res.outcomes)} requests: {counts[APPLIED]} applied, {counts[DROPPED]} dropped "
                     f"(explained above), {counts[NOT_APPLICABLE]} not applicable, {counts[MOOT]} moot; "
                     f"{len(res.closure)} dependencies added")
        sys.stdout.write("\n".join(lines) + "\n")
    return 1 if (args.strict and dropped) else 0
