"""Signing every regular file of a tree with IMA v2 signatures, on every core.

Each worker process holds the key once (evmctl reloads it for every file, which is most
of its cost) and hashes and signs its share of the files. Signatures go either straight
into `security.ima` or, with an xattr file, into a `getfattr --dump` file that
`gensquashfs -A` consumes, written atomically once every file is signed.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509

from obelisk.core import atomic
from obelisk.core.digest import digest_fd, open_for_digest
from obelisk.core.errors import InputError
from obelisk.core.progress import progress
from obelisk.signer import hashalgo, imasig, xattrfile
from obelisk.signer.hashalgo import HashAlgo
from obelisk.signer.keys import SigningKey, check_key_matches_certificate, ima_key_id
from obelisk.signer.tree import TreeFile, TreeWalk, check_roots, iter_files

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


def sign_digest_value(key: SigningKey, key_id: bytes, algo: HashAlgo, digest: bytes) -> bytes:
    """The `security.ima` bytes for a file with `digest` (imasig.serialize of a v2 signature, inlined:
    this runs once per file)."""
    signature = key.sign_digest(digest, algo)
    return imasig.v2_header(algo, key_id, len(signature)) + signature


# Worker state, inherited through fork: the key is loaded once, in the parent.
_W: dict[str, object] = {}


def _sign_chunk(chunk: list[tuple[bytes, str]]) -> tuple[int, list[tuple[bytes, bytes]], list[str]]:
    key: SigningKey = _W["key"]  # type: ignore[assignment]
    key_id: bytes = _W["key_id"]  # type: ignore[assignment]
    algo: HashAlgo = _W["algo"]  # type: ignore[assignment]
    write_xattr = bool(_W["write_xattr"])
    out: list[tuple[bytes, bytes]] = []
    errors: list[str] = []
    done = 0
    for relpath, path in chunk:
        try:
            fd = open_for_digest(path, follow_symlinks=False)  # a symlink swapped in after the walk is refused
            try:
                value = sign_digest_value(key, key_id, algo, digest_fd(fd, algo.name))
                if write_xattr:
                    os.setxattr(fd, XATTR_NAME, value)
                else:
                    out.append((relpath, value))
            finally:
                os.close(fd)
            done += 1
        except OSError as exc:
            errors.append(f"{path}: {exc.strerror or exc}")
    return done, out, errors


def _chunks(files: Iterable[TreeFile], size: int) -> Iterator[list[tuple[bytes, str]]]:
    chunk: list[tuple[bytes, str]] = []
    for f in files:
        chunk.append((f.relpath, f.path))
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def sign_files(files: Iterable[TreeFile], key: SigningKey, key_id: bytes, algo: HashAlgo, *, jobs: int,
               write_xattr: bool, quiet: bool = False, in_process: bool = False,
               total: int | None = None) -> tuple[int, dict[bytes, bytes]]:
    """Sign `files` (streamed); returns (count, relpath -> xattr value when not writing xattrs).

    Raises InputError naming the first file that could not be signed.
    """
    _W.update(key=key, key_id=key_id, algo=algo, write_xattr=write_xattr)
    values: dict[bytes, bytes] = {}
    errors: list[str] = []
    count = 0
    with progress("signing files", total=total, quiet=quiet) as bar:
        pool = None
        if in_process or jobs <= 1:
            results: Iterable[tuple[int, list[tuple[bytes, bytes]], list[str]]] = map(
                _sign_chunk, _chunks(files, _CHUNK))
        else:
            pool = multiprocessing.get_context("fork").Pool(processes=jobs)
            results = pool.imap_unordered(_sign_chunk, _chunks(files, _CHUNK))
        try:
            for done, out, errs in results:
                count += done
                values.update(out)
                errors.extend(errs)
                bar.advance(done)
        finally:
            if pool is not None:
                pool.close()
                pool.join()
            _W.clear()
    if errors:
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise InputError(f"cannot sign {errors[0]}{more}")
    return count, values


def sign_tree(paths: list[str], key: SigningKey, cert: x509.Certificate, *, hash_name: str = "sha256",
              jobs: int | None = None, xattr_file: str | None = None, quiet: bool = False,
              cert_source: str = "certificate", in_process: bool = False) -> SignSummary:
    if hash_name not in hashalgo.SIGNING:
        raise InputError(f"--hash: {hash_name} is not accepted for signing (use {', '.join(hashalgo.SIGNING)})")
    algo = hashalgo.by_name(hash_name)
    check_key_matches_certificate(key, cert, cert_source)
    key_id = ima_key_id(cert, cert_source)
    if xattr_file is not None and len({os.path.abspath(p) for p in paths}) > 1:
        raise InputError("--xattr-file takes one PATH: its entries are relative to that directory")
    check_roots(paths)
    stats = TreeWalk()
    count, values = sign_files(iter_files(paths, stats), key, key_id, algo, jobs=jobs or os.cpu_count() or 1,
                               write_xattr=xattr_file is None, quiet=quiet, in_process=in_process)
    if stats.errors:
        raise InputError(f"cannot read {stats.errors[0]}")
    if xattr_file is not None:
        records = [xattrfile.XattrRecord(rel, ((XATTR_NAME, values[rel]),)) for rel in sorted(values)]
        atomic.write_bytes(Path(xattr_file), xattrfile.serialize(records))
    return SignSummary(signed=count, skipped=dict(stats.skipped), hash_algo=algo.name,
                       key_id=key_id.hex(), xattr_file=xattr_file)
