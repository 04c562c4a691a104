"""Signing every regular file of a tree with IMA v2 signatures, on every core.

Each worker process holds the key once (evmctl reloads it for every file, which is most
of its cost) and hashes and signs its share of the files. Signatures go either straight
into `security.ima` or, with an xattr file, into a `getfattr --dump` file that
`gensquashfs -A` consumes, written atomically once every file is signed.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509

from obelisk.core import atomic
from obelisk.core.digest import digest_fd, open_for_digest
from obelisk.core.errors import InputError
from obelisk.core.forkpool import ForkPool
from obelisk.core.progress import progress
from obelisk.signer import hashalgo, imasig, xattrfile
from obelisk.signer.hashalgo import HashAlgo
from obelisk.signer.keys import SigningKey, SoftwareKey, check_key_matches_certificate, ima_key_id
from obelisk.signer.tree import TreeWalk, check_roots, iter_paths

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


def _digest_signer(key: SigningKey, algo: HashAlgo) -> Callable[[bytes], bytes]:
    """`key.sign_digest(digest, algo)` as one call: a PEM key's own sign method with its padding and
    hash bound once (this runs once per file)."""
    if isinstance(key, SoftwareKey):
        return key.digest_signer(algo)
    return functools.partial(key.sign_digest, algo=algo)


@dataclass(frozen=True)
class _SignJob:
    """What every worker inherits by fork: nothing of it is pickled."""

    sign: Callable[[bytes], bytes]
    key_id: bytes
    algo: HashAlgo
    write_xattr: bool

    def __call__(self, chunk: list[tuple[bytes, bytes]]) -> tuple[int, list[tuple[bytes, bytes]], list[str]]:
        """Sign a chunk of (relpath, path): (files signed, [(relpath, its xattr dump record)] without
        write_xattr, errors). The records are made here, on every core, rather than in the parent."""
        sign, key_id, algo, hash_name = self.sign, self.key_id, self.algo, self.algo.name
        setxattr = os.setxattr if self.write_xattr else None
        out: list[tuple[bytes, bytes]] = []
        errors: list[str] = []
        done = 0
        for relpath, path in chunk:
            try:
                fd = open_for_digest(path, follow_symlinks=False)  # a symlink swapped in after the walk is refused
                try:
                    signature = sign(digest_fd(fd, hash_name))
                    value = imasig.v2_header(algo, key_id, len(signature)) + signature
                    if setxattr is not None:
                        setxattr(fd, XATTR_NAME, value)
                    else:
                        out.append((relpath, xattrfile.serialize_record(relpath, ((XATTR_NAME, value),))))
                finally:
                    os.close(fd)
                done += 1
            except OSError as exc:
                errors.append(f"{os.fsdecode(path)}: {exc.strerror or exc}")
        return done, out, errors


def sign_files(files: Iterable[tuple[bytes, bytes]], key: SigningKey, key_id: bytes, algo: HashAlgo, *, jobs: int,
               write_xattr: bool, quiet: bool = False, in_process: bool = False,
               total: int | None = None) -> tuple[int, dict[bytes, bytes]]:
    """Sign `files`, (relpath, path) pairs (streamed); returns (count, relpath -> its `getfattr --dump`
    record when not writing xattrs).

    Raises InputError naming the first file that could not be signed.
    """
    job = _SignJob(_digest_signer(key, algo), key_id, algo, write_xattr)
    values: dict[bytes, bytes] = {}
    errors: list[str] = []
    count = 0
    # the workers fork before the progress bar starts its thread
    with ForkPool(job, 1 if in_process else jobs) as pool, \
            progress("signing files", total=total, quiet=quiet) as bar:
        for done, out, errs in pool.map(files, chunk=_CHUNK):
            count += done
            values.update(out)
            errors.extend(errs)
            bar.advance(done)
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
    files = ((relpath, path) for _, relpath, path in iter_paths(paths, stats))
    count, records = sign_files(files, key, key_id, algo, jobs=jobs or os.cpu_count() or 1,
                                write_xattr=xattr_file is None, quiet=quiet, in_process=in_process)
    if stats.errors:
        raise InputError(f"cannot read {stats.errors[0]}")
    if xattr_file is not None:
        atomic.write_bytes(Path(xattr_file), b"".join(records[rel] for rel in sorted(records)))
    return SignSummary(signed=count, skipped=dict(stats.skipped), hash_algo=algo.name,
                       key_id=key_id.hex(), xattr_file=xattr_file)
