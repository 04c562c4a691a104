"""`obelisk ima sign --oci`: an OCI layout's files signed in its layers, checked by independent readers
(hashlib for digests, GNU tar to unpack with xattrs, evmctl to verify, umoci to read the layout)."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from obelisk.core import tools
from obelisk.core.errors import InputError
from obelisk.signer import imasig
from obelisk.signer.keys import load_certificate, load_signing_key
from obelisk.signer.oci_sign import sign_layout

from . import ocibuild
from .ocibuild import LayoutBuilder, regular, special
from .test_cli import one_line_error

XATTR = "SCHILY.xattr.security.ima"
NON_UTF8 = b"opt/caf\xe9".decode("utf-8", "surrogateescape")


def first_layer() -> list[ocibuild.Entry]:
    motd_stale = regular("etc/issue", b"stale signature here\n")
    motd_stale.info.pax_headers = {XATTR: "\x03\x02stale", "SCHILY.xattr.user.comment": "kept",
                                   "mtime": "1700000000.123456789"}
    return ocibuild.busybox_layer() + [
        motd_stale,
        special("dev", tarfile.DIRTYPE),
        special("dev/null", tarfile.CHRTYPE, devmajor=1, devminor=3, mode=0o666),
        special("run", tarfile.DIRTYPE),
        special("run/fifo", tarfile.FIFOTYPE, mode=0o600),
        regular("opt/" + "long-name-" * 20, b"a name longer than ustar's 100 bytes\n", uid=3000000, gid=3000001),
        regular(NON_UTF8, b"a name that is not UTF-8\n"),
    ]


def second_layer() -> list[ocibuild.Entry]:
    return [regular("usr/bin/hello", b"#!/bin/sh\necho hello\n", 0o755), regular("etc/.wh..wh..opq", b"")]


def build(root: Path) -> Path:
    b = LayoutBuilder(root)
    base = b.layer(ocibuild.tar_of(first_layer()))
    top = b.layer(ocibuild.tar_of(second_layer()), compress=False)
    amd64 = b.image([base, top], "amd64")
    arm64 = b.image([base], "arm64")
    platforms = b.image_index([{**amd64, "platform": {"architecture": "amd64", "os": "linux"}},
                               {**arm64, "platform": {"architecture": "arm64", "os": "linux"}}],
                              annotations={"org.opencontainers.image.ref.name": "multi"})
    sbom = b.json_blob({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                        "config": b.blob(b"{}", "application/vnd.example.sbom.config"),
                        "layers": [b.blob(b'{"sbom": 1}', "application/vnd.example.sbom+json")]},
                       "application/vnd.oci.image.manifest.v1+json")
    direct = {**amd64, "annotations": {"org.opencontainers.image.ref.name": "latest"}}
    return b.index([platforms, direct, sbom])


def sign(layout: Path, keys) -> object:
    return sign_layout(str(layout), load_signing_key(str(keys.ima_key)), load_certificate(keys.ima_cert))


def members(tar: bytes) -> list[tuple[tarfile.TarInfo, bytes | None]]:
    with tarfile.open(fileobj=io.BytesIO(tar), encoding="utf-8", errors="surrogateescape") as tf:
        return [(m, tf.extractfile(m).read() if m.isreg() else None) for m in tf]  # type: ignore[union-attr]


def old_tars() -> list[bytes]:
    return [ocibuild.tar_of(first_layer()), ocibuild.tar_of(second_layer())]


def evmctl_verify(path: Path, cert_der: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([tools.which("evmctl"), "ima_verify", "--key", str(cert_der), str(path)],
                          capture_output=True, text=True, errors="replace")


@pytest.fixture
def signed(tmp_path, keys):
    layout = build(tmp_path / "layout")
    summary = sign(layout, keys)
    return layout, summary, keys


def test_every_digest_size_and_diff_id_matches_and_old_blobs_are_gone(signed):
    layout, summary, _ = signed
    walked = ocibuild.walk(layout)
    assert len(walked.images) == 4  # amd64 twice (via the nested index and directly), arm64, the SBOM
    assert summary.images == 2 and summary.artifacts == 1 and summary.layers == 2
    # busybox, etc/motd, etc/issue, the long name, the non-UTF-8 name; usr/bin/hello
    assert summary.signed == 6
    assert summary.skipped == {"device": 1, "directory": 4, "fifo": 1, "hardlink": 1, "symlink": 1, "whiteout": 2}
    on_disk = {"sha256:" + p.name for p in (layout / "blobs" / "sha256").iterdir()}
    assert on_disk == walked.reachable  # old layers, configs, manifests and index removed; nothing else
    assert summary.removed_blobs == 7  # 2 layers, 2 configs, 2 manifests and the nested index
    assert not [p for p in (layout / "blobs").rglob(".*")]  # no temporary file left


def test_untouched_fields_and_data_are_kept(signed):
    layout, _, _ = signed
    walked = ocibuild.walk(layout)
    new = sorted(walked.layers.values(), key=len, reverse=True)
    for old_tar, new_tar in zip(old_tars(), new, strict=True):
        before, after = members(old_tar), members(new_tar)
        assert [m.name for m, _ in before] == [m.name for m, _ in after]
        for (a, da), (b, db) in zip(before, after, strict=True):
            for attr in ("type", "uid", "gid", "uname", "gname", "mtime", "linkname", "devmajor", "devminor",
                         "size"):
                assert getattr(a, attr) == getattr(b, attr), (a.name, attr)
            assert a.mode & 0o7777 == b.mode & 0o7777
            assert da == db, a.name
            rest = {k: v for k, v in b.pax_headers.items() if k not in (XATTR, "hdrcharset")}
            assert rest == {k: v for k, v in a.pax_headers.items() if k not in (XATTR, "hdrcharset")}, a.name
    issue = next(m for m, _ in members(new[0]) if m.name == "etc/issue")
    assert issue.pax_headers["SCHILY.xattr.user.comment"] == "kept"
    assert issue.pax_headers["mtime"] == "1700000000.123456789"
    value = issue.pax_headers[XATTR].encode("utf-8", "surrogateescape")
    assert isinstance(imasig.parse(value), imasig.ImaSignature)  # the stale value was replaced


def test_gnu_tar_unpacks_signatures_that_evmctl_accepts_and_a_tampered_file_fails(signed, tmp_path):
    layout, _, keys = signed
    walked = ocibuild.walk(layout)
    checked = 0
    for n, tar in enumerate(walked.layers.values()):
        root = tmp_path / f"unpacked{n}"
        root.mkdir()
        subprocess.run(["tar", "--xattrs", "--xattrs-include=security.ima", "-xf", "-", "-C", str(root)],
                       input=tar, check=True)
        for member, _ in members(tar):
            path = root / os.fsdecode(member.name.encode("utf-8", "surrogateescape"))
            if member.isreg() and not member.name.split("/")[-1].startswith(".wh."):
                proc = evmctl_verify(path, keys.ima_cert_der)
                assert proc.returncode == 0, (member.name, proc.stdout, proc.stderr)
                checked += 1
            elif not member.issym() and not member.islnk():  # a hard link is its target's inode
                with pytest.raises(OSError):
                    os.getxattr(path, "security.ima", follow_symlinks=False)
        busybox = root / "bin/busybox"
        if busybox.exists():
            assert os.stat(root / "bin/ls").st_ino == os.stat(busybox).st_ino  # the hard link shares the signature
            data = bytearray(busybox.read_bytes())
            data[len(data) // 2] ^= 1
            busybox.write_bytes(bytes(data))  # xattr kept: same inode
            assert evmctl_verify(busybox, keys.ima_cert_der).returncode != 0
    assert checked == 6


def test_signing_twice_gives_the_same_blobs(tmp_path, rsa_keys):
    layout = build(tmp_path / "layout")
    sign(layout, rsa_keys)
    first = {p.relative_to(layout): p.read_bytes() for p in layout.rglob("*") if p.is_file()}
    summary = sign(layout, rsa_keys)
    assert summary.removed_blobs == 0
    assert {p.relative_to(layout): p.read_bytes() for p in layout.rglob("*") if p.is_file()} == first


def test_umoci_reads_and_unpacks_the_signed_layout(signed, tmp_path):
    """umoci (an independent OCI implementation) checks every digest as it unpacks, and applies the
    security.ima records to the files it writes."""
    layout, _, keys = signed
    proc = subprocess.run([tools.which("umoci"), "stat", "--image", f"{layout}:latest"], capture_output=True)
    assert proc.returncode == 0, proc.stderr
    bundle = tmp_path / "bundle"
    proc = subprocess.run([tools.which("umoci"), "unpack", "--image", f"{layout}:latest", str(bundle)],
                          capture_output=True)
    assert proc.returncode == 0, proc.stderr
    for name in ("bin/busybox", "usr/bin/hello", "opt/" + "long-name-" * 20):
        assert evmctl_verify(bundle / "rootfs" / name, keys.ima_cert_der).returncode == 0, name
    assert not (bundle / "rootfs/etc/motd").exists()  # the top layer's opaque whiteout, applied


def test_an_interrupted_sign_leaves_the_old_layout(tmp_path, keys, monkeypatch):
    layout = build(tmp_path / "layout")
    index_before = (layout / "index.json").read_bytes()
    from obelisk.signer import oci_sign

    calls = []

    def fail_on_second(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    real = oci_sign.oci_layer.rewrite
    monkeypatch.setattr(oci_sign.oci_layer, "rewrite", fail_on_second)
    with pytest.raises(KeyboardInterrupt):
        sign(layout, keys)
    assert (layout / "index.json").read_bytes() == index_before
    ocibuild.walk(layout)  # every old blob still there and matching
    assert not [p for p in (layout / "blobs").rglob(".*")]


# ---- bad input: one line naming the file and field, exit 2 ---------------------------------------------

def cli_sign(obelisk_cli, keys, *paths, extra=()):
    return obelisk_cli("ima", "sign", "--key", str(keys.ima_key), "--cert", str(keys.ima_cert), "--format", "json",
                       *extra, *map(str, paths))


def first_manifest(layout: Path) -> tuple[Path, dict]:
    desc = json.loads((layout / "index.json").read_text())["manifests"][1]
    path = layout / "blobs/sha256" / desc["digest"].split(":")[1]
    return path, json.loads(path.read_text())


def test_cli_signs_a_layout(obelisk_cli, rsa_keys, tmp_path):
    layout = build(tmp_path / "layout")
    proc = cli_sign(obelisk_cli, rsa_keys, layout, extra=("--oci",))
    assert proc.returncode == 0, proc.stderr
    (result,) = json.loads(proc.stdout)["layouts"]
    assert result["signed"] == 6 and result["images"] == 2
    ocibuild.walk(layout)


def test_cli_refuses_a_layout_without_oci(obelisk_cli, rsa_keys, tmp_path):
    layout = build(tmp_path / "layout")
    one_line_error(cli_sign(obelisk_cli, rsa_keys, layout), str(layout), "add --oci")


def test_not_a_layout(obelisk_cli, rsa_keys, tmp_path):
    one_line_error(cli_sign(obelisk_cli, rsa_keys, tmp_path, extra=("--oci",)), str(tmp_path), "no oci-layout file")


@pytest.mark.parametrize("damage", ["blob-digest", "missing-blob", "traversal-digest", "symlinked-blob",
                                    "not-a-tar", "damaged-tar", "oversized-index", "zstd", "diff-id",
                                    "bad-gzip"])
def test_bad_layouts_are_refused_by_name(obelisk_cli, rsa_keys, tmp_path, damage):
    layout = build(tmp_path / "layout")
    manifest_path, manifest = first_manifest(layout)
    layer0 = manifest["layers"][0]
    layer0_path = layout / "blobs/sha256" / layer0["digest"].split(":")[1]

    def rewrite_manifest(doc: dict) -> None:
        """Store an edited manifest and point index.json's entry 1 at it (the manifest's digest is honest)."""
        desc = LayoutBuilder.__new__(LayoutBuilder)
        desc.root = layout
        new = desc.json_blob(doc, doc["mediaType"])
        index = json.loads((layout / "index.json").read_text())
        index["manifests"][1].update(digest=new["digest"], size=new["size"])
        (layout / "index.json").write_text(json.dumps(index))

    if damage == "blob-digest":
        data = bytearray(layer0_path.read_bytes())
        data[-10] ^= 1
        layer0_path.write_bytes(bytes(data))
        needles = [str(layer0_path), "does not match its digest"]
    elif damage == "missing-blob":
        manifest["layers"][0] = {**layer0, "digest": "sha256:" + "0" * 64}
        rewrite_manifest(manifest)
        needles = ["layers[0].digest", "is missing"]
    elif damage == "traversal-digest":
        manifest["layers"][0] = {**layer0, "digest": "sha256:../../../../etc/passwd"}
        rewrite_manifest(manifest)
        needles = ["layers[0].digest", "is not a sha256 or sha512 digest"]
    elif damage == "symlinked-blob":
        outside = tmp_path / "outside"
        shutil.move(layer0_path, outside)
        layer0_path.symlink_to(outside)
        needles = [str(layer0_path), "symlink"]
    elif damage == "not-a-tar":
        junk = b"this is not a tar archive " * 100
        builder = LayoutBuilder.__new__(LayoutBuilder)
        builder.root = layout
        manifest["layers"][1] = builder.blob(junk, "application/vnd.oci.image.layer.v1.tar")
        rewrite_manifest(manifest)
        needles = ["not a tar archive"]
    elif damage == "damaged-tar":  # a valid first entry, then a header that is not one: not the end
        tar = ocibuild.tar_of(second_layer())
        junk = tar[:1536] + b"\xff" * 512 + tar[1536:]
        builder = LayoutBuilder.__new__(LayoutBuilder)
        builder.root = layout
        manifest["layers"][1] = builder.blob(junk, "application/vnd.oci.image.layer.v1.tar")
        rewrite_manifest(manifest)
        needles = ["damaged header or data after the end of the archive"]
    elif damage == "oversized-index":
        index = json.loads((layout / "index.json").read_text())
        index["annotations"] = {"padding": "x" * (5 << 20)}
        (layout / "index.json").write_text(json.dumps(index))
        needles = ["index.json", "larger than"]
    elif damage == "zstd":
        manifest["layers"][0] = {**layer0, "mediaType": "application/vnd.oci.image.layer.v1.tar+zstd"}
        rewrite_manifest(manifest)
        needles = ["layers[0].mediaType", "zstd layers are not supported"]
    elif damage == "diff-id":
        config_path = layout / "blobs/sha256" / manifest["config"]["digest"].split(":")[1]
        config = json.loads(config_path.read_text())
        config["rootfs"]["diff_ids"][0] = "sha256:" + "1" * 64
        builder = LayoutBuilder.__new__(LayoutBuilder)
        builder.root = layout
        manifest["config"] = builder.json_blob(config, manifest["config"]["mediaType"])
        rewrite_manifest(manifest)
        needles = ["rootfs.diff_ids[0]"]
    else:  # bad-gzip: a layer said to be gzip that is a plain tar
        builder = LayoutBuilder.__new__(LayoutBuilder)
        builder.root = layout
        manifest["layers"][1] = {**manifest["layers"][1], "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip"}
        rewrite_manifest(manifest)
        needles = ["not gzip"]
    index_before = (layout / "index.json").read_bytes()
    one_line_error(cli_sign(obelisk_cli, rsa_keys, layout, extra=("--oci",)), *needles)
    assert (layout / "index.json").read_bytes() == index_before


def test_a_key_not_matching_the_certificate_is_refused_before_any_work(tmp_path, keys, other_keys):
    layout = build(tmp_path / "layout")
    with pytest.raises(InputError):
        sign_layout(str(layout), load_signing_key(str(other_keys.ima_key)), load_certificate(keys.ima_cert))
    assert not [p for p in (layout / "blobs").rglob(".*")]


def test_other_hash_algorithms_verify_with_evmctl(tmp_path, rsa_keys):
    layout = build(tmp_path / "layout")
    sign_layout(str(layout), load_signing_key(str(rsa_keys.ima_key)), load_certificate(rsa_keys.ima_cert),
                hash_name="sha512")
    tar = max(ocibuild.walk(layout).layers.values(), key=len)
    root = tmp_path / "unpacked"
    root.mkdir()
    subprocess.run(["tar", "--xattrs", "--xattrs-include=security.ima", "-xf", "-", "-C", str(root)], input=tar,
                   check=True)
    value = imasig.parse(os.getxattr(root / "bin/busybox", "security.ima"))
    assert isinstance(value, imasig.ImaSignature) and value.hash_algo.name == "sha512"
    assert evmctl_verify(root / "bin/busybox", rsa_keys.ima_cert_der).returncode == 0
