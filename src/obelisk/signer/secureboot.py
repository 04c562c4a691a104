"""The customer's Secure Boot certificates as a build uses them: checked before work starts, then enrolled.

`check_secure_boot_certificate` is the build's preflight for PK, KEK and db: issued by the customer
CA (`certs.check_issued_by`, valid at build time), an RSA-2048 key (what UEFI firmware is required to
verify; see `keygen.issue_secure_boot_keys`), keyUsage allowing digital signatures. The firmware itself
checks none of this: it trusts whatever db holds. The check is what makes "the UKI is signed by the
customer's db key" mean the customer's PKI and not any key someone put in a spec.

`Enrollment` is what goes into the variable store and into the PCR 7 prediction: each variable's
EFI signature list (one X.509 certificate, owner GUID derived from the customer CA) and the
EFI_SIGNATURE_DATA the firmware measures as the authority when db's certificate verifies the UKI.
"""

from __future__ import annotations

import datetime as _dt
import os
import uuid
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from obelisk.core.errors import InputError
from obelisk.signer import efi_signature_list as esl
from obelisk.signer.certs import ChainError, check_issued_by
from obelisk.signer.keys import load_certificate

FIRMWARE_RSA_BITS = 2048


def check_secure_boot_certificate(cert: x509.Certificate, ca_cert: x509.Certificate, *, field: str,
                                  at: _dt.datetime | None = None) -> None:
    """InputError naming `field` unless `cert` is a Secure Boot certificate the customer CA issued (module doc)."""
    subject = cert.subject.rfc4514_string() or "a certificate with an empty subject"
    try:
        check_issued_by(cert, ca_cert, at=at)
    except ChainError as exc:
        raise InputError(f"{field}: {subject} does not chain to the customer CA: {exc}") from None
    public = cert.public_key()
    if not isinstance(public, rsa.RSAPublicKey) or public.key_size != FIRMWARE_RSA_BITS:
        what = f"RSA-{public.key_size}" if isinstance(public, rsa.RSAPublicKey) else type(public).__name__
        raise InputError(f"{field}: {subject} has a {what} key; UEFI firmware verifies RSA-{FIRMWARE_RSA_BITS} "
                         "(obelisk keys generate issues RSA-2048 Secure Boot keys)")
    try:
        key_usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        return
    if not key_usage.digital_signature:
        raise InputError(f"{field}: {subject} has keyUsage without digitalSignature")


def check_db_certificate(db_cert: x509.Certificate, ca_cert: x509.Certificate, *,
                         at: _dt.datetime | None = None, field: str = "secure_boot.db_cert") -> None:
    """The build's preflight for the db certificate (check_secure_boot_certificate)."""
    check_secure_boot_certificate(db_cert, ca_cert, field=field, at=at)


def _der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


@dataclass(frozen=True)
class Enrollment:
    """PK, KEK and db as the customer enrolls them: DER certificates and the owner GUID of their entries."""

    owner: uuid.UUID
    pk: bytes
    kek: bytes
    db: bytes

    def variable(self, name: str) -> bytes:
        """The contents of variable `name` (PK, KEK or db): one EFI signature list with the certificate."""
        certs = {"PK": self.pk, "KEK": self.kek, "db": self.db}
        if name not in certs:
            raise KeyError(name)
        return esl.serialize_database([esl.x509_list(self.owner, certs[name])])

    @property
    def db_authority(self) -> bytes:
        """The EFI_SIGNATURE_DATA the firmware measures into PCR 7 when db's certificate verifies the UKI."""
        return esl.SignatureData(self.owner, self.db).to_bytes()


def enrollment(ca_cert: x509.Certificate, pk_cert: x509.Certificate, kek_cert: x509.Certificate,
               db_cert: x509.Certificate) -> Enrollment:
    return Enrollment(owner=esl.owner_guid(_der(ca_cert)), pk=_der(pk_cert), kek=_der(kek_cert), db=_der(db_cert))


def load_enrollment(ca_cert: str | os.PathLike[str], pk_cert: str | os.PathLike[str],
                    kek_cert: str | os.PathLike[str], db_cert: str | os.PathLike[str], *,
                    at: _dt.datetime | None = None) -> Enrollment:
    """Load the four certificates (PEM or DER), check PK, KEK and db against the CA, and return the enrollment."""
    ca = load_certificate(ca_cert)
    loaded = {}
    for role, path in (("pk", pk_cert), ("kek", kek_cert), ("db", db_cert)):
        loaded[role] = load_certificate(path)
        check_secure_boot_certificate(loaded[role], ca, field=f"secure_boot.{role}_cert ({os.fspath(path)})", at=at)
    return enrollment(ca, loaded["pk"], loaded["kek"], loaded["db"])
