"""systemd's signed PCR policy file, `tpm2-pcr-signature.json`, as obelisk's `SignedPolicy` records.

    {"sha256": [{"pcrs": [11], "pkfp": HEX sha256 of the public key (DER SubjectPublicKeyInfo),
                 "pol": HEX approved PolicyPCR digest, "sig": BASE64 signature}]}

obelisk's extension, for images with rollback protection (docs/upgrade.md): an entry may carry

    "obelisk-policy-ref": HEX policyRef the signature covers (aHash = sha256(pol || ref); absent: empty),
    "obelisk-rollback": {"nv-index": N, "nv-name": HEX, "rollback-index": r}  (PolicyNV after PolicyPCR)

systemd ignores keys it does not know; such an entry's `pol` is not a PolicyPCR digest, so systemd
can never use it, and the build keeps the PCR-only entry first for systemd and older volumes.

This is what `systemd-measure sign` writes and systemd-stub hands to the initrd as
/.extra/tpm2-pcr-signature.json from the UKI's `.pcrsig` section: the build puts the customer's
approval of the image's PCR 11 there, because the section is the one part of the UKI the stub
does not measure (a signature over PCR 11 cannot be inside what PCR 11 covers). The signature is
over sha256(pol) with the disk policy key, the same bytes TPM2_VerifySignature checks before
PolicyAuthorize, so systemd's and obelisk's files are interchangeable. The file reaches the node
from an unverified disk: every malformed input is a one-line `InputError`; the TPM checks the
signature.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json

from obelisk.core.errors import InputError
from obelisk.core.jsonsafe import load_json
from obelisk.tpm.rollback_policy import RollbackCheck
from obelisk.tpm.seal import BANK, SignedPolicy

MAX_ENTRIES = 64


def key_fingerprint(public_der: bytes) -> str:
    """systemd's `pkfp`: sha256 of OpenSSL's i2d_PublicKey form (RSA: PKCS#1; EC: the uncompressed
    point), not of the SubjectPublicKeyInfo (checked against systemd-measure in the tests)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    try:
        key = serialization.load_der_public_key(public_der)
    except ValueError:
        raise InputError("the policy key is not a DER public key") from None
    if isinstance(key, rsa.RSAPublicKey):
        raw = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.PKCS1)
    elif isinstance(key, ec.EllipticCurvePublicKey):
        raw = key.public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    else:
        raise InputError("the policy key must be RSA or ECDSA")
    return hashlib.sha256(raw).hexdigest()


def serialize(policies: tuple[SignedPolicy, ...] | list[SignedPolicy], public_der: bytes) -> bytes:
    entries = []
    for p in policies:
        entry: dict[str, object] = {"pcrs": list(p.pcrs), "pkfp": key_fingerprint(public_der), "pol": p.approved.hex(),
                                    "sig": base64.b64encode(p.signature).decode()}
        if p.policy_ref:
            entry["obelisk-policy-ref"] = p.policy_ref.hex()
        if p.rollback is not None:
            entry["obelisk-rollback"] = {"nv-index": p.rollback.nv_index, "nv-name": p.rollback.nv_name.hex(),
                                         "rollback-index": p.rollback.rollback_index}
        entries.append(entry)
    return json.dumps({BANK: entries}, separators=(",", ":")).encode()


def _rollback(doc: object) -> RollbackCheck:
    if not isinstance(doc, dict):
        raise TypeError("obelisk-rollback: expected an object")
    index = doc["rollback-index"]
    nv_index = doc["nv-index"]
    if type(index) is not int or type(nv_index) is not int:
        raise TypeError("obelisk-rollback: nv-index and rollback-index are integers")
    return RollbackCheck(rollback_index=index, nv_index=nv_index, nv_name=bytes.fromhex(doc["nv-name"]))


def parse(data: bytes, where: str, public_der: bytes | None = None) -> tuple[SignedPolicy, ...]:
    """The sha256 entries (for `public_der`'s fingerprint, when given) as digest-only SignedPolicy records."""
    doc = load_json(data, where)
    if not isinstance(doc, dict):
        raise InputError("expected a JSON object", source=where)
    entries = doc.get(BANK, [])
    if not isinstance(entries, list) or len(entries) > MAX_ENTRIES:
        raise InputError(f"{BANK}: expected a list of at most {MAX_ENTRIES} entries", source=where)
    wanted = key_fingerprint(public_der) if public_der is not None else None
    out = []
    for i, entry in enumerate(entries):
        field = f"{BANK}[{i}]"
        try:
            if not isinstance(entry, dict):
                raise TypeError("expected an object")
            pcrs = tuple(sorted(int(p) for p in entry["pcrs"]))
            if not pcrs or any(not 0 <= p <= 23 for p in pcrs):
                raise ValueError("pcrs: PCRs are 0..23")
            approved = bytes.fromhex(entry["pol"])
            if len(approved) != 32:
                raise ValueError("pol: expected a sha256 digest")
            signature = base64.b64decode(entry["sig"], validate=True)
            fingerprint = str(entry["pkfp"])
            policy_ref = bytes.fromhex(entry.get("obelisk-policy-ref", ""))
            rollback = _rollback(entry["obelisk-rollback"]) if "obelisk-rollback" in entry else None
        except (KeyError, ValueError, TypeError, binascii.Error) as exc:
            raise InputError(f"{field}: {exc}", source=where) from None
        if wanted is None or fingerprint == wanted:
            out.append(SignedPolicy(pcrs=pcrs, values={}, signature=signature, approved_digest=approved,
                                    policy_ref=policy_ref, rollback=rollback))
    return tuple(out)
