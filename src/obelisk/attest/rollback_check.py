"""`attest.rollback`: the node's rollback floor, as its TPM certifies it, against the image's rollback index.

The node sends TPM2_NV_Certify of the floor index (tpm/rollback.certify_floor), signed by its AK over
the verifier's nonce. The verifier trusts no number the node states: it checks the AK's signature, the
nonce, that the certified index is the one the customer's policy names (its Name: handle, attributes,
authPolicy from the manifest's policy key, written), and reads the floor from the certified contents.
A floor above the image's rollback index is why such an image's /var stays locked, and the finding
says so with both numbers.
"""

from __future__ import annotations

from obelisk.core.errors import ParseError
from obelisk.core.findings import Finding, Severity, Status
from obelisk.tpm import nvcertify
from obelisk.tpm import quote as q
from obelisk.tpm import rollback_policy as rp

FINDING = "attest.rollback"
TITLE = "The node's rollback floor (TPM NV index) allows this image to open /var"


def _finding(status: Status, detail: str, observed: str | None = None, expected: str | None = None) -> Finding:
    return Finding(id=FINDING, title=TITLE, status=status, severity=Severity.HIGH, benchmark="attestation",
                   section="node", observed=observed, expected=expected, detail=detail)


def rollback_finding(certified: tuple[bytes, bytes] | None, *, nonce: bytes, ak_public_key: object,
                     policy_key: bytes, rollback_index: int) -> Finding:
    """PASS when the certified floor is at most `rollback_index`; FAIL naming both when above; ERROR when
    the certification is missing or does not hold (wrong signature, nonce or index)."""
    from obelisk.tpm.rollback import expected_name

    expected = f"floor <= {rollback_index}"
    if certified is None:
        return _finding(Status.ERROR, "the node sent no certification of its rollback floor (no floor index in "
                        "its TPM, or an agent without rollback support)", expected=expected)
    attest_bytes, signature_bytes = certified
    try:
        attest = nvcertify.parse(attest_bytes, "rollback_floor.attest")
        signature = q.parse_signature(signature_bytes, "rollback_floor.signature")
        q.verify_signature(ak_public_key, signature, attest_bytes)
    except (ParseError, q.SignatureError) as exc:
        return _finding(Status.ERROR, f"the rollback floor's certification does not hold: {exc}", expected=expected)
    if attest.extra_data != nonce:
        return _finding(Status.ERROR, "the rollback floor's certification is not over this round's nonce (replayed)",
                        expected=expected)
    if attest.index_name != expected_name(policy_key) or attest.offset != 0 or len(attest.contents) != rp.NV_SIZE:
        return _finding(Status.FAIL, f"the certified NV index is not the rollback floor the customer's policy names "
                        f"(0x{rp.NV_INDEX:08x} with its authPolicy, written): recreated or another index",
                        observed=f"name {attest.index_name.hex()}", expected=expected)
    try:
        floor = rp.rollback_index_of(int.from_bytes(attest.contents, "big"))
    except ValueError as exc:
        return _finding(Status.FAIL, str(exc), observed=attest.contents.hex(), expected=expected)
    if floor > rollback_index:
        return _finding(Status.FAIL, f"the node's rollback floor (TPM NV index 0x{rp.NV_INDEX:08x}) is {floor}, above "
                        f"this image's rollback index {rollback_index}: /var stays locked for this image",
                        observed=f"floor {floor}", expected=expected)
    return _finding(Status.PASS, "", observed=f"floor {floor}", expected=expected)
