"""Rollback protection on the node's /var (disk/unlock.py): swtpm + cryptsetup on a file-backed partition.

Each "image" is a PCR 11 value at leave-initrd, its recipe (/etc/obelisk/var-seal.json on its root)
and its tpm2-pcr-signature.json with the entries the build signs (image/build.signed_var_policy).
"""

from __future__ import annotations

import json

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from obelisk.disk import pcrsig, recipe
from obelisk.disk import unlock as node
from obelisk.disk import volume as disk
from obelisk.image.build import rollback_approvals
from obelisk.signer.keys import SoftwareKey, sign_tpm_policy
from obelisk.tpm import device as tpm
from obelisk.tpm import rollback, seal
from obelisk.tpm import rollback_policy as rp

KEY = ec.generate_private_key(ec.SECP256R1())
DER = KEY.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def image(tmp_path, tcti: str, name: str, r: int, advance: bool = True) -> tuple[recipe.VarRecipe, str]:
    """Boot `name` (a new PCR 11 value) and write its recipe and signed policy file; return both."""
    tpm.extend_pcr(tcti, 11, name.encode())
    values = tpm.pcr_values(tcti, "sha256", [11])
    legacy = seal.SignedPolicy(pcrs=(11,), values=values,
                               signature=sign_tpm_policy(SoftwareKey(KEY), seal.policy_pcr_digest((11,), values)))
    path = tmp_path / f"{name}.json"
    path.write_bytes(pcrsig.serialize([legacy, *rollback_approvals(SoftwareKey(KEY), DER, values, r)], DER))
    return recipe.VarRecipe(policy_key=DER, signed_pcrs=(11,), rollback_index=r, advance_rollback_index=advance), \
        str(path)


def test_pcrsig_carries_the_policy_ref_and_the_floor_check_and_keeps_systemds_entry():
    values = {11: b"\x11" * 32}
    legacy = seal.SignedPolicy(pcrs=(11,), values=values, signature=b"sig")
    unseal, advance = rollback_approvals(SoftwareKey(KEY), DER, values, 5)
    data = pcrsig.serialize([legacy, unseal, advance], DER)
    entries = json.loads(data)["sha256"]
    assert set(entries[0]) == {"pcrs", "pkfp", "pol", "sig"}  # systemd-measure's own entry, unchanged
    assert entries[1]["obelisk-rollback"] == {"nv-index": rp.NV_INDEX, "nv-name": rollback.expected_name(DER).hex(),
                                              "rollback-index": 5}
    parsed = pcrsig.parse(data, "sig.json", DER)
    assert [(p.approved, p.policy_ref, p.rollback) for p in parsed] == \
        [(p.approved, p.policy_ref, p.rollback) for p in (legacy, unseal, advance)]
    assert all(seal.check_policy_signature(DER, p) for p in parsed[1:])
    entries[1]["obelisk-rollback"]["rollback-index"] = "5"
    with pytest.raises(Exception, match=r"sha256\[1\]: obelisk-rollback"):
        pcrsig.parse(json.dumps({"sha256": entries}).encode(), "sig.json", DER)


def test_recipe_round_trips_rollback_and_old_recipes_read_the_same():
    with_floor = recipe.VarRecipe(policy_key=DER, signed_pcrs=(11,), rollback_index=3, advance_rollback_index=True)
    assert recipe.parse(recipe.serialize(with_floor)) == with_floor
    without = recipe.VarRecipe(policy_key=DER, signed_pcrs=(11,))
    assert b"rollback" not in recipe.serialize(without)
    with pytest.raises(ValueError, match="rollback_index"):
        recipe.VarRecipe(policy_key=None, bound_at_first_boot=(11,), rollback_index=1)


@pytest.mark.swtpm
def test_upgrade_advances_the_floor_and_locks_older_images_out_of_var(swtpm, tmp_path):
    part = tmp_path / "var.img"
    with open(part, "wb") as handle:
        handle.truncate(32 << 20)
    first, first_sig = image(tmp_path, swtpm.tcti, "1.0.0", 1)
    (tmp_path / "var-seal.json").write_bytes(recipe.serialize(first))
    # first boot of 1.0.0 (rollback index 1): /var created, the floor defined and written to 1
    assert node.create_var(str(part), str(tmp_path / "var-seal.json"), swtpm.tcti, first_sig).endswith(
        "rollback floor NV index 0x01800b5e defined, floor 1")
    token = disk.tokens(str(part))[0]
    assert token.sealed.policy_ref == rp.UNSEAL_REF
    assert disk.unlock(str(part), swtpm.tcti, test=True,
                       extra_policies=node.signed_policies(first_sig, DER)).keyslot == token.keyslot

    # upgrade to 1.0.1 (rollback index 2, advances): opens, then raises the floor
    second, second_sig = image(tmp_path, swtpm.tcti, "1.0.1", 2)
    approvals = node.signed_policies(second_sig, DER)
    opened = disk.unlock(str(part), swtpm.tcti, test=True, extra_policies=approvals)
    assert node.advance_floor(second, swtpm.tcti, approvals, opened.sealed) == ", rollback floor raised from 1 to 2"
    assert node.advance_floor(second, swtpm.tcti, approvals, opened.sealed) == ""  # already there
    assert rollback.read_floor(swtpm.tcti).rollback_index == 2

    # the customer-signed 1.0.0 boots again: /var stays locked, and the error names the floor
    image(tmp_path, swtpm.tcti, "1.0.0 again", 1)
    with pytest.raises(seal.RollbackLocked) as locked:
        disk.unlock(str(part), swtpm.tcti, test=True,
                    extra_policies=node.signed_policies(str(tmp_path / "1.0.0 again.json"), DER))
    assert "rollback floor (TPM NV index 0x01800b5e) is 2, above this image's rollback index 1" in str(locked.value)

    # an image that does not advance (a canary of index 3) opens and leaves the floor at 2
    canary, canary_sig = image(tmp_path, swtpm.tcti, "1.1.0-rc", 3, advance=False)
    approvals = node.signed_policies(canary_sig, DER)
    opened = disk.unlock(str(part), swtpm.tcti, test=True, extra_policies=approvals)
    assert node.advance_floor(canary, swtpm.tcti, approvals, opened.sealed) == ""
    assert rollback.read_floor(swtpm.tcti).rollback_index == 2


@pytest.mark.swtpm
def test_a_reinstall_keeps_the_floor(swtpm, tmp_path):
    """A blank /var on a node whose TPM already holds a floor: the index is kept, not reset, so an
    older image installed afresh still cannot open the /var it creates."""
    newer, newer_sig = image(tmp_path, swtpm.tcti, "2.0.0", 4)
    assert node.provision_floor(newer, swtpm.tcti, node.signed_policies(newer_sig, DER)).endswith("floor 4")
    part = tmp_path / "var.img"
    with open(part, "wb") as handle:
        handle.truncate(32 << 20)
    older, older_sig = image(tmp_path, swtpm.tcti, "1.0.0", 1)
    (tmp_path / "var-seal.json").write_bytes(recipe.serialize(older))
    assert node.create_var(str(part), str(tmp_path / "var-seal.json"), swtpm.tcti, older_sig).endswith("kept")
    with pytest.raises(seal.RollbackLocked, match="is 4, above this image's rollback index 1"):
        disk.unlock(str(part), swtpm.tcti, test=True, extra_policies=node.signed_policies(older_sig, DER))
