"""Rendered trees pass every automated check that applies; each broken recommendation fails exactly."""

from __future__ import annotations

import datetime as dt
import os
import stat
from pathlib import Path

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from obelisk.cis_checks.render import render_tree, write_encryption_config
from obelisk.cis_checks.scan import scan
from obelisk.core.errors import InputError
from obelisk.core.findings import Status

from .conftest import (
    APISERVER,
    CONTROLLER_MANAGER,
    ETCD,
    KUBELET_CONFIG,
    KUBELET_DROPINS,
    KUBELET_UNIT,
    SCHEDULER,
    by_id,
    edit,
    failing,
)


@pytest.mark.parametrize("role", ["control-plane", "worker"])
@pytest.mark.parametrize("version", ["1.29", "1.31", "1.33.1"])
def test_rendered_tree_has_zero_automated_failures(tmp_path, role, version):
    tree = render_tree(tmp_path, role, version)
    report = scan(tmp_path)
    assert failing(report) == {}
    counts = report.counts()
    assert counts[Status.PASS] >= (90 if role == "control-plane" else 20)
    assert len(report.findings) == 175
    for f in tree.files:
        st = (tmp_path / f.path.lstrip("/")).stat()
        assert stat.S_IMODE(st.st_mode) == f.mode, f.path
        assert (st.st_uid, st.st_gid) == (f.uid, f.gid), f.path


def test_rendered_files_parse_and_are_deterministic(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    render_tree(a, "control-plane", "1.31")
    render_tree(b, "control-plane", "1.31")
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert files and all((a / f).read_bytes() == (b / f).read_bytes() for f in files)
    for f in files:
        if f.suffix == ".yaml":
            doc = yaml.safe_load((a / f).read_text())
            assert isinstance(doc, dict) and "kind" in doc, f
    pod = yaml.safe_load((a / APISERVER).read_text())
    assert pod["spec"]["containers"][0]["image"] == "registry.k8s.io/kube-apiserver:v1.31.0"
    assert not any("secret" in str(p).lower() or p.suffix == ".key" for p in files)  # no key material baked in
    for name in ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "etcd"):
        sc = yaml.safe_load((a / f"etc/kubernetes/manifests/{name}.yaml").read_text())["spec"]["containers"][0][
            "securityContext"]
        assert sc["capabilities"]["drop"] == ["ALL"] and sc["allowPrivilegeEscalation"] is False
        # root in the etcd container needs DAC_OVERRIDE for its etcd-owned 0700 data directory, nothing else
        assert sc["capabilities"].get("add", []) == (["DAC_OVERRIDE"] if name == "etcd" else [])


def test_kubelet_drop_in_directory_only_where_supported(tmp_path):
    from obelisk.cis_checks.render import render_files

    for version, expected in (("1.29", False), ("1.30", True)):
        unit = next(f for f in render_files("worker", version) if f.path.endswith("kubelet.service"))
        assert (b"--config-dir=" in unit.data) is expected


def test_bad_render_input():
    with pytest.raises(InputError, match="kubernetes-version"):
        render_tree("/tmp/never", "worker", "1.12")
    with pytest.raises(InputError, match="role"):
        render_tree("/tmp/never", "master", "1.31")


# ---------------------------------------------------------------- fixture trees that break one thing

def test_apiserver_anonymous_auth_on(control_plane):
    edit(control_plane, APISERVER, r"--anonymous-auth=false", "--anonymous-auth=true")
    report = scan(control_plane)
    assert failing(report) == {"cis-1.2.1": "true"}
    f = by_id(report, "cis-1.2.1")
    assert f.expected == "false" and f.refs("stig") == ["V-242390"]
    assert f.evidence[0].source == "/etc/kubernetes/manifests/kube-apiserver.yaml"
    assert f.evidence[0].detail == "--anonymous-auth=true"


