"""End to end, issue 14's container runtime: one booted node whose spec declares workloads, all read through
the agent's GET /v1/workloads (never a shell):

- a busybox httpd container answers another container over the host network;
- `unshare -U` (a user namespace: no capability needed) is refused with EPERM under the runtime's default
  seccomp profile, and allowed in the same image with `seccomp: unconfined`: the refusal is seccomp's;
- a container that allocates past its memory limit is OOM-killed (cgroup v2 memory.events, exit 137);
- AppArmor is the enforcing MAC LSM: the containers' /proc/self/attr/current names the runtime's default
  profile in enforce mode, and the agent's facts say so;
- the agent's scan covers the runtime: cgroup v2, containerd's configuration, seccomp and AppArmor.

Uses the e2e test's project and keys, with the same kernel section, so the cached kernel is reused.
Markers qemu, kernel_build (a cold cache builds the kernel), slow.
"""

from __future__ import annotations

import json
import shutil
import time

import pytest
import yaml

from obelisk.core.findings import Status
from tests.image.busybox_oci import INDEX_HTML, build_layout
from tests.image.test_e2e import example  # noqa: F401 - the module-scoped fixture: project and test keys

pytestmark = [pytest.mark.qemu, pytest.mark.kernel_build, pytest.mark.slow, pytest.mark.swtpm]

UNSHARE = "if unshare -U true; then echo 'unshare: allowed'; else echo 'unshare: refused'; fi"
WORKLOADS = [
    {"name": "web", "image": "oci/busybox", "memory_limit": "32Mi", "host_network": True,
     "command": ["httpd", "-f", "-p", "127.0.0.1:8080", "-h", "/www"]},
    {"name": "client", "image": "oci/busybox", "memory_limit": "32Mi", "host_network": True,
     "command": ["sh", "-c", "for i in $(seq 1 120); do wget -q -O - http://127.0.0.1:8080/ && break; sleep 1; done; "
                 "echo \"lsm: $(cat /proc/self/attr/current)\"; grep -E '^(Seccomp|NoNewPrivs|CapEff):' "
                 "/proc/self/status"]},
    {"name": "seccomp", "image": "oci/busybox", "memory_limit": "32Mi", "command": ["sh", "-c", UNSHARE]},
    {"name": "unconfined", "image": "oci/busybox", "memory_limit": "32Mi", "seccomp": "unconfined",
     "command": ["sh", "-c", UNSHARE]},
    {"name": "hog", "image": "oci/busybox", "memory_limit": "32Mi",
     "command": ["dd", "if=/dev/zero", "of=/dev/null", "bs=96M", "count=1"]},
]


