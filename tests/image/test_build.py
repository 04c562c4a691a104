"""The build pipeline: signed SquashFS, manifest, verify, tampering, reproducibility, atomic output, cache."""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess

import pytest

from obelisk.core.findings import Status
from obelisk.image import build as buildmod
from obelisk.image import cpio, manifest
from obelisk.image.build import build
from obelisk.image.cache import StepCache
from obelisk.image.spec import load_spec
from obelisk.image.verify import verify_image

from .conftest import SPEC, make_project


def _failed(report):
    return {f.id: f for f in report.findings if f.status is not Status.PASS}


def test_build_produces_verified_image(built_image):
    root, out = built_image
    names = sorted(p.name for p in out.iterdir())
    assert names == ["ima-reference.json", "initramfs.cpio", "manifest.json", "manifest.json.sig", "rootfs.squashfs",
                     "sbom.spdx.json"]
    report = verify_image(out, root / "keys/ca.pem")
    assert not _failed(report), [f.to_json() for f in _failed(report).values()]


def test_manifest_contents(built_image):
    from obelisk.ima_policy import reference

    root, out = built_image
    m = manifest.load(out / "manifest.json")
    files = files_of(m)
    assert files["/etc/secret.conf"].mode == "0600"  # from the spec
    assert files["/usr/local/bin/tool"].mode == "0755"  # executable normalised
    assert files["/bin/sh"] == manifest.FileRecord(path="/bin/sh", type="slink", target="/bin/busybox")
    assert all(f.ima for f in files.values() if f.type == "file")
    assert m.ima_reference.digests("/bin/busybox") == ("sha256:" + files["/bin/busybox"].sha256,)
    assert reference.load(out / "ima-reference.json") == m.ima_reference
    assert m.spec["name"] == "test-node" and m.tool.name == "obelisk"
    for name, rec in m.artifacts.items():
        assert rec.size == (out / name).stat().st_size
    # no login path into the node
    assert "/bin/login" not in files and "/sbin/getty" not in files and "/bin/su" not in files
    sbom = json.loads((out / "sbom.spdx.json").read_text())
    assert sbom["spdxVersion"] == "SPDX-2.3"
    assert {p["name"] for p in sbom["packages"]} == {"busybox-static"}
    assert len(sbom["files"]) == len(m.regular_files()) == sum(1 for f in files.values() if f.type == "file")


def test_manifest_without_a_kernel_predicts_no_pcrs_and_carries_the_sysinit_command(built_image):
    """No kernel, no UKI: nothing measures PCRs 4, 7 or 11 the build could predict (the UKI's prediction is
    tested in test_uki.py and on a booted node in test_e2e.py). The root still carries the constant
    TPM2_PCR_Extend of the sysinit phase that /sbin/obelisk-init sends, recomputed here."""
    import hashlib

    from obelisk.image import measure

    _, out = built_image
    m = manifest.load(out / "manifest.json")
    line = m.boot.cmdline
    assert line.startswith("panic=-1 ") and "obelisk.image=test-node slab_nomerge" in line
    # the profile's words, then the spec's
    assert "pti=on vsyscall=none iommu.strict=1 iommu.passthrough=0 debugfs=off console=ttyS0" in line
    assert "dm-mod.create=" not in line  # no UKI, no verity root
    assert m.boot.uki is None and m.boot.verity is None and m.boot.disk_image is None
    assert m.pcrs.predicted == {} and m.pcrs.predictions == ()
    assert not (out / "disk.raw").exists() and not (out / "uki.efi").exists()
    assert m.disk == manifest.Disk(var="plain", policy=None, sealed_to={}, signed_policy=None,
                                   policy_certificate=None, size_mib=64)
    sysinit = hashlib.sha256(b"sysinit").digest()
    assert files_of(m)["/usr/lib/obelisk/boot-complete.tpm2"].sha256 == hashlib.sha256(
        measure.extend_command(11, sysinit)).hexdigest()


