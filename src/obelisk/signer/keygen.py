"""`obelisk keys generate`: a customer CA, an IMA signing key, a disk-policy key and the Secure Boot PK, KEK, db.

The CA is made to be compiled into the kernel as a built-in trusted key
(CONFIG_SYSTEM_TRUSTED_KEYS): with CONFIG_IMA_KEYRINGS_PERMIT_SIGNED_BY_BUILTIN_OR_SECONDARY
the kernel then accepts into its .ima keyring only certificates this CA signed. The IMA
certificate carries a subjectKeyIdentifier (signatures name their key by its last 4 bytes)
and keyUsage digitalSignature, which the kernel checks for IMA keys.

Each leaf's extended key usage says what it is for (`signer/usage.py`): the IMA key codeSigning,
the disk-policy key obelisk's disk-policy OID, the Secure Boot db key codeSigning (PK and KEK none).
None carries clientAuth or serverAuth, so none opens a TLS connection to a node agent; agent and
verifier certificates come from `obelisk attest issue-cert`.
"""

from __future__ import annotations

import datetime as _dt
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from obelisk.core import atomic
from obelisk.core.errors import InputError
from obelisk.signer import usage

KEY_TYPES = ("rsa-2048", "rsa-3072", "rsa-4096", "ecdsa-p256", "ecdsa-p384")


@dataclass(frozen=True)
class SecureBootKeys:
    """The customer's UEFI Secure Boot keys, each a key file and its certificate from the customer CA."""

    pk_key: Path
    pk_cert: Path
    kek_key: Path
    kek_cert: Path
    db_key: Path
    db_cert: Path
    enroll_dir: Path | None = None  # {PK,KEK,db}.{der,esl,auth} for real firmware (docs/secure-boot.md)


@dataclass(frozen=True)
class GeneratedKeys:
    directory: Path
    key_type: str
    ca_cert: Path
    ca_cert_der: Path
    ca_key: Path
    ima_cert: Path
    ima_cert_der: Path
    ima_key: Path
    ima_key_id: str  # hex, what signatures carry
    policy_key: Path | None = None  # approves PCR policies for the encrypted /var (see issue_policy_key)
    policy_cert: Path | None = None
    secure_boot: SecureBootKeys | None = None  # PK, KEK and db (see issue_secure_boot_keys)

    def to_json(self) -> dict[str, str]:
        out = {k: str(v) for k, v in self.__dict__.items() if k != "secure_boot"}
        if self.secure_boot is not None:
            out.update({f"secure_boot_{k}": str(v) for k, v in self.secure_boot.__dict__.items()})
        return out


def _new_key(key_type: str) -> rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey:
    if key_type.startswith("rsa-"):
        return rsa.generate_private_key(public_exponent=65537, key_size=int(key_type[4:]))
    if key_type == "ecdsa-p256":
        return ec.generate_private_key(ec.SECP256R1())
    if key_type == "ecdsa-p384":
        return ec.generate_private_key(ec.SECP384R1())
    raise InputError(f"--type: unknown key type {key_type!r} (one of {', '.join(KEY_TYPES)})")


def _hash_for(key_type: str) -> hashes.SHA256 | hashes.SHA384:
    return hashes.SHA384() if key_type == "ecdsa-p384" else hashes.SHA256()


def _name(common_name: str, organization: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _signing_leaf(subject: x509.Name, issuer: x509.Name, ca_ski: x509.SubjectKeyIdentifier,
                  key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey, start: _dt.datetime,
                  valid_days: int) -> x509.CertificateBuilder:
    """An end-entity certificate for digital signatures only, with key identifiers; callers add usage."""
    return (
        x509.CertificateBuilder()
        .subject_name(subject).issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start).not_valid_after(start + _dt.timedelta(days=valid_days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=False,
                                     crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False)
    )


def _private_pem(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey, passphrase: bytes | None) -> bytes:
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(passphrase) if passphrase else serialization.NoEncryption())
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)


