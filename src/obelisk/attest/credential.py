"""The credential challenge that proves an AK sits in the same TPM as an EK (TPM2_MakeCredential /
TPM2_ActivateCredential), and its file format.

The verifier encrypts a random secret to the node's EK, bound to the AK's name (`make`); only the
TPM holding both keys recovers it (`activate`); the verifier compares what the node sends back
(`check`) and marks the AK record activated. The challenge file is JSON (`obelisk.credential/1`):

    {"format": "obelisk.credential/1", "credential_blob": HEX TPM2B_ID_OBJECT,
     "encrypted_secret": HEX TPM2B_ENCRYPTED_SECRET}

It comes from the verifier but travels through the node's hands: `parse` treats it as untrusted and
fails with a one-line `InputError`.
"""

from __future__ import annotations

import hmac
import json
import secrets
from dataclasses import dataclass, replace

from obelisk.attest.akrecord import AKRecord
from obelisk.core.errors import InputError, ObeliskError
from obelisk.core.jsonsafe import load_json

FORMAT = "obelisk.credential/1"
SECRET_SIZE = 32


@dataclass(frozen=True)
class Challenge:
    credential_blob: bytes  # TPM2B_ID_OBJECT
    encrypted_secret: bytes  # TPM2B_ENCRYPTED_SECRET


class CredentialMismatch(ObeliskError):
    """The node's response is not the secret: its AK is not in the EK's TPM."""

    exit_code = 1


def serialize(challenge: Challenge) -> bytes:
    return (json.dumps({"format": FORMAT, "credential_blob": challenge.credential_blob.hex(),
                        "encrypted_secret": challenge.encrypted_secret.hex()}, indent=2) + "\n").encode()


def parse(data: bytes, source: str = "challenge") -> Challenge:
    """A challenge file; InputError naming the field for anything else."""
    def bad(why: str) -> InputError:
        return InputError(f"not an obelisk credential challenge: {why}", source=source)

    try:
        doc = load_json(data)
    except InputError as exc:
        raise bad(str(exc)) from None
    if not isinstance(doc, dict):
        raise bad("not a JSON object")
    if doc.get("format", FORMAT) != FORMAT:
        raise bad(f"format is not {FORMAT}")
    fields = []
    for name in ("credential_blob", "encrypted_secret"):
        value = doc.get(name)
        if not isinstance(value, str):
            raise bad(f"{name} missing")
        try:
            fields.append(bytes.fromhex(value))
        except ValueError:
            raise bad(f"{name} is not hex") from None
    return Challenge(credential_blob=fields[0], encrypted_secret=fields[1])


def ek_of(record: AKRecord, ek_public: bytes | None = None) -> bytes:
    """The EK public a challenge for `record` is encrypted to (`ek_public` overrides the record's); raises
    unless the record names a TPM AK with an attestation key's attributes."""
    ek_public = ek_public or record.ek_public
    if ek_public is None or record.name is None:
        raise InputError("credential make needs the AK's TPM public area and the EK public (an AK record)")
    if record.missing_attributes():
        raise InputError(f"AK lacks {', '.join(record.missing_attributes())}: not an attestation key",
                         source=record.source)
    return ek_public


def make(ek_public: bytes, ak_name: bytes) -> tuple[bytes, Challenge]:
    """Verifier (software, no TPM): a fresh secret and the challenge that only the TPM holding both the EK
    and the AK named `ak_name` can open."""
    from obelisk.tpm import device as tpm

    secret = secrets.token_bytes(SECRET_SIZE)
    blob, enc = tpm.make_credential(ek_public, ak_name, secret)
    return secret, Challenge(credential_blob=blob, encrypted_secret=enc)


def activate(challenge: Challenge, tcti: str | None, ak_handle: int) -> bytes:
    """Node: the secret, recovered by TPM2_ActivateCredential with the persistent EK and AK."""
    from obelisk.tpm import device as tpm

    return tpm.activate_credential(challenge.credential_blob, challenge.encrypted_secret, tcti, ak_handle=ak_handle)


def check(record: AKRecord, secret: bytes, response: bytes) -> AKRecord:
    """Verifier: the record marked activated if the node recovered the secret; else CredentialMismatch."""
    if not hmac.compare_digest(secret, response):
        raise CredentialMismatch("the node did not recover the secret; its AK is not in the EK's TPM")
    return replace(record, activated=True)
