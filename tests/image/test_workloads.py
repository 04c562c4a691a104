"""runtime.workloads without a node: the spec's rules, the OCI archive (read back by umoci and GNU tar), the
node's workloads.json, the ctr command lines, the agent's report from state files and cgroup files, and the
runtime part of the scan."""

from __future__ import annotations

import io
import json
import subprocess
import tarfile
from pathlib import Path

import pytest

from obelisk.core.errors import InputError
from obelisk.core.findings import Status
from obelisk.image import workloads as wl
from obelisk.image.spec import SpecError, parse_spec
from tests.image.busybox_oci import INDEX_HTML, build_layout

BASE = {"name": "n", "kubernetes": {"role": "none"}, "ima": {"policy": "none"},
        "rootfs": {"base": "debian", "packages": ["containerd", "runc", "apparmor", "containernetworking-plugins",
                                                  "iptables"]}}


def spec_with(tmp_path: Path, workloads: list, **extra):
    data = {**BASE, "runtime": {"enabled": True, "workloads": workloads}, **extra}
    return parse_spec(data, "spec.yaml", tmp_path)


@pytest.fixture(scope="module")
def layout(tmp_path_factory) -> Path:
    return build_layout(tmp_path_factory.mktemp("oci") / "busybox")


def test_workloads_parse_with_sizes_and_defaults(tmp_path, layout):
    spec = spec_with(tmp_path, [{"name": "web", "image": str(layout), "memory_limit": "32Mi",
                                 "command": ["httpd", "-f"]},
                                {"name": "job", "image": str(layout), "memory_limit": 8 << 20, "seccomp": "unconfined",
                                 "restart": "always", "host_network": True}])
    web, job = spec.runtime.workloads
    assert (web.memory_limit, web.command, web.seccomp, web.apparmor, web.host_network, web.restart) == \
        (32 << 20, ("httpd", "-f"), "default", "default", False, "never")
    assert (job.memory_limit, job.seccomp, job.restart, job.host_network) == (8 << 20, "unconfined", "always", True)
    assert spec.to_json()["runtime"]["workloads"][0]["memory_limit"] == 32 << 20


@pytest.mark.parametrize("item, message", [
    ({"name": "Web", "memory_limit": "32Mi"}, r"runtime.workloads: \[0\]: name: 'Web': lowercase"),
    ({"name": "web"}, r"\[0\]: needs memory_limit"),
    ({"name": "web", "memory_limit": "1Mi"}, r"memory_limit: 1048576 bytes, less than"),
    ({"name": "web", "memory_limit": "32MB"}, r"expected a size such as 64Mi"),
    ({"name": "web", "memory_limit": "32Mi", "seccomp": "off"}, r"seccomp: 'off' is not one of default, unconfined"),
    ({"name": "web", "memory_limit": "32Mi", "privileged": True}, r"unknown key 'privileged'"),
    ({"name": "web", "memory_limit": "32Mi", "command": "sh"}, r"command: expected a list"),
])
def test_bad_workloads_are_refused_naming_the_field(tmp_path, layout, item, message):
    with pytest.raises(SpecError, match=message):
        spec_with(tmp_path, [{"image": str(layout), **item}])


def test_workload_rules(tmp_path, layout):
    item = {"name": "a", "image": str(layout), "memory_limit": "32Mi"}
    with pytest.raises(SpecError, match=r"\[1\]: name 'a' used twice"):
        spec_with(tmp_path, [item, item])
    with pytest.raises(SpecError, match=r"runtime.workloads\[0\].image: .*not an OCI image layout"):
        spec_with(tmp_path, [{**item, "image": str(tmp_path)}])
    with pytest.raises(SpecError, match=r"runtime.workloads: workloads need the container runtime"):
        parse_spec({**BASE, "runtime": {"workloads": [item]}}, "spec.yaml", tmp_path)
    with pytest.raises(SpecError, match=r"rootfs.packages: runtime.enabled needs containerd, runc"):
        parse_spec({**BASE, "rootfs": {"base": "debian"}, "runtime": {"enabled": True}}, "spec.yaml", tmp_path)
    with pytest.raises(SpecError, match=r"runtime.enabled: .*needs rootfs.base debian"):
        parse_spec({**BASE, "rootfs": {"base": "busybox"}, "runtime": {"enabled": True}}, "spec.yaml", tmp_path)


