"""End to end: build the bundled example, verify it, boot it under QEMU with swtpm, attest it;
its /var is LUKS2, unlocked by the TPM only for the command line and root the build predicted,
and survives a reboot. Then the failure cases on booted nodes (a tampered file refused by the
kernel and named by the attestation, its /var left locked; a replayed nonce; a client
certificate from another CA).

Slow (a kernel build on a cold cache, two boots under software emulation): markers qemu and
kernel_build. Keys are generated once per machine into the obelisk cache, so the kernel built
with their CA is reused by later runs.
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from obelisk.core.findings import Status

pytestmark = [pytest.mark.qemu, pytest.mark.kernel_build, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def example(tmp_path_factory):
    """The example project with machine-wide test keys (so the kernel cache is reused)."""
    from obelisk.core.cachedir import cache_root
    from obelisk.signer.keygen import POLICY_KEY, generate, issue_policy_key, issue_secure_boot_keys

    keys = cache_root() / "test-keys" / "e2e-rsa-2048"
    if not (keys / "ima.key").exists():
        shutil.rmtree(keys, ignore_errors=True)
        generate(keys, "rsa-2048", organization="obelisk e2e test")
    # made by an earlier obelisk: keep the CA (and its cached kernel), issue what is missing
    if not (keys / POLICY_KEY).exists():
        issue_policy_key(keys, "rsa-2048", organization="obelisk e2e test")
    if not (keys / "db.key").exists():
        issue_secure_boot_keys(keys, organization="obelisk e2e test")
    project = tmp_path_factory.mktemp("example") / "node"
    shutil.copytree(ROOT / "examples/node", project, ignore=shutil.ignore_patterns("keys", "out*"))
    shutil.copytree(keys, project / "keys")
    return project


@pytest.fixture(scope="module")
def image(example):
    from obelisk.core.cachedir import cache_root
    from obelisk.image.build import build
    from obelisk.image.cache import StepCache
    from obelisk.image.spec import load_spec

    out = example / "out"
    build(load_spec(example / "spec.yaml"), out, cache=StepCache(cache_root() / "image"), quiet=True)
    return out


def _boot(out: Path, run: Path, keys: Path):
    from obelisk.lab.boot import boot

    return boot(out, run, ca=keys / "ca.pem", ca_key=keys / "ca.key", timeout=600)


def _console(node) -> str:
    return node.serial_log.read_text(errors="replace")


def test_example_boots_and_attests(example, image, tmp_path, obelisk_cli):
    from obelisk.attest.agent_certs import issue
    from obelisk.attest.agent_client import AgentEndpoint, AgentError, attest_node
    from obelisk.image.verify import verify_image
    from obelisk.lab.boot import stop
    from obelisk.signer.keygen import generate

    keys = example / "keys"
    report = verify_image(image, keys / "ca.pem")
    assert not [f.id for f in report.findings if f.status is not Status.PASS]

    node = _boot(image, tmp_path / "run", keys)
    try:
        endpoint = AgentEndpoint(node.url, ca=str(keys / "ca.pem"), cert=str(node.client_cert),
                                 key=str(node.client_key))
        result = attest_node(endpoint, manifest=str(image / "manifest.json"), ak=str(node.ak))
        failed = [(f.id, f.observed, f.detail) for f in result.findings if f.status in (Status.FAIL, Status.ERROR)]
        assert not failed, failed
        assert any(f.id == "ima.reference" and f.status is Status.PASS for f in result.findings)
        # PCR 11 is what the build predicted, and the TPM released /var's key for it
        passed = {f.id for f in result.findings if f.status is Status.PASS}
        assert {"attest.reference.pcr11", "attest.bootevents.replay", "attest.reference.boot-event:obelisk.root",
                "attest.reference.boot-event:obelisk.boot-complete", "attest.node.var"} <= passed
        assert "/var unlocked by the TPM (keyslot 0, customer-signed policy 11), new filesystem" in _console(node), \
            _console(node)[-2000:]
        assert (node.run_dir / "var.img").read_bytes()[:6] == b"LUKS\xba\xbe"

        # the same through the command line, results written for `obelisk report`
        r = obelisk_cli("attest", "node", node.url, "--manifest", str(image / "manifest.json"), "--ca",
                        str(keys / "ca.pem"), "--cert", str(node.client_cert), "--key", str(node.client_key),
                        "--ak", str(node.ak), "-o", str(tmp_path / "results.json"))
        assert r.returncode == 0, r.stderr
        results = json.loads((tmp_path / "results.json").read_text())
        assert results["command"] == "attest node" and results["summary"]["fail"] == 0

        # a replayed nonce is refused by the agent
        nonce = b"\x42" * 32
        endpoint.evidence(nonce)
        with pytest.raises(AgentError, match="409"):
            endpoint.evidence(nonce)

        # a client certificate from another CA is refused by the agent
        other = generate(tmp_path / "other", "ecdsa-p256")
        rogue = issue(other.ca_cert, other.ca_key, tmp_path / "rogue", "intruder", server=False)
        with pytest.raises(AgentError):
            AgentEndpoint(node.url, ca=str(keys / "ca.pem"), cert=str(rogue.cert), key=str(rogue.key)).get(
                "/v1/health")
    finally:
        stop(node.run_dir)

    # a reboot of the same node: same TPM, /var opens again and keeps the filesystem of the first boot;
    # then an update: another image signed with the same key opens the same /var with its own signed policy
    for label, out in (("reboot", image), ("update", _updated_image(example, tmp_path))):
        node = _boot(out, tmp_path / "run", keys)
        try:
            console = _console(node).replace("\r", "")
            assert "/var unlocked by the TPM (keyslot 0, customer-signed policy 11)\n" in console, \
                (label, console[-2000:])
            endpoint = AgentEndpoint(node.url, ca=str(keys / "ca.pem"), cert=str(node.client_cert),
                                     key=str(node.client_key))
            again = attest_node(endpoint, manifest=str(out / "manifest.json"), ak=str(node.ak), scan=False)
            assert again.exit_code() == 0, (label, [(f.id, f.observed) for f in again.findings
                                                    if f.status is Status.FAIL])
        finally:
            stop(node.run_dir)


def _updated_image(example: Path, tmp_path: Path) -> Path:
    """The example at version 1.0.1: another root, another PCR 11, the same signing key."""
    from obelisk.core.cachedir import cache_root
    from obelisk.image.build import build
    from obelisk.image.cache import StepCache
    from obelisk.image.spec import load_spec

    spec_text = (example / "spec.yaml").read_text()
    assert 'version: "1.0.0"' in spec_text
    (example / "spec-update.yaml").write_text(spec_text.replace('version: "1.0.0"', 'version: "1.0.1"'))
    out = tmp_path / "update-out"
    build(load_spec(example / "spec-update.yaml"), out, cache=StepCache(cache_root() / "image"), quiet=True)
    return out


def _tampered_copy(out: Path, dest: Path, victim: str) -> None:
    """OUT with one file of the SquashFS changed and its old signature kept."""
    from obelisk.image.squashfs import pack

    shutil.copytree(out, dest)
    tree = dest.parent / "tampered-tree"
    subprocess.run(["rdsquashfs", "-q", "-u", "/", "-p", str(tree), "-C", str(out / "rootfs.squashfs")], check=True)
    target = tree / victim.lstrip("/")
    target.write_bytes(target.read_bytes() + b"\0tampered")
    from obelisk.image import manifest

    m = manifest.load(out / "manifest.json")
    dump = "".join(f"# file: {f.path.lstrip('/')}\nsecurity.ima=0s{f.ima}\n\n" for f in m.regular_files())
    (dest.parent / "tampered.dump").write_text(dump)
    (dest / "rootfs.squashfs").unlink()
    pack(tree, dest.parent / "tampered.dump", dest / "rootfs.squashfs", m.source_date_epoch)
    assert base64.b64decode(next(f.ima for f in m.files if f.path == victim))


def test_tampered_file_is_refused_and_named(example, image, tmp_path):
    from obelisk.attest.agent_client import AgentEndpoint, attest_node
    from obelisk.image.verify import verify_image
    from obelisk.lab.boot import stop

    keys = example / "keys"
    victim = "/usr/bin/mkdir"  # run by /sbin/obelisk-init at every boot
    bad = tmp_path / "bad-out"
    _tampered_copy(image, bad, victim)
    offline = {f.id: f for f in verify_image(bad, keys / "ca.pem").findings}
    assert offline[f"image.file:{victim}"].status is Status.FAIL

    node = _boot(bad, tmp_path / "run", keys)
    try:
        console = _console(node)
        assert "mkdir: Permission denied" in console, console[-2000:]
        # another root measures into PCR 11 differently: the TPM keeps /var's key
        assert "FATAL: /var stays locked" in console and "PCR 11" in console, console[-2000:]
        endpoint = AgentEndpoint(node.url, ca=str(keys / "ca.pem"), cert=str(node.client_cert),
                                 key=str(node.client_key))
        result = attest_node(endpoint, manifest=str(image / "manifest.json"), ak=str(node.ak), scan=False)
        failed = {f.target: f for f in result.findings if f.status is Status.FAIL and f.target.startswith("/")}
        assert victim in failed, [(f.id, f.target) for f in result.findings if f.status is Status.FAIL]
        by_id = {f.id: f for f in result.findings}
        assert by_id["attest.reference.pcr11"].status is Status.FAIL
        # the node's PCR 11 log replays to the quote and names the root, not the command line
        assert by_id["attest.bootevents.replay"].status is Status.PASS
        assert by_id["attest.reference.boot-event:obelisk.root"].status is Status.FAIL
        assert by_id["attest.reference.boot-event:obelisk.cmdline"].status is Status.PASS
        # and the node's agent reports the consequence: /var is a tmpfs
        assert by_id["attest.node.var"].status is Status.FAIL and by_id["attest.node.var"].observed == "tmpfs tmpfs"
        assert result.exit_code() == 1
    finally:
        stop(node.run_dir)


def test_example_rebuilt_from_a_clean_cache_is_byte_identical(example, image, tmp_path):
    """The Debian userland is fetched again (mmdebstrap), signed and packed again: same bytes.

    The kernel comes from kernel_hardening's own build cache here; its reproducibility is that
    component's test.
    """
    from obelisk.image.build import build
    from obelisk.image.cache import StepCache
    from obelisk.image.spec import load_spec

    again = tmp_path / "again"
    result = build(load_spec(example / "spec.yaml"), again, cache=StepCache(tmp_path / "clean-cache"), quiet=True)
    assert result.steps["rootfs-base"] == "built" and result.steps["squashfs"] == "built"
    assert sorted(p.name for p in again.iterdir()) == sorted(p.name for p in image.iterdir())
    for p in image.iterdir():
        assert (again / p.name).read_bytes() == p.read_bytes(), p.name
