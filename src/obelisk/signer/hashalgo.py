"""Hash algorithms as the kernel numbers them (include/uapi/linux/hash_info.h)."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass

from cryptography.hazmat.primitives import hashes

from obelisk.core.errors import InputError

# What cryptography's CertificateBuilder.sign accepts.
CertificateHash = (hashes.SHA224 | hashes.SHA256 | hashes.SHA384 | hashes.SHA512
                   | hashes.SHA3_224 | hashes.SHA3_256 | hashes.SHA3_384 | hashes.SHA3_512)
_CERTIFICATE_HASHES = (hashes.SHA224, hashes.SHA256, hashes.SHA384, hashes.SHA512,
                       hashes.SHA3_224, hashes.SHA3_256, hashes.SHA3_384, hashes.SHA3_512)


@dataclass(frozen=True)
class HashAlgo:
    name: str  # as evmctl and the IMA policy spell it
    kernel_id: int  # enum hash_algo
    digest_size: int

    def new(self) -> hashlib._Hash:
        return hashlib.new(self.name)

    def crypto_hash(self) -> hashes.HashAlgorithm:
        return _CRYPTO[self.name]()

    def certificate_hash(self) -> CertificateHash:
        """The hash for an X.509 signature: cryptography signs certificates with SHA-2 and SHA-3 only."""
        h = self.crypto_hash()
        if not isinstance(h, _CERTIFICATE_HASHES):
            raise InputError(f"cannot sign certificates with {self.name} (use sha256, sha384 or sha512)")
        return h


_ALGOS = (
    HashAlgo("md5", 1, 16),
    HashAlgo("sha1", 2, 20),
    HashAlgo("sha256", 4, 32),
    HashAlgo("sha384", 5, 48),
    HashAlgo("sha512", 6, 64),
    HashAlgo("sha224", 7, 28),
    HashAlgo("sha3_256", 20, 32),
    HashAlgo("sha3_384", 21, 48),
    HashAlgo("sha3_512", 22, 64),
)
_CRYPTO: dict[str, Callable[[], hashes.HashAlgorithm]] = {
    "md5": hashes.MD5, "sha1": hashes.SHA1, "sha224": hashes.SHA224, "sha256": hashes.SHA256,
    "sha384": hashes.SHA384, "sha512": hashes.SHA512, "sha3_256": hashes.SHA3_256,
    "sha3_384": hashes.SHA3_384, "sha3_512": hashes.SHA3_512,
}
BY_NAME = {a.name: a for a in _ALGOS}
BY_KERNEL_ID = {a.kernel_id: a for a in _ALGOS}

# Algorithms obelisk signs with; md5/sha1 are only ever read.
SIGNING = ("sha256", "sha384", "sha512")


def by_name(name: str) -> HashAlgo:
    try:
        return BY_NAME[name.lower().replace("-", "")]
    except KeyError:
        raise InputError(f"unknown hash algorithm {name!r} (known: {', '.join(BY_NAME)})") from None
