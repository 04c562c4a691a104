"""Broken inputs become `error` findings naming the file; the scan goes on with everything else."""

from __future__ import annotations

import json
import os

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from obelisk.cis_checks.node import NodeView
from obelisk.cis_checks.scan import scan
from obelisk.core import findings as report_format
from obelisk.core.findings import Status

from .conftest import APISERVER, KUBELET_CONFIG, KUBELET_DROPINS, by_id, failing


def test_malformed_manifest_is_an_error_naming_the_file(control_plane):
    (control_plane / APISERVER).write_text("apiVersion: v1\nkind: Pod\nspec: [unclosed\n")
    report = scan(control_plane)
    f = by_id(report, "cis-1.2.1")
    assert f.status is Status.ERROR
    assert "/etc/kubernetes/manifests/kube-apiserver.yaml" in f.detail and "invalid YAML" in f.detail
    # the manifest's own mode/owner is still checked, and other components are still scanned
    assert by_id(report, "cis-1.1.1").status is Status.PASS
    assert by_id(report, "cis-1.3.2").status is Status.PASS
    assert by_id(report, "cis-4.2.1").status is Status.PASS
    errors = {f.id for f in report.findings if f.status is Status.ERROR}
    assert errors and all(i.startswith(("cis-1.2.", "cis-3.2.", "stig-V-")) for i in errors)
    assert failing(report).keys() == errors


def test_kubelet_config_of_the_wrong_kind(worker):
    (worker / KUBELET_CONFIG).write_text("apiVersion: v1\nkind: ConfigMap\ndata: {}\n")
    report = scan(worker)
    f = by_id(report, "cis-4.2.1")
    assert f.status is Status.ERROR
    assert "/etc/kubernetes/kubelet/config.yaml: kind 'ConfigMap', expected 'KubeletConfiguration'" in f.detail
    assert by_id(report, "cis-4.1.9").status is Status.PASS  # file checks still run
    assert by_id(report, "stig-V-242394").status is Status.PASS


def test_unreadable_kubelet_config(worker):
    path = worker / KUBELET_CONFIG
    path.unlink()
    path.mkdir()  # reading a directory fails even for root
    report = scan(worker)
    f = by_id(report, "cis-4.2.4")
    assert f.status is Status.ERROR and "/etc/kubernetes/kubelet/config.yaml: cannot read" in f.detail


def test_symlink_loop_dropin(worker):
    loop = worker / KUBELET_DROPINS / "10-loop.conf"
    loop.symlink_to("10-loop.conf")  # relative: a loop inside the tree
    report = scan(worker)
    f = by_id(report, "cis-4.2.1")
    assert f.status is Status.ERROR and "10-loop.conf" in f.detail
    assert by_id(report, "cis-4.1.9").status is Status.ERROR


def test_unattributable_bad_manifest_gets_its_own_error(control_plane):
    junk = control_plane / "etc/kubernetes/manifests/junk.yaml"
    junk.write_bytes(b"\xff\xfe: [\x00")
    report = scan(control_plane)
    assert failing(report) == {"input:/etc/kubernetes/manifests/junk.yaml": None,
                               # and an unknown file in the static pod directory is not a control-plane pod
                               "stig-V-242397": "non-control-plane static pods: /etc/kubernetes/manifests/junk.yaml"}
    f = by_id(report, "input:/etc/kubernetes/manifests/junk.yaml")
    assert f.status is Status.ERROR and "junk.yaml" in f.detail


def test_cli_exit_codes_and_json(control_plane, obelisk_cli, tmp_path):
    ok = obelisk_cli("scan", "--root", str(control_plane), "--format", "json")
    assert ok.returncode == 0, ok.stderr
    report = report_format.parse(ok.stdout)
    assert failing(report) == {}
    (control_plane / APISERVER).write_text("kind: [")
    bad = obelisk_cli("scan", "--root", str(control_plane), "--format", "json")
    assert bad.returncode == 1
    assert any(f["status"] == "error" for f in json.loads(bad.stdout)["findings"])
    missing = obelisk_cli("scan", "--root", str(tmp_path / "nope"))
    assert missing.returncode == 2 and missing.stderr.count("\n") == 1 and "nope" in missing.stderr
    badwaiver = tmp_path / "w.yaml"
    badwaiver.write_text("waivers: [{id: cis-1.2.1}]\n")
    w = obelisk_cli("scan", "--root", str(control_plane), "--waivers", str(badwaiver))
    assert w.returncode == 2 and "w.yaml" in w.stderr and "Traceback" not in w.stderr


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(manifest=st.binary(max_size=400), config=st.binary(max_size=400))
def test_hostile_bytes_never_crash_the_scan(tmp_path_factory, manifest, config):
    root = tmp_path_factory.mktemp("fuzz")
    (root / "etc/kubernetes/manifests").mkdir(parents=True)
    (root / "etc/kubernetes/manifests/kube-apiserver.yaml").write_bytes(manifest)
    (root / "etc/kubernetes/kubelet").mkdir(parents=True)
    (root / "etc/kubernetes/kubelet/config.yaml").write_bytes(config)
    (root / "etc/systemd/system").mkdir(parents=True)
    (root / "etc/systemd/system/kubelet.service").write_text(
        "[Service]\nExecStart=/usr/bin/kubelet --config=/etc/kubernetes/kubelet/config.yaml\n")
    report = scan(root)
    assert len(report.findings) >= 162
    NodeView(root)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(max_size=300))
