"""The container runtime part of a node's scan: cgroup version, the MAC LSM, seccomp, containerd's configuration.

`runtime_facts(root)` reads what the kernel and the files say (no process is run); `runtime_findings(root,
live)` turns it into `node.runtime.*` findings that `scan()` adds to the CIS/STIG ones. A node without
/etc/containerd/config.toml runs no container runtime and gets none of them. Kernel facts (cgroup, LSM,
seccomp) are read only on a live node (root "/"); on a directory tree they are skipped.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from typing import Any

from obelisk.core.findings import Evidence, Finding, Severity, Status

CONTAINERD_CONFIG = "/etc/containerd/config.toml"
APPARMOR_PROFILE = "cri-containerd.apparmor.d"  # containerd's default profile for containers
RUNTIME_STATE = "/run/obelisk/runtime.json"  # written by the node's runtime runner (image/node_runtime.py)
CGROUP_ROOT = "/sys/fs/cgroup"
BENCHMARK = "obelisk-runtime"
SECTION = "runtime"


def _read(path: str, limit: int = 1 << 16) -> str | None:
    try:
        with open(path, "rb") as handle:
            return handle.read(limit).decode("utf-8", "replace")
    except OSError:
        return None


@dataclass(frozen=True)
class RuntimeFacts:
    """What the node's kernel says about confinement (GET /v1/workloads shows it; the scan judges it)."""

    cgroup_version: str  # "2", "1" or "none": what /sys/fs/cgroup is
    cgroup_controllers: tuple[str, ...]
    lsm: str  # /sys/kernel/security/lsm, e.g. "landlock,lockdown,yama,loadpin,safesetid,integrity,apparmor,bpf"
    apparmor_enabled: bool
    apparmor_profile: str  # the containers' default profile as the kernel lists it ("NAME (enforce)"), or ""
    seccomp_actions: tuple[str, ...]  # /proc/sys/kernel/seccomp/actions_avail
    seccomp_filter: bool  # /proc/self/status has a Seccomp_filters line: CONFIG_SECCOMP_FILTER
    containerd: str  # the node runner's word: "running", "starting", "failed: ...", or "" (not started)

    def to_json(self) -> dict[str, Any]:
        return {"cgroup_version": self.cgroup_version, "cgroup_controllers": list(self.cgroup_controllers),
                "lsm": self.lsm, "apparmor_enabled": self.apparmor_enabled,
                "apparmor_profile": self.apparmor_profile, "seccomp_actions": list(self.seccomp_actions),
                "seccomp_filter": self.seccomp_filter, "containerd": self.containerd}


def runtime_facts(root: str = "/") -> RuntimeFacts:
    import json

    def p(path: str) -> str:
        return os.path.join(root, path.lstrip("/"))

    controllers = _read(p(f"{CGROUP_ROOT}/cgroup.controllers"))
    if controllers is not None:
        version = "2"
    elif os.path.isdir(p(f"{CGROUP_ROOT}/memory")):
        version = "1"
    else:
        version = "none"
    profiles = _read(p("/sys/kernel/security/apparmor/profiles"), 1 << 20) or ""
    profile = next((line for line in profiles.splitlines() if line.split(" (")[0] == APPARMOR_PROFILE), "")
    state = _read(p(RUNTIME_STATE))
    try:
        containerd = str(json.loads(state).get("containerd", "")) if state else ""
    except (ValueError, AttributeError):
        containerd = "unreadable"
    status = _read(p("/proc/self/status")) or ""
    return RuntimeFacts(
        cgroup_version=version, cgroup_controllers=tuple((controllers or "").split()),
        lsm=(_read(p("/sys/kernel/security/lsm")) or "").strip(),
        apparmor_enabled=(_read(p("/sys/module/apparmor/parameters/enabled")) or "").strip() == "Y",
        apparmor_profile=profile.strip(),
        seccomp_actions=tuple((_read(p("/proc/sys/kernel/seccomp/actions_avail")) or "").split()),
        seccomp_filter="Seccomp_filters:" in status, containerd=containerd)


# What obelisk's containerd configuration must say: (dotted key, expected value, why)
CONFIG_RULES: tuple[tuple[str, Any, str], ...] = (
    ("version", 2, "the configuration format these keys belong to"),
    ("root", "/var/lib/containerd", "persistent state on /var (the root filesystem is read-only)"),
    ("grpc.address", "/run/containerd/containerd.sock", "the API on a unix socket"),
    ("grpc.tcp_address", "", "no TCP listener for the API"),
    ("grpc.uid", 0, "the socket is root's"),
    ("grpc.gid", 0, "the socket is root's group's"),
    ("debug.address", "", "no debug socket"),
    ("metrics.address", "", "no unauthenticated metrics listener"),
    ('plugins.io.containerd.grpc.v1.cri.disable_apparmor', False, "containers get the AppArmor default profile"),
    ('plugins.io.containerd.grpc.v1.cri.enable_unprivileged_ports', False, "CIS 5.2.8: no extra network privileges"),
    ('plugins.io.containerd.grpc.v1.cri.enable_unprivileged_icmp', False, "CIS 5.2.8: no extra network privileges"),
    ('plugins.io.containerd.grpc.v1.cri.stream_server_address', "127.0.0.1", "streams only through the kubelet"),
)


