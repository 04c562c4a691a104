"""Live scans read /proc/<pid>/cmdline; waivers; the render and key commands; DISA titles from the user's file."""

from __future__ import annotations

import datetime as dt
import json
import stat
import subprocess
import sys
import time

import pytest
import yaml

from obelisk.cis_checks.node import NodeView
from obelisk.cis_checks.scan import scan
from obelisk.core import findings as report_format
from obelisk.core.findings import Status, Waiver

from .conftest import by_id, failing


@pytest.fixture
def fake_apiserver(tmp_path):
    """A real process whose argv[0] is kube-apiserver with unsafe flags (python sleeping underneath)."""
    proc = subprocess.Popen(["kube-apiserver", "-c", "import time; time.sleep(60)", "--anonymous-auth=true",
                             "--profiling", "--authorization-mode=Node,RBAC"], executable=sys.executable)
    try:
        for _ in range(50):  # wait until exec has replaced the cmdline
            if b"--anonymous-auth=true" in open(f"/proc/{proc.pid}/cmdline", "rb").read():
                break
            time.sleep(0.02)
        proc_dir = tmp_path / "proc"
        proc_dir.mkdir()
        (proc_dir / str(proc.pid)).symlink_to(f"/proc/{proc.pid}")  # only this process is visible to the scan
        yield proc, proc_dir
    finally:
        proc.kill()
        proc.wait()


def test_running_process_wins_over_manifest(control_plane, fake_apiserver):
    proc, proc_dir = fake_apiserver
    node = NodeView(control_plane, proc_dir)
    comp = node.components["kube-apiserver"]
    assert comp.source == f"pid {proc.pid}" and comp.source_kind == "process"
    assert comp.manifest == "/etc/kubernetes/manifests/kube-apiserver.yaml"
    report = scan(control_plane, proc=proc_dir)
    f = by_id(report, "cis-1.2.1")
    assert f.status is Status.FAIL and f.observed == "true"
    assert f.evidence[0].source == f"pid {proc.pid}"
    assert by_id(report, "cis-1.2.15").observed == "true"  # bare boolean flag
    assert by_id(report, "cis-1.1.1").status is Status.PASS  # file checks use the manifest
    assert "cis-1.2.16" in failing(report)  # the running process has no audit log, whatever the manifest says
    assert by_id(report, "stig-V-242393").status is Status.PASS  # sshd not among the visible processes


def test_waivers(control_plane):
    (control_plane / "etc/kubernetes/manifests/kube-apiserver.yaml").chmod(0o644)
    today = dt.date(2026, 1, 1)
    valid = Waiver("cis-1.1.1", "image build sets it at first boot", "ciso@example.org", dt.date(2026, 6, 30))
    report = scan(control_plane, waivers=[valid], today=today)
    assert by_id(report, "cis-1.1.1").status is Status.WAIVED and report.exit_code() == 0
    expired = Waiver("cis-1.1.1", "old", "ciso@example.org", dt.date(2025, 6, 30))
    report = scan(control_plane, waivers=[expired], today=today)
    f = by_id(report, "cis-1.1.1")
    assert f.status is Status.FAIL and "waiver expired on 2025-06-30" in f.detail


def test_benchmark_selection(control_plane):
    cis = scan(control_plane, ["cis-1.12"])
    assert len(cis.findings) == 131 and all("cis-1.12" in f.benchmark for f in cis.findings)
    stig = scan(control_plane, ["stig-k8s"])
    vids = {v for f in stig.findings for v in f.refs("stig")}
    assert len(vids) == 95
    assert by_id(stig, "cis-1.2.1").benchmark == "stig-k8s"


def test_render_command_and_encryption_key(tmp_path, obelisk_cli):
    out = tmp_path / "root"
    r = obelisk_cli("k8s", "render", "--out", str(out), "--role", "worker", "--kubernetes-version", "1.30",
                    "--format", "json")
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert data["kubernetes_version"] == "1.30.0"
    assert {"path": "/etc/kubernetes/kubelet/config.yaml", "mode": "0600", "uid": 0, "gid": 0} .items() <= \
        next(f for f in data["files"] if f["path"] == "/etc/kubernetes/kubelet/config.yaml").items()
    bad = obelisk_cli("k8s", "render", "--out", str(out), "--kubernetes-version", "banana")
    assert bad.returncode == 2 and "banana" in bad.stderr and "Traceback" not in bad.stderr
    key = tmp_path / "enc/config.yaml"
    k = obelisk_cli("k8s", "encryption-key", "--out", str(key), "--format", "json")
    assert k.returncode == 0, k.stderr
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    doc = yaml.safe_load(key.read_text())
    import base64

    secret = doc["resources"][0]["providers"][0]["secretbox"]["keys"][0]["secret"]
    assert len(base64.b64decode(secret)) == 32
    assert secret not in k.stdout  # never printed
    scanned = obelisk_cli("scan", "--root", str(out), "--format", "json", "--benchmark", "cis-1.12")
    assert scanned.returncode == 0
    assert report_format.parse(scanned.stdout).subject.kind == "tree"