def generate(out_dir: str | os.PathLike[str], key_type: str = "rsa-2048", *, organization: str = "obelisk customer",
             passphrase: bytes | None = None, valid_days: int = 3650,
             now: _dt.datetime | None = None) -> GeneratedKeys:
    if key_type not in KEY_TYPES:
        raise InputError(f"--type: unknown key type {key_type!r} (one of {', '.join(KEY_TYPES)})")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    names = ("ca.key", "ca.pem", "ca.der", "ima.key", "ima.pem", "ima.der", POLICY_KEY, POLICY_CERT,
             *SECURE_BOOT_FILES, SECURE_BOOT_ENROLL_DIR, RANDSTRUCT_SEED)
    existing = [n for n in names if (out / n).exists()]
    if existing:
        raise InputError(f"refusing to overwrite existing {', '.join(existing)}", source=str(out))
    now = now or _dt.datetime.now(_dt.UTC)
    start = now - _dt.timedelta(minutes=5)
    digest = _hash_for(key_type)

    ca_key = _new_key(key_type)
    ca_name = _name(f"{organization} IMA CA", organization)
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name).issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start).not_valid_after(start + _dt.timedelta(days=valid_days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                     crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(ca_ski, critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False)
        .sign(ca_key, digest)
    )

    ima_key = _new_key(key_type)
    ima_ski = x509.SubjectKeyIdentifier.from_public_key(ima_key.public_key())
    ima_cert = (
        _signing_leaf(_name(f"{organization} IMA signing key", organization), ca_name, ca_ski, ima_key, start,
                      valid_days)
        .add_extension(x509.ExtendedKeyUsage([usage.CODE_SIGNING]), critical=False)
        .sign(ca_key, digest)
    )

    pem, der = serialization.Encoding.PEM, serialization.Encoding.DER
    atomic.write_bytes(out / "ca.key", _private_pem(ca_key, passphrase), mode=0o600)
    atomic.write_bytes(out / "ima.key", _private_pem(ima_key, passphrase), mode=0o600)
    atomic.write_bytes(out / "ca.pem", ca_cert.public_bytes(pem))
    atomic.write_bytes(out / "ca.der", ca_cert.public_bytes(der))
    atomic.write_bytes(out / "ima.pem", ima_cert.public_bytes(pem))
    atomic.write_bytes(out / "ima.der", ima_cert.public_bytes(der))
    policy_key, policy_cert = issue_policy_key(out, key_type, organization=organization, passphrase=passphrase,
                                               valid_days=valid_days, now=now)
    secure_boot = issue_secure_boot_keys(out, key_type, organization=organization, passphrase=passphrase,
                                         valid_days=valid_days, now=now)
    issue_randstruct_seed(out)
    return GeneratedKeys(directory=out, key_type=key_type, ca_cert=out / "ca.pem", ca_cert_der=out / "ca.der",
                         ca_key=out / "ca.key", ima_cert=out / "ima.pem", ima_cert_der=out / "ima.der",
                         ima_key=out / "ima.key", ima_key_id=ima_ski.digest[-4:].hex(), policy_key=policy_key,
                         policy_cert=policy_cert, secure_boot=secure_boot)


POLICY_KEY, POLICY_CERT = "disk-policy.key", "disk-policy.pem"
RANDSTRUCT_SEED = "randstruct.seed"


def issue_missing(out_dir: str | os.PathLike[str], *, organization: str = "obelisk customer") -> list[str]:
    """Keys made by an earlier obelisk: keep the CA (and so the kernels built with it), issue what is missing.
    Returns what was issued, for the caller to say."""
    out = Path(out_dir)
    issued = []
    if not (out / POLICY_KEY).exists():
        issue_policy_key(out, organization=organization)
        issued.append("a disk policy key")
    if not (out / "db.key").exists():
        issue_secure_boot_keys(out, organization=organization)
        issued.append("Secure Boot PK, KEK and db")
    if not (out / RANDSTRUCT_SEED).exists():
        issue_randstruct_seed(out)
        issued.append("a kernel randstruct seed")
    return issued


def issue_randstruct_seed(out_dir: str | os.PathLike[str]) -> Path:
    """The kernel's structure-layout seed (kernel_hardening/randstruct.py): 32 random bytes, hex, mode 0600."""
    path = Path(out_dir) / RANDSTRUCT_SEED
    atomic.write_bytes(path, os.urandom(32).hex().encode() + b"\n", mode=0o600)
    return path


def issue_policy_key(out_dir: str | os.PathLike[str], key_type: str = "rsa-2048", *,
                     organization: str = "obelisk customer", passphrase: bytes | None = None,
                     valid_days: int = 3650, now: _dt.datetime | None = None) -> tuple[Path, Path]:
    """A key of its own, issued by the CA in out_dir, that approves the PCR policies opening an encrypted
    /var (TPM2 PolicyAuthorize).

    Never the IMA key: the TPM checks a plain signature over H(policy digest), and an IMA signature is a
    plain signature over H(file); a file whose bytes are a policy digest, signed into any image, would
    approve that policy. The TPM verifies RSA and ECDSA P-256, so ECDSA keys are P-256 here.
    """
    out = Path(out_dir)
    for name in (POLICY_KEY, POLICY_CERT):
        if (out / name).exists():
            raise InputError(f"refusing to overwrite existing {name}", source=str(out))
    from obelisk.signer.certs import issue_certificate

    ca_key, ca_cert = _issuing_ca(out, passphrase, "the disk policy key")
    now = now or _dt.datetime.now(_dt.UTC)
    start = now - _dt.timedelta(minutes=5)
    key = _new_key(key_type if key_type.startswith("rsa-") else "ecdsa-p256")
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key)
    leaf = (_signing_leaf(_name(f"{organization} disk policy key", organization), ca_cert.subject, ca_ski, key, start,
                          valid_days)
            .add_extension(x509.ExtendedKeyUsage([usage.DISK_POLICY]), critical=False))
    cert = issue_certificate(leaf, ca_key, _hash_for(key_type).name)
    atomic.write_bytes(out / POLICY_KEY, _private_pem(key, passphrase), mode=0o600)
    atomic.write_bytes(out / POLICY_CERT, cert.public_bytes(serialization.Encoding.PEM))
    return out / POLICY_KEY, out / POLICY_CERT


