"""The customer-signed PCR policy record (`obelisk.signed-pcr-policy/1`), as a file and inside a token.

    {"format": "obelisk.signed-pcr-policy/1", "bank": "sha256", "pcrs": [11], "values": {"11": HEX},
     "policy": HEX approved policy digest, "policy_ref": HEX, "signature": BASE64}

`parse`/`serialize` are the file (`obelisk disk sign-policy` writes it, `disk unlock --signed-policy`,
`disk add-policy` and a node's initramfs read it); `from_json`/`to_json` the same record as a JSON
object, embedded in the LUKS2 token and in the image manifest. The record comes from outside and is
untrusted until the TPM checks its signature: every malformed input is a one-line `InputError`.
"""

from __future__ import annotations

import base64
import json

from obelisk.core.errors import InputError
from obelisk.core.jsonsafe import load_json
from obelisk.tpm import seal as sealmod
from obelisk.tpm.seal import SignedPolicy

FORMAT = "obelisk.signed-pcr-policy/1"


def to_json(p: SignedPolicy) -> dict:
    return {"format": FORMAT, "bank": sealmod.BANK, "pcrs": list(p.pcrs),
            "values": {str(k): v.hex() for k, v in sorted(p.values.items())},
            "policy": p.approved.hex(), "policy_ref": p.policy_ref.hex(),
            "signature": base64.b64encode(p.signature).decode()}


def from_json(doc: dict, where: str) -> SignedPolicy:
    try:
        if doc.get("format") != FORMAT:
            raise ValueError(f"format is not {FORMAT}")
        policy = SignedPolicy(pcrs=tuple(sorted(int(p) for p in doc["pcrs"])),
                              values={int(k): bytes.fromhex(v) for k, v in doc["values"].items()},
                              signature=base64.b64decode(doc["signature"]),
                              policy_ref=bytes.fromhex(doc.get("policy_ref", "")))
    except (KeyError, ValueError, TypeError, AttributeError) as exc:
        raise InputError(f"malformed signed PCR policy: {exc}", source=where) from None
    if set(policy.values) != set(policy.pcrs):
        raise InputError("signed PCR policy: values do not match pcrs", source=where)
    return policy


def serialize(p: SignedPolicy) -> bytes:
    return (json.dumps(to_json(p), indent=2) + "\n").encode()


def parse(data: bytes, where: str) -> SignedPolicy:
    doc = load_json(data, where)
    if not isinstance(doc, dict):
        raise InputError("expected a JSON object", source=where)
    return from_json(doc, where)
