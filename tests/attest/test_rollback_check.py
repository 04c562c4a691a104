"""`attest.rollback`: the rollback floor certified by the node's TPM (TPM2_NV_Certify with the AK), on swtpm."""

from __future__ import annotations

import json
import os

import pytest
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from obelisk.attest import evidence
from obelisk.attest.rollback_check import rollback_finding
from obelisk.core.findings import Status
from obelisk.tpm import device as tpm
from obelisk.tpm import nvcertify, rollback
from tests.tpm.test_rollback import boot_image, image_approvals, public_der

pytestmark = pytest.mark.swtpm


@pytest.fixture
def node(swtpm):
    """A node with an AK whose /var was created by an image of rollback index 2 (floor 2)."""
    from cryptography.hazmat.primitives.asymmetric import ec
    from tpm2_pytss import TPM2B_PUBLIC

    key = ec.generate_private_key(ec.SECP256R1())
    info = tpm.create_keys(swtpm.tcti)
    rollback.provision(public_der(key), swtpm.tcti)
    rollback.advance(2, public_der(key), image_approvals(key, boot_image(swtpm.tcti, b"1.0.1"), 2), swtpm.tcti)
    ak_key = load_pem_public_key(TPM2B_PUBLIC.unmarshal(info.public)[0].to_pem())
    return key, ak_key


def test_certified_floor_passes_for_images_at_or_above_it_and_names_it_below(swtpm, node):
    key, ak_key = node
    nonce = os.urandom(16)
    bundle = evidence.collect(nonce, swtpm.tcti, event_log_path=None, ima_path=None)
    assert bundle.rollback_floor is not None
    # the bundle carries it through its JSON form
    parsed = evidence.parse(evidence.serialize(bundle))
    assert parsed.rollback_floor == bundle.rollback_floor
    certified = nvcertify.parse(bundle.rollback_floor[0])
    assert nvcertify.serialize(certified) == bundle.rollback_floor[0]
    assert certified.index_name == rollback.expected_name(public_der(key)) and certified.extra_data == nonce

    mine = public_der(key)

    def check(index: int, certified=parsed.rollback_floor, nonce=nonce, policy_key=mine):
        return rollback_finding(certified, nonce=nonce, ak_public_key=ak_key, policy_key=policy_key,
                                rollback_index=index)

    assert check(2).status is Status.PASS and check(3).observed == "floor 2"
    older = check(1)
    assert older.status is Status.FAIL and older.id == "attest.rollback"
    assert "rollback floor (TPM NV index 0x01800b5e) is 2, above this image's rollback index 1" in older.detail
    # the verifier takes no number from the node: a changed floor breaks the AK's signature
    attest, signature = parsed.rollback_floor
    forged = attest[:-8] + bytes(8)
    assert check(1, certified=(forged, signature)).status is Status.ERROR
    assert check(2, nonce=os.urandom(16)).status is Status.ERROR  # replayed from another round
    assert check(0, certified=None).status is Status.ERROR  # a node that sends none
    from cryptography.hazmat.primitives.asymmetric import ec

    assert check(2, policy_key=public_der(ec.generate_private_key(ec.SECP256R1()))).status is Status.FAIL


def test_evidence_without_a_floor_is_unchanged(swtpm):
    tpm.create_keys(swtpm.tcti)
    bundle = evidence.collect(bytes(16), swtpm.tcti, event_log_path=None, ima_path=None)
    assert bundle.rollback_floor is None and "rollback_floor" not in json.loads(evidence.serialize(bundle))
    bad = {**json.loads(evidence.serialize(bundle)), "rollback_floor": {"attest": "AA=="}}
    with pytest.raises(Exception, match="rollback_floor.signature"):
        evidence.parse(json.dumps(bad))