def runtime_spec(example_dir, project):  # noqa: F811
    """The example project (its kernel section untouched) with the workloads above and their OCI layout."""
    shutil.copytree(example_dir, project, ignore=shutil.ignore_patterns("out*"))
    build_layout(project / "oci" / "busybox")
    spec = yaml.safe_load((project / "spec.yaml").read_text())
    spec["runtime"] = {"enabled": True, "workloads": WORKLOADS}
    (project / "spec.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    return project / "spec.yaml"


@pytest.fixture(scope="module")
def node(example, tmp_path_factory):  # noqa: F811
    from obelisk.core.cachedir import cache_root
    from obelisk.image.build import build
    from obelisk.image.cache import StepCache
    from obelisk.image.spec import load_spec
    from obelisk.lab.boot import boot, stop

    project = tmp_path_factory.mktemp("runtime") / "node"
    spec = runtime_spec(example, project)
    out = project / "out"
    started = time.monotonic()
    build(load_spec(spec), out, cache=StepCache(cache_root() / "image"), quiet=True)
    print(f"build: {time.monotonic() - started:.1f} s")
    run = project / "run"
    keys = project / "keys"
    started = time.monotonic()
    booted = boot(out, run, ca=keys / "ca.pem", ca_key=keys / "ca.key", timeout=600)
    print(f"boot: {time.monotonic() - started:.1f} s")
    yield booted, out, keys
    stop(run)


def _endpoint(booted, keys):
    from obelisk.attest.agent_client import AgentEndpoint

    return AgentEndpoint(booted.url, ca=str(keys / "ca.pem"), cert=str(booted.client_cert),
                         key=str(booted.client_key))


def _settled(booted, keys, timeout: float = 420) -> dict:
    """/v1/workloads once every workload except the server has exited (or the timeout passed)."""
    endpoint = _endpoint(booted, keys)
    deadline = time.monotonic() + timeout
    while True:
        report = json.loads(endpoint.get_ok("/v1/workloads"))
        by_name = {w["name"]: w for w in report["workloads"]}
        if all(w["state"] in ("exited", "failed") for n, w in by_name.items() if n != "web") \
                or time.monotonic() > deadline:
            return report
        time.sleep(3)


@pytest.fixture(scope="module")
def workloads(node):
    booted, _, keys = node
    report = _settled(booted, keys)
    return report, {w["name"]: w for w in report["workloads"]}


def _console(booted) -> str:
    return booted.serial_log.read_text(errors="replace").replace("\r", "")[-4000:]


def test_a_container_runs_and_answers(node, workloads):
    booted, _, _ = node
    report, by_name = workloads
    assert report["runtime"]["containerd"] == "running", _console(booted)
    assert by_name["web"]["state"] == "running", by_name["web"]
    client = by_name["client"]
    assert client["state"] == "exited" and client["exit_status"] == 0, (client, _console(booted))
    assert INDEX_HTML.decode() in client["output"], client["output"]


def test_default_seccomp_refuses_a_syscall_that_capabilities_allow(workloads):
    _, by_name = workloads
    confined, unconfined = by_name["seccomp"], by_name["unconfined"]
    assert "unshare: refused" in confined["output"] and "Operation not permitted" in confined["output"], confined
    # the same command, the same capabilities and AppArmor profile, no seccomp filter: allowed
    assert "unshare: allowed" in unconfined["output"], unconfined
    assert confined["seccomp"] == "default" and unconfined["seccomp"] == "unconfined"
    assert "Seccomp:\t2" in by_name["client"]["output"]  # filter mode
    assert "NoNewPrivs:\t1" in by_name["client"]["output"]


def test_a_container_over_its_memory_limit_is_oom_killed(workloads):
    _, by_name = workloads
    hog = by_name["hog"]
    assert hog["state"] == "exited" and hog["exit_status"] == 137, hog
    assert hog["oom_killed"] and hog["oom_kills"] >= 1, hog
    assert hog["memory_limit"] == 32 << 20
    assert not by_name["client"]["oom_killed"]


def test_apparmor_enforces_the_runtime_default_profile(workloads):
    report, by_name = workloads
    runtime = report["runtime"]
    assert runtime["apparmor_enabled"] and "apparmor" in runtime["lsm"].split(","), runtime
    assert runtime["apparmor_profile"] == "cri-containerd.apparmor.d (enforce)", runtime
    assert "lsm: cri-containerd.apparmor.d (enforce)" in by_name["client"]["output"], by_name["client"]
    assert runtime["cgroup_version"] == "2" and "memory" in runtime["cgroup_controllers"], runtime


def test_the_agents_scan_covers_the_runtime(node, workloads):
    from obelisk.core import findings

    booted, _, keys = node
    body = _endpoint(booted, keys).get_ok("/v1/scan")
    found = {f.id: f for f in findings.parse(body, "scan").findings}
    runtime = {i: f for i, f in found.items() if i.startswith("obelisk-runtime.")}
    assert len(runtime) == 13, sorted(found)[:20]
    # the kernel's facts, containerd's configuration and its socket, on the booted node
    failed = {i: (f.observed, f.detail) for i, f in runtime.items()
              if f.status is not Status.PASS and i != "obelisk-runtime.5"}
    assert not failed, failed
    assert runtime["obelisk-runtime.1"].observed == "2"
    # the running web server is confined; only the workload the spec declared `seccomp: unconfined` may
    # show (it exits at once, so it is rarely still running when the agent scans)
    confined = runtime["obelisk-runtime.5"]
    assert any("seccomp filter, AppArmor cri-containerd.apparmor.d (enforce)" in e.detail
               for e in confined.evidence), confined
    if confined.status is Status.FAIL:
        assert all("seccomp disabled" in part for part in (confined.observed or "").split("; ")), confined


# --- IMA for container files: the appraise-containers profile ------------------------------------------------

IMA_WORKLOADS = [
    {"name": "signed", "image": "oci/signed", "memory_limit": "32Mi", "command": ["sh", "-c", "echo signed ran"]},
    {"name": "tampered", "image": "oci/tampered", "memory_limit": "32Mi", "command": ["sh", "-c", "echo tampered ran"]},
    {"name": "unsigned", "image": "oci/unsigned", "memory_limit": "32Mi", "command": ["sh", "-c", "echo unsigned ran"]},
]


def tampered_copy(signed, out):
    """`signed`'s image with one byte of bin/busybox changed and its signature record kept: what an attacker
    who rebuilt the layer (and its digests) without the customer's key can ship."""
    import io
    import tarfile

    from tests.signer import ocibuild

    index = json.loads((signed / "index.json").read_text())
    manifest = json.loads(ocibuild.blob_bytes(signed, index["manifests"][0]))
    entries = []
    with tarfile.open(fileobj=io.BytesIO(ocibuild.blob_bytes(signed, manifest["layers"][0]))) as tar:
        for info in tar.getmembers():
            data = tar.extractfile(info).read() if info.isfile() else None  # type: ignore[union-attr]
            if info.name == "bin/busybox":
                assert "SCHILY.xattr.security.ima" in info.pax_headers
                at = data.index(b"BusyBox v")
                data = data[:at] + b"b" + data[at + 1:]
            entries.append(ocibuild.Entry(info, data))
    builder = ocibuild.LayoutBuilder(out)
    image = builder.image([builder.layer(ocibuild.tar_of(entries), compress=False)], "amd64")
    return builder.index([{**image, "annotations": {"org.opencontainers.image.ref.name": "latest"}}])


@pytest.fixture(scope="module")
def ima_node(example, tmp_path_factory):  # noqa: F811
    from obelisk.core.cachedir import cache_root
    from obelisk.image.build import build
    from obelisk.image.cache import StepCache
    from obelisk.image.spec import load_spec
    from obelisk.lab.boot import boot, stop
    from obelisk.signer.keys import load_certificate, load_signing_key
    from obelisk.signer.oci_sign import sign_layout

    project = tmp_path_factory.mktemp("ima-runtime") / "node"
    shutil.copytree(example, project, ignore=shutil.ignore_patterns("out*"))
    keys = project / "keys"
    build_layout(project / "oci" / "unsigned")
    signed = build_layout(project / "oci" / "signed")
    sign_layout(str(signed), load_signing_key(str(keys / "ima.key")), load_certificate(keys / "ima.pem"))
    tampered_copy(signed, project / "oci" / "tampered")
    spec = yaml.safe_load((project / "spec.yaml").read_text())
    spec["ima"] = {"policy": "appraise-containers"}
    spec["runtime"] = {"enabled": True, "workloads": IMA_WORKLOADS}
    (project / "spec.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    out = project / "out"
    build(load_spec(project / "spec.yaml"), out, cache=StepCache(cache_root() / "image"), quiet=True)
    run = project / "run"
    booted = boot(out, run, ca=keys / "ca.pem", ca_key=keys / "ca.key", timeout=600)
    yield booted, out, keys
    stop(run)


def test_container_programs_are_appraised_with_the_customers_key(ima_node):
    booted, _, keys = ima_node
    report = _settled(booted, keys)
    by_name = {w["name"]: w for w in report["workloads"]}
    assert by_name["signed"]["exit_status"] == 0 and "signed ran" in by_name["signed"]["output"], \
        (by_name["signed"], _console(booted))
    for name in ("tampered", "unsigned"):
        w = by_name[name]
        assert w["exit_status"] not in (0, None) and f"{name} ran" not in w["output"], w
        assert "permission denied" in w["output"].lower(), w


def test_the_attestation_names_the_refused_container_programs(ima_node):
    """The kernel measured each container program before appraising it (ima-sig: with the signature it
    carried), so the quote-backed IMA list names the tampered busybox (its signature does not verify against
    its content) and the unsigned one."""
    from obelisk.attest.agent_client import attest_node

    booted, out, keys = ima_node
    _settled(booted, keys)
    result = attest_node(_endpoint(booted, keys), manifest=str(out / "manifest.json"), ak=str(booted.ak))
    failed = {f.id: f for f in result.findings if f.status is Status.FAIL}
    bad = [f for i, f in failed.items() if i.endswith(".bad-signature")]
    unsigned = [f for i, f in failed.items() if i.endswith(".unsigned")]
    assert any(f.target.endswith("busybox") for f in bad), sorted(failed)
    assert any(f.target.endswith("busybox") for f in unsigned), sorted(failed)
    # the boot chain itself is as predicted: only the container entries fail
    assert {"attest.boot.pcr4", "attest.boot.pcr7", "attest.boot.pcr11"} <= \
        {f.id for f in result.findings if f.status is Status.PASS}
