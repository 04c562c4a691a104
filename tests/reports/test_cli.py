"""`obelisk report` as a user runs it: a separate process, real files."""

from __future__ import annotations

import json

from lxml import etree

from obelisk.core import findings as report_format


def test_report_shorthand_renders_html(obelisk_cli, results_files, tmp_path):
    out = tmp_path / "report.html"
    proc = obelisk_cli("report", *map(str, results_files), "--format", "html", "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    html = out.read_bytes()
    assert html.startswith(b"<!DOCTYPE html>")
    from obelisk.reports.html import read_meta

    meta = read_meta(html)
    assert meta["total"] == 12 and meta["counts"]["fail"] == 4
    assert meta["subject"]["name"] == "worker-01.prod.example"


def test_report_format_from_output_suffix_and_stdout(obelisk_cli, results_files, tmp_path):
    out = tmp_path / "checklist.ckl"
    proc = obelisk_cli("report", str(results_files[0]), "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    assert etree.fromstring(out.read_bytes()).tag == "CHECKLIST"
    proc = obelisk_cli("report", "render", str(results_files[1]), "--format", "sarif")
    assert proc.returncode == 0
    assert json.loads(proc.stdout)["version"] == "2.1.0"


def test_report_with_disa_files(obelisk_cli, results_files, tmp_path, stig_xccdf, cci_list):
    out = tmp_path / "c.cklb"
    proc = obelisk_cli("report", str(results_files[0]), "--format", "cklb", "--stig-benchmark", str(stig_xccdf),
                       "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    assert json.loads(out.read_text())["stigs"][0]["size"] == 95
    proc = obelisk_cli("report", str(results_files[0]), "--format", "oscal", "--cci-list", str(cci_list))
    assert proc.returncode == 0, proc.stderr
    assert "ac-17.2_obj" in proc.stdout


def test_fail_on_findings_exit_code(obelisk_cli, results_files):
    proc = obelisk_cli("report", str(results_files[0]), "--format", "json", "--fail-on-findings")
    assert proc.returncode == 1
    proc = obelisk_cli("report", str(results_files[0]), "--format", "json")
    assert proc.returncode == 0


def test_bad_input_is_one_line_exit_2(obelisk_cli, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"schema": "obelisk.report/1", "subject": {"kind": "node", "name": "n"},
                               "findings": [{"id": "x", "title": "t", "status": "broken"}]}))
    proc = obelisk_cli("report", str(bad), "--format", "html")
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "findings[0]" in proc.stderr and "status" in proc.stderr
    proc = obelisk_cli("report", str(tmp_path / "missing.json"))
    assert proc.returncode == 2 and "missing.json" in proc.stderr
    notxml = tmp_path / "x.xml"
    notxml.write_text("<Benchmark")
    good = tmp_path / "good.json"
    from tests.reports.samples import cis_report

    good.write_text(report_format.serialize(cis_report()))
    proc = obelisk_cli("report", str(good), "--format", "ckl", "--stig-benchmark", str(notxml))
    assert proc.returncode == 2 and "x.xml" in proc.stderr and "Traceback" not in proc.stderr


def test_waivers_applied_at_report_time(obelisk_cli, results_files, tmp_path):
    waivers = tmp_path / "waivers.yaml"
    waivers.write_text("waivers:\n"
                       "  - {id: stig-V-242387, "
                       "reason: 'kubelet metrics scraped on 10255 until CNI migration (CHG-88)',"
                       " approver: 'A. Osei (ISSM)', expires: '2026-12-10'}\n"
                       "  - {id: ima.entry.17, reason: old, approver: someone, expires: '2026-01-01'}\n")
    out = tmp_path / "r.json"
    proc = obelisk_cli("report", *map(str, results_files), "--waivers", str(waivers), "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    by_id = {f["id"]: f for f in json.loads(out.read_text())["findings"]}
    assert by_id["stig-V-242387"]["status"] == "waived"
    assert by_id["ima.entry.17"]["status"] == "fail"  # expired before the scan: still failing
    assert "waiver expired on 2026-01-01" in by_id["ima.entry.17"]["detail"]
    html = tmp_path / "r.html"
    assert obelisk_cli("report", *map(str, results_files), "--waivers", str(waivers), "-o", str(html)).returncode == 0
    text = html.read_text()
    register = text[text.index('id="waivers"'):]
    assert "A. Osei (ISSM)" in register and "expires soon" in register  # 16 days after the scan
    assert "not applied (expired)" in register
