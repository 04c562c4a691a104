"""The catalogue covers CIS v1.12 and the DISA STIG completely, with facts that match DISA's files."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from lxml import etree

from obelisk.cis_checks.catalogue import DATA, benchmark_ids, load_checks, stig_facts
from obelisk.cis_checks.engine import EVALUATORS, AllSpec, FlagSpec
from obelisk.cis_checks.stig import nist_control
from obelisk.cis_checks.testspec import SPECS, Spec, parse_test  # engine imported above: kinds registered
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


# ---------------------------------------------------------------- typed tests: every key declared per kind

_ENTRY = '- {cis: "1.1.1", section: control-plane, title: a title, %s}\n'


def test_every_bundled_check_loads_as_the_record_of_its_kind():
    assert set(SPECS) == set(EVALUATORS)
    seen: set[str] = set()

    def walk(spec: Spec) -> None:
        assert isinstance(spec, SPECS[spec.kind]), spec
        seen.add(spec.kind)
        for nested in spec.tests if isinstance(spec, AllSpec) else ():
            walk(nested)

    for check in load_checks():
        if check.test is not None:
            walk(check.test)
    assert seen == set(SPECS)  # every kind the engine knows is used by the bundled catalogue
    anon = {c.id: c.test for c in load_checks()}["cis-1.2.1"]
    assert anon == FlagSpec(kind="flag", component="kube-apiserver", flag="anonymous-auth", op="eq", value="false",
                            default="true")


def test_bundled_titles_are_whole():
    # an unquoted comma in a flow mapping once split a title into a second, unknown key
    checks = {c.id: c for c in load_checks()}
    assert checks["cis-5.4.1"].title == "Secrets are mounted as files, not environment variables"


@pytest.mark.parametrize("body, message", [
    # the entry itself
    ("titel: x", "checks[0] (cis-1.1.1): unknown key 'titel'"),
    ("remediaton: chmod", "checks[0] (cis-1.1.1): unknown key 'remediaton'"),
    # the test: an unknown kind, an unknown key, a missing key
    ('test: {kind: fiel, file: "manifest:etcd"}', "checks[0] (cis-1.1.1).test.kind: unknown test kind 'fiel'"),
    ('test: {kind: file, file: "manifest:etcd", mdoe: "600"}',
     "checks[0] (cis-1.1.1).test: unknown key 'mdoe' for kind 'file'"),
    ("test: {kind: flag, component: etcd, flg: x}", "checks[0] (cis-1.1.1).test: unknown key 'flg' for kind 'flag'"),
    ("test: {kind: kubelet, key: readOnlyPort, op: eq, value: '0', require: true}",
     "checks[0] (cis-1.1.1).test: unknown key 'require' for kind 'kubelet'"),
    ("test: {kind: static_pods, where: workers}",
     "checks[0] (cis-1.1.1).test: unknown key 'where' for kind 'static_pods'"),
    ("test: {kind: flag, component: etcd, op: set}", "checks[0] (cis-1.1.1).test: kind 'flag' needs key 'flag'"),
    ("test: {kind: cert, component: etcd}", "checks[0] (cis-1.1.1).test: kind 'cert' needs key 'flags'"),
    # inside the `all` combinator
    ("test: {kind: all, tests: [{kind: flag, component: etcd, flag: x}, {kind: cert, component: etcd, flgs: [a]}]}",
     "checks[0] (cis-1.1.1).test.tests[1]: unknown key 'flgs' for kind 'cert'"),
    ("test: {kind: all, tests: [{kind: nope}]}", "checks[0] (cis-1.1.1).test.tests[0].kind: unknown test kind 'nope'"),
    ("test: {kind: all, test: []}", "checks[0] (cis-1.1.1).test: unknown key 'test' for kind 'all'"),
    # types and values
    ('test: {kind: file, file: "manifest:etcd", mode: 600}', "checks[0] (cis-1.1.1).test.mode: expected a string"),
    ("test: {kind: cert, component: etcd, flags: cert-file}", "checks[0] (cis-1.1.1).test.flags: expected a list"),
    ("test: {kind: flag, component: etcd, flag: x, require_set: yes please}",
     "checks[0] (cis-1.1.1).test.require_set: expected true or false"),
    ("test: {kind: flag, component: etcd, flag: x, op: equals, value: '1'}",
     "checks[0] (cis-1.1.1).test.op: 'equals' is not one of"),
    ("test: {kind: flag, component: etcd, flag: x, value: '1'}", "checks[0] (cis-1.1.1).test: op 'set' takes no value"),
    ("test: {kind: flag, component: etcd, flag: x, op: in, value: a}",
     "checks[0] (cis-1.1.1).test: op 'in' needs a list as value"),
    ('test: {kind: file, file: "manfest:etcd"}', "checks[0] (cis-1.1.1).test: file: 'manfest:etcd'"),
    ('test: {kind: file, file: "manifest:etcd", missing: ignore}',
     "checks[0] (cis-1.1.1).test.missing: 'ignore' is not one of fail, pass, skip"),
    ("test: {kind: all, tests: []}", "checks[0] (cis-1.1.1).test: tests: at least one test"),
    ("test: [flag]", "checks[0] (cis-1.1.1).test: expected a mapping with 'kind'"),
])
def test_misspelt_catalogue_keys_are_refused_naming_file_check_and_key(tmp_path, body, message):
    path = tmp_path / "site-checks.yaml"
    path.write_text("checks:\n" + _ENTRY % body)
    with pytest.raises(InputError) as exc:
        load_checks(path)
    assert str(exc.value) == str(exc.value).strip() and "\n" not in str(exc.value)
    assert str(exc.value).startswith(f"{path}: "), str(exc.value)
    assert message in str(exc.value), str(exc.value)


def test_a_stig_only_check_is_named_by_its_vid(tmp_path):
    path = tmp_path / "checks.yaml"
    path.write_text("checks:\n- {stig: [V-242376], section: control-plane, title: t, "
                    "test: {kind: flag, component: kube-apiserver, flag: tls-min-version, op: eq, vaule: x}}\n")
    with pytest.raises(InputError, match=r"checks\[0\] \(stig-V-242376\)\.test: unknown key 'vaule' for kind 'flag'"):
        load_checks(path)


def test_a_user_catalogue_is_validated_before_the_scan(tmp_path, worker):
    from obelisk.cis_checks.scan import scan

    path = tmp_path / "checks.yaml"
    path.write_text("checks:\n" + _ENTRY % "test: {kind: kubelet, key: readOnlyPort, op: eq, vale: '0'}")
    with pytest.raises(InputError, match=r"cis-1\.1\.1.*unknown key 'vale'"):
        scan(worker, checks_file=path, live=False)


_test_keys = st.sampled_from(["kind", "component", "flag", "op", "value", "file", "mode", "tests", "flags",
                              "require", "since", "missing", "x"])
_test_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-3, 700), st.text(max_size=8),
              st.sampled_from(["flag", "file", "all", "cert", "eq", "in", "set", "manifest:etcd", "600", "1.25"])),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(_test_keys, inner, max_size=4)),
    max_leaves=10)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(_test_keys, _test_values, max_size=5))
def test_hostile_tests_only_raise_input_error(data):
    try:
        spec = parse_test(data, "checks[0].test")
    except InputError as exc:
        assert str(exc).startswith("checks[0].test")
        return
    assert isinstance(spec, SPECS[data["kind"]])
