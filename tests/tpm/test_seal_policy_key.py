"""The customer's policy key as the TPM loads it (tpm/seal.py `_external_public`), on swtpm."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from obelisk.signer.keys import SoftwareKey, sign_tpm_policy
from obelisk.tpm import device as tpm
from obelisk.tpm import seal


def short_coordinate_key() -> ec.EllipticCurvePrivateKey:
    """A P-256 key whose public x or y has a leading zero byte (about one key in 128)."""
    while True:
        key = ec.generate_private_key(ec.SECP256R1())
        numbers = key.public_key().public_numbers()
        if min(numbers.x.bit_length(), numbers.y.bit_length()) <= 248:
            return key


@pytest.mark.swtpm
def test_a_key_with_a_short_coordinate_approves_policies(swtpm):
    """tpm2-pytss drops a coordinate's leading zero byte, which the TPM refuses (TPM_RC_KEY): such a
    customer key could never open /var. The coordinates are padded to the curve's size."""
    key = short_coordinate_key()
    der = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    unique = seal._external_public(der).publicArea.unique.ecc
    assert (len(bytes(unique.x)), len(bytes(unique.y))) == (32, 32)
    sealed = seal.seal(b"secret", [11], swtpm.tcti, authorize_key=der)
    values = tpm.pcr_values(swtpm.tcti, "sha256", [11])
    approval = seal.SignedPolicy(pcrs=(11,), values=values, signature=sign_tpm_policy(
        SoftwareKey(key), seal.policy_pcr_digest((11,), values)))
    assert seal.unseal(sealed, swtpm.tcti, signed=[approval]) == b"secret"
