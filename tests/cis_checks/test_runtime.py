"""obelisk-runtime: containerd's configuration, the kernel's cgroup/LSM/seccomp facts and the confinement of
running containers. containerd itself (`config default`, `config dump`) is the independent reader of its file."""

from __future__ import annotations

import json
import os
import subprocess
import tomllib
from pathlib import Path

import pytest

from obelisk.cis_checks.catalogue import RUNTIME_BENCHMARK, load_checks
from obelisk.cis_checks.engine import ContainerdConfigSpec
from obelisk.cis_checks.render import render_tree
from obelisk.cis_checks.runtime import parse_key, show
from obelisk.cis_checks.scan import scan
from obelisk.core.findings import Status
from tests.cis_checks.conftest import by_id, failing

CONFIG = "etc/containerd/config.toml"
CONFIG_CHECKS = ("obelisk-runtime.6", "obelisk-runtime.8", "obelisk-runtime.9", "obelisk-runtime.10",
                 "obelisk-runtime.11", "obelisk-runtime.12", "obelisk-runtime.13")
FACT_CHECKS = ("obelisk-runtime.1", "obelisk-runtime.2", "obelisk-runtime.3", "obelisk-runtime.4")


def _config_tests() -> list[ContainerdConfigSpec]:
    out = []
    for check in load_checks():
        if check.obelisk is None:
            continue
        tests = getattr(check.test, "tests", None) or (check.test,)
        out.extend(t for t in tests if isinstance(t, ContainerdConfigSpec))
    return out


def _at(doc: dict, key: str) -> object:
    cur: object = doc
    for part in parse_key(key):
        assert isinstance(cur, dict) and part in cur, key
        cur = cur[part]
    return cur


def _containerd(*args: str) -> dict:
    out = subprocess.run(["containerd", *args], capture_output=True, check=True, timeout=60).stdout
    return tomllib.loads(out.decode())


def _runtime_scan(root: Path, **options):
    return scan(root, [RUNTIME_BENCHMARK], **options)


@pytest.fixture
def node_root(tmp_path: Path) -> Path:
    """A worker's rendered configuration plus containerd's binary: what an image holds."""
    root = tmp_path / "root"
    render_tree(root, "worker", "1.31", cgroup_driver="cgroupfs")
    (root / "usr/bin").mkdir(parents=True)
    (root / "usr/bin/containerd").write_bytes(b"\x7fELF")
    return root


def test_every_default_a_check_states_is_containerds_own():
    defaults = _containerd("config", "default")
    checked = 0
    for test in _config_tests():
        if test.key == "version":  # the default of a file without `version`, not of `config default`
            continue
        assert test.default is not None, test.key
        assert show(_at(defaults, test.key)) == str(test.default), test.key
        checked += 1
    assert checked >= 6


def test_rendered_configuration_passes_and_containerd_reads_it_the_same(node_root):
    report = _runtime_scan(node_root)
    assert failing(report) == {}
    for fid in CONFIG_CHECKS:
        assert by_id(report, fid).status is Status.PASS, fid
    for fid in (*FACT_CHECKS, "obelisk-runtime.5"):  # an image has no kernel and no containers
        f = by_id(report, fid)
        assert f.status is Status.SKIP and "live" in f.detail, fid
    config = node_root / CONFIG
    assert os.stat(config).st_mode & 0o777 == 0o600
    effective = _containerd("--config", str(config), "config", "dump")
    for test in _config_tests():
        if test.key != "version":
            assert show(_at(effective, test.key)) == str(test.default), test.key
    assert _at(effective, 'plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options.SystemdCgroup') \
        is False  # cgroupfs, as the kubelet it renders beside it
    assert "cgroupDriver: cgroupfs" in (node_root / "etc/kubernetes/kubelet/config.yaml").read_text()


def test_each_unsafe_setting_fails_naming_it_and_containerd_would_apply_it(node_root):
    config = node_root / CONFIG
    text = config.read_text()
    for old, new in (('tcp_address = ""', 'tcp_address = "0.0.0.0:2375"'),
                     ('stream_server_address = "127.0.0.1"', 'stream_server_address = "0.0.0.0"'),
                     ("disable_apparmor = false", "disable_apparmor = true"),
                     ("enable_unprivileged_icmp = false", "enable_unprivileged_icmp = true"),
                     ("disable_cgroup = false", "disable_cgroup = true")):
        assert old in text
        text = text.replace(old, new)
    config.write_text(text)
    os.chmod(config, 0o644)
    bad = failing(_runtime_scan(node_root))
    assert bad == {"obelisk-runtime.6": "mode 644", "obelisk-runtime.9": "0.0.0.0:2375",
                   "obelisk-runtime.10": "0.0.0.0", "obelisk-runtime.11": "true", "obelisk-runtime.12": "true",
                   "obelisk-runtime.13": "true"}
    effective = _containerd("--config", str(config), "config", "dump")
    assert _at(effective, "grpc.tcp_address") == "0.0.0.0:2375"
    assert _at(effective, 'plugins."io.containerd.grpc.v1.cri".disable_apparmor') is True


def test_a_file_without_version_2_fails_and_an_unreadable_one_is_an_error_naming_it(node_root):
    config = node_root / CONFIG
    config.write_text('[grpc]\n  tcp_address = ""\n')
    report = _runtime_scan(node_root)
    assert failing(report) == {"obelisk-runtime.8": "1 (containerd's default)"}
    config.write_text("version = 2\n[grpc\n")
    report = _runtime_scan(node_root)
    f = by_id(report, "obelisk-runtime.9")
    assert f.status is Status.ERROR and f.target == "/etc/containerd/config.toml" and "not TOML" in f.detail


