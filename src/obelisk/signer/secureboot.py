"""The customer's Secure Boot certificates as a build uses them: checked before work starts, then enrolled.

`check_secure_boot_certificate` is the build's preflight for PK, KEK and db: issued by the customer
CA (`certs.check_issued_by`, valid at build time), an RSA-2048 key (what UEFI firmware is required to
verify; see `keygen.issue_secure_boot_keys`), keyUsage allowing digital signatures. The firmware itself
checks none of this: it trusts whatever db holds. The check is what makes "the UKI is signed by the
customer's db key" mean the customer's PKI and not any key someone put in a spec.

`Enrollment` is what goes into the variable store and into the PCR 7 prediction: each variable's
EFI signature list (one X.509 certificate, owner GUID derived from the customer CA) and the
EFI_SIGNATURE_DATA the firmware measures as the authority when db's certificate verifies the UKI.

`enrollment_files` is the same enrollment for real firmware: DER certificates and .esl files for setup
menus, and .auth files (signed variable updates: PK by PK, KEK by PK, db by KEK) for SetVariable tools.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import os
import struct
import uuid
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from obelisk.core import atomic
from obelisk.core.errors import InputError, ParseError
from obelisk.signer import efi_signature_list as esl
from obelisk.signer.certs import ChainError, check_issued_by
from obelisk.signer.hashalgo import by_name
from obelisk.signer.keys import SigningKey, load_certificate
from obelisk.tpm.uefi import EFI_GLOBAL_VARIABLE, EFI_IMAGE_SECURITY_DATABASE

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


# ---- enrolling on real firmware: signed variable updates (.auth) -------------------------------------------------
# Firmware setup menus take the DER certificates or the .esl files; tools that call SetVariable (efitools' KeyTool and
# efi-updatevar, the Linux efivarfs) take .auth files: EFI_VARIABLE_AUTHENTICATION_2 (UEFI 2.9, 8.2.2) followed by the
# new contents. Its PKCS#7 SignedData (no ContentInfo wrapper, no signed attributes, detached) signs
# VariableName (UTF-16LE, no NUL) || VendorGuid || Attributes (UINT32) || TimeStamp (EFI_TIME) || contents.
# PK signs PK's own enrollment and KEK's, KEK signs db's: the hierarchy the firmware enforces once PK is set.

EFI_VARIABLE_NON_VOLATILE = 0x01
EFI_VARIABLE_BOOTSERVICE_ACCESS = 0x02
EFI_VARIABLE_RUNTIME_ACCESS = 0x04
EFI_VARIABLE_TIME_BASED_AUTHENTICATED_WRITE_ACCESS = 0x20
SECURE_BOOT_ATTRIBUTES = (EFI_VARIABLE_NON_VOLATILE | EFI_VARIABLE_BOOTSERVICE_ACCESS | EFI_VARIABLE_RUNTIME_ACCESS
                          | EFI_VARIABLE_TIME_BASED_AUTHENTICATED_WRITE_ACCESS)
VENDORS = {"PK": EFI_GLOBAL_VARIABLE, "KEK": EFI_GLOBAL_VARIABLE, "db": EFI_IMAGE_SECURITY_DATABASE}
EFI_CERT_TYPE_PKCS7_GUID = uuid.UUID("4aafd29d-68df-49ee-8aa9-347d375665a7")
WIN_CERT_TYPE_EFI_GUID = 0x0EF1
WIN_CERT_REVISION = 0x0200

_OID_DATA = "1.2.840.113549.1.7.1"
_OID_SHA256 = "2.16.840.1.101.3.4.2.1"
_OID_RSA_ENCRYPTION = "1.2.840.113549.1.1.1"


def _tlv(tag: int, body: bytes) -> bytes:
    if len(body) < 0x80:
        return bytes([tag, len(body)]) + body
    size = len(body).to_bytes((len(body).bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(size)]) + size + body


def _oid(dotted: str) -> bytes:
    arcs = [int(a) for a in dotted.split(".")]
    body = bytearray([40 * arcs[0] + arcs[1]])
    for arc in arcs[2:]:
        chunk = [arc & 0x7F]
        while arc > 0x7F:
            arc >>= 7
            chunk.append(0x80 | (arc & 0x7F))
        body += bytes(reversed(chunk))
    return _tlv(0x06, bytes(body))


def _integer(value: int) -> bytes:
    return _tlv(0x02, value.to_bytes(value.bit_length() // 8 + 1, "big"))  # a leading 0 keeps it positive


def _algorithm(oid: str) -> bytes:
    return _tlv(0x30, _oid(oid) + b"\x05\x00")  # parameters NULL, as for sha256 and rsaEncryption in PKCS#7


def efi_time(when: _dt.datetime) -> bytes:
    """EFI_TIME as authenticated variables carry it: UTC, whole seconds, Pad1/Nanosecond/TimeZone/Daylight/Pad2 0."""
    utc = when.astimezone(_dt.UTC)
    return struct.pack("<HBBBBBBIhBB", utc.year, utc.month, utc.day, utc.hour, utc.minute, utc.second, 0, 0, 0, 0, 0)


def signed_data(payload: bytes, key: SigningKey, cert: x509.Certificate) -> bytes:
    """PKCS#7 SignedData (RFC 2315), detached, without signed attributes: the signature is over SHA-256(payload)."""
    public = key.public_key
    if not isinstance(public, rsa.RSAPublicKey):
        raise InputError("Secure Boot variable updates are signed with an RSA key (PK or KEK), not "
                         f"{type(public).__name__}")
    signature = key.sign_digest(hashlib.sha256(payload).digest(), by_name("sha256"))
    issuer_and_serial = _tlv(0x30, cert.issuer.public_bytes() + _integer(cert.serial_number))
    signer_info = _tlv(0x30, _integer(1) + issuer_and_serial + _algorithm(_OID_SHA256)
                       + _algorithm(_OID_RSA_ENCRYPTION) + _tlv(0x04, signature))
    return _tlv(0x30, _integer(1) + _tlv(0x31, _algorithm(_OID_SHA256)) + _tlv(0x30, _oid(_OID_DATA))
                + _tlv(0xA0, cert.public_bytes(serialization.Encoding.DER)) + _tlv(0x31, signer_info))