def test_kubelet_read_only_port_open(worker):
    edit(worker, KUBELET_CONFIG, r"^readOnlyPort: 0$", "readOnlyPort: 10255")
    report = scan(worker)
    assert failing(report) == {"cis-4.2.4": "10255"}
    f = by_id(report, "cis-4.2.4")
    assert f.refs("stig") == ["V-242387"] and f.evidence[0].source == "/etc/kubernetes/kubelet/config.yaml"


def test_profiling_on(control_plane):
    edit(control_plane, CONTROLLER_MANAGER, r"--profiling=false", "--profiling=true")
    edit(control_plane, SCHEDULER, r"^    - --profiling=false\n", "")
    report = scan(control_plane)
    assert failing(report) == {"cis-1.3.2": "true", "cis-1.4.1": "not set (default true)"}


def test_audit_log_missing(control_plane):
    edit(control_plane, APISERVER, r"^    - --audit-log-path=.*\n", "")
    report = scan(control_plane)
    assert failing(report) == {"cis-1.2.16": "not set"}
    assert set(by_id(report, "cis-1.2.16").refs("stig")) == {"V-242402", "V-242465"}


def test_manifest_mode_0644(control_plane):
    os.chmod(control_plane / APISERVER, 0o644)
    report = scan(control_plane)
    assert failing(report) == {"cis-1.1.1": "mode 644"}
    f = by_id(report, "cis-1.1.1")
    assert f.expected == "mode 600 or stricter"
    assert f.evidence[0].detail == "mode 0644 owner root:root"


def test_kubelet_flag_overrides_safe_config_file_value(worker):
    edit(worker, KUBELET_UNIT, r"--config-dir=", "--read-only-port=10255 --config-dir=")
    report = scan(worker)
    assert failing(report) == {"cis-4.2.4": "10255"}
    f = by_id(report, "cis-4.2.4")
    assert f.evidence[0].kind == "config" and f.evidence[0].source.startswith("flag --read-only-port=10255")
    assert "/etc/systemd/system/kubelet.service" in f.evidence[0].source
    assert f.evidence[1].source == "/etc/kubernetes/kubelet/config.yaml"  # the safe value it overrides
    assert "readOnlyPort: 0" in f.detail


def test_dropin_overrides_main_file(worker):
    dropin = worker / KUBELET_DROPINS / "50-debug.conf"
    dropin.write_text("apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\n"
                      "authentication:\n  anonymous:\n    enabled: true\n")
    dropin.chmod(0o600)
    later = worker / KUBELET_DROPINS / "90-fix.conf"  # later drop-ins win, by file name
    later.write_text("apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\nreadOnlyPort: 0\n")
    later.chmod(0o600)
    report = scan(worker)
    assert failing(report) == {"cis-4.2.1": "true"}
    f = by_id(report, "cis-4.2.1")
    assert f.evidence[0].source == "/etc/kubernetes/kubelet/config.d/50-debug.conf"
    assert f.refs("stig") == ["V-242391"]


def test_dropin_order_last_file_wins(worker):
    for name, value in (("10-a.conf", "10255"), ("20-b.conf", "0")):
        p = worker / KUBELET_DROPINS / name
        p.write_text(f"apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\nreadOnlyPort: {value}\n")
        p.chmod(0o600)
    assert failing(scan(worker)) == {}


def test_dropin_with_loose_mode_fails_file_check(worker):
    p = worker / KUBELET_DROPINS / "10-x.conf"
    p.write_text("apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\n")
    p.chmod(0o644)
    assert failing(scan(worker)) == {"cis-4.1.9": "/etc/kubernetes/kubelet/config.d/10-x.conf mode 644"}


def test_static_pods_on_a_worker(worker):
    edit(worker, KUBELET_CONFIG, r"^readOnlyPort: 0$", "readOnlyPort: 0\nstaticPodPath: /etc/kubernetes/manifests")
    assert failing(scan(worker)) == {"stig-V-242397": "staticPodPath=/etc/kubernetes/manifests"}


