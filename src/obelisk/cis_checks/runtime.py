"""The node's container runtime as a scan sees it: containerd's effective settings, the kernel's cgroup,
LSM and seccomp facts, and how the running containers are confined.

Like node.py this only collects; engine.py decides. What it reads:

* containerd's configuration: the file its running process was started with (`--config`/`-c`), else
  `/etc/containerd/config.toml`, parsed as TOML. A key the file leaves out has containerd's default,
  which the check that asks for it states (defaults are containerd's, per version, not obelisk's).
* kernel facts of a live node: the cgroup hierarchy from `/proc/mounts` (v2 = one `cgroup2` mount
  on /sys/fs/cgroup and no v1 hierarchy), the root cgroup's controllers, the active LSMs, AppArmor's
  state and the seccomp actions the kernel offers, from `/sys` and `/proc/sys`.
* each running container's confinement: the processes whose parent is a containerd shim, with
  their seccomp mode (`/proc/PID/status`) and AppArmor label (`/proc/PID/attr/apparmor/current`).

An image or a directory has no kernel facts and no containers: checks of those are skipped there.
"""

from __future__ import annotations

import functools
import json
import os
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from obelisk.cis_checks.node import NodeView

CONTAINERD_CONFIG = "/etc/containerd/config.toml"
APPARMOR_PROFILE = "cri-containerd.apparmor.d"  # containerd's default AppArmor profile for containers
RUNTIME_STATE = "/run/obelisk/runtime.json"  # the obelisk node's runtime runner's word (image/node_runtime.py)
CONTAINERD_BINARIES = ("/usr/bin/containerd", "/usr/local/bin/containerd", "/usr/sbin/containerd")
SHIM_PREFIX = "containerd-shim"
MAX_PROCESSES = 65536  # a /proc with more entries than this is not read further (bounded work)

# fact name -> what it is (the catalogue's `fact` choices)
FACTS = {
    "cgroup_version": "the cgroup hierarchy: 2 (unified), 1 (legacy) or hybrid",
    "cgroup_controllers": "controllers the root cgroup offers (cgroup.controllers)",
    "lsm": "the active Linux security modules, in order (/sys/kernel/security/lsm)",
    "apparmor_enabled": "AppArmor enabled (/sys/module/apparmor/parameters/enabled)",
    "seccomp_actions": "seccomp filter actions the kernel offers (/proc/sys/kernel/seccomp/actions_avail)",
}


@dataclass(frozen=True)
class Fact:
    """One kernel fact: its value as text (None when the node does not have it) and where it was read."""

    value: str | None
    source: str
    note: str = ""


@dataclass(frozen=True)
class Container:
    """A container's first process as the node runs it."""

    pid: int
    name: str  # comm
    seccomp: str  # "0" none, "1" strict, "2" filter; "" unreadable
    apparmor: str  # "profile (enforce)", "unconfined", "" when the LSM gives no label


@dataclass(frozen=True)
class ConfigSetting:
    """The effective value of one containerd key."""

    key: str
    value: Any  # None when neither the file nor the stated default give one
    source: str  # "config" | "default"
    path: str  # the node path of the configuration file


_KEY_PART = re.compile(r'"([^"\\]*)"|([A-Za-z0-9_-]+)')


def parse_key(key: str) -> tuple[str, ...]:
    """A dotted TOML key with quoted parts, `plugins."io.containerd.grpc.v1.cri".disable_apparmor`, as
    its parts; ValueError when it is not one."""
    parts: list[str] = []
    pos = 0
    while True:
        m = _KEY_PART.match(key, pos)
        if m is None:
            raise ValueError(f"not a dotted TOML key: {key!r}")
        parts.append(m.group(1) if m.group(1) is not None else m.group(2))
        pos = m.end()
        if pos == len(key):
            return tuple(parts)
        if key[pos] != ".":
            raise ValueError(f"not a dotted TOML key: {key!r}")
        pos += 1


