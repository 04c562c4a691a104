"""Hardened Kubernetes node configuration rendered from Jinja2 templates.

`render_tree(out_dir, role, kubernetes_version)` writes the files a node needs under a root tree
with the modes and owners both benchmarks ask for (the stricter where they differ) and returns
the list of files with their modes and owners, for an image builder that packs the tree
(gensquashfs takes uid/gid/mode per file). Secrets are never rendered: certificates, kubeconfigs
and the encryption-at-rest key are created when the node is provisioned
(`write_encryption_config` / `obelisk k8s encryption-key`).
"""

from __future__ import annotations

import base64
import os
import re
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from obelisk.core import atomic
from obelisk.core.errors import InputError

if TYPE_CHECKING:
    import jinja2

ROLES = ("control-plane", "worker")
# etcd release shipped with each supported Kubernetes minor (kubeadm's choice)
ETCD_FOR_MINOR = {29: "3.5.16-0", 30: "3.5.15-0", 31: "3.5.15-0", 32: "3.5.16-0", 33: "3.5.21-0"}
SUPPORTED_MINORS = tuple(sorted(ETCD_FOR_MINOR))
# AEAD, forward-secret TLS 1.2 suites: inside both CIS lists (1.2.29 API server, 4.2.12 kubelet)
TLS_CIPHER_SUITES = (
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305",
    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
    "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305",
)
PATHS = {
    "manifests": "/etc/kubernetes/manifests",
    "audit_policy": "/etc/kubernetes/audit-policy.yaml",
    "admission_config": "/etc/kubernetes/admission-config.yaml",
    "audit_log_dir": "/var/log/kubernetes/audit",
    "encryption_dir": "/var/lib/kubernetes/encryption",
    "encryption_config": "/var/lib/kubernetes/encryption/config.yaml",
    "etcd_data": "/var/lib/etcd",
    "kubelet_config": "/etc/kubernetes/kubelet/config.yaml",
    "kubelet_config_dir": "/etc/kubernetes/kubelet/config.d",
    "kubelet_unit": "/etc/systemd/system/kubelet.service",
    "containerd_config": "/etc/containerd/config.toml",
}
PKI = "/etc/kubernetes/pki"
CONTAINERD_CONFIG_MODE = 0o600  # obelisk-runtime.6
DEFAULT_RUNTIME_ENDPOINT = "unix:///run/containerd/containerd.sock"


@dataclass(frozen=True)
class RenderedFile:
    path: str  # node path ("/etc/kubernetes/manifests/etcd.yaml")
    mode: int
    uid: int
    gid: int
    kind: str = "file"  # "file" | "dir"
    why: str = ""  # which recommendations set the mode/owner

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "mode": f"{self.mode:04o}", "uid": self.uid, "gid": self.gid,
                "kind": self.kind, "why": self.why}


@dataclass(frozen=True)
class RenderedTree:
    root: Path
    role: str
    kubernetes_version: str
    files: tuple[RenderedFile, ...] = field(default=())

    def to_json(self) -> dict[str, Any]:
        return {"root": str(self.root), "role": self.role, "kubernetes_version": self.kubernetes_version,
                "files": [f.to_json() for f in self.files]}


def parse_version(text: str) -> tuple[int, int, int]:
    m = re.fullmatch(r"v?(\d+)\.(\d+)(?:\.(\d+))?", str(text).strip())
    if not m:
        raise InputError(f"--kubernetes-version: {text!r} is not a version like 1.31 or 1.31.4")
    major, minor, patch = int(m.group(1)), int(m.group(2)), int(m.group(3) or 0)
    if major != 1 or minor not in ETCD_FOR_MINOR:
        supported = ", ".join(f"1.{m}" for m in SUPPORTED_MINORS)
        raise InputError(f"--kubernetes-version: {text} is not supported (supported: {supported})")
    return major, minor, patch


def _environment() -> jinja2.Environment:
    import jinja2

    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(Path(__file__).with_name("templates"))),
        undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True,
        autoescape=False)