def test_disa_titles_from_the_users_benchmark(control_plane, shared_dir, obelisk_cli):
    xccdf = shared_dir / "reference/disa/U_Kubernetes_V2R1_STIG_SCAP_1-3_Benchmark.xml"
    r = obelisk_cli("scan", "--root", str(control_plane), "--stig-benchmark", str(xccdf), "--format", "json")
    assert r.returncode == 0, r.stderr
    findings = {f["id"]: f for f in json.loads(r.stdout)["findings"]}
    assert "TLS 1.2" in findings["stig-V-242376"]["title"]  # DISA's own title, read from the user's file
    assert "DISA: V-242390:" in findings["cis-1.2.1"]["detail"]
    refs = findings["cis-1.2.1"]["references"]
    assert {"scheme": "stig-rule", "id": "SV-242390r960792_rule"} in refs


def test_live_kubelet_config_is_the_one_the_process_uses(worker, tmp_path):
    """kube-bench's classic false result: reading a config file the running kubelet does not use."""
    other = worker / "etc/kubernetes/kubelet/other.yaml"
    other.write_text("apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\nreadOnlyPort: 10255\n")
    other.chmod(0o600)
    proc = subprocess.Popen(["kubelet", "-c", "import time; time.sleep(60)",
                             "--config=/etc/kubernetes/kubelet/other.yaml"], executable=sys.executable)
    try:
        for _ in range(50):
            if b"other.yaml" in open(f"/proc/{proc.pid}/cmdline", "rb").read():
                break
            time.sleep(0.02)
        proc_dir = tmp_path / "proc"
        proc_dir.mkdir()
        (proc_dir / str(proc.pid)).symlink_to(f"/proc/{proc.pid}")
        offline = scan(worker)
        live = scan(worker, proc=proc_dir)
    finally:
        proc.kill()
        proc.wait()
    assert by_id(offline, "cis-4.2.4").status is Status.PASS  # the unit's config.yaml says 0
    f = by_id(live, "cis-4.2.4")
    assert f.status is Status.FAIL and f.observed == "10255"
    assert f.evidence[0].source == "/etc/kubernetes/kubelet/other.yaml"


def test_bad_stig_benchmark_file(control_plane, tmp_path, obelisk_cli):
    bad = tmp_path / "stig.xml"
    bad.write_text("<Benchmark><Group id='V-1'><Rule")
    r = obelisk_cli("scan", "--root", str(control_plane), "--stig-benchmark", str(bad))
    assert r.returncode == 2 and "stig.xml" in r.stderr and r.stderr.count("\n") == 1
    bad.write_text("<Benchmark/>")
    r = obelisk_cli("scan", "--root", str(control_plane), "--stig-benchmark", str(bad))
    assert r.returncode == 2 and "no STIG rules" in r.stderr


def test_encryption_key_is_never_silently_replaced(tmp_path, obelisk_cli):
    key = tmp_path / "config.yaml"
    assert obelisk_cli("k8s", "encryption-key", "--out", str(key)).returncode == 0
    before = key.read_bytes()
    again = obelisk_cli("k8s", "encryption-key", "--out", str(key))
    assert again.returncode == 2 and "already exists" in again.stderr and key.read_bytes() == before
    assert obelisk_cli("k8s", "encryption-key", "--out", str(key), "--replace").returncode == 0
    assert key.read_bytes() != before


def test_checks_command_lists_the_catalogue(obelisk_cli):
    r = obelisk_cli("k8s", "checks", "--benchmark", "stig-k8s", "--format", "json")
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)["checks"]
    vids = {ref["id"] for row in rows for ref in row["references"] if ref["scheme"] == "stig"}
    assert len(vids) == 95
    row = next(x for x in rows if x["id"] == "cis-4.2.4")
    assert row["assessment"] == "manual" and row["evaluated"] is True and row["severity"] == "high"
    text = obelisk_cli("k8s", "checks", "--format", "text")
    assert text.returncode == 0 and text.stdout.strip().endswith("175 checks")
