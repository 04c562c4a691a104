"""The catalogue covers CIS v1.12 and the DISA STIG completely, with facts that match DISA's files."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from lxml import etree

from obelisk.cis_checks.catalogue import DATA, benchmark_ids, load_checks, stig_facts
from obelisk.cis_checks.stig import nist_control
from obelisk.core.errors import InputError
from obelisk.core.findings import Severity
from obelisk.core.yamlsafe import load_yaml_file

# The CIS Kubernetes Benchmark v1.12 recommendation numbering: section -> last number
CIS_SECTIONS = {"1.1": 21, "1.2": 30, "1.3": 7, "1.4": 2, "3.1": 3, "3.2": 2, "4.1": 10, "4.2": 14, "4.3": 1,
                "5.1": 13, "5.2": 12, "5.3": 2, "5.4": 2, "5.5": 1, "5.6": 4}
EXPECTED_CIS = {f"{s}.{i}" for s, n in CIS_SECTIONS.items() for i in range(1, n + 1)} | {f"2.{i}" for i in range(1, 8)}
DISA_FILES = ("U_Kubernetes_STIG_V1R9_Manual-xccdf.xml", "U_Kubernetes_V2R1_STIG_SCAP_1-3_Benchmark.xml")


def disa_rules(shared_dir: Path):
    """(V-ID, severity, rule id, version, ccis, title) straight from DISA's files, read independently."""
    out = []
    for name in DISA_FILES:
        tree = etree.parse(str(shared_dir / "reference/disa" / name))
        for group in tree.iter("{*}Group"):
            vid = group.get("id").removeprefix("xccdf_mil.disa.stig_group_")
            rule = group.find("{*}Rule")
            out.append((vid, rule.get("severity"), rule.get("id").removeprefix("xccdf_mil.disa.stig_rule_"),
                        rule.findtext("{*}version"), [i.text for i in rule.findall("{*}ident")
                                                      if i.text.startswith("CCI-")],
                        rule.findtext("{*}title"), name))
    return out


def test_all_131_cis_recommendations_are_present_as_strings():
    checks = load_checks()
    ids = benchmark_ids(checks, "cis-1.12")
    assert len(EXPECTED_CIS) == 131
    assert ids == EXPECTED_CIS
    assert all(isinstance(c.cis, str) for c in checks if c.cis is not None)
    assert {"1.2.10", "1.2.20", "1.2.30", "4.2.10", "5.1.10", "1.1.20"} <= ids  # not 1.21, 1.22, 1.23, 4.21...


def test_manual_recommendations_say_what_to_look_at():
    for check in load_checks():
        if check.test is None:
            assert check.guidance, check.id


def test_every_disa_vid_is_in_the_catalogue(shared_dir):
    rules = disa_rules(shared_dir)
    vids = {r[0] for r in rules}
    assert len(vids) == 95
    assert benchmark_ids(load_checks(), "stig-k8s") == vids


def test_stig_facts_match_the_newest_disa_release(shared_dir):
    facts = stig_facts()
    newest = {}
    for vid, severity, rule_id, version, ccis, _title, name in disa_rules(shared_dir):
        if vid not in newest or "V2R1" in name:
            newest[vid] = (severity, rule_id, version, ccis)
    for vid, (severity, rule_id, version, ccis) in newest.items():
        f = facts[vid]
        assert f.severity == Severity(severity), vid
        assert f.rule_id == rule_id, vid
        assert f.version == version, vid
        assert list(f.ccis) == ccis, vid
    assert facts["V-245543"].severity is Severity.HIGH and facts["V-245543"].release == "V2R1"
    assert stig_facts("V1R9")["V-245543"].severity is Severity.MEDIUM