def test_owners_from_the_spec_are_in_the_image(built_image):
    """rootfs.permissions' uid/gid, set under fakeroot, read back by rdsquashfs; everything else root."""
    _, out = built_image
    listing = subprocess.run(["rdsquashfs", "-d", str(out / "rootfs.squashfs")], capture_output=True, text=True,
                             check=True).stdout.splitlines()
    owners = {line.split()[1]: tuple(line.split()[3:5]) for line in listing if len(line.split()) >= 5}
    assert owners["srv/app"] == ("1000", "1000") and owners["srv/app/state.db"] == ("1000", "1000")
    assert {o for path, o in owners.items() if not path.startswith("srv/app")} == {("0", "0")}
    m = manifest.load(out / "manifest.json")
    assert files_of(m)["/srv/app/state.db"].uid == 1000 and files_of(m)["/etc/secret.conf"].uid is None
    written = {f["path"]: f for f in manifest.to_json(m)["files"]}
    assert "uid" not in written["/etc/secret.conf"] and written["/srv/app/state.db"]["uid"] == 1000  # root: left out
    assert files_of(m)["/srv/app/state.db"].ima  # the signature survived fakeroot


def files_of(m: manifest.Manifest) -> dict[str, manifest.FileRecord]:
    return {f.path: f for f in m.files}


def test_squashfs_checked_by_independent_tools(built_image, tmp_path):
    """unsquashfs lists modes/owners; files unpacked with their xattrs pass evmctl ima_verify."""
    root, out = built_image
    listing = subprocess.run(["unsquashfs", "-lln", str(out / "rootfs.squashfs")], capture_output=True,
                             check=True, text=True).stdout
    line = next(ln for ln in listing.splitlines() if ln.endswith("/etc/secret.conf"))
    assert line.startswith("-rw------- 0/0")
    dest = tmp_path / "x"
    subprocess.run(["unsquashfs", "-q", "-n", "-d", str(dest), str(out / "rootfs.squashfs")], check=True,
                   capture_output=True)
    m = manifest.load(out / "manifest.json")
    checked = 0
    for f in m.regular_files():
        path = dest / f.path.lstrip("/")
        sigfile = tmp_path / "sig"
        # evmctl reads the signature from FILE.sig with --sigfile: the bytes the image carries.
        shutil.copyfile(path, sigfile)
        sigfile.with_name("sig.sig").write_bytes(base64.b64decode(f.ima))
        r = subprocess.run(["evmctl", "ima_verify", "--sigfile", "--key", str(root / "keys/ima.der"), str(sigfile)],
                           capture_output=True, text=True)
        assert r.returncode == 0, (f.path, r.stdout, r.stderr)
        checked += 1
    assert checked > 5


def test_reproducible_from_clean_caches(built_image, tmp_path):
    root, out = built_image
    again = tmp_path / "again"
    build(load_spec(root / "spec.yaml"), again, cache=StepCache(tmp_path / "cache2"), quiet=True)
    for p in out.iterdir():
        assert (again / p.name).read_bytes() == p.read_bytes(), p.name


def test_warm_cache_reuses_steps(built_image, tmp_path):
    root, _ = built_image
    result = build(load_spec(root / "spec.yaml"), tmp_path / "o", cache=StepCache(root / "cache"), quiet=True)
    assert set(result.steps.values()) == {"cached"}


def _copy(out, tmp_path):
    dest = tmp_path / "copy"
    shutil.copytree(out, dest)
    return dest


def test_tampered_file_in_squashfs_is_named(built_image, tmp_path):
    """Repack the image with one file changed but its old signature kept."""
    root, out = built_image
    tree = tmp_path / "tree"
    subprocess.run(["rdsquashfs", "-q", "-u", "/", "-p", str(tree), "-C", str(out / "rootfs.squashfs")], check=True)
    (tree / "etc/obelisk/image").write_text("name=evil\n")
    m = manifest.load(out / "manifest.json")
    dump = "".join(f"# file: {f.path.lstrip('/')}\nsecurity.ima=0s{f.ima}\n\n" for f in m.regular_files())
    (tmp_path / "x.dump").write_text(dump)
    bad = _copy(out, tmp_path)
    os.unlink(bad / "rootfs.squashfs")
    from obelisk.image.squashfs import pack
    pack(tree, tmp_path / "x.dump", bad / "rootfs.squashfs", 1700000000,
         [(f.path.lstrip("/"), f.uid, f.gid) for f in m.files if f.uid is not None])
    failed = _failed(verify_image(bad, root / "keys/ca.pem"))
    assert "image.artifact:rootfs.squashfs" in failed
    f = failed["image.file:/etc/obelisk/image"]
    assert "content differs" in f.observed and "bad-signature" in f.observed
    assert len([k for k in failed if k.startswith("image.file:/")]) == 1


