"""Verifying IMA signatures of a tree against trusted certificates, as the kernel appraises.

Each regular file is checked: its `security.ima` (or the entry in a `getfattr --dump`
file) must be a signature (v2, or v3 over the fs-verity digest) by one of the trusted
certificates, over the file's current content. Every failure is named.
"""

from __future__ import annotations

import multiprocessing
import os
from dataclasses import dataclass
from enum import StrEnum

from cryptography import x509

from obelisk.core.digest import file_digest
from obelisk.core.errors import ParseError
from obelisk.core.findings import Evidence, Finding, Reference, Report, Severity, Status, Subject
from obelisk.core.progress import progress
from obelisk.signer import imasig, xattrfile
from obelisk.signer.keys import PublicKey, ima_key_id, verify_digest_signature
from obelisk.signer.tree import TreeFile, walk
from obelisk.signer.verity import verity_digest

XATTR_NAME = "security.ima"
_CHUNK = 128


class Outcome(StrEnum):
    VALID = "valid"
    UNSIGNED = "unsigned"  # no security.ima, or a hash without a signature
    UNKNOWN_KEY = "unknown-key"  # signed by a key id none of the trusted certificates has
    BAD_SIGNATURE = "bad-signature"  # content changed, or the signature was altered
    MALFORMED = "malformed"  # security.ima does not parse
    UNREADABLE = "unreadable"  # the file (or its xattr) cannot be read


@dataclass(frozen=True)
class FileResult:
    relpath: str
    path: str
    outcome: Outcome
    detail: str = ""
    key_id: str = ""


class TrustedKeys:
    """Certificates indexed by the 4-byte IMA key id, like the kernel's .ima keyring."""

    def __init__(self, certs: list[tuple[str, x509.Certificate]]):
        self.by_id: dict[bytes, list[PublicKey]] = {}
        for source, cert in certs:
            self.by_id.setdefault(ima_key_id(cert, source), []).append(cert.public_key())  # type: ignore[arg-type]

    def check(self, value: bytes, path: str) -> tuple[Outcome, str, str]:
        try:
            parsed = imasig.parse(value, source=f"{path}: security.ima")
        except ParseError as exc:
            return Outcome.MALFORMED, str(exc), ""
        if not isinstance(parsed, imasig.ImaSignature):
            return Outcome.UNSIGNED, f"security.ima holds a {parsed.hash_algo.name} hash, not a signature", ""
        keys = self.by_id.get(parsed.key_id)
        if not keys:
            return Outcome.UNKNOWN_KEY, f"signed by key id {parsed.key_id_hex}, not among the trusted certificates", \
                parsed.key_id_hex
        try:
            if parsed.version == 2:
                digest = file_digest(path, parsed.hash_algo.name, follow_symlinks=False)
            elif parsed.hash_algo.name not in ("sha256", "sha512"):
                return Outcome.MALFORMED, f"fs-verity has no {parsed.hash_algo.name} digests", parsed.key_id_hex
            else:
                with open(path, "rb") as handle:
                    digest = imasig.verity_file_id_digest(parsed.hash_algo,
                                                          verity_digest(handle, parsed.hash_algo.name))
        except OSError as exc:
            return Outcome.UNREADABLE, exc.strerror or str(exc), parsed.key_id_hex
        if any(verify_digest_signature(k, parsed.signature, digest, parsed.hash_algo) for k in keys):
            return Outcome.VALID, "", parsed.key_id_hex
        return Outcome.BAD_SIGNATURE, "signature does not match the file's content", parsed.key_id_hex


_W: dict[str, object] = {}


def _check_chunk(chunk: list[tuple[str, str, bytes | None, bool]]) -> list[FileResult]:
    keys: TrustedKeys = _W["keys"]  # type: ignore[assignment]
    out = []
    for relpath, path, value, from_file in chunk:
        if value is None and not from_file:
            try:
                value = os.getxattr(path, XATTR_NAME, follow_symlinks=False)
            except OSError as exc:
                if exc.errno in (61, 95):  # ENODATA, EOPNOTSUPP
                    out.append(FileResult(relpath, path, Outcome.UNSIGNED, "no security.ima"))
                else:
                    out.append(FileResult(relpath, path, Outcome.UNREADABLE, exc.strerror or str(exc)))
                continue
        if value is None:
            out.append(FileResult(relpath, path, Outcome.UNSIGNED, "no entry in the xattr file"))
            continue
        outcome, detail, key_id = keys.check(value, path)
        out.append(FileResult(relpath, path, outcome, detail, key_id))
    return out


