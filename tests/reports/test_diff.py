from __future__ import annotations

import json
from dataclasses import replace

from obelisk.core import findings as report_format
from obelisk.core.findings import Status
from tests.reports.samples import cis_report


def _scans(tmp_path):
    old = cis_report()
    findings = list(old.findings)
    # V-242381 fixed, V-242387's kubelet got worse (pass -> fail would be worse; here fail stays),
    # cis-4.2.1 regressed pass -> fail, cis-1.1.9 removed, a new failing check appears.
    by_id = {f.id: i for i, f in enumerate(findings)}
    findings[by_id["stig-V-242381"]] = replace(findings[by_id["stig-V-242381"]], status=Status.PASS, observed="true")
    findings[by_id["cis-4.2.1"]] = replace(findings[by_id["cis-4.2.1"]], status=Status.FAIL, observed="true")
    findings[by_id["stig-V-242387"]] = replace(findings[by_id["stig-V-242387"]], observed="10256")
    del findings[by_id["cis-1.1.9"]]
    findings.append(replace(findings[0], id="cis-1.2.99", status=Status.FAIL, title="new check"))
    new = replace(old, findings=tuple(findings), generated_at="2026-11-25T04:10:00Z")
    a, b = tmp_path / "old.json", tmp_path / "new.json"
    a.write_text(report_format.serialize(old))
    b.write_text(report_format.serialize(new))
    return a, b


def test_diff_categories(tmp_path):
    from obelisk.reports.diff import diff_reports

    a, b = _scans(tmp_path)
    drift = diff_reports(report_format.parse(a.read_text()), report_format.parse(b.read_text()))
    assert [c.finding.id for c in drift.worse] == ["cis-4.2.1"]
    assert [c.finding.id for c in drift.better] == ["stig-V-242381"]
    assert [c.finding.id for c in drift.new_findings] == ["cis-1.2.99"]
    assert [c.finding.id for c in drift.removed] == ["cis-1.1.9"]
    assert [c.finding.id for c in drift.changed_value] == ["stig-V-242387"]
    assert drift.regressed


def test_diff_cli(obelisk_cli, tmp_path):
    a, b = _scans(tmp_path)
    proc = obelisk_cli("report", "diff", str(a), str(b), "--format", "json")
    assert proc.returncode == 1
    doc = json.loads(proc.stdout)
    assert doc["summary"] == {"worse": 1, "better": 1, "new": 1, "removed": 1, "changed_value": 1, "unchanged": 4}
    assert len(doc["new"]) == 1 and doc["new_report"]["subject"] and doc["old_report"]["generated_at"]
    proc = obelisk_cli("report", "diff", str(a), str(b), "--format", "text")
    assert "worse (1):" in proc.stdout and "pass -> fail" in proc.stdout
    proc = obelisk_cli("report", "diff", str(a), str(a), "--format", "text")
    assert proc.returncode == 0 and "0 worse, 0 better, 0 new" in proc.stdout
