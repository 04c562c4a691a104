"""signer.certs: the one chain check, in its two profiles, and certificates issued by any SigningKey."""

from __future__ import annotations

import datetime as dt

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID, ObjectIdentifier

from obelisk.signer.certs import (
    ChainError,
    check_issued_by,
    check_issued_by_any,
    issue_certificate,
    verify_chain,
)
from obelisk.signer.keys import SoftwareKey, load_certificate, load_signing_key

from .test_pkcs11 import softhsm  # noqa: F401 - a fixture

NOW = dt.datetime.now(dt.UTC)


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]) if cn else x509.Name([])


def _cert(key, cn, issuer_key, issuer_cn, *, ca: bool | None, days=365, start=None, eku=None, usage=True):
    start = start or NOW - dt.timedelta(days=1)
    b = (x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(_name(issuer_cn))
         .public_key(key.public_key()).serial_number(x509.random_serial_number())
         .not_valid_before(start).not_valid_after(start + dt.timedelta(days=days)))
    if ca is not None:
        b = b.add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    if ca is not None and usage:
        b = b.add_extension(x509.KeyUsage(digital_signature=not ca, content_commitment=False, key_encipherment=False,
                                          data_encipherment=False, key_agreement=False, key_cert_sign=ca,
                                          crl_sign=ca, encipher_only=False, decipher_only=False), critical=True)
    if eku:
        b = b.add_extension(x509.ExtendedKeyUsage(eku), critical=False)
    return b.sign(issuer_key, hashes.SHA256())


@pytest.fixture(scope="module")
def pki():
    k = {n: ec.generate_private_key(ec.SECP256R1()) for n in ("root", "mid", "leaf", "other")}
    root = _cert(k["root"], "Root", k["root"], "Root", ca=True)
    mid = _cert(k["mid"], "Issuing", k["root"], "Root", ca=True)
    leaf = _cert(k["leaf"], "Signer", k["mid"], "Issuing", ca=False, eku=[ExtendedKeyUsageOID.CODE_SIGNING])
    other = _cert(k["other"], "Other Root", k["other"], "Other Root", ca=True)
    return k, root, mid, leaf, other


def test_verifier_accepts_a_code_signing_leaf_through_an_intermediate(pki):
    """cryptography's client profile alone would refuse this leaf (no clientAuth EKU, no subjectAltName)."""
    _, root, mid, leaf, other = pki
    assert verify_chain(leaf, [mid], [other, root], NOW) == root


def test_verifier_refuses(pki):
    k, root, mid, leaf, other = pki
    with pytest.raises(ChainError):
        verify_chain(leaf, [], [root], NOW)  # intermediate missing
    with pytest.raises(ChainError):
        verify_chain(leaf, [mid], [other], NOW)  # another customer
    with pytest.raises(ChainError):
        verify_chain(leaf, [mid], [root], NOW + dt.timedelta(days=400))  # expired at that time
    not_a_ca = _cert(k["mid"], "Issuing", k["root"], "Root", ca=False)
    with pytest.raises(ChainError):
        verify_chain(leaf, [not_a_ca], [root], NOW)
    no_signing = _cert(k["leaf"], "Signer", k["mid"], "Issuing", ca=False, usage=False)
    no_signing = (x509.CertificateBuilder().subject_name(no_signing.subject).issuer_name(mid.subject)
                  .public_key(k["leaf"].public_key()).serial_number(x509.random_serial_number())
                  .not_valid_before(NOW - dt.timedelta(days=1)).not_valid_after(NOW + dt.timedelta(days=1))
                  .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False,
                                               key_encipherment=True, data_encipherment=False, key_agreement=False,
                                               key_cert_sign=False, crl_sign=False, encipher_only=False,
                                               decipher_only=False), critical=True)
                  .sign(k["mid"], hashes.SHA256()))
    with pytest.raises(ChainError, match="digital signatures"):
        verify_chain(no_signing, [mid], [root], NOW)


