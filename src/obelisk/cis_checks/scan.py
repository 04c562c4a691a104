"""`scan(root, benchmarks, waivers) -> Report`: run the catalogue against one node.

The node agent calls this on a live node (root "/", processes from /proc); the image build and
auditors call it on a root directory (a mounted image, an extracted backup, a rendered tree).
"""

from __future__ import annotations

import datetime as _dt
import socket
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from obelisk.cis_checks.catalogue import BENCHMARKS, Check, load_checks
from obelisk.cis_checks.engine import Context, FileSpec, Outcome, evaluate
from obelisk.cis_checks.node import NodeView
from obelisk.core.errors import InputError
from obelisk.core.findings import Evidence, Finding, Report, Severity, Status, Subject, Waiver
from obelisk.core.waivers import apply_waivers

MANUAL_NOTE = "CIS classifies this recommendation as Manual; obelisk evaluated it from the node's own configuration."


_PATH_SELECTORS = ("manifest:", "path:", "tree:", "glob:")


def _applicability(check: Check, node: NodeView) -> Outcome | None:
    """An outcome when the check cannot run here (manual, component absent, unreadable input)."""
    comp = check.component
    if check.test is None:
        if comp is not None and comp not in node.components and not node.component_problems(comp):
            return Outcome(Status.SKIP, detail=f"{comp} does not run on this node")
        return Outcome(Status.MANUAL, detail=check.guidance or "review by a person")
    if comp is not None and comp not in node.components:
        problems = node.component_problems(comp)
        if not problems:
            return Outcome(Status.SKIP, detail=f"{comp} does not run on this node")
        if isinstance(check.test, FileSpec) and check.test.file.startswith(_PATH_SELECTORS):
            return None  # files named without the component's flags can be checked even when its manifest is broken
        return Outcome(Status.ERROR, detail="; ".join(f"{p.path}: {p.message}" for p in problems),
                       evidence=tuple(Evidence("file", p.path, p.message) for p in problems),
                       target=problems[0].path)
    return None


def _finding(check: Check, outcome: Outcome, selected: Sequence[str]) -> Finding:
    detail = outcome.detail
    if check.assessment == "manual" and check.test is not None and outcome.status in (Status.PASS, Status.FAIL):
        detail = f"{detail.rstrip('.')}. {MANUAL_NOTE}" if detail else MANUAL_NOTE
    title = check.title
    disa = [f"{f.vid}: {f.title}" for f in check.stig if f.title]
    if disa:
        if check.cis is None and len(check.stig) == 1:
            title = check.stig[0].title
        else:
            detail = (detail + " " if detail else "") + "DISA: " + " | ".join(disa)
    return Finding(
        id=check.id, title=title, status=outcome.status, severity=check.severity,
        target=outcome.target or (check.component or ""), observed=outcome.observed, expected=outcome.expected,
        evidence=outcome.evidence, remediation=check.remediation, references=check.references(),
        benchmark=",".join(b for b in check.benchmarks if b in selected), section=check.section, detail=detail)


def scan(root: str | Path = "/", benchmarks: Iterable[str] = BENCHMARKS, waivers: Sequence[Waiver] = (), *,
         proc: str | Path | None = None, live: bool | None = None, stig_benchmark: str | Path | None = None,
         stig_release: str | None = None, checks_file: str | Path | None = None,
         today: _dt.date | None = None) -> Report:
    """Scan a node. `live` (default: root is "/") reads running processes from `proc` (default /proc)."""
    root = Path(root)
    if not root.is_dir():
        raise InputError("not a directory", source=str(root))
    selected = tuple(dict.fromkeys(benchmarks))
    unknown = [b for b in selected if b not in BENCHMARKS]
    if unknown or not selected:
        raise InputError(f"unknown benchmark {', '.join(unknown) or '(none)'}; known: {', '.join(BENCHMARKS)}")
    if live is None:
        live = root.resolve() == Path("/")
    if live and proc is None:
        proc = "/proc"
    checks = load_checks(checks_file, stig_release=stig_release, stig_benchmark=stig_benchmark)
    node = NodeView(root, proc if live or proc is not None else None)
    ctx = Context(node)
    findings: list[Finding] = []
    for check in checks:
        if not any(b in selected for b in check.benchmarks):
            continue
        outcome = _applicability(check, node)
        if outcome is None:
            assert check.test is not None
            try:
                outcome = evaluate(ctx, check.test)
            except (OSError, ValueError, KeyError, TypeError) as exc:  # a hostile file must not end the scan
                outcome = Outcome(Status.ERROR, detail=f"could not evaluate: {type(exc).__name__}: {exc}")
        findings.append(_finding(check, outcome, selected))
    # inputs that no check could attribute to a component still appear, as errors naming the file
    attributed = {p.path for f in findings if f.status is Status.ERROR for p in node.problems
                  if any(e.source == p.path for e in f.evidence)}
    for problem in node.problems:
        if problem.path not in attributed:
            findings.append(Finding(id=f"input:{problem.path}", title="Input file could not be used",
                                    status=Status.ERROR, severity=Severity.MEDIUM,
                                    target=problem.path, evidence=(Evidence("file", problem.path, problem.message),),
                                    detail=f"{problem.path}: {problem.message}", section="input"))
            attributed.add(problem.path)
    from obelisk.cis_checks.runtime import runtime_findings

    findings += runtime_findings(str(root), live)  # cgroup v2, AppArmor, seccomp, containerd's configuration
    findings = list(apply_waivers(findings, tuple(waivers), today))
    attrs = {"mode": "live" if live else "root", "root": str(root),
             "roles": ",".join(r for r, on in (("control-plane", node.control_plane),
                                                ("etcd", "etcd" in node.components),
                                                ("worker", "kubelet" in node.components)) if on) or "none",
             "benchmarks": ",".join(selected)}
    if node.kubernetes_version:
        attrs["kubernetes"] = "{:d}.{:d}".format(*node.kubernetes_version)
    name = socket.gethostname() if live else str(root)
    return Report(findings=tuple(findings), subject=Subject(kind="node" if live else "tree", name=name,
                                                            attributes=tuple(sorted(attrs.items()))),
                  command="obelisk scan")


def scan_root(root: str | Path = "/", **options: Any) -> Report:
    """Both benchmarks against `root` (live when it is "/"); what the node agent serves."""
    return scan(root, BENCHMARKS, **options)


def summary_by_benchmark(report: Report) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for f in report.findings:
        for b in (f.benchmark.split(",") if f.benchmark else ["input"]):
            counts = out.setdefault(b, {})
            counts[f.status.value] = counts.get(f.status.value, 0) + 1
    return out


__all__ = ["scan", "scan_root", "summary_by_benchmark"]
