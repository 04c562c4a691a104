"""Rewriting one OCI layer (a tar, plain or gzip) with an IMA signature on every regular file.

The signature is a PAX record `SCHILY.xattr.security.ima` on the file's entry: the name GNU tar,
Go's archive/tar and containerd use for extended attributes; its value is exactly what obelisk and
evmctl put in the `security.ima` xattr (v2 signature, type 0x03). The digest signed is the hash of
the entry's bytes in the tar, which is the file the kernel will appraise once unpacked.

Signed: every regular entry (REGTYPE, AREGTYPE, CONTTYPE) whose name is not a whiteout. Left
unsigned: whiteouts (`.wh.*`, empty markers the runtime deletes), hard links (the kernel appraises
the inode, which the link's target entry signs; a stale `security.ima` on a link entry is dropped,
since containerd would set it on that same inode), symlinks, directories, devices and FIFOs.

Everything else of every entry is kept: name, link name, mode bits, uid/gid and names, mtime (a
PAX `mtime` keeps its original string), device numbers, other PAX records and the data, byte for
byte. Python's tarfile re-encodes the headers in PAX format: a GNU long name becomes a PAX `path`,
a directory's name gains its trailing `/`, and the mode field keeps only its permission bits (the
type is the typeflag). Sparse entries are refused rather than silently expanded.

The new tar is compressed as the old one was, deterministically (gzip level 6, mtime 0, no file
name): the same layer signed twice with an RSA key gives the same blob.
"""

from __future__ import annotations

import copy
import gzip
import hashlib
import os
import tarfile
import zlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import IO, Protocol

from obelisk.core.errors import InputError

XATTR_RECORD = "SCHILY.xattr.security.ima"
WHITEOUT_PREFIX = ".wh."
GZIP_LEVEL = 6
# A layer's tar is unpacked to a temporary file: bounded so a gzip bomb cannot fill the disk.
MAX_LAYER_TAR_BYTES = 64 << 30

# layer media type -> compression (image-spec media-types.md; Docker's image manifest v2 schema 2)
LAYER_TYPES: dict[str, str] = {
    "application/vnd.oci.image.layer.v1.tar": "tar",
    "application/vnd.oci.image.layer.v1.tar+gzip": "gzip",
    "application/vnd.oci.image.layer.v1.tar+zstd": "zstd",
    "application/vnd.docker.image.rootfs.diff.tar": "tar",
    "application/vnd.docker.image.rootfs.diff.tar.gzip": "gzip",
}

_CHUNK = 1 << 20
_REGULAR = (tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.CONTTYPE)


@dataclass(frozen=True)
class FileSigner:
    """How a file's bytes become its `security.ima` value."""

    hash_name: str
    key_id: str  # hex, the 4 bytes in every signature's header
    sign: Callable[[bytes], bytes]  # the file's digest -> the security.ima value


@dataclass(frozen=True)
class LayerResult:
    old_diff_id: str  # sha256 of the layer's tar before signing
    diff_id: str  # ... and after
    digest: str  # of the new blob (compressed as the old one was)
    size: int
    signed: int
    skipped: dict[str, int] = field(default_factory=dict)


def compression_of(media_type: str, source: str, where: str) -> str:
    """The layer's compression; InputError for a media type obelisk cannot rewrite."""
    kind = LAYER_TYPES.get(media_type)
    if kind is None:
        raise InputError(f"{where}.mediaType: {media_type!r} is not a layer obelisk can sign "
                         f"(known: {', '.join(LAYER_TYPES)})", source=source)
    if kind == "zstd":
        raise InputError(f"{where}.mediaType: zstd layers are not supported (no zstd library is available to "
                         "obelisk); recompress them to gzip first, e.g. skopeo copy --dest-compress-format=gzip",
                         source=source)
    return kind


class _Sink(Protocol):
    def write(self, data: bytes, /) -> int: ...

    def flush(self) -> None: ...


class _HashingWriter:
    """A write-only stream that hashes and counts what passes through (tarfile asks for tell())."""

    def __init__(self, sink: _Sink):
        self._sink = sink
        self.hash = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self.hash.update(data)
        self.size += len(data)
        self._sink.write(data)
        return len(data)

    def tell(self) -> int:
        return self.size

    def flush(self) -> None:
        self._sink.flush()


def unpack_to(blob: IO[bytes], kind: str, out: IO[bytes], expect_digest: str, expect_size: int,
              source: str) -> str:
    """Copy the layer's tar to `out` (gunzipped), checking the blob against its descriptor on the way;
    return the tar's sha256 (its diff_id)."""
    blob_hash = hashlib.new(expect_digest.split(":", 1)[0])
    tar_hash = hashlib.sha256()
    blob_size = tar_size = 0
    d = zlib.decompressobj(wbits=31) if kind == "gzip" else None
    broken: str | None = None  # reported after the digest: a blob that is not what its descriptor says, first
    while chunk := blob.read(_CHUNK):
        blob_hash.update(chunk)
        blob_size += len(chunk)
        if broken is not None:
            continue
        if d is None:
            data = chunk
        else:
            try:
                data = d.decompress(chunk)
                while d.eof and d.unused_data:  # a gzip file may hold several members (pigz, concatenation)
                    rest = d.unused_data
                    d = zlib.decompressobj(wbits=31)
                    data += d.decompress(rest)
            except zlib.error as exc:
                broken = f"layer is not gzip data: {exc}"
                continue
        tar_hash.update(data)
        tar_size += len(data)
        if tar_size > MAX_LAYER_TAR_BYTES:
            raise InputError(f"layer unpacks to more than {MAX_LAYER_TAR_BYTES} bytes", source=source)
        out.write(data)
    if blob_hash.hexdigest() != expect_digest.split(":", 1)[1]:
        raise InputError("content does not match its digest", source=source)
    if blob_size != expect_size:
        raise InputError(f"{blob_size} bytes, but its descriptor's size says {expect_size}", source=source)
    if broken is None and d is not None and not d.eof:
        broken = "layer is not gzip data: truncated stream"
    if broken is not None:
        raise InputError(broken, source=source)
    out.flush()
    return "sha256:" + tar_hash.hexdigest()


