"""TPM 2.0 algorithm identifiers (TCG Algorithm Registry): the one table obelisk keeps of them.

Hash algorithms carry their TPM_ALG_ID, the name obelisk writes for them (a PCR bank's name), the
digest size and the hashlib constructor name. Every component that reads or writes a TPM_ALG_ID
(quotes, event logs, names of TPM objects, policy digests, PCR extend commands) looks it up here.

`by_id` and `by_name` raise `UnknownAlgorithm` (a one-line `InputError`) for an algorithm not in
the table; `name_of` never raises and is for messages about untrusted bytes.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

from obelisk.core.errors import InputError

if TYPE_CHECKING:
    from _hashlib import HASH


class UnknownAlgorithm(InputError):
    """A TPM_ALG_ID or bank name obelisk does not know."""


@dataclass(frozen=True)
class HashAlgorithm:
    alg_id: int  # TPM_ALG_ID
    name: str  # obelisk's (and tpm2-tools') name, the PCR bank's name
    digest_size: int
    hashlib_name: str

    def new(self, data: bytes = b"") -> HASH:
        """A hashlib object; raises UnknownAlgorithm when this Python's hashlib lacks the algorithm."""
        try:
            return hashlib.new(self.hashlib_name, data)
        except ValueError:
            raise UnknownAlgorithm(f"{self.name}: this Python's hashlib cannot compute it") from None

    def digest(self, data: bytes) -> bytes:
        return self.new(data).digest()

    @property
    def available(self) -> bool:
        """Whether this Python's hashlib computes the algorithm (sm3 often is not)."""
        try:
            hashlib.new(self.hashlib_name)
        except ValueError:
            return False
        return True


SHA1 = HashAlgorithm(0x0004, "sha1", 20, "sha1")
SHA256 = HashAlgorithm(0x000B, "sha256", 32, "sha256")
SHA384 = HashAlgorithm(0x000C, "sha384", 48, "sha384")
SHA512 = HashAlgorithm(0x000D, "sha512", 64, "sha512")
SM3_256 = HashAlgorithm(0x0012, "sm3_256", 32, "sm3")
SHA3_256 = HashAlgorithm(0x0027, "sha3_256", 32, "sha3_256")
SHA3_384 = HashAlgorithm(0x0028, "sha3_384", 48, "sha3_384")
SHA3_512 = HashAlgorithm(0x0029, "sha3_512", 64, "sha3_512")

# Every hash algorithm an event log may name a bank by.
HASHES: tuple[HashAlgorithm, ...] = (SHA1, SHA256, SHA384, SHA512, SM3_256, SHA3_256, SHA3_384, SHA3_512)
# The SHA-1/SHA-2 banks: what obelisk quotes, verifies, names TPM objects with and replays IMA into.
SHA_BANKS: tuple[HashAlgorithm, ...] = (SHA1, SHA256, SHA384, SHA512)

_BY_ID = {a.alg_id: a for a in HASHES}
_BY_NAME = {a.name: a for a in HASHES}

# Signature schemes (TPMT_SIGNATURE.sigAlg).
RSASSA, RSAPSS, ECDSA = 0x0014, 0x0016, 0x0018
SIGNATURE_SCHEMES = {RSASSA: "rsassa", RSAPSS: "rsapss", ECDSA: "ecdsa"}


def _known(among: tuple[HashAlgorithm, ...]) -> str:
    return ", ".join(f"{a.name} 0x{a.alg_id:04x}" for a in among)


def by_id(alg_id: int, among: tuple[HashAlgorithm, ...] = HASHES) -> HashAlgorithm:
    """The hash algorithm with TPM_ALG_ID `alg_id`, if it is one of `among`; else UnknownAlgorithm."""
    found = _BY_ID.get(alg_id)
    if found is None or found not in among:
        raise UnknownAlgorithm(f"TPM algorithm 0x{alg_id:04x} is not a hash obelisk knows here "
                               f"(known: {_known(among)})")
    return found


def by_name(name: str, among: tuple[HashAlgorithm, ...] = HASHES) -> HashAlgorithm:
    """The hash algorithm obelisk calls `name` (sha256, sha3_256, ...), if it is one of `among`."""
    found = _BY_NAME.get(name)
    if found is None or found not in among:
        raise UnknownAlgorithm(f"hash algorithm {name!r} is not one obelisk knows here "
                               f"(known: {', '.join(a.name for a in among)})")
    return found


def is_known(alg_id: int, among: tuple[HashAlgorithm, ...] = HASHES) -> bool:
    found = _BY_ID.get(alg_id)
    return found is not None and found in among


def name_of(alg_id: int) -> str:
    """A name for messages, for any id: the algorithm's name, else alg_0xNNNN."""
    found = _BY_ID.get(alg_id)
    return found.name if found else f"alg_0x{alg_id:04x}"


def scheme_name(sig_alg: int) -> str:
    return SIGNATURE_SCHEMES.get(sig_alg, f"alg_0x{sig_alg:04x}")