def _issuing_ca(out: Path, passphrase: bytes | None, what: str) -> tuple[Any, x509.Certificate]:
    """The CA key (a SigningKey) and certificate in `out`, to issue `what` with."""
    from obelisk.signer.keys import PassphraseSource, load_certificate, load_signing_key

    try:
        return (load_signing_key(str(out / "ca.key"), PassphraseSource(value=passphrase)),
                load_certificate(out / "ca.pem"))
    except InputError as exc:
        raise InputError(f"cannot load the CA to issue {what}: {exc}", source=str(out)) from None


# UEFI Secure Boot: the platform key, the key exchange key and the signature database key.
SECURE_BOOT_ROLES = ("pk", "kek", "db")
SECURE_BOOT_FILES = tuple(f"{role}.{ext}" for role in SECURE_BOOT_ROLES for ext in ("key", "pem"))
SECURE_BOOT_ENROLL_DIR = "secure-boot-enroll"
_SECURE_BOOT_NAMES = {"pk": "Secure Boot platform key (PK)", "kek": "Secure Boot key exchange key (KEK)",
                      "db": "Secure Boot signature database key (db)"}


def issue_secure_boot_keys(out_dir: str | os.PathLike[str], key_type: str = "rsa-2048", *,
                           organization: str = "obelisk customer", passphrase: bytes | None = None,
                           valid_days: int = 3650, now: _dt.datetime | None = None) -> SecureBootKeys:
    """PK, KEK and db keys with certificates issued by the CA in out_dir, so the customer owns the whole chain.

    Always RSA-2048, whatever `key_type` says: the UEFI specification requires firmware to verify
    RSA-2048 (with SHA-256) for db and KEK entries, and much firmware verifies nothing else (no ECDSA, no
    larger RSA); an image signed with another key would not boot there. `key_type` only picks the
    CA's signature hash, as for the other leaves. The three form the Secure Boot hierarchy: PK signs
    updates of PK and KEK, KEK signs updates of db and dbx, db's key signs the UKI (codeSigning).
    The firmware checks none of the certificates' dates or issuers; issuing them from the customer CA
    lets a build check that the db key is the customer's (`signer/secureboot.py`).
    """
    out = Path(out_dir)
    existing = [name for name in (*SECURE_BOOT_FILES, SECURE_BOOT_ENROLL_DIR) if (out / name).exists()]
    if existing:
        raise InputError(f"refusing to overwrite existing {', '.join(existing)}", source=str(out))
    from obelisk.signer import secureboot
    from obelisk.signer.certs import issue_certificate
    from obelisk.signer.keys import SoftwareKey

    ca_key, ca_cert = _issuing_ca(out, passphrase, "the Secure Boot keys")
    now = now or _dt.datetime.now(_dt.UTC)
    start = now - _dt.timedelta(minutes=5)
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key)
    paths: dict[str, Path] = {}
    keys: dict[str, rsa.RSAPrivateKey] = {}
    certs: dict[str, x509.Certificate] = {}
    for role in SECURE_BOOT_ROLES:
        key = keys[role] = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        leaf = _signing_leaf(_name(f"{organization} {_SECURE_BOOT_NAMES[role]}", organization), ca_cert.subject,
                             ca_ski, key, start, valid_days)
        if role == "db":
            leaf = leaf.add_extension(x509.ExtendedKeyUsage([usage.CODE_SIGNING]), critical=False)
        cert = certs[role] = issue_certificate(leaf, ca_key, _hash_for(key_type).name)
        atomic.write_bytes(out / f"{role}.key", _private_pem(key, passphrase), mode=0o600)
        atomic.write_bytes(out / f"{role}.pem", cert.public_bytes(serialization.Encoding.PEM))
        paths[f"{role}_key"], paths[f"{role}_cert"] = out / f"{role}.key", out / f"{role}.pem"
    # What real firmware enrolls (public files); the .auth timestamp is the issue time, later than nothing enrolled.
    enrollment = secureboot.enrollment(ca_cert, certs["pk"], certs["kek"], certs["db"])
    files = secureboot.enrollment_files(enrollment, SoftwareKey(keys["pk"]), certs["pk"], SoftwareKey(keys["kek"]),
                                        certs["kek"], timestamp=now)
    secureboot.write_enrollment_files(out / SECURE_BOOT_ENROLL_DIR, files)
    return SecureBootKeys(**paths, enroll_dir=out / SECURE_BOOT_ENROLL_DIR)
