"""Every machine format validated against its schema or validator, across every status."""

from __future__ import annotations

import csv
import io
import json

import pytest
from lxml import etree

from obelisk.core import findings as report_format
from obelisk.core.errors import InputError
from obelisk.core.findings import Report, Status
from obelisk.reports.cci import load_cci_list
from obelisk.reports.model import load_bundle
from obelisk.reports.options import RenderOptions
from obelisk.reports.render import FORMATS, render
from obelisk.reports.stig_benchmark import load_stig_benchmark


def test_fixture_has_every_status(bundle):
    assert {f.status for f in bundle.report.findings} == set(Status)


def test_merge_keeps_every_finding_and_the_node_subject(bundle, results_files):
    assert len(bundle.report.findings) == 12
    assert bundle.report.subject.kind == "node"
    attrs = dict(bundle.report.subject.attributes)
    assert attrs["kernel.digest"] == "sha256:" + "cd" * 32
    assert bundle.report.generated_at == "2026-11-24T04:12:30Z"  # latest scan, not render time
    assert [s.path for s in bundle.sources] == [p.name for p in results_files]


def test_json_round_trips_as_results_file(bundle):
    out = render(bundle, "json")
    again = report_format.parse(out)
    assert again.findings == bundle.report.findings
    assert json.loads(out)["sources"][0]["sha256"] == bundle.sources[0].sha256


@pytest.fixture(scope="module")
def sarif_validator(shared_dir):
    import jsonschema

    schema = json.loads((shared_dir / "schemas" / "sarif-schema-2.1.0.json").read_text())
    return jsonschema.Draft7Validator(schema)


def test_sarif_validates_and_maps_statuses(bundle, sarif_validator):
    doc = json.loads(render(bundle, "sarif"))
    errors = sorted(sarif_validator.iter_errors(doc), key=str)
    assert not errors, errors[0]
    results = doc["runs"][0]["results"]
    assert len(results) == len(bundle.report.findings)
    by_id = {r["ruleId"]: r for r in results}
    assert by_id["stig-V-242381"]["kind"] == "fail" and by_id["stig-V-242381"]["level"] == "error"
    assert by_id["cis-1.2.7"]["kind"] == "pass" and by_id["cis-1.2.7"]["level"] == "none"
    assert by_id["cis-1.2.16"]["suppressions"][0]["status"] == "accepted"
    assert by_id["cis-5.1.1"]["kind"] == "review"
    assert by_id["cis-1.1.9"]["kind"] == "notApplicable"
    loc = by_id["stig-V-242381"]["locations"][0]["physicalLocation"]
    assert loc["artifactLocation"]["uri"] == "file:///etc/kubernetes/manifests/kube-controller-manager.yaml"
    assert loc["region"]["startLine"] == 23


def test_sarif_detects_invalid_document(sarif_validator):
    # The validator itself must be able to fail: a result without a message is invalid.
    doc = {"version": "2.1.0", "runs": [{"tool": {"driver": {"name": "x"}}, "results": [{"ruleId": "a"}]}]}
    assert list(sarif_validator.iter_errors(doc))


def _token(value) -> str:
    """The string inside trestle's nested root models and enums."""
    while hasattr(value, "root"):
        value = value.root
    return getattr(value, "value", value)


def _validate_oscal(doc):
    """trestle's pydantic models, then every validator `trestle validate -a` runs (duplicate uuids,
    references, links)."""
    import argparse

    import trestle.core.validator_factory as validator_factory
    from trestle.common import const
    from trestle.oscal.assessment_results import AssessmentResults

    model = AssessmentResults.model_validate(doc["assessment-results"])
    validator = validator_factory.validator_factory.get(argparse.Namespace(mode=const.VAL_MODE_ALL))
    assert validator.model_is_valid(model, True, None), validator.error_msg()
    return model


def test_oscal_validates_with_trestle(bundle):
    doc = json.loads(render(bundle, "oscal"))
    model = _validate_oscal(doc)
    result = model.results[0]
    assert len(result.observations) == len(bundle.report.findings)
    targets = {f.target.target_id: f.target.status.state.value for f in result.findings}
    assert targets["ac-3_obj"] == "not-satisfied"  # V-242387 failed
    assert targets["cm-7_obj"] == "satisfied"
    assert targets["au-12_obj"] == "not-satisfied"  # waived is an accepted risk, not satisfied
    assert targets["ac-2.1_obj"] == "not-satisfied"
    risks = {r.title.split(":")[0]: r for r in result.risks}
    assert _token(risks["cis-1.2.16"].status) == "deviation-approved"
    assert risks["cis-1.2.16"].deadline.date().isoformat() == "2027-03-31"
    assert _token(risks["stig-V-242381"].status) == "open"
    assert len(risks) == 5  # 4 failures + 1 waived
    au12 = next(f for f in result.findings if f.target.target_id == "au-12_obj")
    assert [r.risk_uuid for r in au12.related_risks] == [risks["cis-1.2.16"].uuid]