def test_explicit_check_accepts_what_the_verifier_profile_refuses(pki):
    """A TPM EK certificate: empty subject, critical SAN with a directoryName, a critical TCG
    subjectDirectoryAttributes (TPM specification), valid until 9999."""
    k, root, mid, _, other = pki
    ek_key = ec.generate_private_key(ec.SECP256R1())
    ek = (x509.CertificateBuilder().subject_name(x509.Name([])).issuer_name(root.subject)
          .public_key(ek_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(NOW - dt.timedelta(days=1))
          .not_valid_after(dt.datetime(9999, 12, 31, 23, 59, 59, tzinfo=dt.UTC))
          .add_extension(x509.SubjectAlternativeName([x509.DirectoryName(_name("TPM"))]), critical=True)
          .add_extension(x509.UnrecognizedExtension(ObjectIdentifier("2.5.29.9"), b"\x30\x00"), critical=True)
          .sign(k["root"], hashes.SHA256()))
    with pytest.raises(ChainError, match="critical"):
        verify_chain(ek, [], [root], NOW)
    check_issued_by(ek, root)
    assert check_issued_by_any(ek, [other, mid, root]) == root


def test_explicit_check_refuses(pki):
    k, _root, _mid, leaf, other = pki
    with pytest.raises(ChainError, match="issued by CN=Issuing, not by CN=Other Root"):
        check_issued_by(leaf, other)
    forged_issuer = _cert(k["other"], "Issuing", k["other"], "Issuing", ca=True)  # the right name, another key
    with pytest.raises(ChainError, match="does not verify"):
        check_issued_by(leaf, forged_issuer)
    with pytest.raises(ChainError, match="does not verify"):
        check_issued_by_any(leaf, [other, forged_issuer])  # the reason given is the interesting one
    end_entity = _cert(k["mid"], "Issuing", k["root"], "Root", ca=False)
    issued_by_ee = _cert(k["leaf"], "Signer", k["mid"], "Issuing", ca=False)
    with pytest.raises(ChainError, match="not a CA"):
        check_issued_by(issued_by_ee, end_entity)
    no_bc = _cert(k["mid"], "Issuing", k["root"], "Root", ca=None)
    with pytest.raises(ChainError, match="no basicConstraints"):
        check_issued_by(issued_by_ee, no_bc)


def test_explicit_check_ignores_validity_unless_asked(pki):
    k, _root, mid, _, _ = pki
    old = _cert(k["leaf"], "Old signer", k["mid"], "Issuing", ca=False, start=NOW - dt.timedelta(days=800), days=30)
    check_issued_by(old, mid)  # the kernel keeps checking IMA signatures with an expired certificate
    with pytest.raises(ChainError, match="Old signer is not valid at"):
        check_issued_by(old, mid, at=NOW)


def test_issue_certificate_with_a_software_key_signs_like_cryptography(pki):
    k, root, _, _, _ = pki
    key = ec.generate_private_key(ec.SECP256R1())
    builder = (x509.CertificateBuilder().subject_name(_name("node")).issuer_name(root.subject)
               .public_key(key.public_key()).serial_number(1234)
               .not_valid_before(NOW).not_valid_after(NOW + dt.timedelta(days=1)))
    cert = issue_certificate(builder, SoftwareKey(k["root"]), "sha256")
    check_issued_by(cert, root, at=NOW)
    assert isinstance(cert.signature_hash_algorithm, hashes.SHA256)


class _TokenLike:
    """A SigningKey that is not a SoftwareKey: signs digests only, as a PKCS#11 token does."""

    def __init__(self, key):
        self._inner = SoftwareKey(key)

    @property
    def public_key(self):
        return self._inner.public_key

    def sign_digest(self, digest, algo):
        return self._inner.sign_digest(digest, algo)


@pytest.mark.parametrize("hash_name", ["sha256", "sha384"])
def test_issue_certificate_with_a_digest_only_key_assembles_a_valid_certificate(keys, hash_name):
    now = dt.datetime.now(dt.UTC)  # the fixture CA was made after import: now may precede it
    ca = load_certificate(keys.ca_cert)
    ca_key = load_signing_key(str(keys.ca_key))
    key = ec.generate_private_key(ec.SECP256R1())
    builder = (x509.CertificateBuilder().subject_name(_name("node")).issuer_name(ca.subject)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now).not_valid_after(now + dt.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True))
    cert = issue_certificate(builder, _TokenLike(ca_key.key), hash_name)  # type: ignore[attr-defined]
    check_issued_by(cert, ca, at=now)
    assert cert.signature_hash_algorithm.name == hash_name
    assert cert.subject == _name("node") and cert.extensions.get_extension_for_class(x509.BasicConstraints)


@pytest.mark.hsm
def test_a_ca_key_on_a_token_issues_certificates(softhsm, rsa_keys, tmp_path):  # noqa: F811 - the fixture
    from .test_pkcs11 import import_key, reload_tokens, uri

    import_key(rsa_keys.ca_key, "ca", "21", tmp_path)
    reload_tokens()
    now = dt.datetime.now(dt.UTC)  # the fixture CA was made after import: now may precede it
    ca = load_certificate(rsa_keys.ca_cert)
    token_key = load_signing_key(uri("ca", softhsm))
    key = ec.generate_private_key(ec.SECP256R1())
    builder = (x509.CertificateBuilder().subject_name(_name("agent")).issuer_name(ca.subject)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now).not_valid_after(now + dt.timedelta(days=1)))
    cert = issue_certificate(builder, token_key, "sha256")
    check_issued_by(cert, ca, at=now)
    assert cert.signature == issue_certificate(builder, load_signing_key(str(rsa_keys.ca_key)), "sha256").signature