def test_hostile_manifest_text(tmp_path_factory, text):
    root = tmp_path_factory.mktemp("fuzz")
    d = root / "etc/kubernetes/manifests"
    d.mkdir(parents=True)
    (d / "etcd.yaml").write_text("apiVersion: v1\nkind: Pod\nspec:\n  containers:\n  - command: [etcd, "
                                 + json.dumps(text) + "]\n    volumeMounts: " + json.dumps(text) + "\n")
    os.chmod(d / "etcd.yaml", 0o600)
    report = scan(root)
    assert by_id(report, "cis-1.1.7").status in (Status.PASS, Status.ERROR)


_json = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=8),
                     lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
                         st.sampled_from(["kind", "spec", "containers", "command", "args", "env", "volumeMounts",
                                          "volumes", "name", "value", "mountPath", "hostPath", "path", "image",
                                          "rules", "level", "plugins", "configuration", "defaults", "enforce"]),
                         inner, max_size=5), max_leaves=20)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(doc=_json, kubelet=_json)
def test_structurally_hostile_yaml(tmp_path_factory, doc, kubelet):
    """Well-formed YAML of the wrong shape anywhere a manifest or config is read."""
    root = tmp_path_factory.mktemp("shape")
    manifests = root / "etc/kubernetes/manifests"
    manifests.mkdir(parents=True)
    pod = {"kind": "Pod", "spec": {"containers": [{"command": ["kube-apiserver", "--audit-policy-file=/p.yaml",
                                                               "--admission-control-config-file=/a.yaml",
                                                               "--encryption-provider-config=/e.yaml"]}]}}
    if isinstance(doc, dict):
        pod["spec"]["containers"][0].update(doc)
    (manifests / "kube-apiserver.yaml").write_text(json.dumps(pod))
    (manifests / "etcd.yaml").write_text(json.dumps(doc))
    for name in ("p.yaml", "a.yaml", "e.yaml"):
        (root / name).write_text(json.dumps(doc))
    (root / "etc/systemd/system").mkdir(parents=True)
    (root / "etc/systemd/system/kubelet.service").write_text("[Service]\nExecStart=/usr/bin/kubelet --config=/k.yaml\n")
    (root / "k.yaml").write_text(json.dumps({"kind": "KubeletConfiguration",
                                             "apiVersion": "kubelet.config.k8s.io/v1beta1", "authentication": kubelet}))
    report = scan(root)
    assert len(report.findings) >= 162


def test_symlinks_resolve_inside_the_scanned_root(worker, tmp_path):
    """An absolute link in a mounted image points into the image, never at the scanning host."""
    config = worker / "etc/kubernetes/kubelet/config.yaml"
    real = worker / "usr/share/k8s/kubelet.yaml"
    real.parent.mkdir(parents=True)
    config.rename(real)
    config.symlink_to("/usr/share/k8s/kubelet.yaml")  # absolute, as an image would have it
    report = scan(worker)
    assert failing(report) == {}
    assert by_id(report, "cis-4.2.4").evidence[0].source == "/etc/kubernetes/kubelet/config.yaml"
    # a link to a file that exists on the host but not in the image is not the host's file
    host_file = tmp_path / "host-kubelet.yaml"
    host_file.write_text("apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\nreadOnlyPort: 10255\n")
    config.unlink()
    config.symlink_to(host_file)
    f = by_id(scan(worker), "cis-4.2.4")
    assert f.status is Status.ERROR and "cannot read" in f.detail


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(passwd=st.text(max_size=200), sysusers=st.text(max_size=200), tmpfiles=st.text(max_size=200))
def test_hostile_account_and_tmpfiles_tables(tmp_path_factory, passwd, sysusers, tmpfiles):
    root = tmp_path_factory.mktemp("tables")
    for rel, text in (("etc/passwd", passwd), ("etc/group", passwd), ("usr/lib/sysusers.d/x.conf", sysusers),
                      ("usr/lib/tmpfiles.d/x.conf", tmpfiles + "\nd /var/lib/etcd 0700 etcd etcd -\n")):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    (root / "etc/kubernetes/manifests").mkdir(parents=True)
    (root / "etc/kubernetes/manifests/etcd.yaml").write_text(
        "kind: Pod\nspec:\n  containers:\n  - command: [etcd, --data-dir=/var/lib/etcd]\n")
    node = NodeView(root)
    assert node.file_info("/etc/passwd").exists
    report = scan(root)
    assert by_id(report, "cis-1.1.11").status in (Status.PASS, Status.FAIL)