def _skip_reason(member: tarfile.TarInfo) -> str | None:
    if member.islnk():
        return "hardlink"
    if member.type in _REGULAR:
        return "whiteout" if os.path.basename(member.name.rstrip("/")).startswith(WHITEOUT_PREFIX) else None
    if member.issym():
        return "symlink"
    if member.isdir():
        return "directory"
    if member.ischr() or member.isblk():
        return "device"
    if member.isfifo():
        return "fifo"
    return "other"


def _check_end(tar_file: IO[bytes], offset: int, source: str) -> None:
    """Only zeros may follow the last entry. tarfile ends an archive quietly at a damaged header
    after the first one; rewriting would then drop the rest of the layer without a word."""
    tar_file.seek(offset)
    position = offset
    while chunk := tar_file.read(_CHUNK):
        if chunk.count(0) != len(chunk):
            bad = position + next(i for i, b in enumerate(chunk) if b)
            raise InputError(f"layer is not a tar archive: damaged header or data after the end of the archive "
                             f"(tar offset {bad})", source=source)
        position += len(chunk)


def _file_digest(tar: tarfile.TarFile, member: tarfile.TarInfo, hash_name: str) -> bytes:
    h = hashlib.new(hash_name)
    stream = tar.extractfile(member)
    assert stream is not None  # a regular member always has data
    while chunk := stream.read(_CHUNK):
        h.update(chunk)
    return h.digest()


def rewrite(blob: IO[bytes], kind: str, expect_digest: str, expect_size: int, scratch: IO[bytes], out: IO[bytes],
            signer: FileSigner, source: str) -> LayerResult:
    """Check the layer `blob` against its descriptor, unpack its tar to `scratch` and write its signed copy
    to `out`, compressed as it was."""
    old_diff_id = unpack_to(blob, kind, scratch, expect_digest, expect_size, source)
    scratch.seek(0)
    result = sign_tar(scratch, out, kind, signer, source)
    return LayerResult(old_diff_id, result.diff_id, result.digest, result.size, result.signed, result.skipped)


def sign_tar(tar_file: IO[bytes], out: IO[bytes], kind: str, signer: FileSigner, source: str) -> LayerResult:
    """Write the signed copy of the tar in `tar_file` (seekable) to `out`, compressed as `kind`
    (old_diff_id is left empty: `rewrite` knows it)."""
    blob = _HashingWriter(out)
    compressor = gzip.GzipFile(filename="", mode="wb", compresslevel=GZIP_LEVEL, fileobj=blob,
                               mtime=0) if kind == "gzip" else None
    plain = _HashingWriter(compressor if compressor is not None else blob)
    skipped: Counter[str] = Counter()
    signed = 0
    try:
        reader = tarfile.open(fileobj=tar_file, mode="r:", encoding="utf-8", errors="surrogateescape")
    except tarfile.TarError as exc:
        raise InputError(f"layer is not a tar archive: {exc}", source=source) from None
    try:
        with reader, tarfile.open(fileobj=plain, mode="w", format=tarfile.PAX_FORMAT,  # type: ignore[call-overload]
                                  encoding="utf-8", errors="surrogateescape") as writer:
            for member in reader:
                if member.issparse():
                    raise InputError(f"layer entry {member.name!r}: sparse files are not supported", source=source)
                entry = copy.copy(member)
                entry.pax_headers = dict(member.pax_headers)
                entry.pax_headers.pop("hdrcharset", None)  # tarfile adds it again when a value needs it
                reason = _skip_reason(member)
                if reason is None:
                    value = signer.sign(_file_digest(reader, member, signer.hash_name))
                    entry.pax_headers.pop(XATTR_RECORD, None)
                    entry.pax_headers[XATTR_RECORD] = value.decode("utf-8", "surrogateescape")
                    signed += 1
                    writer.addfile(entry, reader.extractfile(member))
                    continue
                skipped[reason] += 1
                if reason == "hardlink":
                    entry.pax_headers.pop(XATTR_RECORD, None)
                writer.addfile(entry, reader.extractfile(member) if member.type in _REGULAR else None)
        _check_end(tar_file, reader.offset, source)
    except tarfile.TarError as exc:
        raise InputError(f"layer is not a tar archive: {exc}", source=source) from None
    if compressor is not None:
        compressor.close()
    out.flush()
    return LayerResult(old_diff_id="", diff_id="sha256:" + plain.hash.hexdigest(),
                       digest="sha256:" + blob.hash.hexdigest(), size=blob.size, signed=signed,
                       skipped=dict(sorted(skipped.items())))
