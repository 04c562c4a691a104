"""Reports from another component's real output: `obelisk kernel check` on Debian's 6.1 config,
merged with a CIS/STIG scan, rendered in every format and validated."""

from __future__ import annotations

import json
import lzma
from pathlib import Path

import pytest
from lxml import etree

DEBIAN_CONFIG = Path("/usr/src/linux-config-6.1/config.amd64_none_amd64.xz")


@pytest.fixture
def kernel_results(obelisk_cli, tmp_path):
    config = tmp_path / "config-6.1-amd64"
    config.write_bytes(lzma.decompress(DEBIAN_CONFIG.read_bytes()))
    out = tmp_path / "kernel-check.json"  # not kernel.json: results_files writes that
    proc = obelisk_cli("kernel", "check", "--config", str(config), "--format", "json", "-o", str(out))
    assert proc.returncode in (0, 1), proc.stderr  # Debian's distro config fails hardening checks
    assert json.loads(out.read_text())["findings"]
    return out


def test_kernel_check_output_in_every_format(obelisk_cli, kernel_results, results_files, tmp_path, shared_dir):
    import jsonschema
    from trestle.oscal.assessment_results import AssessmentResults

    inputs = [str(kernel_results), str(results_files[0])]
    n = len(json.loads(kernel_results.read_text())["findings"]) + 8

    def run(fmt: str) -> bytes:
        out = tmp_path / f"r.{fmt}"
        proc = obelisk_cli("report", *inputs, "--format", fmt, "-o", str(out))
        assert proc.returncode == 0, proc.stderr
        return out.read_bytes()

    sarif = json.loads(run("sarif"))
    schema = json.loads((shared_dir / "schemas" / "sarif-schema-2.1.0.json").read_text())
    jsonschema.Draft7Validator(schema).validate(sarif)
    results = sarif["runs"][0]["results"]
    assert len(results) == n
    # Config evidence ("line 259") becomes a location with its line.
    located = [r for r in results if r["ruleId"].startswith("kernel.kconfig.")
               and "physicalLocation" in r.get("locations", [{}])[0]]
    assert located and all(r["locations"][0]["physicalLocation"]["region"]["startLine"] > 0 for r in located)

    oscal = json.loads(run("oscal"))
    model = AssessmentResults.model_validate(oscal["assessment-results"])
    assert len(model.results[0].observations) == n

    junit = etree.fromstring(run("junit"))
    assert int(junit.get("tests")) == n

    ckl_schema = etree.XMLSchema(etree.parse(str(shared_dir / "schemas" / "U_Checklist_Schema_V2.xsd")))
    ckl_schema.assertValid(etree.fromstring(run("ckl")))

    html = run("html")
    from obelisk.reports.html import read_meta

    assert read_meta(html)["total"] == n
    # The merged subject is the node; the kernel config becomes an attribute.
    attributes = read_meta(html)["subject"]["attributes"]
    assert attributes["kernel"] == "6.1.0-obelisk"  # the node's own attribute is kept
    assert attributes["kernel.name"].endswith("config-6.1-amd64")
    assert attributes["kernel.profile"] == "module-less"


def _edit(path: Path, pattern: str, replacement: str) -> None:
    import re

    text = path.read_text()
    new, n = re.subn(pattern, replacement, text, count=1, flags=re.M)
    assert n == 1, pattern
    path.write_text(new)


def test_cis_stig_scan_to_stig_viewer_and_oscal(obelisk_cli, tmp_path, shared_dir, stig_xccdf, cci_list):
    """`obelisk k8s render` a control plane, break two settings, `obelisk scan` it with DISA's
    benchmark, then render the checklists and OSCAL from that real scan."""
    root = tmp_path / "node"
    assert obelisk_cli("k8s", "render", "--out", str(root), "--role", "control-plane",
                       "--kubernetes-version", "1.31", "--format", "json").returncode == 0
    _edit(root / "etc/kubernetes/manifests/kube-apiserver.yaml", r"--anonymous-auth=false", "--anonymous-auth=true")
    _edit(root / "etc/kubernetes/manifests/kube-apiserver.yaml", r"^    - --audit-log-path=.*\n", "")
    scan = tmp_path / "scan.json"
    proc = obelisk_cli("scan", "--root", str(root), "--offline", "--stig-benchmark", str(stig_xccdf),
                       "--format", "json", "-o", str(scan), "-q")
    assert proc.returncode == 1, proc.stderr  # two failures
    findings = {f["id"]: f for f in json.loads(scan.read_text())["findings"]}
    assert findings["cis-1.2.1"]["status"] == "fail"

    ckl = tmp_path / "node.ckl"
    proc = obelisk_cli("report", str(scan), "--stig-benchmark", str(stig_xccdf), "-o", str(ckl))
    assert proc.returncode == 0, proc.stderr
    root_el = etree.fromstring(ckl.read_bytes())
    etree.XMLSchema(etree.parse(str(shared_dir / "schemas" / "U_Checklist_Schema_V2.xsd"))).assertValid(root_el)
    vulns = {}
    for vuln in root_el.iter("VULN"):
        attrs = {sd.findtext("VULN_ATTRIBUTE"): sd.findtext("ATTRIBUTE_DATA") for sd in vuln.findall("STIG_DATA")}
        vulns[attrs["Vuln_Num"]] = (vuln.findtext("STATUS"), attrs, vuln.findtext("FINDING_DETAILS"))
    assert len(vulns) == 95
    status, attrs, details = vulns["V-242390"]  # anonymous auth
    assert status == "Open" and "--anonymous-auth=true" in details
    assert vulns["V-242402"][0] == "Open" and vulns["V-242465"][0] == "Open"  # audit log path
    statuses = {s for s, _, _ in vulns.values()}
    assert statuses >= {"Open", "NotAFinding", "Not_Reviewed"}

    # Without DISA's file the rule ids and versions still pair up per rule, even for checks
    # that cover several STIG rules.
    bench_less = etree.fromstring(obelisk_cli("report", str(scan), "--format", "ckl").stdout.encode())
    for vuln in bench_less.iter("VULN"):
        attrs = {sd.findtext("VULN_ATTRIBUTE"): sd.findtext("ATTRIBUTE_DATA") for sd in vuln.findall("STIG_DATA")}
        number = attrs["Vuln_Num"].removeprefix("V-")
        assert attrs["Rule_ID"].startswith(f"SV-{number}r"), attrs
        if attrs["Vuln_Num"] in vulns:
            assert attrs["Rule_Ver"] == vulns[attrs["Vuln_Num"]][1]["Rule_Ver"]

    proc = obelisk_cli("report", str(scan), "--format", "oscal", "--cci-list", str(cci_list))
    assert proc.returncode == 0, proc.stderr
    from trestle.oscal.assessment_results import AssessmentResults

    model = AssessmentResults.model_validate(json.loads(proc.stdout)["assessment-results"])
    states = {f.target.target_id: f.target.status.state.value for f in model.results[0].findings}
    assert states["au-14.1_obj"] == "not-satisfied"  # audit log path missing (cis-1.2.16)
    assert states["cm-6_obj"] == "not-satisfied"
    assert "satisfied" in states.values()
