"""`report sign` / `report verify`: a detached signature over a statement about the report.

Signing: the report's digest, subject and scan time go into a `Statement`; the DSSE
pre-authentication encoding of it is hashed (SHA-256; SHA-384/512 for P-384/P-521 keys) and
signed with the customer key (PEM file or PKCS#11, through obelisk.signer.keys).
Verifying raises `VerificationFailed` (exit 1, one line) when the report was altered, the
signature does not verify, the signer's certificate does not chain to the customer CA, or the
report is about another subject than expected.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from obelisk import __version__
from obelisk.core import atomic
from obelisk.core.errors import EXIT_FAILED, InputError, ObeliskError
from obelisk.core.findings import Report, Subject
from obelisk.core.inputs import read_bounded
from obelisk.core.jsonsafe import load_json
from obelisk.reports.statement import (
    PAYLOAD_TYPE,
    SignatureFile,
    Statement,
    pae,
    parse_signature,
    parse_statement,
    serialize_signature,
    serialize_statement,
)

if TYPE_CHECKING:
    from obelisk.signer.keys import PublicKey

MAX_REPORT_BYTES = 1024 * 1024 * 1024


class VerificationFailed(ObeliskError):
    """The check ran and the report is not what it claims: exit 1."""

    exit_code = EXIT_FAILED


@dataclass(frozen=True)
class Described:
    subject: Subject
    scanned_at: str
    report_format: str


@dataclass(frozen=True)
class Verified:
    statement: Statement
    signer: str  # RFC 4514 subject of the signer certificate
    issuer: str  # the customer CA it chains to

    def to_json(self) -> dict:
        return {"ok": True, "statement": self.statement.to_json(), "signer": self.signer, "ca": self.issuer}


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def _hash_name(public_key: PublicKey) -> str:
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        return {"secp384r1": "sha384", "secp521r1": "sha512"}.get(public_key.curve.name, "sha256")
    return "sha256"


def describe(data: bytes) -> Described | None:
    """Subject and scan time of a report obelisk rendered, if its format carries them."""
    head = data.lstrip()[:1]
    if head == b"<" and b"<html" in data[:2048].lower():
        from obelisk.reports.html import read_meta

        meta = read_meta(data)
        if meta and isinstance(meta.get("subject"), dict):
            try:
                return Described(Subject.from_json(meta["subject"]), str(meta.get("generated_at", "")), "html")
            except InputError:
                return None
        return None
    if head == b"{":
        try:
            doc = load_json(data)
        except InputError:
            return None
        if isinstance(doc, dict) and doc.get("schema") == "obelisk.report/1":
            try:
                r = Report.from_json(doc)
            except InputError:
                return None
            return Described(r.subject, r.generated_at, "json")
        if isinstance(doc, dict) and doc.get("version") == "2.1.0" and isinstance(doc.get("runs"), list):
            try:
                run = doc["runs"][0]
                subject = Subject.from_json(run["properties"]["subject"])
                when = run.get("invocations", [{}])[0].get("endTimeUtc", "")
            except (KeyError, IndexError, TypeError, AttributeError, InputError):
                return None
            return Described(subject, str(when), "sarif")
    return None


def _load_chain_pem(path: str) -> list[x509.Certificate]:
    data = read_bounded(path, "certificate", 1024 * 1024)
    try:
        if b"-----BEGIN CERTIFICATE" in data:
            certs = x509.load_pem_x509_certificates(data)
        else:
            certs = [x509.load_der_x509_certificate(data)]
    except ValueError:
        raise InputError("not an X.509 certificate (PEM or DER)", source=path) from None
    return certs


def sign_report_file(report: str, *, key: str, cert: str, output: str | None = None, results: str | None = None,
                     passphrase_env: str | None = None, passphrase_file: str | None = None,
                     signed_at: str | None = None) -> tuple[str, Statement]:
    from obelisk.signer.hashalgo import by_name
    from obelisk.signer.keys import PassphraseSource, check_key_matches_certificate, load_signing_key

    data = read_bounded(report, "report", MAX_REPORT_BYTES)
    described = describe(data)
    if results:
        from obelisk.reports.model import load_bundle

        r = load_bundle([results]).report
        given = Described(r.subject, r.generated_at, described.report_format if described else "unknown")
        if described and (described.subject != given.subject or described.scanned_at != given.scanned_at):
            raise InputError(f"report is about {described.subject.kind} {described.subject.name} scanned "
                             f"{described.scanned_at}, not what {results} names", source=report)
        described = given
    if described is None:
        raise InputError("cannot tell which subject this report is about: give --results RESULTS.json",
                         source=report)
    chain = _load_chain_pem(cert)
    signing_key = load_signing_key(key, PassphraseSource(env=passphrase_env, file=passphrase_file))
    check_key_matches_certificate(signing_key, chain[0], source=cert)
    statement = Statement(report_name=Path(report).name, digest=hashlib.sha256(data).hexdigest(),
                          subject=described.subject, scanned_at=described.scanned_at,
                          signed_at=signed_at or _now(), report_format=described.report_format,
                          tool=f"obelisk {__version__}")
    payload = serialize_statement(statement)
    algo = by_name(_hash_name(signing_key.public_key))
    digest = hashlib.new(algo.name, pae(PAYLOAD_TYPE, payload)).digest()
    signature = signing_key.sign_digest(digest, algo)
    sig = SignatureFile(payload=payload, signature=signature, keyid=key_id(chain[0]),
                        certificates=tuple(c.public_bytes(serialization.Encoding.PEM).decode() for c in chain))
    out = output or f"{report}.sig"
    atomic.write_bytes(out, serialize_signature(sig))
    return out, statement


def key_id(cert: x509.Certificate) -> str:
    """The DSSE `keyid` obelisk writes: sha256 of the certificate's SubjectPublicKeyInfo (DER), hex."""
    spki = cert.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(spki).hexdigest()