def test_archive_is_reproducible_and_umoci_unpacks_it(layout, tmp_path):
    data = wl.pack_archive(layout, "web", 1700000000)
    assert data == wl.pack_archive(layout, "web", 1700000000)
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        members = tar.getmembers()
        assert [m.name for m in members] == sorted(m.name for m in members if m.isdir()) + \
            sorted(m.name for m in members if not m.isdir())
        assert {(m.uid, m.gid, m.mtime) for m in members} == {(0, 0, 1700000000)}
        index = json.loads(tar.extractfile("index.json").read())  # type: ignore[union-attr]
        assert index["manifests"][0]["annotations"] == {"io.containerd.image.name": "obelisk.local/web:latest",
                                                        "org.opencontainers.image.ref.name": "latest"}
    extracted = tmp_path / "archive"
    extracted.mkdir()
    subprocess.run(["tar", "-xf", "-", "-C", str(extracted)], input=data, check=True)
    subprocess.run(["umoci", "unpack", "--rootless", "--image", f"{extracted}:latest", str(tmp_path / "bundle")],
                   check=True, capture_output=True)
    assert (tmp_path / "bundle/rootfs/www/index.html").read_bytes() == INDEX_HTML
    assert (tmp_path / "bundle/rootfs/bin/sh").readlink() == Path("/bin/busybox")


def test_a_damaged_layout_is_refused_naming_the_blob(layout, tmp_path):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(layout, bad)
    blob = max((bad / "blobs/sha256").iterdir(), key=lambda p: p.stat().st_size)  # the layer
    blob.write_bytes(blob.read_bytes()[:-1] + b"x")
    with pytest.raises(InputError, match="content does not match its digest"):
        wl.pack_archive(bad, "web", 0)


def test_node_file_round_trips_and_ctr_lines(tmp_path, layout):
    spec = spec_with(tmp_path, [{"name": "web", "image": str(layout), "memory_limit": "32Mi",
                                 "host_network": True, "command": ["httpd", "-f"]},
                                {"name": "raw", "image": str(layout), "memory_limit": "16Mi", "seccomp": "unconfined",
                                 "apparmor": "unconfined"}])
    data = wl.node_file(spec.runtime.workloads)
    web, raw = wl.parse_node_file(data)
    assert wl.serialize_node_file((web, raw)) == data
    assert web.archive == "/usr/lib/obelisk/workloads/web.tar"
    argv = wl.run_argv(web)
    assert argv[:5] == ["ctr", "--address", "/run/containerd/containerd.sock", "--namespace", "obelisk"]
    assert argv[5:] == ["run", "--rm", "--cgroup", "/obelisk/web/task", "--memory-limit", str(32 << 20),
                        "--cap-drop", "CAP_NET_RAW", "--seccomp", "--apparmor-default-profile",
                        "cri-containerd.apparmor.d", "--net-host", "--label", "obelisk.workload=web",
                        "obelisk.local/web:latest", "web", "httpd", "-f"]
    unconfined = wl.run_argv(raw)
    assert "--seccomp" not in unconfined and "--apparmor-default-profile" not in unconfined
    assert "--net-host" not in unconfined and "--privileged" not in unconfined
    assert wl.import_argv(web)[5:] == ["images", "import", "--base-name", "obelisk.local/web",
                                       "/usr/lib/obelisk/workloads/web.tar"]
    with pytest.raises(wl.WorkloadError, match=r"workloads\[0\].apparmor: 'off'"):
        wl.parse_node_file(data.replace(b'"default"', b'"off"', 1))


