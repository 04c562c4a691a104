"""Drift between two scans: what got worse, what got better, what is new, what disappeared.

Findings are matched by (id, target): the same check on the same component. "Worse" and
"better" follow the status order fail > error > waived > manual > skip > pass; a pass that
became a waived failure is worse (the node changed, even if the risk was accepted).
"""

from __future__ import annotations

from dataclasses import dataclass

from obelisk.core.findings import FAILING, Finding, Report, Status

# Higher is worse.
_BADNESS = {Status.PASS: 0, Status.SKIP: 1, Status.MANUAL: 2, Status.WAIVED: 3, Status.ERROR: 4, Status.FAIL: 5}


@dataclass(frozen=True)
class Change:
    key: tuple[str, str]
    old: Finding | None
    new: Finding | None

    @property
    def finding(self) -> Finding:
        return self.new or self.old  # type: ignore[return-value]

    def to_json(self) -> dict:
        f = self.finding
        return {"id": f.id, "target": f.target, "title": f.title, "severity": f.severity.value,
                "benchmark": f.benchmark,
                "old_status": self.old.status.value if self.old else None,
                "new_status": self.new.status.value if self.new else None,
                "old_observed": self.old.observed if self.old else None,
                "new_observed": self.new.observed if self.new else None}


@dataclass(frozen=True)
class Drift:
    old: Report
    new: Report
    worse: tuple[Change, ...]
    better: tuple[Change, ...]
    new_findings: tuple[Change, ...]
    removed: tuple[Change, ...]
    changed_value: tuple[Change, ...]  # same status, different observed value
    unchanged: tuple[Change, ...]

    @property
    def regressed(self) -> bool:
        """Something got worse, or a new check fails."""
        return bool(self.worse) or any(c.new.status in FAILING for c in self.new_findings if c.new)

    def to_json(self) -> dict:
        def subj(r: Report) -> dict:
            return {"subject": r.subject.to_json(), "generated_at": r.generated_at}

        return {
            "old_report": subj(self.old), "new_report": subj(self.new),
            "summary": {"worse": len(self.worse), "better": len(self.better), "new": len(self.new_findings),
                        "removed": len(self.removed), "changed_value": len(self.changed_value),
                        "unchanged": len(self.unchanged)},
            "regressed": self.regressed,
            "worse": [c.to_json() for c in self.worse],
            "better": [c.to_json() for c in self.better],
            "new": [c.to_json() for c in self.new_findings],
            "removed": [c.to_json() for c in self.removed],
            "changed_value": [c.to_json() for c in self.changed_value],
        }


def _index(report: Report) -> dict[tuple[str, str], Finding]:
    out: dict[tuple[str, str], Finding] = {}
    for f in report.findings:
        out.setdefault((f.id, f.target), f)
    return out


def _order(c: Change) -> tuple:
    f = c.finding
    return (-_BADNESS[c.new.status] if c.new else 0, f.id, f.target)


def diff_reports(old: Report, new: Report) -> Drift:
    a, b = _index(old), _index(new)
    worse, better, added, removed, changed, same = [], [], [], [], [], []
    for key, nf in b.items():
        of = a.get(key)
        change = Change(key, of, nf)
        if of is None:
            added.append(change)
        elif _BADNESS[nf.status] > _BADNESS[of.status]:
            worse.append(change)
        elif _BADNESS[nf.status] < _BADNESS[of.status]:
            better.append(change)
        elif of.observed != nf.observed:
            changed.append(change)
        else:
            same.append(change)
    removed = [Change(key, of, None) for key, of in a.items() if key not in b]
    return Drift(old=old, new=new, worse=tuple(sorted(worse, key=_order)), better=tuple(sorted(better, key=_order)),
                 new_findings=tuple(sorted(added, key=_order)), removed=tuple(sorted(removed, key=_order)),
                 changed_value=tuple(sorted(changed, key=_order)), unchanged=tuple(same))


def _line(c: Change) -> str:
    f = c.finding
    old = c.old.status.value if c.old else "-"
    new = c.new.status.value if c.new else "-"
    target = f" [{f.target}]" if f.target else ""
    value = ""
    if c.old and c.new and c.old.observed != c.new.observed:
        value = f"  observed {c.old.observed!s} -> {c.new.observed!s}"
    return f"  {old:>6} -> {new:<6} {f.severity.value:<8} {f.id}: {f.title}{target}{value}"


def render_text(drift: Drift, verbose: bool = False) -> str:
    o, n = drift.old, drift.new
    lines = [f"drift: {o.subject.kind} {o.subject.name} {o.generated_at} -> {n.subject.kind} {n.subject.name} "
             f"{n.generated_at}"]
    groups = [("worse", drift.worse), ("new", drift.new_findings), ("better", drift.better),
              ("removed", drift.removed), ("changed value", drift.changed_value)]
    if verbose:
        groups.append(("unchanged", drift.unchanged))
    for title, changes in groups:
        if changes:
            lines.append(f"{title} ({len(changes)}):")
            lines.extend(_line(c) for c in changes)
    lines.append(f"{len(drift.worse)} worse, {len(drift.better)} better, {len(drift.new_findings)} new, "
                 f"{len(drift.removed)} removed, {len(drift.changed_value)} changed value, "
                 f"{len(drift.unchanged)} unchanged")
    return "\n".join(lines) + "\n"