def test_extra_static_pod_on_control_plane(control_plane):
    extra = control_plane / "etc/kubernetes/manifests/debug.yaml"
    extra.write_text("apiVersion: v1\nkind: Pod\nmetadata: {name: debug}\nspec:\n  containers:\n"
                     "  - name: debug\n    image: busybox\n")
    extra.chmod(0o600)
    report = scan(control_plane)
    assert set(failing(report)) == {"stig-V-242397"}


def test_sshd_enabled(worker):
    wants = worker / "etc/systemd/system/multi-user.target.wants"
    wants.mkdir(parents=True)
    (wants / "ssh.service").symlink_to("/usr/lib/systemd/system/ssh.service")
    assert failing(scan(worker)) == {
        "stig-V-242394": "enabled: /etc/systemd/system/multi-user.target.wants/ssh.service"}


def test_parent_directory_writable_by_others(control_plane):
    os.chmod(control_plane / "etc/kubernetes/manifests", 0o777)
    report = scan(control_plane)
    assert set(failing(report)) == {"cis-1.1.1", "cis-1.1.3", "cis-1.1.5", "cis-1.1.7"}
    assert "(parent) mode 777" in by_id(report, "cis-1.1.1").observed


# ---------------------------------------------------------------- provisioned secrets and certificates

def _cert(path: Path, key) -> None:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kube-apiserver")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(now - dt.timedelta(days=1)).not_valid_after(now + dt.timedelta(days=30))
            .sign(key, hashes.SHA256()))
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    path.chmod(0o644)


def test_provisioned_node_with_certificates_and_encryption_key(control_plane):
    pki = control_plane / "etc/kubernetes/pki"
    _cert(pki / "apiserver.crt", ec.generate_private_key(ec.SECP256R1()))
    _cert(pki / "apiserver-kubelet-client.crt", rsa.generate_private_key(65537, 2048))
    cfg = write_encryption_config(control_plane / "var/lib/kubernetes/encryption/config.yaml")
    assert stat.S_IMODE(cfg.stat().st_mode) == 0o600
    report = scan(control_plane)
    assert failing(report) == {}
    assert by_id(report, "cis-1.2.28").status is Status.PASS
    assert by_id(report, "cis-1.2.28").observed == "secretbox"
    assert by_id(report, "cis-1.1.20").status is Status.PASS
    assert "EC secp256r1 256 bits" in by_id(report, "cis-1.2.24").observed


def test_weak_certificate_key_fails(control_plane):
    pki = control_plane / "etc/kubernetes/pki"
    _cert(pki / "apiserver.crt", rsa.generate_private_key(65537, 1024))
    report = scan(control_plane)
    assert set(failing(report)) == {"cis-1.2.24"}
    assert "RSA 1024 bits" in by_id(report, "cis-1.2.24").observed


def test_identity_first_encryption_provider_fails(control_plane):
    path = write_encryption_config(control_plane / "var/lib/kubernetes/encryption/config.yaml")
    text = path.read_text()
    path.write_text(text.replace("  providers:\n", "  providers:\n  - identity: {}\n", 1))
    assert failing(scan(control_plane)) == {"cis-1.2.28": "identity"}


def test_audit_policy_dropping_events_fails_stig(control_plane):
    edit(control_plane, "etc/kubernetes/audit-policy.yaml", r"^- level: RequestResponse$", "- level: None")
    assert failing(scan(control_plane)) == {"stig-V-242403": "a rule with level None"}


def _kube_proxy_unit(root, extra_flags: str, config: str | None) -> None:
    unit = root / "etc/systemd/system/kube-proxy.service"
    flags = extra_flags
    if config is not None:
        cfg = root / "etc/kubernetes/kube-proxy.yaml"
        cfg.write_text(config)
        cfg.chmod(0o600)
        flags += " --config=/etc/kubernetes/kube-proxy.yaml"
    unit.write_text(f"[Service]\nExecStart=/usr/bin/kube-proxy {flags}\n")
    unit.chmod(0o600)


