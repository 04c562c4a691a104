"""A control-plane node laid out the way kubeadm 1.31 leaves it (not obelisk's rendering).

The files below follow kubeadm's defaults: its static pod flags, its kubelet unit with the
10-kubeadm.conf drop-in and kubeadm-flags.env, /var/lib/kubelet/config.yaml as kubeadm writes it
(zero durations such as `streamingConnectionIdleTimeout: 0s`, which the kubelet reads as "default"),
0600 kubeconfigs and manifests, a root-owned etcd data directory. The expected failures are the
known gaps of a default kubeadm cluster against CIS 1.12 and the STIG.
"""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from obelisk.cis_checks.scan import scan
from obelisk.core.findings import Status

from .conftest import by_id, failing

APISERVER_FLAGS = """\
--advertise-address=10.0.0.10 --allow-privileged=true --authorization-mode=Node,RBAC
--client-ca-file=/etc/kubernetes/pki/ca.crt --enable-admission-plugins=NodeRestriction
--enable-bootstrap-token-auth=true --etcd-cafile=/etc/kubernetes/pki/etcd/ca.crt
--etcd-certfile=/etc/kubernetes/pki/apiserver-etcd-client.crt
--etcd-keyfile=/etc/kubernetes/pki/apiserver-etcd-client.key
--etcd-servers=https://127.0.0.1:2379 --kubelet-client-certificate=/etc/kubernetes/pki/apiserver-kubelet-client.crt
--kubelet-client-key=/etc/kubernetes/pki/apiserver-kubelet-client.key
--kubelet-preferred-address-types=InternalIP,ExternalIP,Hostname
--proxy-client-cert-file=/etc/kubernetes/pki/front-proxy-client.crt
--proxy-client-key-file=/etc/kubernetes/pki/front-proxy-client.key --requestheader-allowed-names=front-proxy-client
--requestheader-client-ca-file=/etc/kubernetes/pki/front-proxy-ca.crt
--requestheader-extra-headers-prefix=X-Remote-Extra-
--requestheader-group-headers=X-Remote-Group --requestheader-username-headers=X-Remote-User --secure-port=6443
--service-account-issuer=https://kubernetes.default.svc.cluster.local
--service-account-key-file=/etc/kubernetes/pki/sa.pub --service-account-signing-key-file=/etc/kubernetes/pki/sa.key
--service-cluster-ip-range=10.96.0.0/12 --tls-cert-file=/etc/kubernetes/pki/apiserver.crt
--tls-private-key-file=/etc/kubernetes/pki/apiserver.key"""
CONTROLLER_MANAGER_FLAGS = """\
--allocate-node-cidrs=true --authentication-kubeconfig=/etc/kubernetes/controller-manager.conf
--authorization-kubeconfig=/etc/kubernetes/controller-manager.conf --bind-address=127.0.0.1
--client-ca-file=/etc/kubernetes/pki/ca.crt --cluster-cidr=10.244.0.0/16 --cluster-name=kubernetes
--cluster-signing-cert-file=/etc/kubernetes/pki/ca.crt --cluster-signing-key-file=/etc/kubernetes/pki/ca.key
--controllers=*,bootstrapsigner,tokencleaner --kubeconfig=/etc/kubernetes/controller-manager.conf --leader-elect=true
--requestheader-client-ca-file=/etc/kubernetes/pki/front-proxy-ca.crt --root-ca-file=/etc/kubernetes/pki/ca.crt
--service-account-private-key-file=/etc/kubernetes/pki/sa.key --service-cluster-ip-range=10.96.0.0/12
--use-service-account-credentials=true"""
SCHEDULER_FLAGS = """\
--authentication-kubeconfig=/etc/kubernetes/scheduler.conf --authorization-kubeconfig=/etc/kubernetes/scheduler.conf
--bind-address=127.0.0.1 --kubeconfig=/etc/kubernetes/scheduler.conf --leader-elect=true"""
ETCD_FLAGS = """\
--advertise-client-urls=https://10.0.0.10:2379 --cert-file=/etc/kubernetes/pki/etcd/server.crt --client-cert-auth=true
--data-dir=/var/lib/etcd --experimental-initial-corrupt-check=true --initial-advertise-peer-urls=https://10.0.0.10:2380
--initial-cluster=cp1=https://10.0.0.10:2380 --key-file=/etc/kubernetes/pki/etcd/server.key
--listen-client-urls=https://127.0.0.1:2379,https://10.0.0.10:2379 --listen-metrics-urls=http://127.0.0.1:2381
--listen-peer-urls=https://10.0.0.10:2380 --name=cp1 --peer-cert-file=/etc/kubernetes/pki/etcd/peer.crt
--peer-client-cert-auth=true --peer-key-file=/etc/kubernetes/pki/etcd/peer.key
--peer-trusted-ca-file=/etc/kubernetes/pki/etcd/ca.crt --snapshot-count=10000
--trusted-ca-file=/etc/kubernetes/pki/etcd/ca.crt"""
IMAGES = {"kube-apiserver": "registry.k8s.io/kube-apiserver:v1.31.2",
          "kube-controller-manager": "registry.k8s.io/kube-controller-manager:v1.31.2",
          "kube-scheduler": "registry.k8s.io/kube-scheduler:v1.31.2", "etcd": "registry.k8s.io/etcd:3.5.15-0"}
