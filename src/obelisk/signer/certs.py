"""Does a certificate chain to a CA? The one place obelisk answers it, in two profiles.

`verify_chain` builds and checks a path leaf -> intermediates -> one of the roots with
cryptography's verifier (`cryptography.x509.verification.PolicyBuilder`): signatures, names,
validity of every certificate at the given time, basicConstraints and pathLen of every CA,
keyCertSign, RFC 5280/CA-B Forum rules for CA certificates, no unknown critical extension,
and the allowed signature algorithms (no SHA-1, RSA >= 2048). Used for report signers, whose
chains are ordinary customer PKI, checked at the signing time the statement claims. Its stock
profiles are for TLS: the client profile requires the leaf to carry a subjectAltName and the
clientAuth EKU, which a signing certificate does not (ours carry codeSigning or obelisk's
disk-policy EKU, `signer/usage.py`; older ones no EKU). So the CA certificates get the verifier's
web-PKI defaults and the leaf a policy of its own: any EKU, and keyUsage, if present, must allow
digitalSignature.

`check_issued_by` is an explicit one-link check: names, signature, the issuer a CA
(basicConstraints CA:TRUE, or a v1 certificate, which has no extensions), and validity only
when a time is given. It is used where the verifier's profile does not fit:

- TPM endorsement key certificates. Manufacturers' EK certificates break the profile the
  verifier enforces: an empty subject with a critical subjectAltName holding a directoryName
  (TCG EK Credential Profile), keyUsage keyEncipherment only, TCG subjectDirectoryAttributes
  marked critical (the verifier refuses any critical extension it does not know), validity
  until 9999, v1 manufacturer roots; and the verifier always checks validity, which says
  nothing about whether a TPM is genuine. What matters is that the manufacturer's CA signed
  this EK, so that is what is checked.
- IMA and image-manifest signing certificates. The kernel admits an IMA certificate to its
  .ima keyring when a built-in trusted CA signed it, without looking at validity dates or EKU
  (ours carry codeSigning), and checks file signatures with it for as long as the image runs.
  `image verify` and attestation must give the kernel's answer, so no validity check there; a
  build checks validity at build time instead (`at=`), so an expired key is caught early.

Both raise `ChainError` with a one-line reason; callers turn it into their own error type.
`issue_certificate` signs a certificate with any SigningKey, a PKCS#11 token's included.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Sequence
from typing import TYPE_CHECKING

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.x509.verification import (
    Criticality,
    ExtensionPolicy,
    PolicyBuilder,
    Store,
    VerificationError,
)

from obelisk.core.errors import EXIT_FAILED, ObeliskError

if TYPE_CHECKING:
    from obelisk.signer.keys import SigningKey


class ChainError(ObeliskError):
    """The certificate does not chain to the CA (exit 1: the check ran and failed)."""

    exit_code = EXIT_FAILED


def _name(name: x509.Name) -> str:
    return name.rfc4514_string() or "an empty name"


def _not_a_ca(cert: x509.Certificate) -> str | None:
    """Why `cert` may not issue certificates: basicConstraints CA:FALSE, or a v3 certificate without it."""
    try:
        if cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca:
            return None
        return "basicConstraints CA:FALSE"
    except x509.ExtensionNotFound:
        # v1 certificates have no extensions; RFC 5280 (6.1.4 k) accepts them as trust anchors only
        return None if cert.version is x509.Version.v1 else "no basicConstraints"


def valid_at(cert: x509.Certificate, when: _dt.datetime) -> bool:
    return cert.not_valid_before_utc <= when <= cert.not_valid_after_utc


def check_issued_by(cert: x509.Certificate, issuer: x509.Certificate, *, at: _dt.datetime | None = None) -> None:
    """Raise ChainError unless `issuer` signed `cert`: issuer name, signature, issuer a CA, validity at `at` (if given).

    The explicit check for certificates outside the verifier's profile (see the module docstring).
    """
    if cert.issuer != issuer.subject:
        raise ChainError(f"issued by {_name(cert.issuer)}, not by {_name(issuer.subject)}")
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError) as exc:
        raise ChainError(f"not issued by the CA: {exc}") from None
    except InvalidSignature:  # a forged issuer name
        raise ChainError("signature by the CA does not verify (InvalidSignature)") from None
    problem = _not_a_ca(issuer)
    if problem:
        raise ChainError(f"{_name(issuer.subject)} is not a CA ({problem})")
    if at is not None:
        for c, what in ((cert, "certificate"), (issuer, "CA certificate")):
            if not valid_at(c, at):
                raise ChainError(f"{what} {_name(c.subject)} is not valid at {at.isoformat()} "
                                 f"(valid {c.not_valid_before_utc.isoformat()} to {c.not_valid_after_utc.isoformat()})")


def check_issued_by_any(cert: x509.Certificate, issuers: Sequence[x509.Certificate], *,
                        at: _dt.datetime | None = None) -> x509.Certificate:
    """The first of `issuers` that signed `cert` (per `check_issued_by`); ChainError naming the first reason if none."""
    reasons = []
    for issuer in issuers:
        try:
            check_issued_by(cert, issuer, at=at)
            return issuer
        except ChainError as exc:
            reasons.append(str(exc))
    matching = [r for r in reasons if not r.startswith("issued by ")]  # a CA of the right name said more
    raise ChainError((matching or reasons or ["no CA given"])[0])


def _leaf_can_sign(_policy: object, cert: x509.Certificate, usage: x509.KeyUsage | None) -> None:
    if usage is not None and not usage.digital_signature:
        raise ValueError(f"{_name(cert.subject)} does not allow digital signatures")


# The leaf of a signing chain: any EKU, no subjectAltName needed (unlike the TLS client profile).
_SIGNER_POLICY = ExtensionPolicy.permit_all().may_be_present(x509.KeyUsage, Criticality.AGNOSTIC, _leaf_can_sign)


def verify_chain(leaf: x509.Certificate, intermediates: Sequence[x509.Certificate],
                 roots: Sequence[x509.Certificate], at: _dt.datetime) -> x509.Certificate:
    """The root that `leaf` chains to at time `at` (through any of `intermediates`); ChainError if none.

    cryptography's path validation, with its web-PKI profile for the CA certificates and a signing
    profile for the leaf (see the module docstring).
    """
    if not roots:
        raise ChainError("no CA certificate given")
    verifier = (PolicyBuilder().store(Store(list(roots))).time(at)
                .extension_policies(ca_policy=ExtensionPolicy.webpki_defaults_ca(), ee_policy=_SIGNER_POLICY)
                .build_client_verifier())
    try:
        return verifier.verify(leaf, list(intermediates)).chain[-1]
    except VerificationError as exc:
        raise ChainError(str(exc).removeprefix("validation failed: ")) from None


def _der_length(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    body = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(body)]) + body


def _der(tag: int, body: bytes) -> bytes:
    return bytes([tag]) + _der_length(len(body)) + body


def _der_elements(data: bytes) -> list[bytes]:
    """The top-level elements inside one DER SEQUENCE (each with its tag and length)."""
    def header(at: int) -> tuple[int, int]:  # (offset of the content, content length)
        first = data[at + 1]
        if first < 0x80:
            return at + 2, first
        n = first & 0x7F
        return at + 2 + n, int.from_bytes(data[at + 2:at + 2 + n], "big")

    start, length = header(0)
    out, at = [], start
    while at < start + length:
        content, size = header(at)
        out.append(data[at:content + size])
        at = content + size
    return out


def issue_certificate(builder: x509.CertificateBuilder, issuer_key: SigningKey, hash_name: str) -> x509.Certificate:
    """`builder` signed by `issuer_key` (a signer.keys.SigningKey: PEM file or PKCS#11 token) with `hash_name`.

    A software key signs through cryptography. A token key never leaves its token, and cryptography
    signs only with keys it holds, so the certificate is assembled here: cryptography builds the
    to-be-signed part (signed by a throwaway key of the same family, which fixes the
    signatureAlgorithm), the token signs its digest, and tbsCertificate || signatureAlgorithm ||
    signature are put in a SEQUENCE (RFC 5280 4.1).
    """
    import hashlib

    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    from obelisk.signer.hashalgo import by_name
    from obelisk.signer.keys import SoftwareKey

    algo = by_name(hash_name)
    if isinstance(issuer_key, SoftwareKey):
        return builder.sign(issuer_key.key, algo.certificate_hash())
    public = issuer_key.public_key
    if isinstance(public, rsa.RSAPublicKey):
        throwaway: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey = rsa.generate_private_key(65537, 1024)
    elif isinstance(public, ec.EllipticCurvePublicKey):
        throwaway = ec.generate_private_key(ec.SECP256R1())
    else:
        raise ChainError(f"cannot issue certificates with a {type(public).__name__} key")
    template = builder.sign(throwaway, algo.certificate_hash())
    _tbs, signature_algorithm, _signature = _der_elements(template.public_bytes(serialization.Encoding.DER))
    tbs = template.tbs_certificate_bytes
    signature = issuer_key.sign_digest(hashlib.new(algo.name, tbs).digest(), algo)
    cert = x509.load_der_x509_certificate(_der(0x30, tbs + signature_algorithm + _der(0x03, b"\0" + signature)))
    return cert
