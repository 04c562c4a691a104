"""Signing every regular file of a tree with IMA v2 signatures, on every core.

Each worker process holds the key once (evmctl reloads it for every file, which is most
of its cost) and hashes and signs its share of the files. Signatures go either straight
into `security.ima` or, with an xattr file, into a `getfattr --dump` file that
`gensquashfs -A` consumes, written atomically once every file is signed.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509

from obelisk.core import atomic
from obelisk.core.errors import InputError
from obelisk.core.progress import progress
from obelisk.signer import hashalgo, imasig, xattrfile
from obelisk.signer.hashalgo import HashAlgo
from obelisk.signer.keys import SigningKey, check_key_matches_certificate, ima_key_id
from obelisk.signer.tree import TreeFile, walk

XATTR_NAME = "security.ima"
_CHUNK = 64


@dataclass(frozen=True)
class SignSummary:
    signed: int
    skipped: dict[str, int]
    hash_algo: str
    key_id: str
    xattr_file: str | None

    def to_json(self) -> dict[str, object]:
        return {"signed": self.signed, "skipped": self.skipped, "hash": self.hash_algo, "key_id": self.key_id,
                "xattr_file": self.xattr_file}


def file_digest(path: str, algo: HashAlgo) -> bytes:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, algo.name).digest()


def sign_digest_value(key: SigningKey, key_id: bytes, algo: HashAlgo, digest: bytes) -> bytes:
    """The `security.ima` bytes for a file with `digest`."""
    signature = key.sign_digest(digest, algo)
    return imasig.serialize(imasig.ImaSignature(2, algo, key_id, signature))


# Worker state, inherited through fork: the key is loaded once in the parent.
_W: dict[str, object] = {}


def _sign_chunk(chunk: list[tuple[int, str]]) -> tuple[list[tuple[int, bytes]], list[str]]:
    key: SigningKey = _W["key"]  # type: ignore[assignment]
    key_id: bytes = _W["key_id"]  # type: ignore[assignment]
    algo: HashAlgo = _W["algo"]  # type: ignore[assignment]
    write_xattr = bool(_W["write_xattr"])
    out: list[tuple[int, bytes]] = []
    errors: list[str] = []
    for index, path in chunk:
        try:
            value = sign_digest_value(key, key_id, algo, file_digest(path, algo))
            if write_xattr:
                os.setxattr(path, XATTR_NAME, value, follow_symlinks=False)
            else:
                out.append((index, value))
        except OSError as exc:
            errors.append(f"{path}: {exc.strerror or exc}")
    return out, errors


def sign_files(files: list[TreeFile], key: SigningKey, key_id: bytes, algo: HashAlgo, *, jobs: int,
               write_xattr: bool, quiet: bool = False, in_process: bool = False) -> dict[int, bytes]:
    """Sign `files`; returns index -> xattr value when not writing xattrs. Raises InputError on any failure."""
    _W.update(key=key, key_id=key_id, algo=algo, write_xattr=write_xattr)
    work = [(i, f.path) for i, f in enumerate(files)]
    chunks = [work[i:i + _CHUNK] for i in range(0, len(work), _CHUNK)]
    values: dict[int, bytes] = {}
    errors: list[str] = []
    with progress("signing files", total=len(files), quiet=quiet) as bar:
        if in_process or jobs <= 1 or len(chunks) <= 1:
            results = map(_sign_chunk, chunks)
            pool = None
        else:
            pool = multiprocessing.get_context("fork").Pool(processes=jobs)
            results = pool.imap_unordered(_sign_chunk, chunks)
        try:
            for out, errs in results:
                values.update(out)
                errors.extend(errs)
                bar.advance(len(out) if out else 0)
        finally:
            if pool is not None:
                pool.close()
                pool.join()
            _W.clear()
    if errors:
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise InputError(f"cannot sign {errors[0]}{more}")
    return values


def sign_tree(paths: list[str], key: SigningKey, cert: x509.Certificate, *, hash_name: str = "sha256",
              jobs: int | None = None, xattr_file: str | None = None, quiet: bool = False,
              cert_source: str = "certificate", in_process: bool = False) -> SignSummary:
    if hash_name not in hashalgo.SIGNING:
        raise InputError(f"--hash: {hash_name} is not accepted for signing (use {', '.join(hashalgo.SIGNING)})")
    algo = hashalgo.by_name(hash_name)
    check_key_matches_certificate(key, cert, cert_source)
    key_id = ima_key_id(cert, cert_source)
    tree = walk(paths)
    if tree.errors:
        raise InputError(f"cannot read {tree.errors[0]}")
    if xattr_file is not None and len(paths) > 1:
        roots = {os.path.abspath(p) for p in paths}
        if len(roots) > 1:
            raise InputError("--xattr-file takes one PATH: its entries are relative to that directory")
    values = sign_files(tree.files, key, key_id, algo, jobs=jobs or os.cpu_count() or 1,
                        write_xattr=xattr_file is None, quiet=quiet, in_process=in_process)
    if xattr_file is not None:
        records = [xattrfile.XattrRecord(f.relpath, ((XATTR_NAME, values[i]),)) for i, f in enumerate(tree.files)]
        atomic.write_bytes(Path(xattr_file), xattrfile.serialize(records))
    return SignSummary(signed=len(tree.files), skipped=dict(tree.skipped), hash_algo=algo.name,
                       key_id=key_id.hex(), xattr_file=xattr_file)