def _parse_time(value: str, what: str) -> _dt.datetime:
    try:
        t = _dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise VerificationFailed(f"statement {what} is not a time: {value!r}") from None
    return t if t.tzinfo else t.replace(tzinfo=_dt.UTC)


def check_chain(leaf: x509.Certificate, intermediates: list[x509.Certificate], roots: list[x509.Certificate],
                when: _dt.datetime) -> x509.Certificate:
    """The root of the path leaf -> intermediates -> one of `roots`, valid at `when`. Raises VerificationFailed.

    Path validation is cryptography's (obelisk.signer.certs.verify_chain); the leaf's own validity and
    key usage are checked first so that the most common failures get their own message.
    """
    from obelisk.signer.certs import ChainError, valid_at, verify_chain

    name = leaf.subject.rfc4514_string()
    if not valid_at(leaf, when):
        raise VerificationFailed(f"signer certificate {name} was not valid at signing time {when.isoformat()}")
    try:
        usage = leaf.extensions.get_extension_for_class(x509.KeyUsage).value
        if not usage.digital_signature:
            raise VerificationFailed(f"signer certificate {name} does not allow digital signatures")
    except x509.ExtensionNotFound:
        pass
    try:
        return verify_chain(leaf, intermediates, roots, when)
    except ChainError as exc:
        cas = "; ".join(r.subject.rfc4514_string() for r in roots)
        raise VerificationFailed(f"signer certificate {name} does not chain to the customer CA "
                                 f"({cas}): {exc}") from None


def verify_report_file(report: str, *, ca: str, signature: str | None = None,
                       expected_subject: str | None = None, now: _dt.datetime | None = None) -> Verified:
    from obelisk.signer.hashalgo import by_name
    from obelisk.signer.keys import verify_digest_signature

    data = read_bounded(report, "report", MAX_REPORT_BYTES)
    sig_path = signature or f"{report}.sig"
    sig = parse_signature(read_bounded(sig_path, "signature", 1024 * 1024), source=sig_path)
    roots = _load_chain_pem(ca)
    try:
        chain = [x509.load_pem_x509_certificate(pem.encode()) for pem in sig.certificates]
    except ValueError:
        raise VerificationFailed("signature carries a malformed signer certificate") from None
    if not chain:
        raise VerificationFailed("signature carries no signer certificate")
    leaf = chain[0]
    try:
        public_key = leaf.public_key()
    except ValueError as exc:  # a certificate whose key bytes were altered: "Invalid key"
        raise VerificationFailed(f"signer certificate carries an unusable public key ({exc})") from None
    # DSSE's keyid is outside the signature (an unsigned hint): bound here to the key that verifies, so a
    # changed keyid is refused rather than silently ignored. An absent or empty keyid is allowed (DSSE).
    if sig.keyid and sig.keyid != key_id(leaf):
        raise VerificationFailed(f"signature keyid {sig.keyid[:64]!r} does not name the signer certificate's key "
                                 f"({key_id(leaf)})")
    if not isinstance(public_key, (rsa.RSAPublicKey, ec.EllipticCurvePublicKey)):
        raise VerificationFailed(f"unsupported signer key type {type(public_key).__name__}")
    algo = by_name(_hash_name(public_key))
    digest = hashlib.new(algo.name, pae(sig.payload_type, sig.payload)).digest()
    if not verify_digest_signature(public_key, sig.signature, digest, algo):
        raise VerificationFailed("signature does not verify with the signer certificate "
                                 f"{leaf.subject.rfc4514_string()}")
    try:
        statement = parse_statement(sig.payload)
    except InputError as exc:
        raise VerificationFailed(f"signed statement is malformed: {exc}") from None
    actual = hashlib.sha256(data).hexdigest()
    if actual != statement.digest:
        raise VerificationFailed(f"report was altered after signing: sha256 {actual[:16]}…, "
                                 f"signed {statement.digest[:16]}…")
    signed_at = _parse_time(statement.signed_at, "signedAt")
    now = now or _dt.datetime.now(_dt.UTC)
    if signed_at > now + _dt.timedelta(minutes=5):
        raise VerificationFailed(f"statement claims a signing time in the future ({statement.signed_at})")
    try:
        root = check_chain(leaf, chain[1:], roots, signed_at)
    except ValueError as exc:  # an intermediate whose key or extensions do not decode
        raise VerificationFailed(f"signer certificate chain is malformed ({exc})") from None
    described = describe(data)
    if described is not None and (described.subject != statement.subject
                                  or described.scanned_at != statement.scanned_at):
        raise VerificationFailed(f"report is about {described.subject.kind} {described.subject.name} but the "
                                 f"signature binds it to {statement.subject.kind} {statement.subject.name}")
    if expected_subject is not None and statement.subject.name != expected_subject:
        raise VerificationFailed(f"report is signed for {statement.subject.kind} {statement.subject.name}, "
                                 f"not {expected_subject}")
    return Verified(statement=statement, signer=leaf.subject.rfc4514_string(), issuer=root.subject.rfc4514_string())
