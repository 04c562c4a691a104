"""The rollback floor on a real swtpm, checked against tpm2-tools where it can be.

An "image" here is PCR 11 at some value (the leave-initrd value the customer signs) plus its rollback
index r; the customer key signs its two approvals exactly as the build does (image/build.py).
"""

from __future__ import annotations

import hashlib
import re
import subprocess

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from obelisk.core import tools
from obelisk.signer.keys import SoftwareKey
from obelisk.tpm import device as tpm
from obelisk.tpm import rollback, seal
from obelisk.tpm import rollback_policy as rp

pytestmark = pytest.mark.swtpm

SECRET = b"the key of /var"


def public_der(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def image_approvals(key, pcr11: bytes, r: int) -> list[seal.SignedPolicy]:
    """What the build signs for an image with rollback protection (image/build.rollback_approvals)."""
    from obelisk.image.build import rollback_approvals

    return list(rollback_approvals(SoftwareKey(key), public_der(key), {11: pcr11}, r))


def boot_image(tcti: str, word: bytes) -> bytes:
    """A fresh PCR 11 value, as another image's leave-initrd would leave it."""
    tpm.extend_pcr(tcti, 11, word)
    return tpm.pcr_values(tcti, "sha256", [11])[11]


def tpm2(swtpm, *args: str, input: bytes | None = None) -> str:
    done = subprocess.run([tools.which(args[0]), *args[1:]], env={**swtpm.env, "PATH": "/usr/bin:/bin"},
                          input=input, capture_output=True)
    assert done.returncode == 0, done.stderr.decode()
    return done.stdout.decode()


def nvreadpublic(swtpm) -> tuple[bytes, bytes, int]:
    """Name, authorization policy and attributes of the floor index, as tpm2-tools reads them."""
    out = tpm2(swtpm, "tpm2_nvreadpublic", f"0x{rp.NV_INDEX:x}")
    name = re.search(r"name: ([0-9a-f]+)", out).group(1)
    policy = re.search(r"authorization policy: ([0-9A-Fa-f]+)", out).group(1)
    attributes = re.search(r"attributes:\s*friendly: .*\n\s*value: (0x[0-9a-fA-F]+)", out).group(1)
    return bytes.fromhex(name), bytes.fromhex(policy), int(attributes, 16)


@pytest.fixture
def customer():
    return ec.generate_private_key(ec.SECP256R1())


def provisioned(swtpm, key, r: int) -> list[seal.SignedPolicy]:
    """A node whose /var was just created by an image of index r: floor defined, written to r."""
    approvals = image_approvals(key, boot_image(swtpm.tcti, b"image r=%d" % r), r)
    rollback.provision(public_der(key), swtpm.tcti)
    assert rollback.advance(r, public_der(key), approvals, swtpm.tcti) == (None, r)
    return approvals


def test_index_has_the_same_name_tpm2_tools_reads(swtpm, customer):
    der = public_der(customer)
    assert rollback.provision(der, swtpm.tcti).endswith("defined")
    name, policy, attributes = nvreadpublic(swtpm)
    assert policy == rollback.write_policy(der)
    assert attributes == rp.ATTRIBUTES
    assert name == rollback.expected_name(der, written=False)
    approvals = image_approvals(customer, boot_image(swtpm.tcti, b"image 1"), 3)
    rollback.advance(3, der, approvals, swtpm.tcti)
    name, _, attributes = nvreadpublic(swtpm)
    assert attributes == rp.ATTRIBUTES | rp.TPMA_NV_WRITTEN
    assert name == rollback.expected_name(der) == rollback.rollback_check(der, 3).nv_name
    # tpm2-tools reads the thermometer value the policies compare
    read = subprocess.run([tools.which("tpm2_nvread"), f"0x{rp.NV_INDEX:x}", "-C", f"0x{rp.NV_INDEX:x}", "-s", "8"],
                          env={**swtpm.env, "PATH": "/usr/bin:/bin"}, capture_output=True, check=True).stdout
    assert read == rp.operand(3) == bytes(7) + b"\x07"
    assert rollback.read_floor(swtpm.tcti).rollback_index == 3
    # provisioning again (a reinstall) keeps the index and its floor
    assert rollback.provision(der, swtpm.tcti).endswith("kept")
    assert rollback.read_floor(swtpm.tcti).rollback_index == 3


def test_policy_digests_equal_tpm2_tools_trial_sessions(swtpm, customer, tmp_path):
    der = public_der(customer)
    approvals = provisioned(swtpm, customer, 2)
    (tmp_path / "key.pem").write_bytes(customer.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    tpm2(swtpm, "tpm2_loadexternal", "-C", "o", "-G", "ecc", "-a", "sign|userwithauth", "-u", str(tmp_path / "key.pem"),
         "-c", str(tmp_path / "key.ctx"), "-n", str(tmp_path / "key.name"))
    tpm2(swtpm, "tpm2_flushcontext", "-t")
    # the index's authPolicy: PolicyAuthorize(key, ADVANCE_REF) + PolicyCommandCode(NV_SetBits)
    (tmp_path / "ref").write_bytes(rp.ADVANCE_REF)
    tpm2(swtpm, "tpm2_startauthsession", "-S", str(tmp_path / "s.ctx"))
    tpm2(swtpm, "tpm2_policyauthorize", "-S", str(tmp_path / "s.ctx"), "-n", str(tmp_path / "key.name"),
         "-q", str(tmp_path / "ref"))
    tpm2(swtpm, "tpm2_policycommandcode", "-S", str(tmp_path / "s.ctx"), "-L", str(tmp_path / "write.pol"),
         "TPM2_CC_NV_SetBits")
    tpm2(swtpm, "tpm2_flushcontext", str(tmp_path / "s.ctx"))
    assert (tmp_path / "write.pol").read_bytes() == rollback.write_policy(der)
    # the unseal approval: PolicyPCR(11) + PolicyNV(floor <= thermometer(r), unsigned le)
    unseal = next(a for a in approvals if a.rollback is not None)
    (tmp_path / "pcr11").write_bytes(unseal.values[11])
    tpm2(swtpm, "tpm2_startauthsession", "-S", str(tmp_path / "t.ctx"))
    tpm2(swtpm, "tpm2_policypcr", "-S", str(tmp_path / "t.ctx"), "-l", "sha256:11", "-f", str(tmp_path / "pcr11"))
    tpm2(swtpm, "tpm2_policynv", "-S", str(tmp_path / "t.ctx"), "-i", "-", f"0x{rp.NV_INDEX:x}", "ule",
         "-L", str(tmp_path / "unseal.pol"), input=rp.operand(2))
    tpm2(swtpm, "tpm2_flushcontext", str(tmp_path / "t.ctx"))
    assert (tmp_path / "unseal.pol").read_bytes() == unseal.approved


def test_image_unseals_while_floor_at_most_its_index_and_is_named_when_above(swtpm, customer):
    der = public_der(customer)
    provisioned(swtpm, customer, 1)
    sealed = seal.seal(SECRET, [11], swtpm.tcti, authorize_key=der, policy_ref=rp.UNSEAL_REF)
    # image 1.0.1, rollback index 2, floor 1: opens; advancing to 2 keeps it opening
    v2 = boot_image(swtpm.tcti, b"1.0.1")
    image2 = image_approvals(customer, v2, 2)
    assert seal.unseal(sealed, swtpm.tcti, signed=image2) == SECRET
    assert rollback.advance(2, der, image2, swtpm.tcti) == (1, 2)
    assert seal.unseal(sealed, swtpm.tcti, signed=image2) == SECRET
    # a customer-signed 1.0.0 (rollback index 1) now boots with the floor at 2: refused, counter named
    image1 = image_approvals(customer, boot_image(swtpm.tcti, b"1.0.0"), 1)
    with pytest.raises(seal.RollbackLocked) as refused:
        seal.unseal(sealed, swtpm.tcti, signed=image1)
    assert (refused.value.floor, refused.value.image_index) == (2, 1)
    assert "rollback floor (TPM NV index 0x01800b5e) is 2, above this image's rollback index 1" in str(refused.value)
    # its advance approval holds (PCR 11 is its leave-initrd) but obelisk refuses to lower the floor, and
    # SetBits could not lower it anyway
    with pytest.raises(tpm.TPMError, match="refusing to lower the rollback floor from 2 to 1"):
        rollback.advance(1, der, image1, swtpm.tcti)
    assert rollback.read_floor(swtpm.tcti).rollback_index == 2


def test_approvals_without_the_floor_do_not_open_a_protected_volume(swtpm, customer):
    """An image built before rollback protection (PolicyPCR only, empty policyRef) and the advance
    approval (PolicyPCR only, ADVANCE_REF) both hold PCR 11, and neither unseals."""
    from obelisk.signer.keys import sign_tpm_policy

    der = public_der(customer)
    provisioned(swtpm, customer, 0)
    sealed = seal.seal(SECRET, [11], swtpm.tcti, authorize_key=der, policy_ref=rp.UNSEAL_REF)
    now = tpm.pcr_values(swtpm.tcti, "sha256", [11])
    legacy = seal.SignedPolicy(pcrs=(11,), values=now,
                               signature=sign_tpm_policy(SoftwareKey(customer), seal.policy_pcr_digest((11,), now)))
    advance_only = [a for a in image_approvals(customer, now[11], 5) if a.rollback is None]
    for approvals in ([legacy], advance_only):
        with pytest.raises(tpm.TPMError, match="none of the image's signed policies checks the rollback"):
            seal.unseal(sealed, swtpm.tcti, signed=approvals)


def test_another_key_cannot_raise_the_floor(swtpm, customer):
    der = public_der(customer)
    provisioned(swtpm, customer, 1)
    other = ec.generate_private_key(ec.SECP256R1())
    now = tpm.pcr_values(swtpm.tcti, "sha256", [11])[11]
    forged = image_approvals(other, now, 7)
    with pytest.raises(tpm.TPMError, match="refused to raise the rollback floor to 7"):
        rollback.advance(7, der, forged, swtpm.tcti)
    # nor with the right key once PCR 11 has left that image's leave-initrd (sysinit extended)
    mine = image_approvals(customer, now, 7)
    tpm.extend_pcr(swtpm.tcti, 11, b"sysinit")
    with pytest.raises(tpm.TPMError, match="refused to raise"):
        rollback.advance(7, der, mine, swtpm.tcti)
    assert rollback.read_floor(swtpm.tcti).rollback_index == 1


def test_recreating_the_index_does_not_let_an_old_image_unseal(swtpm, customer):
    """Root (owner authorisation) may delete the index; whatever it defines instead, an image below
    the floor still cannot unseal: another authPolicy changes the Name; the same one leaves it unwritten."""
    from tpm2_pytss import ESYS_TR, TPM2B_NV_PUBLIC, TPMS_NV_PUBLIC

    der = public_der(customer)
    provisioned(swtpm, customer, 3)
    sealed = seal.seal(SECRET, [11], swtpm.tcti, authorize_key=der, policy_ref=rp.UNSEAL_REF)
    old = image_approvals(customer, boot_image(swtpm.tcti, b"1.0.0"), 1)

    def recreate(auth_policy: bytes, attributes: int, value: int | None) -> None:
        with tpm.open_tpm(swtpm.tcti) as esapi:
            esapi.nv_undefine_space(esapi.tr_from_tpmpublic(rp.NV_INDEX), ESYS_TR.OWNER)
            nv = esapi.nv_define_space(None, TPM2B_NV_PUBLIC(nvPublic=TPMS_NV_PUBLIC(
                nvIndex=rp.NV_INDEX, nameAlg=rp.TPM_ALG_SHA256, attributes=attributes, authPolicy=auth_policy,
                dataSize=8)), ESYS_TR.OWNER)
            if value is not None:
                esapi.nv_set_bits(nv, value, auth_handle=nv, session1=ESYS_TR.PASSWORD)

    # an index anyone can write (authValue), set to 0
    open_attributes = (rp.ATTRIBUTES & ~rp.TPMA_NV_POLICYWRITE) | 0x4  # TPMA_NV_AUTHWRITE
    recreate(b"", open_attributes, 0)
    with pytest.raises(seal.RollbackLocked, match="recreated with another Name"):
        seal.unseal(sealed, swtpm.tcti, signed=old)
    # the same definition, never written: PolicyNV fails on an unwritten index, and only a
    # customer-signed image at leave-initrd could write it (raising, as its code does)
    recreate(rollback.write_policy(der), rp.ATTRIBUTES, None)
    with pytest.raises(seal.RollbackLocked, match="was never written"):
        seal.unseal(sealed, swtpm.tcti, signed=old)
    # deleted: named too
    with tpm.open_tpm(swtpm.tcti) as esapi:
        esapi.nv_undefine_space(esapi.tr_from_tpmpublic(rp.NV_INDEX), ESYS_TR.OWNER)
    with pytest.raises(seal.RollbackLocked, match="missing"):
        seal.unseal(sealed, swtpm.tcti, signed=old)


def test_floor_encoding():
    assert [rp.floor_value(r) for r in (0, 1, 3, 64)] == [0, 1, 7, (1 << 64) - 1]
    assert all(rp.rollback_index_of(rp.floor_value(r)) == r for r in range(65))
    with pytest.raises(ValueError, match="not a run of low bits"):
        rp.rollback_index_of(0b101)
    with pytest.raises(ValueError):
        rp.floor_value(65)
    assert hashlib.sha256(rp.nv_public(b"")).digest() == rp.nv_name(b"")[2:]


def test_a_pcr_that_differs_is_still_named_when_the_floor_allows_the_image(swtpm, customer):
    """Refused for PCR 11, not for the floor: the error names PCR 11, as without rollback protection
    (the approvals read from the .pcrsig carry digests only)."""
    from obelisk.disk import pcrsig

    der = public_der(customer)
    provisioned(swtpm, customer, 1)
    sealed = seal.seal(SECRET, [11], swtpm.tcti, authorize_key=der, policy_ref=rp.UNSEAL_REF)
    approvals = image_approvals(customer, boot_image(swtpm.tcti, b"1.0.1"), 2)
    from_file = list(pcrsig.parse(pcrsig.serialize(approvals, der), "sig.json", der))
    assert seal.unseal(sealed, swtpm.tcti, signed=from_file) == SECRET
    tpm.extend_pcr(swtpm.tcti, 11, b"sysinit")
    with pytest.raises(seal.PolicyMismatch, match="PCR 11 differs"):
        seal.unseal(sealed, swtpm.tcti, signed=from_file)