def render_context(role: str, kubernetes_version: str, *, registry: str = "registry.k8s.io",
                   etcd_uid: int = 990, pod_security_level: str = "restricted",
                   service_cidr: str = "10.96.0.0/12", cluster_dns: str = "10.96.0.10",
                   cluster_domain: str = "cluster.local",
                   container_runtime_endpoint: str = DEFAULT_RUNTIME_ENDPOINT,
                   cgroup_driver: str = "systemd") -> dict[str, Any]:
    if role not in ROLES:
        raise InputError(f"--role: {role!r} is not one of {', '.join(ROLES)}")
    _check_cgroup_driver(cgroup_driver)
    if pod_security_level not in ("restricted", "baseline"):
        raise InputError("pod security level must be restricted or baseline (STIG V-254800)")
    major, minor, patch = parse_version(kubernetes_version)
    version = f"{major}.{minor}.{patch}"
    images = {name: f"{registry}/{name}:v{version}"
              for name in ("kube-apiserver", "kube-controller-manager", "kube-scheduler")}
    images["etcd"] = f"{registry}/etcd:{ETCD_FOR_MINOR[minor]}"
    return {
        "role": role, "kubernetes_version": version, "images": images, "pki": PKI, "paths": PATHS,
        "tls_min_version": "VersionTLS12", "tls_cipher_suites": TLS_CIPHER_SUITES, "etcd_uid": etcd_uid,
        "pod_security_level": pod_security_level, "pod_security_exempt_namespaces": ["kube-system"],
        "service_cidr": service_cidr, "cluster_dns": cluster_dns, "cluster_domain": cluster_domain,
        "service_account_issuer": f"https://kubernetes.default.svc.{cluster_domain}",
        "container_runtime_endpoint": container_runtime_endpoint, "cgroup_driver": cgroup_driver,
        # --config-dir is beta (on by default) from 1.30; on 1.29 it needs an alpha switch, so it is left out
        "kubelet_config_dir": minor >= 30,
    }


# (template, node path, mode, owner, why) per role; owner "etcd" means the etcd system user
_FILES = [
    ("kubelet.service.j2", PATHS["kubelet_unit"], 0o600, "root", "CIS 4.1.1/4.1.2; STIG V-242454/V-242455"),
    ("kubelet-config.yaml.j2", PATHS["kubelet_config"], 0o600, "root",
     "CIS 4.1.9/4.1.10; STIG V-242406/V-242407/V-242456/V-242457 (600 is the stricter of 600 and 644)"),
    ("sysctl-kubelet.conf.j2", "/usr/lib/sysctl.d/90-obelisk-kubelet.conf", 0o644, "root", "STIG V-242434"),
    ("tmpfiles-kubernetes.conf.j2", "/usr/lib/tmpfiles.d/obelisk-kubernetes.conf", 0o644, "root",
     "state directories on an empty /var: CIS 1.1.11/1.1.12, STIG V-242445"),
    ("containerd-config.toml.j2", PATHS["containerd_config"], CONTAINERD_CONFIG_MODE, "root",
     "obelisk-runtime.6-.13"),
]
_CONTROL_PLANE_FILES = [
    ("kube-apiserver.yaml.j2", f"{PATHS['manifests']}/kube-apiserver.yaml", 0o600, "root",
     "CIS 1.1.1/1.1.2; STIG V-242405/V-242408/V-242444/V-242458 (600 is the stricter of 600 and 644)"),
    ("kube-controller-manager.yaml.j2", f"{PATHS['manifests']}/kube-controller-manager.yaml", 0o600, "root",
     "CIS 1.1.3/1.1.4; STIG V-242405/V-242408/V-242444/V-242458"),
    ("kube-scheduler.yaml.j2", f"{PATHS['manifests']}/kube-scheduler.yaml", 0o600, "root",
     "CIS 1.1.5/1.1.6; STIG V-242405/V-242408/V-242444/V-242458"),
    ("etcd.yaml.j2", f"{PATHS['manifests']}/etcd.yaml", 0o600, "root",
     "CIS 1.1.7/1.1.8; STIG V-242405/V-242408/V-242444/V-242458"),
    ("audit-policy.yaml.j2", PATHS["audit_policy"], 0o600, "root", "CIS 3.2.1/3.2.2; STIG V-242401/V-242403/V-242461"),
    ("admission-config.yaml.j2", PATHS["admission_config"], 0o600, "root", "CIS 1.2.9; STIG V-254800"),
    ("sysusers-etcd.conf.j2", "/usr/lib/sysusers.d/obelisk-etcd.conf", 0o644, "root", "CIS 1.1.12; STIG V-242445"),
]
_DIRS = [
    ("/etc/kubernetes", 0o755, "root", ""),
    ("/etc/containerd", 0o755, "root", ""),
    ("/etc/kubernetes/kubelet", 0o700, "root", ""),
    (PATHS["kubelet_config_dir"], 0o700, "root", "kubelet drop-ins (CIS 4.1.9)"),
    (PKI, 0o700, "root", "CIS 1.1.19; STIG V-242451 (filled at provisioning)"),
]
_CONTROL_PLANE_DIRS = [
    (PATHS["manifests"], 0o700, "root", "static pods: control-plane components only (STIG V-242397)"),
    (f"{PKI}/etcd", 0o700, "root", "CIS 1.1.19"),
    (PATHS["etcd_data"], 0o700, "etcd", "CIS 1.1.11/1.1.12; STIG V-242445"),
    (PATHS["audit_log_dir"], 0o700, "root", "CIS 1.2.16"),
    (PATHS["encryption_dir"], 0o700, "root", "CIS 1.2.27 (key written at provisioning)"),
]