KUBELET_CONFIG = """\
apiVersion: kubelet.config.k8s.io/v1beta1
authentication:
  anonymous:
    enabled: false
  webhook:
    cacheTTL: 0s
    enabled: true
  x509:
    clientCAFile: /etc/kubernetes/pki/ca.crt
authorization:
  mode: Webhook
  webhook:
    cacheAuthorizedTTL: 0s
    cacheUnauthorizedTTL: 0s
cgroupDriver: systemd
clusterDNS:
- 10.96.0.10
clusterDomain: cluster.local
containerRuntimeEndpoint: ""
healthzBindAddress: 127.0.0.1
healthzPort: 10248
kind: KubeletConfiguration
rotateCertificates: true
runtimeRequestTimeout: 0s
staticPodPath: /etc/kubernetes/manifests
streamingConnectionIdleTimeout: 0s
syncFrequency: 0s
volumeStatsAggPeriod: 0s
"""
KUBEADM_DROPIN = """\
# Note: This dropin only works with kubeadm and kubelet v1.11+
[Service]
Environment="KUBELET_KUBECONFIG_ARGS=--bootstrap-kubeconfig=/etc/kubernetes/bootstrap-kubelet.conf \
--kubeconfig=/etc/kubernetes/kubelet.conf"
Environment="KUBELET_CONFIG_ARGS=--config=/var/lib/kubelet/config.yaml"
EnvironmentFile=-/var/lib/kubelet/kubeadm-flags.env
EnvironmentFile=-/etc/default/kubelet
ExecStart=
ExecStart=/usr/bin/kubelet $KUBELET_KUBECONFIG_ARGS $KUBELET_CONFIG_ARGS $KUBELET_KUBEADM_ARGS $KUBELET_EXTRA_ARGS
"""


def _write(root: Path, rel: str, text: str | bytes, mode: int) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    os.chmod(path, mode)


def _cert(root: Path, rel: str, cn: str, key) -> None:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=365)).sign(key, hashes.SHA256()))
    _write(root, rel, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    _write(root, rel.replace(".crt", ".key"), key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()), 0o600)


def _pod(name: str, flags: str) -> str:
    args = "\n".join(f"    - {a}" for a in flags.split())
    return (f"apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: kube-system\nspec:\n"
            f"  hostNetwork: true\n  containers:\n  - name: {name}\n    image: {IMAGES[name]}\n"
            f"    command:\n    - {name}\n{args}\n")