def test_kube_proxy_metrics_from_its_config_file(worker):
    kubeconfig = worker / "etc/kubernetes/proxy.conf"
    kubeconfig.write_text("apiVersion: v1\nkind: Config\n")
    kubeconfig.chmod(0o644)
    _kube_proxy_unit(worker, "", "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\n"
                                 "metricsBindAddress: 0.0.0.0:10249\n"
                                 "clientConnection:\n  kubeconfig: /etc/kubernetes/proxy.conf\n")
    report = scan(worker)
    assert failing(report) == {"cis-4.3.1": "0.0.0.0:10249", "cis-4.1.3": "mode 644"}
    assert by_id(report, "cis-4.3.1").evidence[0].source == "/etc/kubernetes/kube-proxy.yaml"


def test_kube_proxy_ignores_flags_when_given_a_config_file(worker):
    # kube-proxy's documented behaviour: with --config, its flags are ignored (kubernetes#108737)
    _kube_proxy_unit(worker, "--metrics-bind-address=127.0.0.1:10249",
                     "kind: KubeProxyConfiguration\nmetricsBindAddress: 0.0.0.0:10249\n")
    report = scan(worker)
    assert failing(report) == {"cis-4.3.1": "0.0.0.0:10249"}
    assert "--metrics-bind-address=127.0.0.1:10249 is ignored" in by_id(report, "cis-4.3.1").detail
    _kube_proxy_unit(worker, "--metrics-bind-address=0.0.0.0:10249", "kind: KubeProxyConfiguration\n")
    assert by_id(scan(worker), "cis-4.3.1").observed == "not set (default 127.0.0.1:10249)"


def test_scheduler_profiling_from_its_config_file(control_plane):
    cfg = control_plane / "etc/kubernetes/scheduler-config.yaml"
    cfg.write_text("apiVersion: kubescheduler.config.k8s.io/v1\nkind: KubeSchedulerConfiguration\n"
                   "enableProfiling: true\n")
    edit(control_plane, SCHEDULER, r"--profiling=false",
         "--profiling=false\n    - --config=/etc/kubernetes/scheduler-config.yaml")
    report = scan(control_plane)
    assert failing(report) == {"cis-1.4.1": "true"}
    assert by_id(report, "cis-1.4.1").evidence[0].source == "/etc/kubernetes/scheduler-config.yaml"


def test_etcd_settings_from_environment_variables(control_plane):
    edit(control_plane, ETCD, r"^    - --client-cert-auth=true\n", "")
    edit(control_plane, ETCD, r"^    livenessProbe:",
         "    env:\n    - {name: ETCD_CLIENT_CERT_AUTH, value: \"true\"}\n"
         "    - {name: ETCD_PEER_AUTO_TLS, value: \"true\"}\n    livenessProbe:")
    edit(control_plane, ETCD, r"^    - --peer-auto-tls=false\n", "")
    report = scan(control_plane)
    assert failing(report) == {"cis-2.6": "true"}
    f = by_id(report, "cis-2.2")
    assert f.status is Status.PASS and f.evidence[0].source.endswith("ETCD_CLIENT_CERT_AUTH")


def test_etcd_config_file_replaces_flags(control_plane):
    cfg = control_plane / "etc/kubernetes/etcd.conf.yml"
    cfg.write_text("name: n1\ndata-dir: /var/lib/etcd\nclient-transport-security:\n"
                   "  cert-file: /etc/kubernetes/pki/etcd/server.crt\n"
                   "  key-file: /etc/kubernetes/pki/etcd/server.key\n  client-cert-auth: true\n  auto-tls: false\n"
                   "  trusted-ca-file: /etc/kubernetes/pki/etcd/ca.crt\n"
                   "peer-transport-security:\n  cert-file: /etc/kubernetes/pki/etcd/peer.crt\n"
                   "  key-file: /etc/kubernetes/pki/etcd/peer.key\n  client-cert-auth: false\n  auto-tls: false\n")
    edit(control_plane, ETCD, r"^    - etcd\n", "    - etcd\n    - --config-file=/etc/kubernetes/etcd.conf.yml\n")
    report = scan(control_plane)
    assert failing(report) == {"cis-2.5": "false"}  # the flag --peer-client-cert-auth=true is ignored
    assert by_id(report, "cis-2.5").evidence[0].source == "/etc/kubernetes/etcd.conf.yml"
    cfg.write_text("client-transport-security: [")
    assert by_id(scan(control_plane), "cis-2.2").status is Status.ERROR


