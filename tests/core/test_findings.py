import datetime as dt
import itertools
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from obelisk.core import findings as report_format
from obelisk.core.errors import InputError
from obelisk.core.findings import Evidence, Finding, Reference, Report, Severity, Status, Subject, Waiver
from obelisk.core.waivers import apply_waivers, load_waivers


def sample_report() -> Report:
    waiver = Waiver("cis-4.2.1", "legacy monitoring needs it until Q3", "j.doe (CISO)", dt.date(2030, 1, 1))
    findings = tuple(
        Finding(id=f"check-{s.value}", title=f"a {s.value} check", status=s, severity=sev, target="/etc/x",
                observed="a" if s is not Status.PASS else None, expected="b",
                evidence=(Evidence("file", "/etc/x", "line content", "12"),),
                remediation="fix it", references=(Reference("cis", "1.2.10"), Reference("stig", "V-242381"),
                                                  Reference("cci", "CCI-000213"), Reference("nist-800-53", "AC-3")),
                benchmark="cis-1.12", section="control-plane", detail="why",
                waiver=waiver if s is Status.WAIVED else None)
        for s, sev in zip(Status, itertools.cycle(Severity)))
    return Report(findings=findings, subject=Subject("node", "worker-1", "sha256:ab", (("kernel", "6.1.0"),)),
                  command="scan")


def test_report_json_round_trips_every_status():
    report = sample_report()
    text = report_format.serialize(report)
    again = report_format.parse(text)
    assert again == report
    data = json.loads(text)
    assert data["summary"] == {"pass": 1, "fail": 1, "error": 1, "skip": 1, "manual": 1, "waived": 1}
    assert again.findings[0].references[0].id == "1.2.10"  # ids stay strings
    assert report.failed and report.exit_code() == 1


def test_only_fail_and_error_make_a_report_fail():
    ok = Report(findings=tuple(f for f in sample_report().findings if f.status not in (Status.FAIL, Status.ERROR)),
                subject=Subject("tree", "/"))
    assert not ok.failed and ok.exit_code() == 0


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d.update(schema="other/9"), "schema"),
    (lambda d: d["findings"][0].update(status="maybe"), "status: 'maybe' is not one of"),
    (lambda d: d["findings"][0].pop("id"), r"findings\[0\].id: missing"),
    (lambda d: d["findings"][1].update(references="x"), "references: expected a list"),
    (lambda d: d.update(subject=[]), "subject: expected an object"),
    (lambda d: d["findings"][5]["waiver"].update(expires="soon"), "expires: not a date"),
])
def test_malformed_results_name_the_field(mutate, message):
    data = sample_report().to_json()
    mutate(data)
    with pytest.raises(InputError, match=message):
        report_format.parse(json.dumps(data), source="results.json")


def test_not_json_is_one_line():
    with pytest.raises(InputError, match="results.json: not JSON"):
        report_format.parse(b"\xff{", source="results.json")


@settings(max_examples=300, deadline=None)
@given(st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=5),
                    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=8), c, max_size=4),
                    max_leaves=20))
def test_arbitrary_json_never_crashes_the_loader(value):
    try:
        Report.from_json(value)
    except InputError:
        pass


def test_waivers_apply_until_they_expire(tmp_path):
    path = tmp_path / "waivers.yaml"
    path.write_text("waivers:\n  - id: cis-4.2.1\n    reason: needed\n    approver: ciso\n    expires: 2030-01-01\n"
                    "  - id: cis-4.2.2\n    reason: was needed\n    approver: ciso\n    expires: 2020-01-01\n")
    waivers = load_waivers(path)
    findings = (Finding("cis-4.2.1", "t", Status.FAIL), Finding("cis-4.2.2", "t", Status.FAIL),
                Finding("cis-4.2.3", "t", Status.FAIL), Finding("cis-4.2.1x", "t", Status.PASS))
    out = {f.id: f for f in apply_waivers(findings, waivers, today=dt.date(2026, 11, 24))}
    assert out["cis-4.2.1"].status is Status.WAIVED and out["cis-4.2.1"].waiver.approver == "ciso"
    assert out["cis-4.2.2"].status is Status.FAIL and "expired on 2020-01-01" in out["cis-4.2.2"].detail
    assert out["cis-4.2.3"].status is Status.FAIL


def test_malformed_waivers_file_names_the_entry(tmp_path):
    path = tmp_path / "w.yaml"
    path.write_text("waivers:\n  - id: x\n    reason: r\n")
    with pytest.raises(InputError, match=r"w.yaml: waivers\[0\].approver: missing"):
        load_waivers(path)
    path.write_text("waivers: [\n")
    with pytest.raises(InputError, match="w.yaml: invalid YAML at line"):
        load_waivers(path)
