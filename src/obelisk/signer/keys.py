"""Customer keys and certificates: load them wherever obelisk takes a key.

A signing key is a PEM (or DER) private key file, optionally encrypted, or an object on a
PKCS#11 token named by an RFC 7512 URI (`pkcs11:token=...;object=...`). Passphrases come
from an environment variable or a file, never from argv. Keys made by `openssl` work as
well as keys made by `obelisk keys generate`.
"""

from __future__ import annotations

import functools
import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, utils

from obelisk.core.errors import InputError
from obelisk.core.inputs import read_bounded
from obelisk.signer.hashalgo import HashAlgo, by_name

if TYPE_CHECKING:
    # imported where a certificate is read: `cryptography.x509` costs 40 ms of CPU, and `ima sign`
    # loads its key (and starts signing) before it reads the certificate
    from cryptography import x509

PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey
MAX_KEY_FILE_BYTES = 1024 * 1024  # keys, certificates and passphrase files


@dataclass(frozen=True)
class PassphraseSource:
    """Where a passphrase comes from: an environment variable or a file (first line).

    `value` is for a passphrase already read in this process (keys generate asks once and
    then loads the CA key it just wrote); never fill it from a command-line argument.
    """

    env: str | None = None
    file: str | None = None
    value: bytes | None = None

    def read(self) -> bytes | None:
        if self.value is not None:
            return self.value
        if self.env:
            value = os.environ.get(self.env)
            if value is None:
                raise InputError(f"environment variable {self.env} (passphrase) is not set")
            return value.encode()
        if self.file:
            text = read_bounded(self.file, "passphrase file", MAX_KEY_FILE_BYTES)
            return text.splitlines()[0] if text else b""
        return None


class SigningKey(Protocol):
    """A private key that signs digests; the private half may never leave its token."""

    @property
    def public_key(self) -> PublicKey: ...

    def sign_digest(self, digest: bytes, algo: HashAlgo) -> bytes:
        """Sign a precomputed digest: PKCS#1 v1.5 for RSA, DER ECDSA (RFC 6979 deterministic) for EC."""
        ...


@dataclass(frozen=True)
class SoftwareKey:
    """A private key held in memory (from a PEM/DER file)."""

    key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey

    @property
    def public_key(self) -> PublicKey:
        return self.key.public_key()

    def sign_digest(self, digest: bytes, algo: HashAlgo) -> bytes:
        return self.digest_signer(algo)(digest)

    def digest_signer(self, algo: HashAlgo) -> Callable[[bytes], bytes]:
        """`sign_digest` with the algorithm bound once, for signing many digests."""
        key = self.key
        if isinstance(key, rsa.RSAPrivateKey):
            rsa_sign, prehashed = key.sign, _prehashed(algo.name)
            return lambda digest: rsa_sign(digest, _PKCS1V15, prehashed)
        ec_sign, ecdsa = key.sign, _ecdsa(algo.name)
        return lambda digest: ec_sign(digest, ecdsa)


_PKCS1V15 = padding.PKCS1v15()


@functools.cache
def _prehashed(hash_name: str) -> utils.Prehashed:
    return utils.Prehashed(by_name(hash_name).crypto_hash())


@functools.cache
def _ecdsa(hash_name: str) -> ec.ECDSA:
    # Deterministic ECDSA (RFC 6979) so that the same tree signs to the same bytes.
    return ec.ECDSA(_prehashed(hash_name), deterministic_signing=True)


def key_description(key: PublicKey) -> str:
    if isinstance(key, rsa.RSAPublicKey):
        return f"rsa-{key.key_size}"
    if isinstance(key, ec.EllipticCurvePublicKey):
        return {"secp256r1": "ecdsa-p256", "secp384r1": "ecdsa-p384", "secp521r1": "ecdsa-p521"}.get(
            key.curve.name, f"ecdsa-{key.curve.name}")
    return type(key).__name__


def load_signing_key(ref: str, passphrase: PassphraseSource | None = None, *,
                     check_rsa_primes: bool = True) -> SigningKey:
    """Load a signing key from a file path or a `pkcs11:` URI.

    check_rsa_primes=False skips OpenSSL's RSA key check (primality of p and q: 40 ms of CPU, as
    long as signing 150 files), for a caller that proves the key with `check_key_matches_certificate`
    instead, which signs with it and verifies under the certificate.
    """
    if ref.startswith("pkcs11:"):
        from obelisk.signer.pkcs11key import open_pkcs11_key

        return open_pkcs11_key(ref)
    path = Path(ref)
    data = read_bounded(path, "key", MAX_KEY_FILE_BYTES)
    secret = passphrase.read() if passphrase else None
    try:
        skip = not check_rsa_primes
        if b"-----BEGIN" in data:
            key = serialization.load_pem_private_key(data, password=secret, unsafe_skip_rsa_key_validation=skip)
        else:
            key = serialization.load_der_private_key(data, password=secret, unsafe_skip_rsa_key_validation=skip)
    except TypeError as exc:
        if "encrypted" in str(exc).lower() and secret is None:
            raise InputError("key is encrypted: give its passphrase with --passphrase-env or --passphrase-file",
                             source=ref) from None
        raise InputError(f"cannot load key: {exc}", source=ref) from None
    except ValueError as exc:
        msg = str(exc)
        if secret is not None and ("decrypt" in msg.lower() or "password" in msg.lower() or "bad" in msg.lower()):
            raise InputError("wrong passphrase for key", source=ref) from None
        raise InputError("not a private key (PEM or DER, RSA or EC)", source=ref) from None
    if not isinstance(key, (rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey)):
        raise InputError(f"unsupported key type {type(key).__name__}: IMA takes RSA or ECDSA", source=ref)
    return SoftwareKey(key)