def show(value: Any) -> str:
    """A TOML value as the text a comparison reads."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return ",".join(show(v) for v in value)
    if isinstance(value, dict):
        return ",".join(sorted(value))
    return str(value)


class RuntimeView:
    """The container runtime of the node a NodeView reads; `sys` is the node's /sys (live scans)."""

    def __init__(self, node: NodeView, sys_root: str | Path | None):
        self.node = node
        self.sys = Path(sys_root) if sys_root is not None else None

    @property
    def live(self) -> bool:
        return self.node.proc is not None and self.sys is not None

    # ---------------------------------------------------------------- containerd's configuration
    @functools.cached_property
    def config_path(self) -> str:
        comp = self.node.components.get("containerd")
        if comp is not None:
            named = comp.cmdline.get("config") or comp.cmdline.get("c")
            if named:
                return named if named.startswith("/") else "/" + named
        return CONTAINERD_CONFIG

    @functools.cached_property
    def config(self) -> tuple[dict[str, Any] | None, str]:
        """(the parsed configuration, None when absent or unusable; why it is unusable, else "")."""
        path = self.config_path
        try:
            text = self.node.read_text(self.node.host(path))
        except FileNotFoundError:
            return None, ""
        except (OSError, ValueError) as exc:
            return None, f"cannot read: {getattr(exc, 'strerror', None) or exc}"
        try:
            return tomllib.loads(text), ""
        except tomllib.TOMLDecodeError as exc:
            return None, f"not TOML: {exc}"

    def setting(self, key: str, default: Any) -> ConfigSetting:
        doc, _ = self.config
        cur: Any = doc or {}
        for part in parse_key(key):
            if not isinstance(cur, dict) or part not in cur:
                return ConfigSetting(key, default, "default", self.config_path)
            cur = cur[part]
        return ConfigSetting(key, cur, "config", self.config_path)

    # ---------------------------------------------------------------- kernel facts
    @functools.cached_property
    def kernel(self) -> KernelFacts:
        return KernelFacts(self.node.proc, self.sys)

    def fact(self, name: str) -> Fact:
        return self.kernel.fact(name)

    # ---------------------------------------------------------------- running containers
    @functools.cached_property
    def containers(self) -> tuple[Container, ...]:
        """The first process of every running container: each process whose parent is a containerd shim."""
        proc = self.node.proc
        if proc is None:
            return ()
        try:
            pids = [int(e) for e in os.listdir(proc) if e.isascii() and e.isdigit()][:MAX_PROCESSES]
        except OSError:
            return ()
        comm: dict[int, str] = {}
        parent: dict[int, int] = {}
        for pid in pids:
            stat = _read(proc, f"{pid}/stat")
            if stat is None or ")" not in stat:
                continue
            name = stat[stat.find("(") + 1:stat.rfind(")")]
            fields = stat[stat.rfind(")") + 2:].split()
            if len(fields) > 1 and fields[1].isdigit():
                comm[pid], parent[pid] = name, int(fields[1])
        out = []
        for pid in sorted(comm):
            if comm[pid].startswith(SHIM_PREFIX) or not comm.get(parent[pid], "").startswith(SHIM_PREFIX):
                continue
            status = _read(proc, f"{pid}/status") or ""
            seccomp = next((line.split(":", 1)[1].strip() for line in status.splitlines()
                            if line.startswith("Seccomp:")), "")
            label = _read(proc, f"{pid}/attr/apparmor/current")
            if label is None:
                label = _read(proc, f"{pid}/attr/current") or ""
            out.append(Container(pid, comm[pid], seccomp, label.rstrip("\0").strip()))
        return tuple(out)


def containerd_binary(node: NodeView) -> str | None:
    """The node path of containerd's binary in the scanned root, when it has one."""
    for path in CONTAINERD_BINARIES:
        try:
            if node.host(path).is_file():
                return path
        except OSError:
            continue
    return None