def test_without_a_configuration_file_containerds_defaults_are_judged(node_root):
    (node_root / CONFIG).unlink()
    report = _runtime_scan(node_root)
    assert failing(report) == {"obelisk-runtime.8": "1 (containerd's default)"}
    f = by_id(report, "obelisk-runtime.9")
    assert f.status is Status.PASS and "no configuration file" in f.detail


def test_a_node_without_containerd_skips_the_runtime_checks(tmp_path):
    root = tmp_path / "root"
    render_tree(root, "worker", "1.31")
    report = _runtime_scan(root)
    assert report.findings and all(f.status is Status.SKIP and "containerd does not run" in f.detail
                                   for f in report.findings)


# ---------------------------------------------------------------------------- a live node's kernel and containers

def _write(base: Path, rel: str, text: str) -> None:
    path = base / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def _process(proc: Path, pid: int, comm: str, ppid: int, *, seccomp: str = "0", label: str = "unconfined") -> None:
    _write(proc, f"{pid}/stat", f"{pid} ({comm}) S {ppid} {pid} {pid} 0 -1 4194560 0 0 0 0\n")
    _write(proc, f"{pid}/cmdline", comm + "\0")
    _write(proc, f"{pid}/status", f"Name:\t{comm}\nPid:\t{pid}\nPPid:\t{ppid}\nSeccomp:\t{seccomp}\n")
    _write(proc, f"{pid}/attr/apparmor/current", label + "\n")


@pytest.fixture
def live(tmp_path: Path) -> tuple[Path, Path]:
    """/proc and /sys of a node running containerd and two containers, one confined and one not."""
    proc, sys = tmp_path / "proc", tmp_path / "sys"
    _write(proc, "mounts", "sysfs /sys sysfs rw 0 0\ncgroup2 /sys/fs/cgroup cgroup2 rw,nosuid 0 0\n")
    _write(proc, "sys/kernel/seccomp/actions_avail", "kill_process kill_thread trap errno user_notif trace log allow\n")
    _write(sys, "fs/cgroup/cgroup.controllers", "cpuset cpu io memory hugetlb pids misc\n")
    _write(sys, "kernel/security/lsm", "lockdown,capability,landlock,yama,apparmor,integrity")
    _write(sys, "module/apparmor/parameters/enabled", "Y\n")
    _process(proc, 1, "obelisk-init", 0)
    _process(proc, 10, "containerd", 1)
    _process(proc, 20, "containerd-shim", 1)
    _process(proc, 21, "httpd", 20, seccomp="2", label="cri-containerd.apparmor.d (enforce)")
    _process(proc, 22, "httpd", 21, seccomp="2", label="cri-containerd.apparmor.d (enforce)")
    _process(proc, 30, "containerd-shim", 1)
    _process(proc, 31, "sh", 30, seccomp="0", label="unconfined")
    return proc, sys


def test_live_facts_pass_and_an_unconfined_container_is_named(node_root, live):
    proc, sys = live
    report = _runtime_scan(node_root, proc=proc, sys=sys)
    for fid in FACT_CHECKS:
        assert by_id(report, fid).status is Status.PASS, fid
    assert failing(report) == {"obelisk-runtime.5": "pid 31 (sh) seccomp disabled; pid 31 (sh) AppArmor unconfined"}
    confined = by_id(report, "obelisk-runtime.5")
    assert {e.source for e in confined.evidence} == {"pid 21", "pid 31"}  # first processes only, not pid 22
    assert by_id(report, "obelisk-runtime.1").observed == "2"


def test_live_facts_fail_on_cgroup_v1_missing_controllers_and_apparmor_off(node_root, live):
    proc, sys = live
    _write(proc, "mounts", "cgroup2 /sys/fs/cgroup/unified cgroup2 rw 0 0\n"
                           "cgroup /sys/fs/cgroup/memory cgroup rw,memory 0 0\n")
    _write(sys, "fs/cgroup/cgroup.controllers", "cpu memory\n")
    _write(sys, "module/apparmor/parameters/enabled", "N\n")
    _write(proc, "sys/kernel/seccomp/actions_avail", "allow\n")
    (proc / "31").rename(proc / "gone")  # only the confined container is left
    bad = failing(_runtime_scan(node_root, proc=proc, sys=sys))
    assert bad == {"obelisk-runtime.1": "1", "obelisk-runtime.2": "cpu,memory", "obelisk-runtime.3": "allow",
                   "obelisk-runtime.4": "false"}


def test_scan_cli_reads_proc_and_sys_and_exits_1_on_an_unconfined_container(obelisk_cli, node_root, live):
    proc, sys = live
    r = obelisk_cli("scan", "--root", str(node_root), "--benchmark", "obelisk-runtime", "--proc", str(proc),
                    "--sys", str(sys), "--format", "json")
    assert r.returncode == 1, r.stderr
    report = json.loads(r.stdout)
    failed = [f["id"] for f in report["findings"] if f["status"] == "fail"]
    assert failed == ["obelisk-runtime.5"]
    assert all(f["benchmark"] == "obelisk-runtime" for f in report["findings"])


def test_the_cgroup_version_agrees_with_the_file_system_type_of_this_machine(node_root):
    kind = subprocess.run(["stat", "-f", "-c", "%T", "/sys/fs/cgroup"], capture_output=True, text=True,
                          check=True).stdout.strip()
    report = _runtime_scan(node_root, proc="/proc", sys="/sys")
    observed = by_id(report, "obelisk-runtime.1").observed
    assert (kind == "cgroup2fs") == (observed == "2"), (kind, observed)