def authenticated_update(name: str, contents: bytes, key: SigningKey, cert: x509.Certificate, *,
                         timestamp: _dt.datetime, attributes: int = SECURE_BOOT_ATTRIBUTES) -> bytes:
    """A .auth file: EFI_VARIABLE_AUTHENTICATION_2 signed by `key` (`cert` its certificate), then `contents`."""
    vendor = VENDORS[name]
    when = efi_time(timestamp)
    payload = name.encode("utf-16-le") + vendor.bytes_le + struct.pack("<I", attributes) + when + contents
    pkcs7 = signed_data(payload, key, cert)
    win_certificate = struct.pack("<IHH", 4 + 2 + 2 + 16 + len(pkcs7), WIN_CERT_REVISION, WIN_CERT_TYPE_EFI_GUID)
    return when + win_certificate + EFI_CERT_TYPE_PKCS7_GUID.bytes_le + pkcs7 + contents


def parse_authenticated_update(auth: bytes, name: str,
                               attributes: int = SECURE_BOOT_ATTRIBUTES) -> tuple[bytes, bytes, bytes]:
    """(PKCS#7 SignedData, the bytes it signs, the new contents) of a .auth file: what the firmware checks.

    Bounded by the file's own lengths; ParseError on anything that does not fit.
    """
    if len(auth) < 16 + 24:
        raise ParseError(f"EFI_VARIABLE_AUTHENTICATION_2 needs 40 bytes, has {len(auth)}", offset=0)
    length, revision, cert_type = struct.unpack_from("<IHH", auth, 16)
    if revision != WIN_CERT_REVISION or cert_type != WIN_CERT_TYPE_EFI_GUID \
            or auth[24:40] != EFI_CERT_TYPE_PKCS7_GUID.bytes_le:
        raise ParseError("not a WIN_CERTIFICATE_UEFI_GUID with a PKCS#7 signature", offset=16)
    if length < 24 or 16 + length > len(auth):
        raise ParseError(f"WIN_CERTIFICATE dwLength {length} does not fit the file", offset=16)
    contents = auth[16 + length:]
    payload = (name.encode("utf-16-le") + VENDORS[name].bytes_le + struct.pack("<I", attributes) + auth[:16]
               + contents)
    return auth[40:16 + length], payload, contents


def enrollment_files(enrollment: Enrollment, pk_key: SigningKey, pk_cert: x509.Certificate, kek_key: SigningKey,
                     kek_cert: x509.Certificate, *, timestamp: _dt.datetime) -> dict[str, bytes]:
    """Everything needed to enroll the customer's keys on real firmware, by file name (docs/secure-boot.md)."""
    files: dict[str, bytes] = {}
    for name, der in (("PK", enrollment.pk), ("KEK", enrollment.kek), ("db", enrollment.db)):
        files[f"{name}.der"] = der
        files[f"{name}.esl"] = enrollment.variable(name)
    files["PK.auth"] = authenticated_update("PK", files["PK.esl"], pk_key, pk_cert, timestamp=timestamp)
    files["KEK.auth"] = authenticated_update("KEK", files["KEK.esl"], pk_key, pk_cert, timestamp=timestamp)
    files["db.auth"] = authenticated_update("db", files["db.esl"], kek_key, kek_cert, timestamp=timestamp)
    return files


def write_enrollment_files(out_dir: str | os.PathLike[str], files: dict[str, bytes]) -> list[Path]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for name, data in sorted(files.items()):
        atomic.write_bytes(out / name, data)
    return [out / name for name in sorted(files)]
