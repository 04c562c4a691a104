"""The `security.ima` extended attribute: parse/serialize, and signature verification.

Layouts (kernel security/integrity/integrity.h):
  digest      0x01 | sha1 digest                          (IMA_XATTR_DIGEST, legacy)
  digest-ng   0x04 | hash_algo | digest                  (IMA_XATTR_DIGEST_NG)
  signature   0x03 | version 2 | hash_algo | keyid[4] | sig_size (u16 BE) | sig   (EVM_IMA_XATTR_DIGSIG)
  verity sig  0x06 | version 3 | hash_algo | keyid[4] | sig_size (u16 BE) | sig   (IMA_VERITY_DIGSIG)

A v2 signature signs the file digest itself. A v3 signature signs
hash(ima_file_id{hash_type=0x06, hash_algo, fs-verity digest}), as the kernel's
calc_file_id_hash() computes it.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from obelisk.core.errors import ParseError
from obelisk.signer import hashalgo
from obelisk.signer.hashalgo import HashAlgo

IMA_XATTR_DIGEST = 0x01
EVM_IMA_XATTR_DIGSIG = 0x03
IMA_XATTR_DIGEST_NG = 0x04
IMA_VERITY_DIGSIG = 0x06

_SIG_HEADER = struct.Struct(">BBB4sH")
# The kernel caps signatures at what fits in an xattr; obelisk refuses anything absurd early.
MAX_SIGNATURE_BYTES = 4096


@dataclass(frozen=True)
class ImaDigest:
    """A hash-only `security.ima` (no signature): what `evmctl ima_hash` writes."""

    hash_algo: HashAlgo
    digest: bytes

    @property
    def signed(self) -> bool:
        return False


@dataclass(frozen=True)
class ImaSignature:
    """A signature in `security.ima` (v2) or an fs-verity signature (v3)."""

    version: int  # 2 or 3
    hash_algo: HashAlgo
    key_id: bytes  # 4 bytes: the last 4 bytes of the signing certificate's subjectKeyIdentifier
    signature: bytes  # PKCS#1 v1.5 for RSA, DER Ecdsa-Sig-Value for ECDSA

    @property
    def signed(self) -> bool:
        return True

    @property
    def xattr_type(self) -> int:
        return EVM_IMA_XATTR_DIGSIG if self.version == 2 else IMA_VERITY_DIGSIG

    @property
    def key_id_hex(self) -> str:
        return self.key_id.hex()


ImaXattr = ImaDigest | ImaSignature


def serialize(value: ImaXattr) -> bytes:
    if isinstance(value, ImaSignature):
        if len(value.key_id) != 4:
            raise ValueError("key id must be 4 bytes")
        return _SIG_HEADER.pack(value.xattr_type, value.version, value.hash_algo.kernel_id, value.key_id,
                                len(value.signature)) + value.signature
    if value.hash_algo.name == "sha1":
        return bytes([IMA_XATTR_DIGEST]) + value.digest
    return bytes([IMA_XATTR_DIGEST_NG, value.hash_algo.kernel_id]) + value.digest


def v2_header(algo: HashAlgo, key_id: bytes, signature_size: int) -> bytes:
    return _SIG_HEADER.pack(EVM_IMA_XATTR_DIGSIG, 2, algo.kernel_id, key_id, signature_size)


def parse(data: bytes, source: str = "security.ima") -> ImaXattr:
    """Parse an untrusted `security.ima` value; ParseError names the field and offset."""
    if not data:
        raise ParseError("empty security.ima value", source=source, offset=0)
    kind = data[0]
    if kind == IMA_XATTR_DIGEST:
        if len(data) != 21:
            raise ParseError(f"sha1 digest value must be 21 bytes, got {len(data)}", source=source, offset=0)
        return ImaDigest(hashalgo.BY_NAME["sha1"], bytes(data[1:]))
    if kind == IMA_XATTR_DIGEST_NG:
        if len(data) < 2:
            raise ParseError("digest-ng value truncated before hash algorithm", source=source, offset=1)
        algo = _algo(data[1], source, 1)
        if len(data) != 2 + algo.digest_size:
            raise ParseError(f"{algo.name} digest must be {algo.digest_size} bytes, got {len(data) - 2}",
                             source=source, offset=2)
        return ImaDigest(algo, bytes(data[2:]))
    if kind in (EVM_IMA_XATTR_DIGSIG, IMA_VERITY_DIGSIG):
        if len(data) < _SIG_HEADER.size:
            raise ParseError(f"signature header truncated: {len(data)} of {_SIG_HEADER.size} bytes",
                             source=source, offset=len(data))
        _, version, algo_id, key_id, sig_size = _SIG_HEADER.unpack_from(data)
        expected_version = 2 if kind == EVM_IMA_XATTR_DIGSIG else 3
        if version != expected_version:
            raise ParseError(f"signature type 0x{kind:02x} needs version {expected_version}, got {version}",
                             source=source, offset=1)
        algo = _algo(algo_id, source, 2)
        if sig_size == 0 or sig_size > MAX_SIGNATURE_BYTES:
            raise ParseError(f"signature length {sig_size} out of range", source=source, offset=7)
        if len(data) != _SIG_HEADER.size + sig_size:
            raise ParseError(f"signature length field says {sig_size} bytes but {len(data) - _SIG_HEADER.size} "
                             f"follow", source=source, offset=7)
        return ImaSignature(version, algo, bytes(key_id), bytes(data[_SIG_HEADER.size:]))
    raise ParseError(f"unknown security.ima type 0x{kind:02x}", source=source, offset=0)


def _algo(kernel_id: int, source: str, offset: int) -> HashAlgo:
    try:
        return hashalgo.BY_KERNEL_ID[kernel_id]
    except KeyError:
        raise ParseError(f"unknown hash algorithm id {kernel_id}", source=source, offset=offset) from None


def verity_file_id_digest(algo: HashAlgo, verity_digest: bytes) -> bytes:
    """The digest a v3 signature signs: hash(struct ima_file_id) trimmed to the digest's size."""
    file_id = bytes([IMA_VERITY_DIGSIG, algo.kernel_id]) + verity_digest
    h = algo.new()
    h.update(file_id)
    return h.digest()