def test_altered_manifest_fails_signature(built_image, tmp_path):
    root, out = built_image
    bad = _copy(out, tmp_path)
    data = (bad / "manifest.json").read_bytes().replace(b'"version": "1.0"', b'"version": "1.1"', 1)
    (bad / "manifest.json").write_bytes(data)
    failed = _failed(verify_image(bad, root / "keys/ca.pem"))
    assert "does not match" in failed["image.manifest.signature"].observed


def test_other_ca_is_refused(built_image, tmp_path):
    from obelisk.signer.keygen import generate

    root, out = built_image
    other = generate(tmp_path / "other", "ecdsa-p256")
    failed = _failed(verify_image(out, other.ca_cert))
    assert "image.manifest.signature" in failed
    assert "image.files" in failed  # file signatures are not trusted without a trusted manifest


def test_extra_and_missing_artifacts(built_image, tmp_path):
    root, out = built_image
    bad = _copy(out, tmp_path)
    (bad / "sbom.spdx.json").unlink()
    (bad / "extra.bin").write_bytes(b"x")
    failed = _failed(verify_image(bad, root / "keys/ca.pem"))
    assert failed["image.artifact:sbom.spdx.json"].observed == "missing"
    assert "not in the manifest" in failed["image.artifact:extra.bin"].observed


def test_interrupted_build_leaves_no_out(tmp_path, monkeypatch, obelisk_cli):
    spec = make_project(tmp_path)

    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(manifest, "sign", boom)
    with pytest.raises(KeyboardInterrupt):
        build(load_spec(spec), tmp_path / "out", cache=StepCache(tmp_path / "cache"), quiet=True)
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]
    r = obelisk_cli("image", "verify", str(tmp_path / "out"), "--ca", str(tmp_path / "keys/ca.pem"))
    assert r.returncode == 2 and "not an image directory" in r.stderr