@dataclass(frozen=True)
class FileContent:
    """One rendered regular file in memory (duck-compatible with image.rootfs.ExtraFile: path, data, mode)."""

    path: str  # relative to the root, no leading slash ("etc/kubernetes/manifests/etcd.yaml")
    data: bytes
    mode: int
    uid: int = 0
    gid: int = 0
    why: str = ""


def render_files(role: str = "control-plane", kubernetes_version: str = "1.31",
                 **options: Any) -> tuple[FileContent, ...]:
    """The node's Kubernetes files, rendered in memory (no I/O). Directories: `render_directories`."""
    ctx = render_context(role, kubernetes_version, **options)
    env = _environment()
    uids = {"root": 0, "etcd": ctx["etcd_uid"]}
    out = []
    for template, path, mode, owner, why in _FILES + (_CONTROL_PLANE_FILES if role == "control-plane" else []):
        data = env.get_template(template).render(c=ctx).encode("utf-8")
        out.append(FileContent(path.lstrip("/"), data, mode, uids[owner], uids[owner], why))
    return tuple(sorted(out, key=lambda f: f.path))


def _check_cgroup_driver(cgroup_driver: str) -> None:
    if cgroup_driver not in ("systemd", "cgroupfs"):
        raise InputError(f"cgroup driver must be systemd or cgroupfs, not {cgroup_driver!r}")


def render_containerd_config(cgroup_driver: str = "cgroupfs", role: str = "container runtime only") -> bytes:
    """containerd's configuration alone (a node that runs containers without a Kubernetes role); the
    same template `render_files` renders beside the kubelet's configuration (mode CONTAINERD_CONFIG_MODE)."""
    _check_cgroup_driver(cgroup_driver)
    ctx = {"role": role, "cgroup_driver": cgroup_driver, "container_runtime_endpoint": DEFAULT_RUNTIME_ENDPOINT}
    return _environment().get_template("containerd-config.toml.j2").render(c=ctx).encode("utf-8")


