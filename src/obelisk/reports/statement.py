"""The signed statement over a rendered report, and the envelope that carries its signature.

The statement binds the report's sha256 digest to the subject it is about (node, image digest)
and the scan time, so a genuine report cannot be presented as another node's or a later scan's.
It is an in-toto Statement (v1) in a DSSE envelope; the signer's certificate chain travels with
the envelope so that `report verify` only needs the customer CA.

Two formats, each a pair: `parse_statement`/`serialize_statement` (the signed payload) and
`parse_signature`/`serialize_signature` (the `.sig` file).
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from typing import Any

from obelisk.core.errors import ParseError
from obelisk.core.findings import Subject
from obelisk.core.jsonsafe import load_json

STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://obelisk.dev/attestations/report/v1"
PAYLOAD_TYPE = "application/vnd.in-toto+json"
MEDIA_TYPE = "application/vnd.obelisk.report-signature.v1+json"
MAX_SIGNATURE_FILE = 1024 * 1024


@dataclass(frozen=True)
class Statement:
    report_name: str  # file name the report was signed under (informative)
    digest: str  # sha256 of the report bytes, hex
    subject: Subject  # what the report is about
    scanned_at: str  # when the evidence was collected (RFC 3339)
    signed_at: str  # when it was signed (RFC 3339)
    report_format: str  # html, json, sarif, ... or "unknown"
    tool: str  # obelisk version that signed

    def to_json(self) -> dict[str, Any]:
        return {
            "_type": STATEMENT_TYPE,
            "subject": [{"name": self.report_name, "digest": {"sha256": self.digest}}],
            "predicateType": PREDICATE_TYPE,
            "predicate": {"subject": self.subject.to_json(), "scannedAt": self.scanned_at,
                          "signedAt": self.signed_at, "format": self.report_format, "tool": self.tool},
        }


def serialize_statement(statement: Statement) -> bytes:
    """The statement as signed: canonical JSON (sorted keys, no spaces)."""
    return json.dumps(statement.to_json(), sort_keys=True, separators=(",", ":")).encode("utf-8")


def parse_statement(data: bytes, source: str | None = None) -> Statement:
    try:
        d = load_json(data, what="JSON")
    except ParseError as exc:
        raise ParseError(f"statement is {exc}", source=source) from None
    if not isinstance(d, dict) or d.get("_type") != STATEMENT_TYPE or d.get("predicateType") != PREDICATE_TYPE:
        raise ParseError("statement: not an obelisk report statement (_type / predicateType)", source=source)
    subjects = d.get("subject")
    pred = d.get("predicate")
    if not isinstance(subjects, list) or len(subjects) != 1 or not isinstance(subjects[0], dict):
        raise ParseError("statement.subject: expected exactly one report", source=source)
    if not isinstance(pred, dict):
        raise ParseError("statement.predicate: expected an object", source=source)
    digest = (subjects[0].get("digest") or {}).get("sha256") if isinstance(subjects[0].get("digest"), dict) else None
    if not isinstance(digest, str) or len(digest) != 64:
        raise ParseError("statement.subject[0].digest.sha256: missing or not a sha256", source=source)
    try:
        subject = Subject.from_json(pred.get("subject"), "statement.predicate.subject")
    except Exception as exc:  # InputError names the field
        raise ParseError(str(exc), source=source) from None
    fields = {}
    for key in ("scannedAt", "signedAt", "format", "tool"):
        value = pred.get(key, "")
        if not isinstance(value, str):
            raise ParseError(f"statement.predicate.{key}: expected a string", source=source)
        fields[key] = value
    return Statement(report_name=str(subjects[0].get("name", "")), digest=digest, subject=subject,
                     scanned_at=fields["scannedAt"], signed_at=fields["signedAt"], report_format=fields["format"],
                     tool=fields["tool"])


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE pre-authentication encoding: what is actually signed."""
    t = payload_type.encode()
    return b"DSSEv1 %d %s %d %s" % (len(t), t, len(payload), payload)


@dataclass(frozen=True)
class SignatureFile:
    """DSSE envelope (payload = statement) plus the signer's certificate chain (PEM, leaf first)."""

    payload: bytes
    signature: bytes
    keyid: str
    certificates: tuple[str, ...]
    payload_type: str = PAYLOAD_TYPE


def serialize_signature(sig: SignatureFile) -> bytes:
    doc = {
        "mediaType": MEDIA_TYPE,
        "dsseEnvelope": {
            "payloadType": sig.payload_type,
            "payload": base64.b64encode(sig.payload).decode(),
            "signatures": [{"keyid": sig.keyid, "sig": base64.b64encode(sig.signature).decode()}],
        },
        "certificates": list(sig.certificates),
    }
    return (json.dumps(doc, indent=2) + "\n").encode()


def parse_signature(data: bytes, source: str = "signature") -> SignatureFile:
    if len(data) > MAX_SIGNATURE_FILE:
        raise ParseError("signature file too large", source=source)
    try:
        d = load_json(data)
    except ParseError as exc:
        raise ParseError(f"not an obelisk report signature ({exc})", source=source) from None
    if not isinstance(d, dict) or d.get("mediaType") != MEDIA_TYPE:
        raise ParseError(f"mediaType: expected {MEDIA_TYPE}", source=source)
    env = d.get("dsseEnvelope")
    if not isinstance(env, dict):
        raise ParseError("dsseEnvelope: missing", source=source)
    sigs = env.get("signatures")
    if not isinstance(sigs, list) or len(sigs) != 1 or not isinstance(sigs[0], dict):
        raise ParseError("dsseEnvelope.signatures: expected exactly one signature", source=source)
    certs = d.get("certificates")
    if not isinstance(certs, list) or not certs or not all(isinstance(c, str) for c in certs):
        raise ParseError("certificates: expected the signer certificate chain (PEM strings)", source=source)
    try:
        payload = base64.b64decode(env.get("payload", ""), validate=True)
        signature = base64.b64decode(sigs[0].get("sig", ""), validate=True)
    except (binascii.Error, TypeError, ValueError):
        raise ParseError("dsseEnvelope: payload or sig is not base64", source=source) from None
    keyid = sigs[0].get("keyid", "")
    if not isinstance(keyid, str):
        raise ParseError("dsseEnvelope.signatures[0].keyid: expected a string", source=source)
    payload_type = env.get("payloadType")
    if payload_type != PAYLOAD_TYPE:
        raise ParseError(f"dsseEnvelope.payloadType: expected {PAYLOAD_TYPE}", source=source)
    return SignatureFile(payload=payload, signature=signature, keyid=keyid,
                         certificates=tuple(certs), payload_type=payload_type)