@pytest.fixture(scope="module")
def kubeadm_node(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("kubeadm")
    for name, flags in (("kube-apiserver", APISERVER_FLAGS), ("kube-controller-manager", CONTROLLER_MANAGER_FLAGS),
                        ("kube-scheduler", SCHEDULER_FLAGS), ("etcd", ETCD_FLAGS)):
        _write(root, f"etc/kubernetes/manifests/{name}.yaml", _pod(name, flags), 0o600)
    for conf in ("admin.conf", "super-admin.conf", "scheduler.conf", "controller-manager.conf", "kubelet.conf"):
        _write(root, f"etc/kubernetes/{conf}", "apiVersion: v1\nkind: Config\n", 0o600)
    rsa_key = rsa.generate_private_key(65537, 2048)
    _cert(root, "etc/kubernetes/pki/ca.crt", "kubernetes", rsa_key)
    _cert(root, "etc/kubernetes/pki/apiserver.crt", "kube-apiserver", rsa_key)
    _cert(root, "etc/kubernetes/pki/apiserver-kubelet-client.crt", "kube-apiserver-kubelet-client", rsa_key)
    _cert(root, "etc/kubernetes/pki/etcd/ca.crt", "etcd-ca", ec.generate_private_key(ec.SECP256R1()))
    _write(root, "usr/lib/systemd/system/kubelet.service",
           "[Unit]\nDescription=kubelet\n[Service]\nExecStart=/usr/bin/kubelet\nRestart=always\n", 0o644)
    _write(root, "usr/lib/systemd/system/kubelet.service.d/10-kubeadm.conf", KUBEADM_DROPIN, 0o644)
    _write(root, "var/lib/kubelet/kubeadm-flags.env",
           'KUBELET_KUBEADM_ARGS="--container-runtime-endpoint=unix:///var/run/containerd/containerd.sock '
           '--pod-infra-container-image=registry.k8s.io/pause:3.10"\n', 0o644)
    _write(root, "var/lib/kubelet/config.yaml", KUBELET_CONFIG, 0o644)
    _write(root, "var/lib/etcd/member/snap/db", b"\0" * 16, 0o600)
    os.chmod(root / "var/lib/etcd", 0o700)
    _write(root, "etc/cni/net.d/10-flannel.conflist", '{"name": "cbr0", "plugins": []}\n', 0o644)
    wants = root / "etc/systemd/system/multi-user.target.wants"
    wants.mkdir(parents=True)
    (wants / "ssh.service").symlink_to("/lib/systemd/system/ssh.service")
    return root


EXPECTED_FAILURES = {
    # control-plane files: only the CNI config (0644) and the root-owned etcd data directory
    "cis-1.1.9": "mode 644", "cis-1.1.12": "owner root:root",
    # API server: kubeadm leaves these at their defaults
    "cis-1.2.1": "not set (default true)", "cis-1.2.3": "NodeRestriction", "cis-1.2.5": "not set",
    "cis-1.2.9": "NodeRestriction", "cis-1.2.11": "NodeRestriction", "cis-1.2.15": "not set (default true)",
    "cis-1.2.16": "not set",
    "cis-1.2.17": "not set", "cis-1.2.18": "not set", "cis-1.2.19": "not set", "cis-1.2.20": "not set",
    "cis-1.2.27": "not set", "cis-1.2.28": "--encryption-provider-config not set", "cis-1.2.29": "not set",
    "cis-1.2.30": "not set (default true)", "cis-3.2.1": "--audit-policy-file not set",
    "stig-V-242403": "--audit-policy-file not set", "stig-V-242378": "not set", "stig-V-242436": "NodeRestriction",
    "stig-V-254800": "--admission-control-config-file not set",
    # controller manager and scheduler
    "cis-1.3.1": "not set", "cis-1.3.2": "not set (default true)", "stig-V-242376": "not set",
    "cis-1.4.1": "not set (default true)", "stig-V-242377": "not set",
    # etcd: the STIG wants auto-TLS explicitly off
    "cis-2.3": "not set", "cis-2.6": "not set",
    # kubelet: package files are 0644, kubeadm's config leaves these unset
    "cis-4.1.1": "/usr/lib/systemd/system/kubelet.service mode 644; "
                 "/usr/lib/systemd/system/kubelet.service.d/10-kubeadm.conf mode 644",
    "cis-4.1.9": "mode 644", "cis-4.2.9": "not set; not set", "cis-4.2.12": "not set",
    "cis-4.2.13": "-1 (default)", "cis-4.2.14": "false (default)", "stig-V-242434": "false (default)",
    # the node itself
    "stig-V-242394": "enabled: /etc/systemd/system/multi-user.target.wants/ssh.service",
}


def test_kubeadm_control_plane_fails_exactly_its_known_gaps(kubeadm_node):
    report = scan(kubeadm_node)
    assert failing(report) == EXPECTED_FAILURES


def test_kubeadm_zero_duration_means_default_not_zero(kubeadm_node):
    """kube-bench flags `streamingConnectionIdleTimeout: 0s` as disabled; the kubelet runs with 4h."""
    f = by_id(scan(kubeadm_node), "cis-4.2.5")
    assert f.status is Status.PASS and f.observed == "4h0m0s"
    assert "0s in /var/lib/kubelet/config.yaml means the kubelet's default" in f.detail


def test_kubeadm_node_details(kubeadm_node):
    report = scan(kubeadm_node)
    assert dict(report.subject.attributes)["roles"] == "control-plane,etcd,worker"
    assert dict(report.subject.attributes)["kubernetes"] == "1.31"
    assert by_id(report, "stig-V-242397").status is Status.PASS  # static pods: control plane only
    assert by_id(report, "stig-V-242437").status is Status.SKIP  # PodSecurityPolicy: gone in 1.25
    assert by_id(report, "cis-1.2.24").status is Status.PASS
    assert "RSA 2048 bits" in by_id(report, "cis-1.2.24").observed
    kubelet = by_id(report, "cis-4.2.1")
    assert kubelet.status is Status.PASS and kubelet.evidence[0].source == "/var/lib/kubelet/config.yaml"
