"""manifest.json: every artifact and rootfs file with its digest and signature, signed by the customer key.

The manifest is canonical JSON (sorted keys, fixed indentation) so that the same build gives
the same bytes. Its detached signature `manifest.json.sig` is JSON holding the algorithm,
the signature over SHA-256/384/512 of manifest.json's exact bytes, and the signing
certificate (PEM), so `image verify` needs only the customer CA.
"""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from obelisk.core.errors import InputError

SCHEMA = "obelisk.image-manifest/1"
SIG_SCHEMA = "obelisk.image-manifest-signature/1"
MANIFEST = "manifest.json"
SIGNATURE = "manifest.json.sig"
MAX_MANIFEST_BYTES = 256 * 1024 * 1024


def dumps(manifest: dict[str, Any]) -> bytes:
    return (json.dumps(manifest, indent=1, sort_keys=True, ensure_ascii=False) + "\n").encode()


def artifact_record(path: Path) -> dict[str, Any]:
    with open(path, "rb") as handle:
        digest = hashlib.file_digest(handle, "sha256").hexdigest()
    return {"sha256": digest, "size": path.stat().st_size}


# Paths on a node that hold its own data, outside the signed root: measured entries there may vary.
VARYING = (("/var/**", "the node's own state (LUKS2/ext2 volume), not part of the image"),
           ("/run/**", "tmpfs, created at boot"), ("/tmp/**", "tmpfs, created at boot"),
           ("/dev/**", "devtmpfs"), ("/proc/**", "procfs"), ("/sys/**", "sysfs"))


def ima_reference(files: list[dict[str, Any]], image: str) -> dict[str, Any]:
    """The IMA reference manifest (ima_policy's `obelisk.ima-reference/1`): path -> allowed digests."""
    from obelisk.ima_policy import reference

    ref = reference.ReferenceManifest(
        files={f["path"]: (f"sha256:{f['sha256']}",) for f in files if f["type"] == "file"},
        rules=tuple(reference.Rule(glob, "glob", reference.IGNORE, why) for glob, why in VARYING),
        image=image)
    return ref.to_json()


@dataclass(frozen=True)
class ManifestSignature:
    algorithm: str  # sha256 | sha384 | sha512
    signature: bytes
    certificate: x509.Certificate

    def to_json(self) -> dict[str, str]:
        return {"schema": SIG_SCHEMA, "algorithm": self.algorithm,
                "signature": base64.b64encode(self.signature).decode(),
                "certificate": self.certificate.public_bytes(serialization.Encoding.PEM).decode()}

    @classmethod
    def loads(cls, data: bytes, source: str) -> "ManifestSignature":
        try:
            d = json.loads(data)
            if not isinstance(d, dict) or d.get("schema") != SIG_SCHEMA:
                raise InputError(f"not an obelisk manifest signature (schema {SIG_SCHEMA})", source=source)
            algorithm = d["algorithm"]
            if algorithm not in ("sha256", "sha384", "sha512"):
                raise InputError(f"algorithm: {algorithm!r} not accepted", source=source)
            return cls(algorithm, base64.b64decode(d["signature"], validate=True),
                       x509.load_pem_x509_certificate(d["certificate"].encode()))
        except InputError:
            raise
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise InputError(f"malformed manifest signature: {type(exc).__name__}: {exc}", source=source) from None


def sign(manifest_bytes: bytes, key: Any, cert: x509.Certificate, algorithm: str = "sha256") -> ManifestSignature:
    from obelisk.signer import hashalgo

    algo = hashalgo.by_name(algorithm)
    digest = hashlib.new(algorithm, manifest_bytes).digest()
    return ManifestSignature(algorithm, key.sign_digest(digest, algo), cert)


def check_signature(manifest_bytes: bytes, sig: ManifestSignature) -> bool:
    from obelisk.signer import hashalgo
    from obelisk.signer.keys import verify_digest_signature

    digest = hashlib.new(sig.algorithm, manifest_bytes).digest()
    return verify_digest_signature(sig.certificate.public_key(), sig.signature, digest,  # type: ignore[arg-type]
                                   hashalgo.by_name(sig.algorithm))


def chains_to(cert: x509.Certificate, ca: x509.Certificate) -> str | None:
    """None if `cert` was issued by `ca` (names, signature, `ca` a CA); else the reason.

    The kernel's view of an IMA or manifest signing certificate: no validity dates (see obelisk.signer.certs).
    """
    from obelisk.signer.certs import ChainError, check_issued_by

    try:
        check_issued_by(cert, ca)
    except ChainError as exc:
        return str(exc)
    return None


def load(path: Path) -> dict[str, Any]:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InputError(f"cannot read: {exc.strerror}", source=str(path)) from None
    if len(data) > MAX_MANIFEST_BYTES:
        raise InputError("manifest too large", source=str(path))
    try:
        manifest = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"not JSON: {exc}", source=str(path)) from None
    if not isinstance(manifest, dict) or manifest.get("schema") != SCHEMA:
        raise InputError(f"not an obelisk image manifest (schema {SCHEMA})", source=str(path))
    return manifest