def test_cci_to_nist_rev5_mapping(shared_dir):
    facts = stig_facts()
    assert facts["V-242376"].nist == ("AC-17(2)",)  # CCI-000068
    assert facts["V-242390"].nist == ("AC-3",)  # CCI-000213
    assert nist_control("AU-3 c") == "AU-3" and nist_control("SC-7 (21)") == "SC-7(21)"
    tree = etree.parse(str(shared_dir / "reference/disa/U_CCI_List_2023-06-07.xml"))
    item = next(i for i in tree.iter("{*}cci_item") if i.get("id") == "CCI-001184")
    rev5 = [r.get("index") for r in item.iter("{*}reference") if r.get("version") == "5"]
    assert facts["V-242418"].nist == tuple(dict.fromkeys(nist_control(x) for x in rev5))


def test_one_check_carries_both_references():
    checks = {c.id: c for c in load_checks()}
    refs = checks["cis-1.2.1"].references()
    schemes = [(r.scheme, r.id) for r in refs]
    assert ("cis", "1.2.1") in schemes and ("stig", "V-242390") in schemes
    assert ("stig-version", "CNTR-K8-000360") in schemes
    assert ("cci", "CCI-000213") in schemes and ("nist-800-53", "AC-3") in schemes
    assert any(s == "stig-rule" and i.startswith("SV-242390r") for s, i in schemes)
    assert checks["cis-1.2.1"].severity is Severity.HIGH  # the STIG's CAT I wins
    assert checks["cis-1.2.1"].benchmarks == ("cis-1.12", "stig-k8s")


def _gen_stig_data():
    """scripts/gen_stig_data.py: a developer tool outside the package."""
    import importlib.util

    path = Path(__file__).resolve().parents[2] / "scripts" / "gen_stig_data.py"
    spec = importlib.util.spec_from_file_location("gen_stig_data", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_generated_stig_data_is_current(shared_dir):
    gen_stig_data = _gen_stig_data()
    committed = load_yaml_file(DATA / "stig-k8s.yaml", floats_as_text=True)
    assert gen_stig_data.generate(shared_dir / "reference/disa") == committed


def test_no_disa_text_in_the_project_data(shared_dir):
    titles = {r[5] for r in disa_rules(shared_dir)}
    ours = (DATA / "checks.yaml").read_text() + (DATA / "stig-k8s.yaml").read_text()
    sources = "".join(p.read_text() for p in (DATA.parent).glob("*.py"))
    copied = [t for t in titles if t and (t in ours or t in sources)]
    assert copied == []


def test_catalogue_errors_name_the_field(tmp_path):
    bad = tmp_path / "checks.yaml"
    bad.write_text("checks:\n- cis: 5\n  section: worker\n  title: x\n")
    with pytest.raises(InputError, match=r"checks\.yaml: checks\[0\]\.cis: ids are strings"):
        load_checks(bad)
    bad.write_text("checks:\n- stig: [V-1]\n  section: worker\n  title: x\n")
    with pytest.raises(InputError, match="unknown V-ID"):
        load_checks(bad)


def test_user_supplied_benchmark_gives_disa_titles(shared_dir):
    path = shared_dir / "reference/disa/U_Kubernetes_STIG_V1R9_Manual-xccdf.xml"
    checks = {c.id: c for c in load_checks(stig_benchmark=path)}
    facts = checks["stig-V-242376"].stig[0]
    assert facts.release == "V1R9" and facts.rule_id == "SV-242376r879519_rule"
    expected = next(r[5] for r in disa_rules(shared_dir) if r[0] == "V-242376")
    assert facts.title == expected and re.search(r"TLS 1\.2", facts.title)


def test_unknown_stig_release():
    with pytest.raises(InputError, match="V9R9"):
        stig_facts("V9R9")


from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from obelisk.cis_checks.stig import read_xccdf  # noqa: E402


@settings(max_examples=60, deadline=None)
@given(st.binary(max_size=300) | st.text(max_size=300).map(lambda t: ("<Benchmark><Group id='V-1'><Rule "
                                                                      + t).encode("utf-8", "replace")))
def test_user_xccdf_reader_never_crashes(data):
    import tempfile

    with tempfile.NamedTemporaryFile(suffix=".xml") as f:
        f.write(data)
        f.flush()
        try:
            rules = read_xccdf(f.name)
        except InputError:
            return
        assert all(r.vid.startswith("V-") for r in rules)
