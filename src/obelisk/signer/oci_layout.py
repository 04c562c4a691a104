"""An OCI image layout on disk (image-spec image-layout.md): its JSON documents and its blobs.

A layout is `oci-layout`, `index.json` and content-addressed `blobs/<alg>/<hex>`. Everything in it
is untrusted: every JSON document is read with a size bound, every descriptor's digest must be
`sha256:`/`sha512:` and hex of the right length (so a digest can never name a path outside
`blobs/`), `blobs/` and `blobs/<alg>` must be real directories and a blob a regular file (no
symlink is followed), and every blob read is checked against its descriptor's digest and size.
Errors name the file and the JSON field (`manifests[0].layers[2].digest`).

New blobs are written under a temporary name and renamed to their digest: a blob that exists is
complete. `index.json` is replaced last, by rename, so a reader sees the old layout or the new one.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from obelisk.core import atomic
from obelisk.core.errors import InputError
from obelisk.core.jsonsafe import load_json

# image-spec and distribution cap manifests at 4 MiB; configs of real images are far below 1 MiB
MAX_LAYOUT_FILE_BYTES = 64 << 10  # oci-layout
MAX_INDEX_BYTES = 4 << 20  # index.json and image index blobs
MAX_MANIFEST_BYTES = 4 << 20
MAX_CONFIG_BYTES = 8 << 20
MAX_INDEX_DEPTH = 8  # image indexes nested in image indexes

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"

INDEX_TYPES = (OCI_INDEX, DOCKER_LIST)
MANIFEST_TYPES = (OCI_MANIFEST, DOCKER_MANIFEST)
IMAGE_CONFIG_TYPES = (OCI_CONFIG, DOCKER_CONFIG)

_DIGEST = {"sha256": re.compile(r"[0-9a-f]{64}"), "sha512": re.compile(r"[0-9a-f]{128}")}
_CHUNK = 1 << 20


@dataclass(frozen=True)
class Descriptor:
    """The fields of an OCI descriptor obelisk reads; `raw` keeps every other field as it was."""

    media_type: str
    digest: str  # "sha256:<hex>"
    size: int
    raw: dict[str, Any]

    @property
    def algorithm(self) -> str:
        return self.digest.split(":", 1)[0]

    @property
    def hex(self) -> str:
        return self.digest.split(":", 1)[1]

    def replaced(self, digest: str, size: int) -> dict[str, Any]:
        """The descriptor's JSON with a new digest and size, every other field kept."""
        return {**self.raw, "digest": digest, "size": size}


def parse_descriptor(obj: object, source: str, field: str) -> Descriptor:
    if not isinstance(obj, dict):
        raise InputError(f"{field}: not a descriptor object", source=source)
    media_type, digest, size = obj.get("mediaType"), obj.get("digest"), obj.get("size")
    if not isinstance(media_type, str):
        raise InputError(f"{field}.mediaType: missing or not a string", source=source)
    if not isinstance(digest, str) or ":" not in digest:
        raise InputError(f"{field}.digest: missing or not '<algorithm>:<hex>'", source=source)
    algorithm, hexpart = digest.split(":", 1)
    pattern = _DIGEST.get(algorithm)
    if pattern is None or not pattern.fullmatch(hexpart):
        raise InputError(f"{field}.digest: {digest[:80]!r} is not a sha256 or sha512 digest", source=source)
    if type(size) is not int or size < 0:
        raise InputError(f"{field}.size: missing or not a non-negative integer", source=source)
    return Descriptor(media_type, digest, size, obj)


def descriptor_list(doc: dict[str, Any], key: str, source: str, field: str) -> list[Descriptor]:
    items = doc.get(key)
    if not isinstance(items, list):
        raise InputError(f"{field}{key}: missing or not a list", source=source)
    return [parse_descriptor(item, source, f"{field}{key}[{i}]") for i, item in enumerate(items)]


def serialize_json(doc: dict[str, Any]) -> bytes:
    """Compact, key order kept: reading and writing again gives the same bytes (signing twice is a no-op)."""
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