def test_oscal_with_cci_list_maps_more_controls(bundle, cci_list):
    cci_map = load_cci_list(cci_list)
    assert cci_map["CCI-000068"] == ("ac-17.2",)
    doc = json.loads(render(bundle, "oscal", RenderOptions(cci_map=cci_map)))
    _validate_oscal(doc)
    controls = [c["control-id"] for c in
                doc["assessment-results"]["results"][0]["reviewed-controls"]["control-selections"][0]
                ["include-controls"]]
    assert "ac-17.2" in controls and "ac-3" in controls


def test_oscal_duplicate_uuid_is_rejected(bundle):
    doc = json.loads(render(bundle, "oscal"))
    observations = doc["assessment-results"]["results"][0]["observations"]
    observations[1]["uuid"] = observations[0]["uuid"]
    with pytest.raises(AssertionError, match="duplicate"):
        _validate_oscal(doc)


def test_oscal_invalid_document_is_rejected(bundle):
    import pydantic

    doc = json.loads(render(bundle, "oscal"))
    doc["assessment-results"]["results"][0]["observations"][0]["uuid"] = "not-a-uuid"
    with pytest.raises(pydantic.ValidationError):
        _validate_oscal(doc)


@pytest.fixture(scope="module")
def ckl_schema(shared_dir):
    return etree.XMLSchema(etree.parse(str(shared_dir / "schemas" / "U_Checklist_Schema_V2.xsd")))


def _vulns(root):
    out = {}
    for vuln in root.iter("VULN"):
        attrs = {}
        for sd in vuln.findall("STIG_DATA"):
            attrs.setdefault(sd.findtext("VULN_ATTRIBUTE"), []).append(sd.findtext("ATTRIBUTE_DATA") or "")
        out[attrs["Vuln_Num"][0]] = (vuln.findtext("STATUS"), attrs, vuln)
    return out


def test_ckl_validates_against_disa_schema(bundle, ckl_schema):
    root = etree.fromstring(render(bundle, "ckl"))
    ckl_schema.assertValid(root)
    vulns = _vulns(root)
    assert vulns["V-242381"][0] == "Open"
    assert vulns["V-242382"][0] == "NotAFinding"
    assert vulns["V-242402"][0] == "Open"  # waived: open with the exception in the comments
    assert "J. Rivera" in vulns["V-242402"][2].findtext("COMMENTS")
    assert vulns["V-242379"][0] == "Not_Reviewed"  # error: could not be evaluated
    assert vulns["V-242381"][1]["CCI_REF"] == ["CCI-000015"]
    assert "use-service-account-credentials=false" in vulns["V-242381"][2].findtext("FINDING_DETAILS")


def test_ckl_with_disa_benchmark_has_every_rule_and_disa_text(bundle, ckl_schema, stig_xccdf):
    bench = load_stig_benchmark(stig_xccdf)
    root = etree.fromstring(render(bundle, "ckl", RenderOptions(stig_benchmark=bench)))
    ckl_schema.assertValid(root)
    vulns = _vulns(root)
    assert len(vulns) == len(bench.rules) == 95
    rule = bench.by_vuln_id()["V-242381"]
    status, attrs, _ = vulns["V-242381"]
    assert status == "Open"
    assert attrs["Rule_Title"] == [rule.title] and attrs["Check_Content"] == [rule.check]
    assert attrs["Fix_Text"] == [rule.fix] and attrs["Rule_ID"] == [rule.rule_id]
    # A rule obelisk has no check for is Not_Reviewed, never silently passed.
    assert vulns["V-242376"][0] == "Not_Reviewed"
    info = {si.findtext("SID_NAME"): si.findtext("SID_DATA") for si in root.iter("SI_DATA")}
    assert info["releaseinfo"].startswith("Release: 9")


def test_ckl_schema_rejects_bad_status(bundle, ckl_schema):
    root = etree.fromstring(render(bundle, "ckl"))
    root.find(".//VULN/STATUS").text = "Passed"
    assert not ckl_schema.validate(root)