def test_killed_build_process_leaves_no_verifiable_out(tmp_path):
    """SIGKILL a real build process at several points: OUT is either absent or complete and verified."""
    import signal
    import sys
    import time

    spec = make_project(tmp_path)
    env = dict(os.environ, PYTHONPATH=str(buildmod.__file__).rsplit("/obelisk/", 1)[0])
    for delay in (0.3, 0.8):
        out = tmp_path / f"out{delay}"
        proc = subprocess.Popen([sys.executable, "-m", "obelisk", "build", str(spec), "-o", str(out), "-q",
                                 "--no-cache", "--cache-dir", str(tmp_path / "c")], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        if out.exists():  # finished before the kill: must then be whole
            assert not _failed(verify_image(out, tmp_path / "keys/ca.pem"))
        else:
            assert not (out / "manifest.json").exists()


def test_initramfs_is_newc_with_init(built_image):
    _, out = built_image
    entries = {e.name: e for e in cpio.parse((out / "initramfs.cpio").read_bytes())}
    assert entries["init"].mode & 0o111
    assert b"switch_root /newroot /sbin/obelisk-init" in entries["init"].data
    assert "etc/keys/x509_ima.der" in entries
    assert {e.mtime for e in entries.values()} == {1700000000}
    assert {(e.uid, e.gid) for e in entries.values()} == {(0, 0)}


def test_build_cli_and_verify_cli(tmp_path, obelisk_cli):
    spec = make_project(tmp_path, key_type="rsa-2048")
    r = obelisk_cli("build", str(spec), "-o", str(tmp_path / "out"), "--format", "json",
                    env={"OBELISK_CACHE": str(tmp_path / "cache")})
    assert r.returncode == 0, r.stderr
    assert "rootfs.squashfs" in json.loads(r.stdout)["artifacts"]
    r = obelisk_cli("image", "verify", str(tmp_path / "out"), "--ca", str(tmp_path / "keys/ca.pem"), "--format",
                    "json")
    assert r.returncode == 0, r.stdout
    (tmp_path / "out/initramfs.cpio").write_bytes(b"x")
    r = obelisk_cli("image", "verify", str(tmp_path / "out"), "--ca", str(tmp_path / "keys/ca.pem"))
    assert r.returncode == 1


def test_login_binaries_are_refused(tmp_path):
    spec = make_project(tmp_path)
    (tmp_path / "overlay/usr/sbin").mkdir(parents=True)
    (tmp_path / "overlay/usr/sbin/sshd").write_text("x")
    with pytest.raises(Exception) as info:
        build(load_spec(spec), tmp_path / "out", cache=StepCache(tmp_path / "cache"), quiet=True)
    assert "usr/sbin/sshd" in str(info.value)
    assert not (tmp_path / "out").exists()


def test_encrypted_var_needs_the_unlock_tools_in_a_user_rootfs(tmp_path):
    """A directory base cannot be checked before extraction: the compose step names what is missing."""
    from obelisk.core.errors import InputError

    (tmp_path / "tree/usr/sbin").mkdir(parents=True)
    (tmp_path / "tree/usr/sbin/cryptsetup").write_text("x")
    spec = make_project(tmp_path, spec=SPEC.replace("rootfs:\n", "rootfs:\n  base: directory\n  path: tree\n")
                        + "disk:\n  encryption: true\n")
    with pytest.raises(InputError, match="no mke2fs"):
        build(load_spec(spec), tmp_path / "out", cache=StepCache(tmp_path / "cache"), quiet=True)
    assert not (tmp_path / "out").exists()


def test_read_back_without_privilege_lists_xattrs_per_file(built_image, tmp_path, monkeypatch):
    """Without the right to set security.* xattrs, each file's attributes come from `rdsquashfs -x`."""
    from obelisk.core import tools
    from obelisk.image import squashfs

    _, out = built_image
    image = out / "rootfs.squashfs"
    privileged = squashfs.read_back(image, tmp_path / "a")
    real_run = tools.run

    def no_xattr_privilege(tool, args, **kw):
        if "--set-xattr" in args:
            return subprocess.CompletedProcess(args, 1, b"", b"Operation not permitted")
        return real_run(tool, args, **kw)

    monkeypatch.setattr(squashfs.tools, "run", no_xattr_privilege)
    plain = squashfs.read_back(image, tmp_path / "b")
    assert plain.xattrs == privileged.xattrs
    assert all("security.ima" in v for v in plain.xattrs.values())


def test_worker_configuration_keeps_benchmark_modes(tmp_path):
    """The rendered Kubernetes configuration inside the SquashFS still passes the CIS/STIG scan."""
    from obelisk.cis_checks.scan import scan

    spec = make_project(tmp_path, spec=__import__("tests.image.conftest", fromlist=["SPEC"]).SPEC.replace(
        "kubernetes:\n  role: none", "kubernetes:\n  role: worker"))
    out = tmp_path / "out"
    build(load_spec(spec), out, cache=StepCache(tmp_path / "cache"), quiet=True)
    files = files_of(manifest.load(out / "manifest.json"))
    kubelet = [p for p in files if p.startswith("/etc/kubernetes/")]
    assert kubelet, "no Kubernetes configuration in the image"
    unpacked = tmp_path / "unpacked"
    subprocess.run(["rdsquashfs", "-q", "-u", "/", "-p", str(unpacked), "-C", "-O", str(out / "rootfs.squashfs")],
                   check=True)
    report = scan(unpacked)
    failed = [(f.id, f.observed) for f in report.findings if f.status is Status.FAIL]
    assert not failed, failed
    assert sum(f.status is Status.PASS for f in report.findings) >= 20


def test_fleet_settings_go_on_the_root_and_the_join_token_never_does(tmp_path):
    """fleet.url, fleet.interval and fleet.ca become /etc/obelisk/fleet.json and fleet-ca.pem on the signed root."""
    from obelisk.image import build as buildmod
    from obelisk.image import fleet_node
    from obelisk.image.spec import load_spec
    from obelisk.signer.keygen import generate

    keys = generate(tmp_path / "keys", "ecdsa-p256")
    (tmp_path / "spec.yaml").write_text(
        "name: n\nima: {policy: none}\nrootfs: {base: debian, packages: [python3-tpm2-pytss]}\n"
        f"fleet: {{url: 'https://fleet.example:8444', interval: 30, ca: {keys.ca_cert}}}\n")
    files = {f.path: f for f in buildmod.fleet_files(load_spec(tmp_path / "spec.yaml"))}
    assert set(files) == {"etc/obelisk/fleet.json", "etc/obelisk/fleet-ca.pem"}
    assert fleet_node.parse(files["etc/obelisk/fleet.json"].data, "x") == fleet_node.FleetNode(
        url="https://fleet.example:8444", interval=30, ca="/etc/obelisk/fleet-ca.pem")
    assert files["etc/obelisk/fleet-ca.pem"].data.startswith(b"-----BEGIN CERTIFICATE-----")
    (tmp_path / "spec.yaml").write_text("name: n\nima: {policy: none}\n")
    assert buildmod.fleet_files(load_spec(tmp_path / "spec.yaml")) == []