class Layout:
    """A directory holding an OCI image layout."""

    def __init__(self, root: str | os.PathLike[str]):
        self.root = Path(root)
        self._check()

    def _check(self) -> None:
        name = str(self.root)
        try:
            st = os.lstat(self.root)
        except OSError as exc:
            raise InputError(f"cannot read: {exc.strerror}", source=name) from None
        if not stat.S_ISDIR(st.st_mode):
            raise InputError("not an OCI image layout: not a directory", source=name)
        marker = self.root / "oci-layout"
        if not os.path.lexists(marker):
            raise InputError("not an OCI image layout: no oci-layout file", source=name)
        doc = self._read_json(marker, "oci-layout", MAX_LAYOUT_FILE_BYTES)
        version = doc.get("imageLayoutVersion")
        if not isinstance(version, str) or not version.startswith("1."):
            raise InputError(f"imageLayoutVersion: {version!r} is not 1.x", source=str(marker))
        blobs = self.root / "blobs"
        if not stat.S_ISDIR(self._lstat(blobs).st_mode):
            raise InputError("not a directory (symlinks are not followed)", source=str(blobs))

    def _lstat(self, path: Path) -> os.stat_result:
        try:
            return os.lstat(path)
        except OSError as exc:
            raise InputError(f"cannot read: {exc.strerror}", source=str(path)) from None

    def _read_json(self, path: Path, what: str, limit: int) -> dict[str, Any]:
        with self._open_regular(path, what) as handle:
            data = handle.read(limit + 1)
        if len(data) > limit:
            raise InputError(f"{what} larger than {limit} bytes", source=str(path))
        doc = load_json(data, str(path), max_bytes=limit)
        if not isinstance(doc, dict):
            raise InputError(f"{what}: not a JSON object", source=str(path))
        return doc

    @contextmanager
    def _open_regular(self, path: Path, what: str) -> Iterator[IO[bytes]]:
        """Open a regular file of the layout without following a symlink at its last component."""
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as exc:
            why = "a symlink (not followed)" if os.path.islink(path) else exc.strerror
            raise InputError(f"cannot read {what}: {why}", source=str(path)) from None
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise InputError(f"{what} is not a regular file", source=str(path))
        with os.fdopen(fd, "rb") as handle:
            yield handle

    def read_index(self) -> dict[str, Any]:
        return self._read_json(self.root / "index.json", "index.json", MAX_INDEX_BYTES)

    @property
    def index_path(self) -> str:
        return str(self.root / "index.json")

    def blob_path(self, desc: Descriptor, referrer: str, field: str) -> Path:
        """The path of `desc`'s blob; InputError naming `referrer` and `field` when it is missing,
        or when `blobs/<alg>` or the blob is not a real directory and file."""
        directory = self.root / "blobs" / desc.algorithm
        path = directory / desc.hex
        if not os.path.lexists(path):
            raise InputError(f"{field}.digest: blob {desc.digest} is missing from {path}", source=referrer)
        if not stat.S_ISDIR(self._lstat(directory).st_mode):
            raise InputError("not a directory (symlinks are not followed)", source=str(directory))
        mode = self._lstat(path).st_mode
        if not stat.S_ISREG(mode):
            kind = "a symlink (not followed)" if stat.S_ISLNK(mode) else "not a regular file"
            raise InputError(f"blob is {kind} (named by {referrer} {field}.digest)", source=str(path))
        return path

    def check_blob(self, desc: Descriptor, referrer: str, field: str) -> Path:
        """Hash a blob from disk and compare it with its descriptor (a layer's size is not bounded here)."""
        path = self.blob_path(desc, referrer, field)
        h = hashlib.new(desc.algorithm)
        size = 0
        with self._open_regular(path, "blob") as handle:
            while chunk := handle.read(_CHUNK):
                h.update(chunk)
                size += len(chunk)
        self._compare(desc, path, h.hexdigest(), size, referrer, field)
        return path

    def read_json_blob(self, desc: Descriptor, referrer: str, field: str, limit: int) -> dict[str, Any]:
        """A manifest, index or config blob, checked against its descriptor before it is parsed."""
        if desc.size > limit:
            raise InputError(f"{field}.size: {desc.size} bytes, more than the {limit} allowed", source=referrer)
        path = self.blob_path(desc, referrer, field)
        with self._open_regular(path, "blob") as handle:
            data = handle.read(limit + 1)
        self._compare(desc, path, hashlib.new(desc.algorithm, data).hexdigest(), len(data), referrer, field)
        doc = load_json(data, str(path), max_bytes=limit)
        if not isinstance(doc, dict):
            raise InputError("not a JSON object", source=str(path))
        return doc

    @staticmethod
    def _compare(desc: Descriptor, path: Path, hexdigest: str, size: int, referrer: str, field: str) -> None:
        if hexdigest != desc.hex:
            raise InputError(f"content does not match its digest (named by {referrer} {field}.digest)",
                             source=str(path))
        if size != desc.size:
            raise InputError(f"{size} bytes, but {referrer} {field}.size says {desc.size}", source=str(path))

    def new_blob_file(self) -> tempfile._TemporaryFileWrapper[bytes]:
        """A temporary file inside blobs/ (same filesystem: it is renamed to its digest)."""
        return tempfile.NamedTemporaryFile(dir=self.root / "blobs", prefix=".obelisk-", suffix=".tmp")

    def commit_blob(self, temp_path: str, digest: str) -> None:
        """Rename a finished temporary blob to its sha256 digest (kept if a blob of that digest exists)."""
        algorithm, hexpart = digest.split(":", 1)
        directory = self.root / "blobs" / algorithm
        directory.mkdir(exist_ok=True)
        target = directory / hexpart
        if os.path.lexists(target):
            return
        fd = os.open(temp_path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.link(temp_path, target)  # the temporary file object removes its own name

    def write_json_blob(self, doc: dict[str, Any], media_type: str,
                        raw: dict[str, Any] | None = None) -> dict[str, Any]:
        """Store `doc` as a blob; return its descriptor (`raw`'s other fields kept)."""
        data = serialize_json(doc)
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        algorithm, hexpart = digest.split(":", 1)
        target = self.root / "blobs" / algorithm / hexpart
        if not os.path.lexists(target):
            atomic.write_bytes(target, data)
        return {**(raw or {"mediaType": media_type}), "digest": digest, "size": len(data)}

    def write_index(self, doc: dict[str, Any]) -> None:
        """The commit point: index.json replaced by rename."""
        atomic.write_bytes(self.root / "index.json", serialize_json(doc))

    def remove_blob(self, digest: str) -> bool:
        algorithm, hexpart = digest.split(":", 1)
        try:
            os.unlink(self.root / "blobs" / algorithm / hexpart)
        except FileNotFoundError:
            return False
        return True