def render_directories(role: str = "control-plane", etcd_uid: int = 990) -> tuple[RenderedFile, ...]:
    """Directories the configuration needs, with their modes and owners (node paths)."""
    if role not in ROLES:
        raise InputError(f"--role: {role!r} is not one of {', '.join(ROLES)}")
    uids = {"root": 0, "etcd": etcd_uid}
    dirs = _DIRS + (_CONTROL_PLANE_DIRS if role == "control-plane" else [])
    return tuple(RenderedFile(path, mode, uids[owner], uids[owner], "dir", why) for path, mode, owner, why in dirs)


def required_modes(role: str = "control-plane", etcd_uid: int = 990) -> tuple[tuple[str, int, int, int], ...]:
    """(path relative to the root, mode, uid, gid) of every rendered file and directory.

    For image builders that normalise modes: apply these after normalising, or the image fails the
    CIS/STIG file checks (manifests 0600, not 0644).
    """
    entries = [(d.path.lstrip("/"), d.mode, d.uid, d.gid) for d in render_directories(role, etcd_uid)]
    for _template, path, mode, owner, _why in _FILES + (_CONTROL_PLANE_FILES if role == "control-plane" else []):
        uid = etcd_uid if owner == "etcd" else 0
        entries.append((path.lstrip("/"), mode, uid, uid))
    return tuple(sorted(entries))


def render_tree(out_dir: str | Path, role: str = "control-plane", kubernetes_version: str = "1.31",
                **options: Any) -> RenderedTree:
    """Write the node's Kubernetes configuration under `out_dir` (created if needed).

    Files are written atomically with their final mode; ownership is applied when running as root
    (otherwise the returned list carries it for the image builder). Rendering is deterministic.
    """
    contents = render_files(role, kubernetes_version, **options)  # validates everything before writing
    version = render_context(role, kubernetes_version, **options)["kubernetes_version"]
    root = Path(out_dir)
    if not root.exists():
        # a new tree appears only when complete; into an existing root (a rootfs being staged) each file
        # is still written atomically
        with atomic.atomic_directory(root) as tmp:
            os.chmod(tmp, 0o755)
            files = _write_tree(tmp, role, contents, options.get("etcd_uid", 990))
    else:
        files = _write_tree(root, role, contents, options.get("etcd_uid", 990))
    return RenderedTree(root=root, role=role, kubernetes_version=version,
                        files=tuple(sorted(files, key=lambda f: f.path)))


def _write_tree(root: Path, role: str, contents: tuple[FileContent, ...], etcd_uid: int) -> list[RenderedFile]:
    files: list[RenderedFile] = []
    for d in render_directories(role, etcd_uid):
        target = root / d.path.lstrip("/")
        target.mkdir(parents=True, exist_ok=True)
        os.chmod(target, d.mode)
        _chown(target, d.uid)
        files.append(d)
    for f in contents:
        target = root / f.path
        atomic.write_bytes(target, f.data, mode=f.mode)
        _chown(target, f.uid)
        files.append(RenderedFile("/" + f.path, f.mode, f.uid, f.gid, "file", f.why))
    return files


def _chown(path: Path, uid: int) -> None:
    if os.geteuid() == 0:
        os.chown(path, uid, uid)


def write_encryption_config(path: str | Path, key_name: str = "key1", *, replace: bool = False) -> Path:
    """Write an EncryptionConfiguration with a fresh 32-byte secretbox key, mode 0600.

    Run on the node when it is provisioned (the key must never be part of an image); the file
    goes to the encrypted, TPM-bound state partition (/var/lib/kubernetes/encryption/).
    """
    if not re.fullmatch(r"[A-Za-z0-9._-]{1,64}", key_name):
        raise InputError(f"key name {key_name!r}: letters, digits, '.', '_' and '-' only")
    target = Path(path)
    if target.exists() and not replace:
        raise InputError("already exists; replacing the key would make every secret encrypted with it "
                         "unreadable (rotate by adding a new key first; --replace to overwrite anyway)",
                         source=str(target))
    key = base64.b64encode(secrets.token_bytes(32)).decode("ascii")
    text = _environment().get_template("encryption-config.yaml.j2").render(key_name=key_name, key_b64=key)
    target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    atomic.write_text(target, text, mode=0o600)
    return target
