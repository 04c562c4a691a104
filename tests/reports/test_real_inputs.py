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
