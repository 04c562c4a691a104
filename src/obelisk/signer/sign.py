"""Signing every regular file of a tree with IMA v2 signatures, on every core.

Each worker process holds the key once (evmctl reloads it for every file, which is most
of its cost) and hashes and signs its share of the files. Signatures go either straight
into `security.ima` or, with an xattr file, into a `getfattr --dump` file that
`gensquashfs -A` consumes, written atomically once every file is signed.

The workers start signing before the certificate is checked: reading a certificate imports
`cryptography.x509`, 40 ms of CPU, as long as signing 1,000 files with P-256, so the parent
does it while the workers sign their first files. Until the parent has checked that the key
is the certificate's and sends the key id (which every signature carries), a worker writes
nothing: it keeps what it signed, and waits for the key id before it writes.
"""

from __future__ import annotations

import functools
import os
import select
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from obelisk.core.digest import digest_fd
from obelisk.core.errors import InputError
from obelisk.core.forkpool import ForkPool
from obelisk.core.progress import progress
from obelisk.signer import hashalgo, imasig, xattrfile
from obelisk.signer.hashalgo import HashAlgo
from obelisk.signer.keys import SigningCertificate, SigningKey, SoftwareKey
from obelisk.signer.tree import TreeWalk, check_roots, iter_paths

if TYPE_CHECKING:
    from cryptography import x509

XATTR_NAME = "security.ima"
_CHUNK = 64
# Each worker's first chunk: what it signs while the parent checks the certificate (~40 ms; with
# P-256 a worker signs about 1,000 files in that time, with RSA-2048 about 150).
_HEAD = 1024
# A file opened once: hashed, signed and given its xattr through one descriptor; a symlink swapped
# in after the walk is refused (O_NOFOLLOW).
_OPEN_FLAGS = os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW


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


class _KeyIdGate:
    """The key id, sent by the parent once it has checked the certificate, to workers already signing.

    A pipe: the parent writes the 4-byte id once for each reader and closes it; a worker reads its
    copy once. End of file before the id means the parent gave up (a certificate that does not fit
    the key), so a worker never writes a signature the parent did not approve.
    """

    def __init__(self, readers: int):
        self.readers = readers
        self.read_end, self.write_end = os.pipe()
        os.set_blocking(self.read_end, False)
        self.key_id: bytes | None = None  # in a worker: once read

    def close_write_end(self) -> None:
        """In a worker: else a parent that died would never be seen (end of file) by a waiting worker."""
        os.close(self.write_end)
        self.write_end = -1

    def send(self, key_id: bytes) -> None:
        os.write(self.write_end, key_id * self.readers)  # 4 bytes a reader: one atomic pipe write
        os.close(self.write_end)
        self.write_end = -1

    def receive(self, *, wait: bool) -> bytes | None:
        """The key id, or None when it has not come yet and not `wait`."""
        if self.key_id is None:
            if wait:
                select.select([self.read_end], [], [])
            try:
                data = os.read(self.read_end, 4)
            except BlockingIOError:
                return None
            if len(data) != 4:
                raise InputError("signing stopped before the certificate was checked")
            self.key_id = data
        return self.key_id

    def close(self) -> None:
        os.close(self.read_end)
        if self.write_end >= 0:
            os.close(self.write_end)


class _SignJob:
    """What every worker inherits by fork (nothing of it is pickled), with what it keeps between chunks:
    the files signed before the key id came."""

    def __init__(self, sign: Callable[[bytes], bytes], algo: HashAlgo, write_xattr: bool, gate: _KeyIdGate,
                 held_fds: int):
        self.sign = sign
        self.algo = algo
        self.write_xattr = write_xattr
        self.gate = gate
        self.held_fds = held_fds  # open descriptors a worker may keep while it waits for the key id
        self.headers: dict[int, bytes] = {}  # signature length -> v2 header (ECDSA's length varies)
        self.record = xattrfile.record_serializer(XATTR_NAME)

    def __call__(self, chunk: list[tuple[bytes, bytes]]) -> tuple[int, list[tuple[bytes, bytes]], list[str]]:
        """Sign a chunk of (relpath, path): (files signed, [(relpath, its xattr dump record)] without
        write_xattr, errors). The records are made here, on every core, rather than in the parent."""
        sign, hash_name, write_xattr, gate = self.sign, self.algo.name, self.write_xattr, self.gate
        out: list[tuple[bytes, bytes]] = []
        errors: list[str] = []
        done = 0
        held: list[tuple[int, bytes, bytes, bytes]] = []  # (fd or -1, relpath, path, signature), no key id yet
        key_id = gate.receive(wait=False)
        for relpath, path in chunk:
            try:
                fd = os.open(path, _OPEN_FLAGS)
            except OSError as exc:
                errors.append(_cannot(path, exc))
                continue
            try:
                signature = sign(digest_fd(fd, hash_name))
            except OSError as exc:
                os.close(fd)
                errors.append(_cannot(path, exc))
                continue
            if not write_xattr:
                os.close(fd)
                fd = -1
            if key_id is None:
                held.append((fd, relpath, path, signature))
                if write_xattr and len(held) >= self.held_fds:
                    key_id = gate.receive(wait=True)
                    done += self._emit_held(held, key_id, out, errors)
                else:
                    key_id = gate.receive(wait=False) if len(held) % _CHUNK == 0 else None
                    if key_id is not None:
                        done += self._emit_held(held, key_id, out, errors)
                continue
            done += self._emit(fd, relpath, path, signature, key_id, out, errors)
        if held:  # the reply to a chunk carries all of it
            done += self._emit_held(held, gate.receive(wait=True), out, errors)
        return done, out, errors

    def _emit_held(self, held: list[tuple[int, bytes, bytes, bytes]], key_id: bytes | None,
                   out: list[tuple[bytes, bytes]], errors: list[str]) -> int:
        assert key_id is not None  # receive(wait=True) returns it or raises
        done = sum(self._emit(fd, relpath, path, signature, key_id, out, errors)
                   for fd, relpath, path, signature in held)
        held.clear()
        return done

    def _emit(self, fd: int, relpath: bytes, path: bytes, signature: bytes, key_id: bytes,
              out: list[tuple[bytes, bytes]], errors: list[str]) -> int:
        """Write one file's signature (setxattr through its descriptor, which this closes) or make its
        dump record: 1 when done, 0 with an error."""
        header = self.headers.get(len(signature))
        if header is None:
            header = self.headers[len(signature)] = imasig.v2_header(self.algo, key_id, len(signature))
        value = header + signature
        if fd < 0:
            out.append((relpath, self.record(relpath, value)))
            return 1
        try:
            os.setxattr(fd, XATTR_NAME, value)
        except OSError as exc:
            errors.append(_cannot(path, exc))
            return 0
        finally:
            os.close(fd)
        return 1