def _lookup(doc: dict[str, Any], dotted: str) -> Any:
    """A value of the parsed TOML; plugin ids contain dots, so `plugins.` takes the id as one key."""
    if dotted.startswith("plugins."):
        rest = dotted[len("plugins."):]
        plugin, _, key = rest.rpartition(".")
        section = doc.get("plugins", {}).get(plugin, {})
        return section.get(key, _MISSING) if isinstance(section, dict) else _MISSING
    value: Any = doc
    for part in dotted.split("."):
        if not isinstance(value, dict) or part not in value:
            return _MISSING
        value = value[part]
    return value


_MISSING = object()


def config_problems(text: str) -> list[str]:
    """What in containerd's configuration differs from CONFIG_RULES (empty: nothing)."""
    import tomllib

    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        return [f"not TOML: {exc}"]
    problems = []
    for key, expected, why in CONFIG_RULES:
        value = _lookup(doc, key)
        if value is _MISSING or value != expected or type(value) is not type(expected):
            shown = "unset" if value is _MISSING else repr(value)
            problems.append(f"{key} = {shown}, expected {expected!r} ({why})")
    return problems


def _finding(suffix: str, title: str, status: Status, detail: str, *, observed: str | None = None,
             expected: str | None = None, evidence: tuple[Evidence, ...] = (), severity: Severity = Severity.HIGH,
             remediation: str = "") -> Finding:
    return Finding(id=f"node.runtime.{suffix}", title=title, status=status, severity=severity, target="node",
                   observed=observed, expected=expected, evidence=evidence, remediation=remediation,
                   benchmark=BENCHMARK, section=SECTION, detail=detail)


def runtime_findings(root: str = "/", live: bool = True) -> list[Finding]:
    config_path = os.path.join(root, CONTAINERD_CONFIG.lstrip("/"))
    try:
        st = os.lstat(config_path)
    except OSError:
        st = None
    titles = {"containerd-config": "containerd's configuration is obelisk's hardened one",
              "cgroup": "cgroup v2 (the unified hierarchy) with the memory controller",
              "mac": "AppArmor is the enforcing MAC LSM for containers",
              "seccomp": "The kernel enforces seccomp filters (the runtime's default profile)"}
    if st is None:
        return []  # no container runtime on this node
    out = []
    if not stat.S_ISREG(st.st_mode):
        problems = ["not a regular file"]
    else:
        problems = config_problems(_read(config_path, 1 << 20) or "")
        if st.st_mode & 0o022 or st.st_uid != 0:
            problems.append(f"mode {stat.S_IMODE(st.st_mode):04o} owner {st.st_uid}: writable by others than root")
    out.append(_finding("containerd-config", titles["containerd-config"], Status.FAIL if problems else Status.PASS,
                        "; ".join(problems) or "every hardened setting as obelisk renders it",
                        evidence=(Evidence("file", CONTAINERD_CONFIG),),
                        remediation="Build the image with runtime.enabled (obelisk renders this file)."))
    if not live:
        out += [_finding(k, titles[k], Status.SKIP, "kernel facts are read on a live node only", severity=Severity.INFO)
                for k in ("cgroup", "mac", "seccomp")]
        return out
    facts = runtime_facts(root)
    ok = facts.cgroup_version == "2" and "memory" in facts.cgroup_controllers
    out.append(_finding("cgroup", titles["cgroup"], Status.PASS if ok else Status.FAIL,
                        "container limits (memory.max) are cgroup v2's" if ok else "containers would run without "
                        "the limits the spec declares", observed=f"cgroup v{facts.cgroup_version} "
                        f"({' '.join(facts.cgroup_controllers) or 'no controllers'})", expected="cgroup v2 with memory",
                        evidence=(Evidence("file", f"{CGROUP_ROOT}/cgroup.controllers"),),
                        remediation="Boot with cgroup_no_v1=all; the node's init mounts cgroup2 at /sys/fs/cgroup."))
    lsms = facts.lsm.split(",") if facts.lsm else []
    ok = facts.apparmor_enabled and "apparmor" in lsms
    out.append(_finding("mac", titles["mac"], Status.PASS if ok else Status.FAIL,
                        "containers run under the runtime's default AppArmor profile" if ok else
                        "AppArmor is not active: containers are not confined by a MAC LSM",
                        observed=f"lsm={facts.lsm or '?'}; apparmor enabled={'Y' if facts.apparmor_enabled else 'N'}"
                        + (f"; {facts.apparmor_profile}" if facts.apparmor_profile else ""),
                        expected="apparmor in the LSM list, enabled",
                        evidence=(Evidence("file", "/sys/kernel/security/lsm", facts.lsm),
                                  Evidence("file", "/sys/module/apparmor/parameters/enabled")),
                        remediation="Use the kubernetes-node kernel profile (AppArmor built in and first)."))
    ok = facts.seccomp_filter and {"errno", "kill_process"} <= set(facts.seccomp_actions)
    out.append(_finding("seccomp", titles["seccomp"], Status.PASS if ok else Status.FAIL,
                        "the runtime's default seccomp profile can be enforced" if ok else
                        "the kernel cannot enforce the runtime's default seccomp profile",
                        observed=" ".join(facts.seccomp_actions) or "no seccomp actions",
                        expected="seccomp filters with errno and kill_process",
                        evidence=(Evidence("file", "/proc/sys/kernel/seccomp/actions_avail"),),
                        remediation="Use the kubernetes-node kernel profile (CONFIG_SECCOMP_FILTER)."))
    return out