def test_etcd_data_dir_owned_by_root(control_plane):
    os.chown(control_plane / "var/lib/etcd", 0, 0)
    report = scan(control_plane)
    assert failing(report) == {"cis-1.1.12": "owner root:root"}
    assert set(by_id(report, "cis-1.1.12").refs("stig")) == {"V-242445"}


def test_in_memory_render_matches_the_tree_for_image_builders(tmp_path):
    from obelisk.cis_checks.render import render_directories, render_files
    from obelisk.cis_checks.scan import scan_root

    tree = render_tree(tmp_path, "control-plane", "1.31")
    files = render_files("control-plane", "1.31")
    for f in files:
        assert not f.path.startswith("/") and (tmp_path / f.path).read_bytes() == f.data
        assert stat.S_IMODE((tmp_path / f.path).stat().st_mode) == f.mode
    dirs = {d.path: d for d in render_directories("control-plane")}
    assert dirs["/var/lib/etcd"].uid == 990 and dirs["/var/lib/etcd"].mode == 0o700
    assert {f.path for f in tree.files} == {"/" + f.path for f in files} | set(dirs)
    assert failing(scan_root(tmp_path)) == {}


def test_required_modes_cover_every_rendered_path(tmp_path):
    from obelisk.cis_checks.render import required_modes

    tree = render_tree(tmp_path, "control-plane", "1.31")
    assert {(f.path.lstrip("/"), f.mode, f.uid, f.gid) for f in tree.files} == set(required_modes("control-plane"))
    # an image builder that normalised everything to 0644/0755 and forgot to re-apply them:
    for path, _mode, _uid, _gid in required_modes("control-plane"):
        os.chmod(tmp_path / path, 0o755 if (tmp_path / path).is_dir() else 0o644)
    broken = failing(scan(tmp_path))
    assert {"cis-1.1.1", "cis-1.1.11", "cis-4.1.1", "cis-4.1.9"} <= set(broken)
    for path, mode, _uid, _gid in required_modes("control-plane"):
        os.chmod(tmp_path / path, mode)
    assert failing(scan(tmp_path)) == {}


def test_owner_names_come_from_the_scanned_roots_passwd(control_plane):
    (control_plane / "usr/lib/sysusers.d/obelisk-etcd.conf").unlink()
    report = scan(control_plane)
    assert failing(report) == {"cis-1.1.12": "owner 990:990"}
    (control_plane / "etc/passwd").write_text("root:x:0:0::/root:/bin/sh\n"
                                              "etcd:x:990:990::/var/lib/etcd:/sbin/nologin\n")
    (control_plane / "etc/group").write_text("root:x:0:\netcd:x:990:\n")
    assert failing(scan(control_plane)) == {}


def test_state_directories_declared_for_an_empty_var(control_plane):
    """An image's /var is an empty volume until first boot: tmpfiles.d declares what will be there."""
    import shutil

    shutil.rmtree(control_plane / "var")
    report = scan(control_plane)
    assert failing(report) == {}
    f = by_id(report, "cis-1.1.11")
    assert f.status is Status.PASS
    assert f.evidence[0].source == "/usr/lib/tmpfiles.d/obelisk-kubernetes.conf"
    edit(control_plane, "usr/lib/tmpfiles.d/obelisk-kubernetes.conf", r"^d /var/lib/etcd 0700 etcd etcd -$",
         "d /var/lib/etcd 0755 root root -")
    assert failing(scan(control_plane)) == {"cis-1.1.11": "mode 755", "cis-1.1.12": "owner root:root"}