def _cannot(path: bytes, exc: OSError) -> str:
    return f"{os.fsdecode(path)}: {exc.strerror or exc}"


def _held_fds_limit(jobs: int) -> int:
    """Descriptors each worker may keep open while it waits for the key id: its share of the soft limit."""
    import resource

    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return _HEAD
    return max(1, min(_HEAD, (soft - 64) // max(1, jobs)))


def sign_files(files: Iterable[tuple[bytes, bytes]], key: SigningKey, key_id: bytes | Callable[[], bytes],
               algo: HashAlgo, *, jobs: int, write_xattr: bool, quiet: bool = False, in_process: bool = False,
               total: int | None = None) -> tuple[int, dict[bytes, bytes]]:
    """Sign `files`, (relpath, path) pairs (streamed); returns (count, relpath -> its `getfattr --dump`
    record when not writing xattrs).

    `key_id` may be a function that finds it (checking the certificate): it runs while the workers
    sign their first files, and nothing is written before it returns; what it raises stops them.
    Raises InputError naming the first file that could not be signed.
    """
    jobs = 1 if in_process else jobs
    gate = _KeyIdGate(readers=max(1, jobs))
    job = _SignJob(_digest_signer(key, algo), algo, write_xattr, gate, _held_fds_limit(jobs))
    values: dict[bytes, bytes] = {}
    errors: list[str] = []
    count = 0

    def send_key_id() -> None:
        gate.send(key_id() if callable(key_id) else key_id)

    try:
        # the workers fork before the progress bar starts its thread
        with ForkPool(job, jobs, after_fork=gate.close_write_end) as pool, \
                progress("signing files", total=total, quiet=quiet) as bar:
            for done, out, errs in pool.map(files, chunk=_CHUNK, head=_HEAD, while_started=send_key_id):
                count += done
                values.update(out)
                errors.extend(errs)
                bar.advance(done)
    finally:
        gate.close()
    if errors:
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise InputError(f"cannot sign {errors[0]}{more}")
    return count, values


def sign_tree(paths: list[str], key: SigningKey,
              cert: x509.Certificate | str | Callable[[], SigningCertificate], *, hash_name: str = "sha256",
              jobs: int | None = None, xattr_file: str | None = None, quiet: bool = False,
              cert_source: str = "certificate", in_process: bool = False) -> SignSummary:
    """Sign every regular file under `paths`. `cert` is the key's certificate, its file (PEM or DER),
    or a function that reads it (the CLI reads it in a forked process while it loads the key): it is
    read, and the key proved against it, while the workers start signing; nothing is written unless
    the key is the certificate's."""
    if hash_name not in hashalgo.SIGNING:
        raise InputError(f"--hash: {hash_name} is not accepted for signing (use {', '.join(hashalgo.SIGNING)})")
    algo = hashalgo.by_name(hash_name)
    if xattr_file is not None and len({os.path.abspath(p) for p in paths}) > 1:
        raise InputError("--xattr-file takes one PATH: its entries are relative to that directory")
    check_roots(paths)
    found: list[bytes] = []

    def checked_key_id() -> bytes:
        """Runs while the workers sign their first files."""
        from obelisk.signer import keys

        if xattr_file is not None:  # imported now, beside the workers, rather than alone at the end (15 ms)
            from obelisk.core import atomic  # noqa: F401
        if callable(cert):
            signing = cert()
            keys.check_key_matches_signing_certificate(key, signing)
            found.append(signing.key_id)
        else:
            source = cert if isinstance(cert, str) else cert_source
            certificate = keys.load_certificate(cert) if isinstance(cert, str) else cert
            keys.check_key_matches_certificate(key, certificate, source)
            found.append(keys.ima_key_id(certificate, source))
        return found[0]

    stats = TreeWalk()
    files = ((relpath, path) for _, relpath, path in iter_paths(paths, stats))
    count, records = sign_files(files, key, checked_key_id, algo, jobs=jobs or os.cpu_count() or 1,
                                write_xattr=xattr_file is None, quiet=quiet, in_process=in_process)
    if stats.errors:
        raise InputError(f"cannot read {stats.errors[0]}")
    if xattr_file is not None:
        from obelisk.core import atomic

        atomic.write_bytes(xattr_file, b"".join(records[rel] for rel in sorted(records)))
    return SignSummary(signed=count, skipped=dict(stats.skipped), hash_algo=algo.name,
                       key_id=found[0].hex(), xattr_file=xattr_file)