def test_cklb_structure_matches_ckl(bundle, stig_xccdf):
    bench = load_stig_benchmark(stig_xccdf)
    doc = json.loads(render(bundle, "cklb", RenderOptions(stig_benchmark=bench)))
    stig = doc["stigs"][0]
    rules = {r["group_id"]: r for r in stig["rules"]}
    assert stig["size"] == len(rules) == 95
    assert rules["V-242381"]["status"] == "open"
    assert rules["V-242382"]["status"] == "not_a_finding"
    assert rules["V-242376"]["status"] == "not_reviewed"
    assert rules["V-242381"]["rule_id"] == "SV-242381r879522"
    assert rules["V-242381"]["rule_id_src"] == "SV-242381r879522_rule"
    assert rules["V-242381"]["ccis"] == ["CCI-000015"]
    assert doc["target_data"]["host_name"] == "worker-01.prod.example"
    assert all(r["stig_uuid"] == stig["uuid"] for r in stig["rules"])
    assert {r["status"] for r in stig["rules"]} <= {"not_a_finding", "open", "not_applicable", "not_reviewed"}
    # The keys STIG Viewer 3 writes and reads, at each level.
    assert {"title", "id", "active", "mode", "has_path", "target_data", "stigs", "cklb_version"} <= set(doc)
    assert {"target_type", "host_name", "ip_address", "mac_address", "fqdn", "comments", "role",
            "is_web_database", "technology_area", "web_db_site", "web_db_instance"} <= set(doc["target_data"])
    assert {"stig_name", "display_name", "stig_id", "release_info", "version", "uuid", "reference_identifier",
            "size", "rules"} <= set(stig)
    rule_keys = {"uuid", "stig_uuid", "target_key", "stig_ref", "group_id", "group_id_src", "rule_id",
                 "rule_id_src", "weight", "classification", "severity", "rule_version", "group_title", "rule_title",
                 "fix_text", "false_positives", "false_negatives", "discussion", "check_content", "documentable",
                 "mitigations", "potential_impacts", "third_party_tools", "mitigation_control", "responsibility",
                 "security_override_guidance", "ia_controls", "check_content_ref", "legacy_ids", "ccis",
                 "group_tree", "createdAt", "updatedAt", "STIGUuid", "status", "overrides", "comments",
                 "finding_details"}
    assert all(rule_keys <= set(r) for r in stig["rules"])
    assert len({r["uuid"] for r in stig["rules"]}) == 95  # unique rule uuids
    rule = rules["V-242381"]
    bench_rule = bench.by_vuln_id()["V-242381"]
    assert (rule["rule_title"], rule["check_content"], rule["fix_text"]) == (bench_rule.title, bench_rule.check,
                                                                             bench_rule.fix)


def test_junit_counts(bundle):
    root = etree.fromstring(render(bundle, "junit"))
    assert root.get("tests") == "12"
    assert int(root.get("failures")) == sum(f.status is Status.FAIL for f in bundle.report.findings)
    assert int(root.get("errors")) == 1
    suites = {s.get("name"): s for s in root.iter("testsuite")}
    assert set(suites) == {"cis-1.12", "stig-k8s", "kernel-hardening", "attestation", "ima"}
    waived = [c for c in root.iter("testcase") if c.get("name").startswith("cis-1.2.16")][0]
    assert "J. Rivera" in waived.find("skipped").get("message")


def test_csv_has_a_row_per_finding_and_defuses_formulas(bundle, tmp_path):
    from dataclasses import replace

    from obelisk.reports.model import Bundle

    hostile = replace(bundle.report.findings[0], observed="=HYPERLINK(\"http://x\")", expected="-1")
    b = Bundle(report=bundle.report.with_findings((hostile, *bundle.report.findings[1:])))
    text = render(b, "csv").decode("utf-8-sig")
    rows = list(csv.DictReader(io.StringIO(text)))
    assert len(rows) == 12
    assert rows[0]["observed"].startswith("'=")
    assert rows[0]["expected"] == "-1"
    assert rows[1]["stig"] == "V-242381" and rows[1]["cci"] == "CCI-000015"
    assert rows[2]["waiver_approver"] == "J. Rivera (CISO office)"


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_every_format_renders_an_empty_report(fmt, tmp_path):
    from tests.reports.samples import NODE

    path = tmp_path / "empty.json"
    path.write_text(report_format.serialize(Report(findings=(), subject=NODE, generated_at="2026-11-24T04:00:00Z")))
    if fmt in ("ckl", "cklb"):  # a checklist needs STIG rules: from findings or DISA's benchmark
        with pytest.raises(InputError, match="--stig-benchmark"):
            render(load_bundle([path]), fmt)
    else:
        assert render(load_bundle([path]), fmt)


def test_html_controls_table_agrees_with_oscal(bundle, cci_list):
    from lxml import html as lxml_html

    options = RenderOptions(cci_map=load_cci_list(cci_list))
    dom = lxml_html.fromstring(render(bundle, "html", options))
    rows = {tr.xpath("./td[1]")[0].text_content(): tr.get("data-state")
            for tr in dom.xpath("//table[@id='controls']/tbody/tr")}
    doc = json.loads(render(bundle, "oscal", options))
    from obelisk.reports.cci import display_control

    oscal = {display_control(f["target"]["target-id"].removesuffix("_obj")): f["target"]["status"]["state"]
             for f in doc["assessment-results"]["results"][0]["findings"]}
    assert rows == oscal
    assert rows["AC-3"] == "not-satisfied" and rows["CM-7"] == "satisfied" and "AC-17(2)" in rows


def test_html_stig_coverage_matches_checklist(bundle, stig_xccdf):
    from collections import Counter

    from lxml import html as lxml_html

    bench = load_stig_benchmark(stig_xccdf)
    options = RenderOptions(stig_benchmark=bench)
    dom = lxml_html.fromstring(render(bundle, "html", options))
    totals = {td.get("data-status"): int(td.text_content())
              for td in dom.xpath("//table[@id='stig-coverage']//td[@data-total]")}
    ckl = etree.fromstring(render(bundle, "ckl", options))
    in_ckl = Counter(v.findtext("STATUS") for v in ckl.iter("VULN"))
    assert totals == {s: in_ckl.get(s, 0) for s in ("Open", "NotAFinding", "Not_Reviewed", "Not_Applicable")}
    assert sum(totals.values()) == 95 and totals["Open"] == 3
