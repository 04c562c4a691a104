"""`obelisk ima sign --oci`: sign every file of every image in an OCI image layout.

From index.json down: image indexes (nested, any number of platforms), image manifests (OCI or
Docker schema 2), their configs and layers. Each layer is rewritten by `oci_layer` (a
`security.ima` PAX record on each regular file), then, bottom-up, the config's rootfs.diff_ids,
the manifest's layer and config descriptors, every index blob and index.json are updated.
A manifest whose config is not an image config (an attestation, an SBOM, a signature) is an
artifact, not a filesystem: it is kept as it is.

Atomicity: every new blob is complete before it has its name (temporary file, then link to its
digest), and nothing refers to a new blob until index.json, the one mutable file, is renamed over
the old one. Interrupted before that rename, the layout is the old one (plus unreferenced new blobs,
which a rerun reuses); after it, the new one.

Old blobs: the ones the old index.json reached and the new one does not (the unsigned layers and
the manifests, configs and indexes that named them) are deleted after the rename. Kept, they would
double the layout's size, and an unsigned copy of every layer would stay one `index.json` edit away
from being pushed. Nothing else is deleted: a blob the old graph did not reach is not obelisk's
to judge, and if the index names a descriptor whose type obelisk does not walk (it may refer to
any blob), no blob is deleted at all.
"""

from __future__ import annotations

import os
import tempfile
from collections import Counter
from dataclasses import dataclass
from typing import Any

from cryptography import x509

from obelisk.core.errors import InputError
from obelisk.signer import hashalgo, oci_layer
from obelisk.signer.keys import SigningKey, check_key_matches_certificate, ima_key_id
from obelisk.signer.oci_layout import (
    IMAGE_CONFIG_TYPES,
    INDEX_TYPES,
    MANIFEST_TYPES,
    MAX_CONFIG_BYTES,
    MAX_INDEX_BYTES,
    MAX_INDEX_DEPTH,
    MAX_MANIFEST_BYTES,
    Descriptor,
    Layout,
    descriptor_list,
    parse_descriptor,
)
from obelisk.signer.sign import sign_digest_value


@dataclass(frozen=True)
class OciSignSummary:
    layout: str
    images: int  # image manifests rewritten
    artifacts: int  # manifests kept as they were (not images)
    layers: int
    signed: int  # files
    skipped: dict[str, int]
    removed_blobs: int
    hash_algo: str
    key_id: str

    def to_json(self) -> dict[str, object]:
        return {"layout": self.layout, "images": self.images, "artifacts": self.artifacts, "layers": self.layers,
                "signed": self.signed, "skipped": self.skipped, "removed_blobs": self.removed_blobs,
                "hash": self.hash_algo, "key_id": self.key_id}


def file_signer(key: SigningKey, cert: x509.Certificate, hash_name: str, cert_source: str) -> oci_layer.FileSigner:
    """The key proven against its certificate, as a digest -> security.ima function."""
    if hash_name not in hashalgo.SIGNING:
        raise InputError(f"--hash: {hash_name} is not accepted for signing (use {', '.join(hashalgo.SIGNING)})")
    algo = hashalgo.by_name(hash_name)
    check_key_matches_certificate(key, cert, cert_source)
    key_id = ima_key_id(cert, cert_source)
    return oci_layer.FileSigner(algo.name, key_id.hex(), lambda digest: sign_digest_value(key, key_id, algo, digest))