def test_report_reads_state_memory_events_and_output(tmp_path, layout):
    spec = spec_with(tmp_path, [{"name": "hog", "image": str(layout), "memory_limit": "32Mi"},
                                {"name": "idle", "image": str(layout), "memory_limit": "32Mi"}])
    root = tmp_path / "node"
    (root / "etc/obelisk").mkdir(parents=True)
    (root / "etc/obelisk/workloads.json").write_bytes(wl.node_file(spec.runtime.workloads))
    state_dir, log_dir = root / "run/obelisk/workloads", root / "var/log/obelisk/workloads"
    state_dir.mkdir(parents=True)
    log_dir.mkdir(parents=True)
    (state_dir / "hog.json").write_bytes(wl.serialize_state(wl.State(name="hog", state="exited", runs=1,
                                                                     exit_status=137)))
    (log_dir / "hog.log").write_bytes(b"x" * 10000 + b"the end\n")
    cgroup = root / "sys/fs/cgroup"
    (cgroup / "obelisk/hog").mkdir(parents=True)
    (cgroup / "obelisk/hog/memory.events").write_text("low 0\nhigh 0\nmax 12\noom 1\noom_kill 1\n")
    (cgroup / "cgroup.controllers").write_text("cpuset cpu io memory pids\n")
    (root / "proc").mkdir()
    (root / "proc/mounts").write_text("cgroup2 /sys/fs/cgroup cgroup2 rw,nosuid 0 0\n")
    report = wl.report(str(root / "etc/obelisk/workloads.json"), str(state_dir), str(log_dir), root=str(root))
    hog, idle = report["workloads"]
    assert (hog["state"], hog["exit_status"], hog["oom_killed"], hog["oom_kills"]) == ("exited", 137, True, 1)
    assert hog["output"].endswith("the end\n") and len(hog["output"]) == wl.OUTPUT_TAIL
    assert (idle["state"], idle["oom_killed"], idle["output"]) == ("pending", False, "")
    assert report["runtime"]["cgroup_version"] == "2"
    (state_dir / "idle.json").write_text('{"schema": "other"}')
    assert wl.report(str(root / "etc/obelisk/workloads.json"), str(state_dir), str(log_dir),
                     root=str(root))["workloads"][1]["state"] == "failed"


def test_state_round_trips():
    s = wl.State(name="a", state="running", runs=2, started=1.5)
    assert wl.parse_state(wl.serialize_state(s), "a.json") == s
    with pytest.raises(wl.WorkloadError, match="state: 'gone'"):
        wl.parse_state(wl.serialize_state(wl.State(name="a", state="gone")), "a.json")


def test_the_image_containerd_config_passes_the_runtime_checks_and_a_changed_one_fails(tmp_path):
    from obelisk.cis_checks.render import render_containerd_config
    from obelisk.cis_checks.scan import scan

    root = tmp_path / "root"
    (root / "etc/containerd").mkdir(parents=True)
    config = root / "etc/containerd/config.toml"
    config.write_bytes(render_containerd_config(cgroup_driver="cgroupfs"))
    config.chmod(0o600)
    (root / "usr/bin").mkdir(parents=True)
    (root / "usr/bin/containerd").write_bytes(b"\x7fELF")
    report = scan(root, ["obelisk-runtime"])
    assert not [f.id for f in report.findings if f.status in (Status.FAIL, Status.ERROR)]
    weaker = config.read_text().replace('tcp_address = ""', 'tcp_address = "0.0.0.0:1234"').replace(
        "disable_apparmor = false", "disable_apparmor = true")
    config.write_text(weaker)
    report = scan(root, ["obelisk-runtime"])
    assert sorted(f.id for f in report.findings if f.status is Status.FAIL) == ["obelisk-runtime.11",
                                                                              "obelisk-runtime.9"]
    empty = tmp_path / "empty"
    empty.mkdir()
    assert {f.status for f in scan(empty, ["obelisk-runtime"]).findings} == {Status.SKIP}  # no containerd


def test_a_rootfs_without_the_runtime_or_encryption_tools_is_refused_naming_the_tool(tmp_path):
    from obelisk.image import rootfs

    for rel in ("usr/bin/containerd", "usr/bin/ctr", "usr/bin/containerd-shim-runc-v2", "usr/sbin/runc",
                "usr/sbin/apparmor_parser", "usr/bin/python3", "usr/sbin/cryptsetup", "sbin/mke2fs"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"")
    rootfs.check_runtime_tools(tmp_path)
    (tmp_path / "usr/sbin/runc").unlink()
    with pytest.raises(InputError, match="runtime.enabled: the rootfs has no runc, which the node needs to run"):
        rootfs.check_runtime_tools(tmp_path)
    (tmp_path / "sbin/mke2fs").unlink()
    with pytest.raises(InputError, match="disk.encryption: the rootfs has no mke2fs, which the node needs to unlock"):
        rootfs.check_encryption_tools(tmp_path)
