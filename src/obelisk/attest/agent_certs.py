"""TLS certificates for the node agent and its callers, issued by the customer CA.

The agent serves HTTPS only to clients whose certificate chains to the customer CA, and
presents a server certificate from the same CA. Neither key is ever baked into an image:
the agent's key is provisioned onto the node's config disk (`obelisk boot` does it for QEMU), the
client key stays with the verifier. Keys are written 0600.

The extended key usage says what each certificate is for (`signer/usage.py`, `attest/roles.py`):
an agent's certificate `serverAuth` only; a caller's `clientAuth` plus its roles, the evidence
reader by default, the operator when asked.
"""

from __future__ import annotations

import datetime as _dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from obelisk.core import atomic
from obelisk.core.errors import InputError
from obelisk.signer import usage
from obelisk.signer.certs import issue_certificate
from obelisk.signer.keys import (
    PassphraseSource,
    SigningKey,
    load_certificate,
    load_signing_key,
    same_public_key,
)


@dataclass(frozen=True)
class IssuedCert:
    cert: Path
    key: Path


def load_ca(ca_cert: Path, ca_key: str | Path, passphrase: PassphraseSource | None = None
            ) -> tuple[x509.Certificate, SigningKey]:
    """The CA certificate and its key (a PEM/DER file or a pkcs11: URI, through signer.keys), matched."""
    cert = load_certificate(ca_cert)
    key = load_signing_key(str(ca_key), passphrase)
    if not same_public_key(key.public_key, cert.public_key()):  # type: ignore[arg-type]
        raise InputError("CA key does not match the CA certificate", source=str(ca_key).split("?")[0])
    return cert, key


def issue(ca_cert: Path, ca_key: str | Path, out_dir: Path, name: str, *, server: bool,
          hosts: tuple[str, ...] = ("127.0.0.1", "localhost"), days: int = 365,
          ca_passphrase: PassphraseSource | None = None, roles: tuple[str, ...] = ("reader",)) -> IssuedCert:
    """A P-256 key and a certificate for TLS server or client use, signed by the customer CA.

    A client certificate carries `clientAuth` and the given agent roles (`usage.ROLES`: reader,
    operator); a server certificate `serverAuth` only, whatever `roles` says.
    """
    unknown = [r for r in roles if r not in usage.ROLES]
    if unknown:
        raise InputError(f"--role: unknown role {unknown[0]!r} (one of {', '.join(usage.ROLES)})")
    if not server and not roles:
        raise InputError("--role: a client certificate needs at least one role")
    ekus = [usage.SERVER_AUTH] if server else [usage.CLIENT_AUTH] + [usage.ROLES[r] for r in dict.fromkeys(roles)]
    ca, ca_private = load_ca(ca_cert, ca_key, ca_passphrase)
    key = ec.generate_private_key(ec.SECP256R1())
    now = _dt.datetime.now(_dt.UTC) - _dt.timedelta(minutes=5)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now).not_valid_after(now + _dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=False,
                                     crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage(ekus), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    if server:
        sans: list[x509.GeneralName] = []
        for h in hosts:
            try:
                sans.append(x509.IPAddress(ipaddress.ip_address(h)))
            except ValueError:
                sans.append(x509.DNSName(h))
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    ca_public = ca_private.public_key
    cert = issue_certificate(builder, ca_private, "sha384" if isinstance(ca_public, ec.EllipticCurvePublicKey)
                             and ca_public.curve.key_size >= 384 else "sha256")
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = "agent" if server else "client"
    key_path, cert_path = out_dir / f"{stem}.key", out_dir / f"{stem}.pem"
    atomic.write_bytes(key_path, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                   serialization.NoEncryption()), mode=0o600)
    atomic.write_bytes(cert_path, cert.public_bytes(serialization.Encoding.PEM))
    return IssuedCert(cert_path, key_path)
