"""Build small OCI image layouts in tests, with nothing but the standard library (no registry, no umoci)."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BUSYBOX = Path("/bin/busybox")  # Debian's busybox-static: one static binary, runs in an empty container


@dataclass
class Entry:
    info: tarfile.TarInfo
    data: bytes | None = None


def regular(name: str, data: bytes, mode: int = 0o644, **attrs: Any) -> Entry:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), mode, attrs.pop("mtime", 1700000000)
    for k, v in attrs.items():
        setattr(info, k, v)
    return Entry(info, data)


def special(name: str, type_: bytes, **attrs: Any) -> Entry:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.mtime = type_, attrs.pop("mode", 0o755), 1700000000
    for k, v in attrs.items():
        setattr(info, k, v)
    return Entry(info)


def tar_of(entries: list[Entry]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT, encoding="utf-8",
                      errors="surrogateescape") as tf:
        for e in entries:
            tf.addfile(e.info, io.BytesIO(e.data) if e.data is not None else None)
    return buf.getvalue()


def busybox_layer() -> list[Entry]:
    """A busybox-static root: the binary, a symlink and a hard link to it, a text file, a whiteout."""
    return [
        special("bin", tarfile.DIRTYPE),
        regular("bin/busybox", BUSYBOX.read_bytes(), 0o755),
        special("bin/sh", tarfile.SYMTYPE, linkname="busybox", mode=0o777),
        special("bin/ls", tarfile.LNKTYPE, linkname="bin/busybox"),
        special("etc", tarfile.DIRTYPE),
        regular("etc/motd", b"signed by the customer\n", uid=1000, gid=1000, uname="user", gname="users"),
        regular("etc/.wh.oldconf", b""),
    ]


class LayoutBuilder:
    """Blobs go to DIR/blobs/sha256; `index` writes index.json and oci-layout."""

    def __init__(self, root: Path):
        self.root = root
        (root / "blobs" / "sha256").mkdir(parents=True)

    def blob(self, data: bytes, media_type: str, **extra: Any) -> dict[str, Any]:
        digest = hashlib.sha256(data).hexdigest()
        (self.root / "blobs" / "sha256" / digest).write_bytes(data)
        return {"mediaType": media_type, "digest": f"sha256:{digest}", "size": len(data), **extra}

    def json_blob(self, doc: dict[str, Any], media_type: str, **extra: Any) -> dict[str, Any]:
        return self.blob(json.dumps(doc, indent=2).encode(), media_type, **extra)

    def layer(self, tar: bytes, compress: bool = True) -> tuple[dict[str, Any], str]:
        """(descriptor, diff_id)."""
        diff_id = "sha256:" + hashlib.sha256(tar).hexdigest()
        if compress:
            return self.blob(gzip.compress(tar, mtime=0), "application/vnd.oci.image.layer.v1.tar+gzip"), diff_id
        return self.blob(tar, "application/vnd.oci.image.layer.v1.tar"), diff_id

    def image(self, layers: list[tuple[dict[str, Any], str]], arch: str = "amd64",
              cmd: list[str] | None = None, **extra: Any) -> dict[str, Any]:
        config = {"architecture": arch, "os": "linux", "config": {"Cmd": cmd or ["/bin/sh"]},
                  "rootfs": {"type": "layers", "diff_ids": [d for _, d in layers]}}
        cfg = self.json_blob(config, "application/vnd.oci.image.config.v1+json")
        manifest = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json", "config": cfg,
                    "layers": [desc for desc, _ in layers]}
        return self.json_blob(manifest, "application/vnd.oci.image.manifest.v1+json", **extra)

    def image_index(self, manifests: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
        doc = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": manifests}
        return self.json_blob(doc, "application/vnd.oci.image.index.v1+json", **extra)

    def index(self, manifests: list[dict[str, Any]]) -> Path:
        (self.root / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
        (self.root / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": manifests}))
        return self.root


@dataclass
class Walked:
    """What an independent reader finds from index.json: every image's layers, checked."""

    images: list[dict[str, Any]] = field(default_factory=list)
    reachable: set[str] = field(default_factory=set)
    layers: dict[str, bytes] = field(default_factory=dict)  # new layer digest -> its tar


def blob_bytes(root: Path, desc: dict[str, Any]) -> bytes:
    data = (root / "blobs" / "sha256" / desc["digest"].split(":")[1]).read_bytes()
    assert "sha256:" + hashlib.sha256(data).hexdigest() == desc["digest"]
    assert len(data) == desc["size"], desc
    return data


def walk(root: Path) -> Walked:
    """Recompute every digest, size and diff_id with hashlib, from index.json down."""
    out = Walked()
    todo = list(json.loads((root / "index.json").read_text())["manifests"])
    while todo:
        desc = todo.pop()
        out.reachable.add(desc["digest"])
        doc = json.loads(blob_bytes(root, desc))
        if desc["mediaType"].endswith("index.v1+json"):
            todo.extend(doc["manifests"])
            continue
        out.reachable.add(doc["config"]["digest"])
        config = json.loads(blob_bytes(root, doc["config"]))
        out.images.append(doc)
        for layer in doc["layers"]:
            out.reachable.add(layer["digest"])
            data = blob_bytes(root, layer)
            if not config.get("rootfs"):
                continue
            tar = gzip.decompress(data) if layer["mediaType"].endswith("gzip") else data
            assert "sha256:" + hashlib.sha256(tar).hexdigest() in config["rootfs"]["diff_ids"]
            assert config["rootfs"]["diff_ids"][doc["layers"].index(layer)] == \
                "sha256:" + hashlib.sha256(tar).hexdigest()
            out.layers[layer["digest"]] = tar
    return out
