"""The verifier's record of a node's attestation key (AK), written at enrolment.

An AK record is JSON (`obelisk.ak/1`; records written before the `schema` key carry it under
`format`, still read):

    {"schema": "obelisk.ak/1", "public": HEX TPM2B_PUBLIC, "name": HEX, "qualified_name": HEX,
     "ek_public": HEX TPM2B_PUBLIC, "ek_name": HEX, "handle": "0x81010002", "activated": bool}

`--ak` also takes a bare TPM2B_PUBLIC (tpm2-tools' "tss" format, as `tpm2_createak -u` writes) or a
PEM public key. Only a record (or a bare AK plus `--ek`) lets the verifier check the quote's
qualifiedSigner; a PEM key cannot carry the TPM object attributes either.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING

from obelisk.core.errors import InputError
from obelisk.core.jsonsafe import load_json
from obelisk.core.schema import schema_of
from obelisk.tpm import algorithms

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes

SCHEMA = "obelisk.ak/1"
TPM_RH_ENDORSEMENT = 0x4000000B

# TPMA_OBJECT bits an AK must have: it never leaves the TPM and only signs TPM-made structures.
FIXED_TPM, FIXED_PARENT, SENSITIVE_DATA_ORIGIN, RESTRICTED, SIGN = 0x2, 0x10, 0x20, 0x10000, 0x40000
REQUIRED_AK_ATTRIBUTES = {"fixedTPM": FIXED_TPM, "fixedParent": FIXED_PARENT,
                          "sensitiveDataOrigin": SENSITIVE_DATA_ORIGIN, "restricted": RESTRICTED, "sign": SIGN}


@dataclass(frozen=True)
class AKRecord:
    public: bytes | None  # TPM2B_PUBLIC; None when only a PEM key is known
    public_key: PublicKeyTypes  # cryptography public key
    name: bytes | None
    qualified_name: bytes | None
    attributes: int | None
    ek_public: bytes | None = None
    ek_name: bytes | None = None
    activated: bool = False
    source: str = ""
    ek_certificate: bytes | None = None  # DER, as read from the node's TPM (checked by `ek_certificate_problem`)

    def to_json(self) -> dict:
        return {"schema": SCHEMA, "public": (self.public or b"").hex(), "name": (self.name or b"").hex(),
                "qualified_name": (self.qualified_name or b"").hex(), "ek_public": (self.ek_public or b"").hex(),
                "ek_name": (self.ek_name or b"").hex(), "activated": self.activated,
                "ek_certificate": (self.ek_certificate or b"").hex()}

    def missing_attributes(self) -> list[str]:
        if self.attributes is None:
            return []
        return [n for n, bit in REQUIRED_AK_ATTRIBUTES.items() if not self.attributes & bit]


def name_of(public: bytes, source: str | None = None) -> bytes:
    """TPM2B_PUBLIC bytes -> Name (nameAlg || H_nameAlg(TPMT_PUBLIC))."""
    if len(public) < 4:
        raise InputError("TPM2B_PUBLIC too short", source=source)
    area = public[2:]
    alg = int.from_bytes(area[2:4], "big")
    if not algorithms.is_known(alg, algorithms.SHA_BANKS):
        raise InputError(f"public area nameAlg 0x{alg:04x} unknown", source=source, offset=4)
    return alg.to_bytes(2, "big") + algorithms.by_id(alg).digest(area)


def qualified_name(parent_qn: bytes, name: bytes) -> bytes:
    """QN(child) = nameAlg || H_nameAlg(QN(parent) || Name(child)); a hierarchy's QN is its handle."""
    alg = int.from_bytes(name[:2], "big")
    return name[:2] + algorithms.by_id(alg, algorithms.SHA_BANKS).digest(parent_qn + name)


def ak_qualified_name(ek_name: bytes, ak_name: bytes) -> bytes:
    """QN of an AK created under an EK in the endorsement hierarchy (obelisk and tpm2_createak)."""
    ek_qn = qualified_name(TPM_RH_ENDORSEMENT.to_bytes(4, "big"), ek_name)
    return qualified_name(ek_qn, ak_name)