def verify_files(files: list[TreeFile], keys: TrustedKeys, dump: dict[bytes, bytes] | None, *,
                 jobs: int, quiet: bool = False) -> list[FileResult]:
    work = [(os.fsdecode(f.relpath), f.path, dump.get(f.relpath) if dump is not None else None, dump is not None)
            for f in files]
    chunks = [work[i:i + _CHUNK] for i in range(0, len(work), _CHUNK)]
    _W["keys"] = keys
    results: list[FileResult] = []
    with progress("verifying files", total=len(files), quiet=quiet) as bar:
        pool = multiprocessing.get_context("fork").Pool(jobs) if jobs > 1 and len(chunks) > 1 else None
        try:
            for part in (pool.imap(_check_chunk, chunks) if pool else map(_check_chunk, chunks)):
                results.extend(part)
                bar.advance(len(part))
        finally:
            if pool is not None:
                pool.close()
                pool.join()
            _W.clear()
    return results


MAX_XATTR_FILE_BYTES = 1 << 30  # a dump holds one signature line per file of a root file system


def load_dump(path: str) -> dict[bytes, bytes]:
    from obelisk.core.inputs import read_bounded

    data = read_bounded(path, "xattr file", MAX_XATTR_FILE_BYTES)
    out = {}
    for rec in xattrfile.parse(data, source=path):
        value = rec.get(XATTR_NAME)
        if value is not None:
            out[rec.path.lstrip(b"/")] = value
    return out


_TITLES = {
    Outcome.UNSIGNED: "file has no IMA signature",
    Outcome.UNKNOWN_KEY: "file signed by an untrusted key",
    Outcome.BAD_SIGNATURE: "file content does not match its IMA signature",
    Outcome.MALFORMED: "malformed security.ima value",
    Outcome.UNREADABLE: "file or its signature cannot be read",
}


def verify_tree(paths: list[str], certs: list[tuple[str, x509.Certificate]], *, xattr_file: str | None = None,
                jobs: int | None = None, quiet: bool = False) -> Report:
    keys = TrustedKeys(certs)
    dump = load_dump(xattr_file) if xattr_file else None
    tree = walk(paths)
    results = verify_files(tree.files, keys, dump, jobs=jobs or os.cpu_count() or 1, quiet=quiet)
    findings: list[Finding] = []
    for r in results:
        if r.outcome is Outcome.VALID:
            continue
        findings.append(Finding(
            id=f"ima.signature:{r.relpath}", title=_TITLES[r.outcome], status=Status.FAIL, severity=Severity.HIGH,
            target=r.path, observed=r.outcome.value, expected="valid signature by a trusted key",
            evidence=(Evidence("file", r.path, r.detail, "security.ima" if dump is None else str(xattr_file)),),
            remediation="re-sign the file with the customer IMA key (obelisk ima sign) or restore its content",
            references=(Reference("nist-800-53", "SI-7"),), benchmark="ima", section="signatures",
            detail=r.detail))
    for error in tree.errors:
        findings.append(Finding(id=f"ima.signature:{error.split(':')[0]}", title="directory cannot be read",
                                status=Status.ERROR, severity=Severity.HIGH, detail=error, benchmark="ima"))
    valid = sum(1 for r in results if r.outcome is Outcome.VALID)
    findings.insert(0, Finding(
        id="ima.signatures", title="every regular file carries a valid IMA signature by a trusted key",
        status=Status.PASS if valid == len(results) and not tree.errors else Status.FAIL, severity=Severity.HIGH,
        target=", ".join(paths), observed=f"{valid} of {len(results)} files verified",
        expected=f"{len(results)} of {len(results)} files verified",
        evidence=tuple(Evidence("certificate", src, f"key id {ima_key_id(c, src).hex()}") for src, c in certs),
        references=(Reference("nist-800-53", "SI-7"), Reference("nist-800-53", "CM-14")),
        benchmark="ima", section="signatures"))
    return Report(findings=tuple(findings), subject=Subject("tree", ", ".join(paths)), command="ima verify")