class KernelFacts:
    """The kernel's cgroup, LSM and seccomp facts, read from a node's /proc and /sys."""

    def __init__(self, proc: Path | None, sys: Path | None):
        self.proc, self.sys = proc, sys

    def fact(self, name: str) -> Fact:
        if name not in FACTS:
            raise ValueError(f"unknown runtime fact {name!r}")
        return getattr(self, f"_{name}")()

    def apparmor_profile(self, name: str) -> str:
        """`NAME (mode)` as the kernel lists a loaded AppArmor profile, or ""."""
        profiles = _read(self.sys, "kernel/security/apparmor/profiles", 1 << 20) or ""
        return next((line.strip() for line in profiles.splitlines() if line.split(" (")[0] == name), "")

    def _cgroup_version(self) -> Fact:
        mounts = _read(self.proc, "mounts", 1 << 20)
        if mounts is None:
            return Fact(None, "/proc/mounts", "not readable")
        unified = legacy = False
        for line in mounts.splitlines():
            fields = line.split()
            if len(fields) >= 3 and fields[2] == "cgroup2" and fields[1] == "/sys/fs/cgroup":
                unified = True
            elif len(fields) >= 3 and fields[2] == "cgroup":
                legacy = True
        value = "hybrid" if unified and legacy else "2" if unified else "1" if legacy else None
        return Fact(value, "/proc/mounts", "" if value else "no cgroup file system is mounted")

    def _cgroup_controllers(self) -> Fact:
        text = _read(self.sys, "fs/cgroup/cgroup.controllers")
        return Fact(",".join(text.split()) if text is not None else None, "/sys/fs/cgroup/cgroup.controllers")

    def _lsm(self) -> Fact:
        return Fact(_read(self.sys, "kernel/security/lsm"), "/sys/kernel/security/lsm")

    def _apparmor_enabled(self) -> Fact:
        text = _read(self.sys, "module/apparmor/parameters/enabled")
        value = None if text is None else "true" if text == "Y" else "false"
        return Fact(value, "/sys/module/apparmor/parameters/enabled")

    def _seccomp_actions(self) -> Fact:
        text = _read(self.proc, "sys/kernel/seccomp/actions_avail")
        return Fact(",".join(text.split()) if text is not None else None, "/proc/sys/kernel/seccomp/actions_avail")


def _read(base: Path | None, rel: str, limit: int = 64 * 1024) -> str | None:
    """A small file below `base` as stripped text, or None (no base, absent, unreadable)."""
    if base is None:
        return None
    try:
        with open(base / rel, "rb") as f:
            return f.read(limit).decode("utf-8", errors="replace").strip()
    except OSError:
        return None


@dataclass(frozen=True)
class RuntimeFacts:
    """What a node's kernel and runtime runner say about confinement: what `GET /v1/workloads` shows
    (the scan judges the same facts through the obelisk-runtime checks)."""

    cgroup_version: str  # "2", "1", "hybrid" or "none"
    cgroup_controllers: tuple[str, ...]
    lsm: str  # /sys/kernel/security/lsm
    apparmor_enabled: bool
    apparmor_profile: str  # containerd's default profile as the kernel lists it ("NAME (enforce)"), or ""
    seccomp_actions: tuple[str, ...]
    seccomp_filter: bool  # the kernel filters syscalls (errno among the seccomp actions)
    containerd: str  # the node runner's word: "running", "starting", "failed: ...", or "" (not started)

    def to_json(self) -> dict[str, Any]:
        return {"cgroup_version": self.cgroup_version, "cgroup_controllers": list(self.cgroup_controllers),
                "lsm": self.lsm, "apparmor_enabled": self.apparmor_enabled,
                "apparmor_profile": self.apparmor_profile, "seccomp_actions": list(self.seccomp_actions),
                "seccomp_filter": self.seccomp_filter, "containerd": self.containerd}


def runtime_facts(root: str = "/") -> RuntimeFacts:
    """The facts of the node whose root is `root` (its /proc, /sys and the runner's state file)."""
    base = Path(root)
    kernel = KernelFacts(base / "proc", base / "sys")

    def items(name: str) -> tuple[str, ...]:
        value = kernel.fact(name).value
        return tuple(value.split(",")) if value else ()

    state = _read(base, RUNTIME_STATE.lstrip("/"))
    try:
        containerd = str(json.loads(state).get("containerd", "")) if state else ""
    except (ValueError, AttributeError):
        containerd = "unreadable"
    actions = items("seccomp_actions")
    return RuntimeFacts(cgroup_version=kernel.fact("cgroup_version").value or "none",
                        cgroup_controllers=items("cgroup_controllers"), lsm=kernel.fact("lsm").value or "",
                        apparmor_enabled=kernel.fact("apparmor_enabled").value == "true",
                        apparmor_profile=kernel.apparmor_profile(APPARMOR_PROFILE), seccomp_actions=actions,
                        seccomp_filter="errno" in actions, containerd=containerd)