def _from_public(public: bytes, source: str) -> tuple[PublicKeyTypes, int]:
    from cryptography.hazmat.primitives.serialization import load_pem_public_key
    from tpm2_pytss import TPM2B_PUBLIC

    try:
        pub, used = TPM2B_PUBLIC.unmarshal(public)
    except Exception:
        raise InputError("not a TPM2B_PUBLIC", source=source) from None
    if used != len(public):
        raise InputError(f"{len(public) - used} trailing bytes after the TPM2B_PUBLIC", source=source)
    try:
        key = load_pem_public_key(pub.to_pem())
    except Exception as exc:
        raise InputError(f"unusable public key: {exc}", source=source) from None
    return key, int(pub.publicArea.objectAttributes)


def from_public(public: bytes, *, ek_public: bytes | None = None, activated: bool = False,
                source: str = "AK", ek_certificate: bytes | None = None) -> AKRecord:
    key, attrs = _from_public(public, source)
    name = name_of(public, source)
    ek_name = name_of(ek_public, f"{source}: ek_public") if ek_public else None
    qn = ak_qualified_name(ek_name, name) if ek_name else None
    return AKRecord(public=public, public_key=key, name=name, qualified_name=qn, attributes=attrs,
                    ek_public=ek_public, ek_name=ek_name, activated=activated, source=source,
                    ek_certificate=ek_certificate)


def parse(data: bytes, source: str = "AK", ek_public: bytes | None = None) -> AKRecord:
    """An AK from a record, a bare TPM2B_PUBLIC or a PEM key (see the module doc)."""
    stripped = data.lstrip()
    if stripped.startswith(b"{"):
        doc = load_json(data, source)
        try:
            schema = schema_of(doc) if isinstance(doc, dict) else None
        except ValueError as exc:
            raise InputError(f"AK record: {exc}", source=source) from None
        if schema != SCHEMA:
            raise InputError(f"not an AK record (schema {SCHEMA})", source=source)
        try:
            public = bytes.fromhex(doc["public"])
            ek = bytes.fromhex(doc.get("ek_public") or "") or ek_public
            ek_cert = bytes.fromhex(doc.get("ek_certificate") or "") or None
        except (KeyError, TypeError, ValueError):
            raise InputError("AK record: public/ek_public must be hex", source=source) from None
        rec = from_public(public, ek_public=ek, activated=bool(doc.get("activated")), source=source,
                          ek_certificate=ek_cert)
        recorded = doc.get("qualified_name")
        if recorded is not None and not isinstance(recorded, str):
            raise InputError("AK record: qualified_name must be hex text", source=source)
        try:
            recorded_bytes = bytes.fromhex(recorded or "")
        except ValueError:
            raise InputError("AK record: qualified_name must be hex", source=source) from None
        if recorded_bytes and rec.qualified_name is not None and recorded_bytes != rec.qualified_name:
            raise InputError("AK record: qualified_name does not match public and ek_public", source=source)
        return rec
    if stripped.startswith(b"-----BEGIN"):
        from cryptography.hazmat.primitives.serialization import load_pem_public_key
        try:
            key = load_pem_public_key(data)
        except ValueError as exc:
            raise InputError(f"bad PEM public key: {exc}", source=source) from None
        return AKRecord(public=None, public_key=key, name=None, qualified_name=None, attributes=None, source=source)
    return from_public(data, ek_public=ek_public, source=source)


def serialize(record: AKRecord) -> str:
    return json.dumps(record.to_json(), indent=2, sort_keys=True) + "\n"



def ek_certificate_problem(ek_public: bytes, certificate: bytes | None, ca_pem: bytes) -> str | None:
    """None if `certificate` (DER or PEM) was issued by the CA and certifies exactly `ek_public`; else why not."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    from obelisk.signer.certs import ChainError, check_issued_by_any

    if not certificate:
        return "no EK certificate (the TPM has none in NV and none was given)"
    try:
        cert = (x509.load_pem_x509_certificate(certificate) if certificate.lstrip().startswith(b"-----")
                else x509.load_der_x509_certificate(certificate))
        cas = x509.load_pem_x509_certificates(ca_pem)
    except ValueError as exc:
        return f"unreadable certificate: {exc}"
    try:
        # explicit check, not cryptography's verifier: EK certificates break its RFC 5280 profile (signer.certs)
        check_issued_by_any(cert, cas)
    except ChainError as exc:
        return f"EK certificate ({cert.issuer.rfc4514_string()}) was not issued by the given CA: {exc}"
    ek_key, _ = _from_public(ek_public, "EK")
    fmt = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    if ek_key.public_bytes(*fmt) != cert.public_key().public_bytes(*fmt):
        return "EK certificate certifies another key than the EK the node reported"
    return None