def sign_tpm_policy(key: SigningKey, approved: bytes, policy_ref: bytes = b"") -> bytes:
    """`key`'s approval of a TPM policy digest (TPM2_PolicyAuthorize): a signature over
    aHash = SHA-256(approvedPolicy || policyRef), RSA PKCS#1 v1.5 or DER ECDSA as `sign_digest` makes them.

    RSA signatures are the bytes a PEM key always gave; ECDSA ones are now deterministic (RFC 6979),
    which the TPM accepts like any other valid signature.
    """
    from obelisk.tpm.seal import policy_signing_digest

    return key.sign_digest(policy_signing_digest(approved, policy_ref), by_name("sha256"))


def load_certificate(path: str | os.PathLike[str]) -> x509.Certificate:
    """Load an X.509 certificate, PEM or DER."""
    from cryptography import x509

    source = os.fspath(path)
    data = read_bounded(source, "certificate", MAX_KEY_FILE_BYTES)
    try:
        if b"-----BEGIN CERTIFICATE" in data:
            return x509.load_pem_x509_certificate(data)
        return x509.load_der_x509_certificate(data)
    except ValueError:
        raise InputError("not an X.509 certificate (PEM or DER)", source=source) from None


def load_certificates(paths: list[str]) -> list[x509.Certificate]:
    return [load_certificate(p) for p in paths]


def subject_key_id(cert: x509.Certificate) -> bytes | None:
    from cryptography import x509

    try:
        return cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
    except x509.ExtensionNotFound:
        return None


def ima_key_id(cert: x509.Certificate, source: str = "certificate") -> bytes:
    """The 4-byte key id IMA signatures carry: the last 4 bytes of the subjectKeyIdentifier.

    The kernel finds the verifying key in the .ima keyring by exactly this id, so a
    certificate without a subjectKeyIdentifier cannot be used.
    """
    ski = subject_key_id(cert)
    if ski is None or len(ski) < 4:
        raise InputError("certificate has no subjectKeyIdentifier: the kernel could not match signatures to it",
                         source=source)
    return ski[-4:]


def same_public_key(a: PublicKey, b: PublicKey) -> bool:
    fmt = serialization.PublicFormat.SubjectPublicKeyInfo
    return a.public_bytes(serialization.Encoding.DER, fmt) == b.public_bytes(serialization.Encoding.DER, fmt)


@dataclass(frozen=True)
class SigningCertificate:
    """What IMA signing needs from the signing key's certificate."""

    public_key_der: bytes  # SubjectPublicKeyInfo, DER
    key_id: bytes  # ima_key_id
    source: str  # its file, for messages


def read_signing_certificate(path: str) -> SigningCertificate:
    """The certificate file's public key and IMA key id (InputError names the file)."""
    cert = load_certificate(path)
    public_der = cert.public_key().public_bytes(serialization.Encoding.DER,
                                                serialization.PublicFormat.SubjectPublicKeyInfo)
    return SigningCertificate(public_der, ima_key_id(cert, path), path)


def check_key_matches_signing_certificate(key: SigningKey, cert: SigningCertificate) -> None:
    """`check_key_matches_certificate` for a certificate read by `read_signing_certificate`."""
    public = serialization.load_der_public_key(cert.public_key_der)
    if not isinstance(public, (rsa.RSAPublicKey, ec.EllipticCurvePublicKey)):
        raise InputError(f"unsupported key type {type(public).__name__}: IMA takes RSA or ECDSA", source=cert.source)
    check_key_matches_public_key(key, public, cert.source)


def check_key_matches_certificate(key: SigningKey, cert: x509.Certificate, source: str = "certificate") -> None:
    """The key is the certificate's: same public key, and a signature made with the private key
    verifies under the certificate (a private key whose parts do not fit together fails here)."""
    check_key_matches_public_key(key, cert.public_key(), source)  # type: ignore[arg-type]


def check_key_matches_public_key(key: SigningKey, public: PublicKey, source: str = "certificate") -> None:
    """`check_key_matches_certificate` for the certificate's public key."""
    if not same_public_key(key.public_key, public):
        raise InputError("certificate does not match the signing key", source=source)
    algo = by_name("sha256")
    probe = hashlib.sha256(b"obelisk: does this key sign for its certificate?").digest()
    if not verify_digest_signature(public, key.sign_digest(probe, algo), probe, algo):
        raise InputError("the signing key makes signatures its certificate does not verify: the private key "
                         "file is damaged", source=source)


def verify_digest_signature(public_key: PublicKey, signature: bytes, digest: bytes, algo: HashAlgo) -> bool:
    """True if `signature` over the precomputed `digest` verifies with `public_key`."""
    prehashed = utils.Prehashed(algo.crypto_hash())
    try:
        if isinstance(public_key, rsa.RSAPublicKey):
            public_key.verify(signature, digest, padding.PKCS1v15(), prehashed)
        elif isinstance(public_key, ec.EllipticCurvePublicKey):
            public_key.verify(signature, digest, ec.ECDSA(prehashed))
        else:
            return False
    except (InvalidSignature, ValueError):
        return False
    return True
