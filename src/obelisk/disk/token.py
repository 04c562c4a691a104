"""The LUKS2 token of type `obelisk-tpm2`: which keyslot the TPM-sealed key opens, and the sealed blob.

    {"type": "obelisk-tpm2", "keyslots": ["N"], "obelisk-version": 1,
     "tpm2-public": BASE64, "tpm2-private": BASE64, "tpm2-pcr-bank": "sha256", "tpm2-pcrs": [..],
     "tpm2-pcr-values": {"N": HEX}, "tpm2-policy-hash": HEX,
     "tpm2-policy-key": BASE64 DER (PolicyAuthorize only), "tpm2-signed-policies": [policy records],
     "tpm2-pcrs-bound": {"N": HEX} (PolicyPCR after PolicyAuthorize: e.g. PCR 7, Secure Boot),
     "obelisk-derived": "tpm+fleet" (the sealed secret is one part of the keyslot's passphrase, not all),
     "tpm2-policy-ref": HEX (PolicyAuthorize's policyRef: rollback protection, docs/upgrade.md)}

`parse`/`serialize` are the JSON bytes cryptsetup imports and exports (`token import --json-file`);
`from_json`/`to_json` the object as `cryptsetup luksDump --dump-json-metadata` lists it. A node reads
the token from a disk it does not trust yet: malformed tokens are a one-line `InputError`.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass

from obelisk.core.errors import InputError
from obelisk.core.jsonsafe import load_json
from obelisk.disk import policy as policymod
from obelisk.tpm import seal as sealmod

TOKEN_TYPE = "obelisk-tpm2"


@dataclass(frozen=True)
class Token:
    keyslot: int
    sealed: sealmod.Sealed
    signed_policies: tuple[sealmod.SignedPolicy, ...] = ()
    token_id: int | None = None  # where cryptsetup holds it; not part of the document
    # "tpm+fleet": the sealed secret is the TPM's part of a passphrase derived with the fleet service's part
    # (disk/unlock.derived_key), so it opens nothing alone and a reseal keeps it and the keyslot as they are
    derived: str | None = None


DERIVED_MODES = ("tpm+fleet",)


def to_json(token: Token) -> dict:
    s = token.sealed
    doc = {
        "type": TOKEN_TYPE,
        "keyslots": [str(token.keyslot)],
        "obelisk-version": 1,
        "tpm2-public": base64.b64encode(s.public).decode(),
        "tpm2-private": base64.b64encode(s.private).decode(),
        "tpm2-pcr-bank": sealmod.BANK,
        "tpm2-pcrs": list(s.pcrs),
        "tpm2-pcr-values": {str(p): v.hex() for p, v in sorted(s.values.items())},
        "tpm2-policy-hash": s.policy.hex(),
    }
    if s.authorize_key:
        doc["tpm2-policy-key"] = base64.b64encode(s.authorize_key).decode()
        doc["tpm2-signed-policies"] = [policymod.to_json(p) for p in token.signed_policies]
        if s.bound:
            doc["tpm2-pcrs-bound"] = {str(p): v.hex() for p, v in sorted(s.bound.items())}
        if s.policy_ref:
            doc["tpm2-policy-ref"] = s.policy_ref.hex()
    if token.derived:
        doc["obelisk-derived"] = token.derived
    return doc


def from_json(doc: dict, token_id: int | None, where: str) -> Token:
    try:
        values = {int(k): bytes.fromhex(v) for k, v in doc["tpm2-pcr-values"].items()}
        key = base64.b64decode(doc["tpm2-policy-key"]) if doc.get("tpm2-policy-key") else None
        bound = {int(k): bytes.fromhex(v) for k, v in doc.get("tpm2-pcrs-bound", {}).items()}
        if (bound or doc.get("tpm2-policy-ref")) and not key:
            raise ValueError("tpm2-pcrs-bound or tpm2-policy-ref without tpm2-policy-key")
        sealed = sealmod.Sealed(public=base64.b64decode(doc["tpm2-public"]),
                                private=base64.b64decode(doc["tpm2-private"]),
                                pcrs=tuple(int(p) for p in doc["tpm2-pcrs"]), values=values,
                                policy=bytes.fromhex(doc["tpm2-policy-hash"]), authorize_key=key,
                                bound=bound, policy_ref=bytes.fromhex(doc.get("tpm2-policy-ref", "")))
        policies = tuple(policymod.from_json(p, where) for p in doc.get("tpm2-signed-policies", []))
        derived = doc.get("obelisk-derived")
        if derived is not None and derived not in DERIVED_MODES:
            raise ValueError(f"obelisk-derived {derived!r}: not one of {', '.join(DERIVED_MODES)}")
        return Token(keyslot=int(doc["keyslots"][0]), sealed=sealed, signed_policies=policies, token_id=token_id,
                     derived=derived)
    except (KeyError, ValueError, TypeError, IndexError, AttributeError) as exc:
        raise InputError(f"malformed {TOKEN_TYPE} token: {type(exc).__name__}: {exc}", source=where) from None


def serialize(token: Token) -> bytes:
    return json.dumps(to_json(token)).encode()


def parse(data: bytes, token_id: int | None, where: str) -> Token:
    try:
        doc = load_json(data)
    except InputError as exc:
        raise InputError(f"malformed {TOKEN_TYPE} token: {exc}", source=where) from None
    if not isinstance(doc, dict):
        raise InputError(f"malformed {TOKEN_TYPE} token: not a JSON object", source=where)
    return from_json(doc, token_id, where)
