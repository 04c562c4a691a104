"""Trusted certificates indexed by IMA key id, and verification of one `sig` field value."""

from __future__ import annotations

from typing import TYPE_CHECKING

from obelisk.core.errors import ParseError

if TYPE_CHECKING:
    from cryptography import x509

# The signer modules (and `cryptography`, ~50 ms to import) are imported by the methods that use
# them: a verification without --cert, which forks its workers from this process, never needs them.

EVM_XATTR_PORTABLE_DIGSIG = 0x05

VALID = "valid"
UNSIGNED = "unsigned"
UNKNOWN_KEY = "unknown-key"
BAD_SIGNATURE = "bad-signature"
MALFORMED = "malformed-signature"


class Keyring:
    """Like the kernel's .ima keyring: signatures find their key by the 4-byte key id."""

    def __init__(self, certs: list[tuple[str, x509.Certificate]]):
        from obelisk.signer.keys import ima_key_id

        self.sources = [s for s, _ in certs]
        self.by_id: dict[bytes, list] = {}
        for source, cert in certs:
            self.by_id.setdefault(ima_key_id(cert, source), []).append(cert.public_key())

    @classmethod
    def load(cls, paths: list[str]) -> Keyring:
        from obelisk.signer.keys import load_certificate

        return cls([(p, load_certificate(p)) for p in paths])

    def check(self, sig: bytes, digest_algo: str, digest: bytes) -> tuple[str, str]:
        """(outcome, detail) for an entry's `sig` field over its file digest."""
        from obelisk.signer import imasig
        from obelisk.signer.hashalgo import BY_NAME
        from obelisk.signer.keys import verify_digest_signature

        if not sig:
            return UNSIGNED, "no signature recorded"
        if sig[0] == EVM_XATTR_PORTABLE_DIGSIG:  # the kernel logs security.evm when there is no IMA signature
            return UNSIGNED, "only an EVM portable signature recorded, no IMA signature"
        try:
            parsed = imasig.parse(sig, source="sig")
        except ParseError as exc:
            return MALFORMED, str(exc)
        if not isinstance(parsed, imasig.ImaSignature):
            return UNSIGNED, f"security.ima holds a {parsed.hash_algo.name} hash, not a signature"
        keys = self.by_id.get(parsed.key_id)
        if not keys:
            return UNKNOWN_KEY, f"key id {parsed.key_id.hex()} is not among the trusted certificates"
        if parsed.version == 2:
            if parsed.hash_algo.name != digest_algo:
                return BAD_SIGNATURE, (f"signature is over a {parsed.hash_algo.name} digest, "
                                       f"the list measured {digest_algo or 'an unknown algorithm'}")
            signed = digest
        else:
            signed = imasig.verity_file_id_digest(parsed.hash_algo, digest)
        algo = BY_NAME[parsed.hash_algo.name]
        if any(verify_digest_signature(k, parsed.signature, signed, algo) for k in keys):
            return VALID, f"key id {parsed.key_id.hex()}"
        return BAD_SIGNATURE, f"signature by key id {parsed.key_id.hex()} does not verify over the measured digest"