class _LayoutSigner:
    """One pass over a layout: what it read (old), what it wrote (new), and the counts."""

    def __init__(self, layout: Layout, signer: oci_layer.FileSigner):
        self.layout = layout
        self.signer = signer
        self.old: set[str] = set()
        self.new: set[str] = set()
        self.opaque = False  # a descriptor of a type not walked: its blob may refer to anything
        self.layers: dict[tuple[str, str], oci_layer.LayerResult] = {}
        self.manifests: dict[str, tuple[str, int]] = {}  # old digest -> new (digest, size)
        self.images = self.artifacts = 0
        self.skipped: Counter[str] = Counter()

    def index(self, doc: dict[str, Any], source: str, depth: int) -> dict[str, Any]:
        items: list[dict[str, Any]] = []
        for i, desc in enumerate(descriptor_list(doc, "manifests", source, "")):
            where = f"manifests[{i}]"
            self.old.add(desc.digest)
            if desc.media_type in INDEX_TYPES:
                if depth >= MAX_INDEX_DEPTH:
                    raise InputError(f"{where}: image indexes nested deeper than {MAX_INDEX_DEPTH}", source=source)
                sub = self.layout.read_json_blob(desc, source, where, MAX_INDEX_BYTES)
                path = str(self.layout.blob_path(desc, source, where))
                new = self.layout.write_json_blob(self.index(sub, path, depth + 1), desc.media_type, desc.raw)
            elif desc.media_type in MANIFEST_TYPES:
                new = self.manifest(desc, source, where)
            else:
                self.opaque = True
                new = desc.raw
            self.new.add(new["digest"])
            items.append(new)
        return {**doc, "manifests": items}

    def manifest(self, desc: Descriptor, source: str, where: str) -> dict[str, Any]:
        if desc.digest in self.manifests:  # named again (by another index, another tag): its own fields kept
            return desc.replaced(*self.manifests[desc.digest])
        doc = self.layout.read_json_blob(desc, source, where, MAX_MANIFEST_BYTES)
        path = str(self.layout.blob_path(desc, source, where))
        config = parse_descriptor(doc.get("config"), path, "config")
        layers = descriptor_list(doc, "layers", path, "")
        self.old.update([config.digest] + [layer.digest for layer in layers])
        if config.media_type not in IMAGE_CONFIG_TYPES:
            self.artifacts += 1
            self.new.update([config.digest] + [layer.digest for layer in layers])
            self.manifests[desc.digest] = (desc.digest, desc.size)
            return desc.raw
        for i, layer in enumerate(layers):  # refuse an unsupported layer before any work
            oci_layer.compression_of(layer.media_type, path, f"layers[{i}]")
        cfg = self.layout.read_json_blob(config, path, "config", MAX_CONFIG_BYTES)
        cfg_path = str(self.layout.blob_path(config, path, "config"))
        rootfs = cfg.get("rootfs")
        diff_ids = rootfs.get("diff_ids") if isinstance(rootfs, dict) else None
        if not isinstance(diff_ids, list) or not all(isinstance(d, str) for d in diff_ids):
            raise InputError("rootfs.diff_ids: missing or not a list of strings", source=cfg_path)
        if len(diff_ids) != len(layers):
            raise InputError(f"rootfs.diff_ids: {len(diff_ids)} entries, but {path} has {len(layers)} layers",
                             source=cfg_path)
        new_layers: list[dict[str, Any]] = []
        new_diff_ids: list[str] = []
        for i, layer in enumerate(layers):
            result = self.layer(layer, path, f"layers[{i}]")
            if result.old_diff_id != diff_ids[i]:
                raise InputError(f"rootfs.diff_ids[{i}]: {diff_ids[i][:80]!r}, but layers[{i}] of {path} "
                                 f"unpacks to {result.old_diff_id}", source=cfg_path)
            new_layers.append(layer.replaced(result.digest, result.size))
            new_diff_ids.append(result.diff_id)
        assert isinstance(rootfs, dict)
        new_config = self.layout.write_json_blob({**cfg, "rootfs": {**rootfs, "diff_ids": new_diff_ids}},
                                                 config.media_type, config.raw)
        new = self.layout.write_json_blob({**doc, "config": new_config, "layers": new_layers},
                                          desc.media_type, desc.raw)
        self.new.update([new_config["digest"]] + [layer["digest"] for layer in new_layers])
        self.images += 1
        self.manifests[desc.digest] = (new["digest"], new["size"])
        return new

    def layer(self, desc: Descriptor, source: str, where: str) -> oci_layer.LayerResult:
        cache_key = (desc.digest, desc.media_type)  # the same bytes named as tar and as gzip are two questions
        if cache_key in self.layers:
            return self.layers[cache_key]
        kind = oci_layer.compression_of(desc.media_type, source, where)
        path = self.layout.blob_path(desc, source, where)
        with open(path, "rb") as blob, self.layout.new_blob_file() as out, \
                tempfile.TemporaryFile(dir=self.layout.root / "blobs", prefix=".obelisk-tar-") as scratch:
            result = oci_layer.rewrite(blob, kind, desc.digest, desc.size, scratch, out, self.signer, str(path))
            self.layout.commit_blob(out.name, result.digest)
        self.layers[cache_key] = result
        self.skipped.update(result.skipped)
        return result


def sign_layout(root: str, key: SigningKey, cert: x509.Certificate, *, hash_name: str = "sha256",
                cert_source: str = "certificate") -> OciSignSummary:
    """Sign every image in the layout at `root` (see the module's docstring); InputError names the
    file and field of anything obelisk refuses, and leaves index.json as it was."""
    layout = Layout(root)
    signer = file_signer(key, cert, hash_name, cert_source)
    index = layout.read_index()
    run = _LayoutSigner(layout, signer)
    new_index = run.index(index, layout.index_path, 0)
    layout.write_index(new_index)
    removed = 0
    if not run.opaque:
        removed = sum(layout.remove_blob(digest) for digest in sorted(run.old - run.new))
    return OciSignSummary(layout=os.fspath(root), images=run.images, artifacts=run.artifacts,
                          layers=len(run.layers), signed=sum(r.signed for r in run.layers.values()),
                          skipped=dict(sorted(run.skipped.items())), removed_blobs=removed,
                          hash_algo=signer.hash_name, key_id=signer.key_id)
