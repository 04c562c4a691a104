"""Disk encryption bound to the TPM: swtpm + cryptsetup on file-backed LUKS2 volumes."""

from __future__ import annotations

import json
import os
import re
import subprocess

import pytest

from obelisk.core import tools
from obelisk.disk import policy as policymod
from obelisk.disk import volume as disk
from obelisk.disk.token import Token
from obelisk.tpm import device as tpm
from obelisk.tpm import seal

pytestmark = pytest.mark.swtpm


def luks_volume(path, passphrase: bytes = b"initial passphrase") -> None:
    with open(path, "wb") as handle:
        handle.truncate(32 * 1024 * 1024)
    subprocess.run([tools.which("cryptsetup"), "luksFormat", "--type", "luks2", "--batch-mode", "--pbkdf", "pbkdf2",
                    "--pbkdf-force-iterations", "1000", "--key-file", "-", str(path)], input=passphrase, check=True)


def opens(path, key: bytes) -> bool:
    """cryptsetup itself, independently of obelisk, says whether `key` opens a keyslot."""
    return subprocess.run([tools.which("cryptsetup"), "open", "--test-passphrase", "--key-file", "-", str(path)],
                          input=key, capture_output=True).returncode == 0


def volume_state(path, passphrase: bytes = b"initial passphrase") -> tuple[str, str]:
    """The volume key (via cryptsetup) and a hash of the encrypted data area: both unchanged means no data lost."""
    import hashlib

    dump = subprocess.run([tools.which("cryptsetup"), "luksDump", "--dump-volume-key", "--batch-mode",
                           "--key-file", "-", str(path)], input=passphrase, capture_output=True, check=True).stdout
    key = re.search(rb"MK dump:\s*((?:[0-9a-f]{2}\s*)+)", dump).group(1)
    with open(path, "rb") as handle:
        handle.seek(16 * 1024 * 1024)
        data = hashlib.sha256(handle.read()).hexdigest()
    return hashlib.sha256(re.sub(rb"\s", b"", key)).hexdigest(), data


def test_full_sequence_from_the_issue(swtpm, tmp_path, obelisk_cli):
    vol = tmp_path / "volume.img"
    luks_volume(vol)
    (tmp_path / "pass").write_bytes(b"initial passphrase")
    state_before = volume_state(vol)
    t = ["--tcti", swtpm.tcti]

    # enroll: TPM key sealed to PCRs 7,11 plus a recovery key printed once
    res = obelisk_cli("disk", "enroll", "--device", str(vol), "--pcrs", "7,11", "--key-file", str(tmp_path / "pass"),
                      *t)
    assert res.returncode == 0, res.stderr
    recovery = re.search(r"^\s+([0-9a-f]{8}(?:-[0-9a-f]{8}){7})$", res.stdout, re.M).group(1)
    assert recovery not in res.stderr
    meta = disk.metadata(str(vol))
    token = next(t for t in meta["tokens"].values() if t["type"] == "obelisk-tpm2")
    assert token["tpm2-pcrs"] == [7, 11] and token["keyslots"] == ["1"]
    assert recovery not in json.dumps(meta)  # the recovery key is stored nowhere
    assert opens(vol, recovery.encode())

    # unlock (test mode: no device-mapper in this sandbox)
    res = obelisk_cli("disk", "unlock", "--device", str(vol), "--test", *t)
    assert res.returncode == 0, res.stderr
    assert "keyslot 1" in res.stdout

    # extend a sealed PCR (with tpm2-tools, as firmware would): the TPM refuses and obelisk names the PCR
    env = {**os.environ, **swtpm.env}
    subprocess.run([tools.which("tpm2_pcrextend"), "11:sha256=" + "ab" * 32], env=env, check=True)
    res = obelisk_cli("disk", "unlock", "--device", str(vol), "--test", *t)
    assert res.returncode == 1
    assert "PCR 11 differs from the sealed policy" in res.stderr and "PCR 7" not in res.stderr
    assert res.stderr.count("\n") == 1

    # the recovery key still opens the volume
    assert opens(vol, recovery.encode())

    # reseal with the recovery key; unlock works again; no data touched
    (tmp_path / "recovery").write_text(recovery + "\n")
    res = obelisk_cli("disk", "reseal", "--device", str(vol), "--recovery-key-file", str(tmp_path / "recovery"), *t)
    assert res.returncode == 0, res.stderr
    res = obelisk_cli("disk", "unlock", "--device", str(vol), "--test", "--json", *t)
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["opened"] is True
    assert volume_state(vol) == state_before  # same volume key, same ciphertext: the data is intact
    assert opens(vol, b"initial passphrase") and opens(vol, recovery.encode())
    meta = disk.metadata(str(vol))
    assert len([t for t in meta["tokens"].values() if t["type"] == "obelisk-tpm2"]) == 1
    assert sorted(meta["keyslots"]) == ["0", "2", "3"]  # old TPM slot 1 removed


def test_reseal_without_recovery_key_when_tpm_refuses_says_so(swtpm, tmp_path):
    vol = tmp_path / "v.img"
    luks_volume(vol)
    disk.enroll(str(vol), [7], swtpm.tcti, existing_key=b"initial passphrase", recovery=False)
    tpm.extend_pcr(swtpm.tcti, 7, b"update")
    with pytest.raises(seal.PolicyMismatch) as info:
        disk.reseal(str(vol), swtpm.tcti)
    assert set(info.value.differing) == {7}
    # a wrong recovery key is refused and nothing changes
    before = disk.metadata(str(vol))
    with pytest.raises(disk.UnlockError):
        disk.reseal(str(vol), swtpm.tcti, recovery_key=b"not-the-key")
    assert disk.metadata(str(vol)) == before


def test_enroll_refuses_bad_inputs(swtpm, tmp_path, obelisk_cli):
    plain = tmp_path / "plain.img"
    plain.write_bytes(b"\0" * 4096)
    res = obelisk_cli("disk", "enroll", "--device", str(plain), "--pcrs", "7", "--tcti", swtpm.tcti)
    assert res.returncode == 2 and "not a LUKS2 volume" in res.stderr
    vol = tmp_path / "v.img"
    luks_volume(vol)
    (tmp_path / "wrong").write_bytes(b"wrong")
    res = obelisk_cli("disk", "enroll", "--device", str(vol), "--pcrs", "7", "--key-file", str(tmp_path / "wrong"),
                      "--tcti", swtpm.tcti)
    assert res.returncode == 2 and "does not open any keyslot" in res.stderr
    res = obelisk_cli("disk", "enroll", "--device", str(vol), "--pcrs", "7,99", "--tcti", swtpm.tcti)
    assert res.returncode == 2 and "PCRs are 0..23" in res.stderr


def test_format_new_volume_and_seal_to_predicted_values(swtpm, tmp_path):
    vol = tmp_path / "new.img"
    with open(vol, "wb") as handle:
        handle.truncate(32 * 1024 * 1024)
    current = tpm.pcr_values(swtpm.tcti, "sha256", [7])[7]
    import hashlib
    predicted = hashlib.sha256(current + hashlib.sha256(b"next firmware").digest()).digest()
    result = disk.enroll(str(vol), [7], swtpm.tcti, format_volume=True, values={7: predicted})
    assert result.formatted and result.tpm_keyslot == 0
    with pytest.raises(seal.PolicyMismatch):  # not yet: PCR 7 still has the old value
        disk.unlock(str(vol), swtpm.tcti, test=True)
    tpm.extend_pcr(swtpm.tcti, 7, b"next firmware")  # the update happens; the prediction now holds
    assert disk.unlock(str(vol), swtpm.tcti, test=True).keyslot == 0
    # reseal authenticated by the TPM itself (no recovery key), adding PCR 11
    new = disk.reseal(str(vol), swtpm.tcti, pcrs=[7, 11])
    assert new.sealed.pcrs == (7, 11) and new.keyslot != 0
    assert disk.unlock(str(vol), swtpm.tcti, test=True).keyslot == new.keyslot
    assert sorted(disk.metadata(str(vol))["keyslots"]) == sorted([str(new.keyslot), str(result.recovery_keyslot)])


def test_signed_policy_survives_pcr_change_without_reenrolling(swtpm, tmp_path, obelisk_cli):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    from obelisk.signer.keys import SoftwareKey, sign_tpm_policy

    key = ec.generate_private_key(ec.SECP256R1())
    (tmp_path / "customer.key").write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                              serialization.PrivateFormat.PKCS8,
                                                              serialization.NoEncryption()))
    (tmp_path / "customer.pub").write_bytes(key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    vol = tmp_path / "v.img"
    luks_volume(vol)
    (tmp_path / "pass").write_bytes(b"initial passphrase")
    t = ["--tcti", swtpm.tcti]
    res = obelisk_cli("disk", "enroll", "--device", str(vol), "--pcrs", "7,11", "--key-file", str(tmp_path / "pass"),
                      "--policy-key", str(tmp_path / "customer.pub"), *t)
    assert res.returncode == 0, res.stderr
    # nothing signed yet: the TPM releases nothing
    res = obelisk_cli("disk", "unlock", "--device", str(vol), "--test", *t)
    assert res.returncode == 1
    # the customer signs today's values; stored in the token
    res = obelisk_cli("disk", "sign-policy", "--key", str(tmp_path / "customer.key"), "--pcrs", "7,11", *t,
                      "-o", str(tmp_path / "p1.json"))
    assert res.returncode == 0, res.stderr
    assert obelisk_cli("disk", "add-policy", "--device", str(vol), str(tmp_path / "p1.json")).returncode == 0
    assert obelisk_cli("disk", "unlock", "--device", str(vol), "--test", *t).returncode == 0
    # a firmware update changes PCR 7: refused, PCR 7 named
    import hashlib
    old7 = tpm.pcr_values(swtpm.tcti, "sha256", [7])[7]
    tpm.extend_pcr(swtpm.tcti, 7, b"firmware 2.0")
    res = obelisk_cli("disk", "unlock", "--device", str(vol), "--test", *t)
    assert res.returncode == 1 and "PCR 7 differs" in res.stderr
    # the customer signs the predicted new value offline; no re-enrolment, the sealed blob is unchanged
    new7 = hashlib.sha256(old7 + hashlib.sha256(b"firmware 2.0").digest()).digest()
    eleven = tpm.pcr_values(swtpm.tcti, "sha256", [11])[11]
    res = obelisk_cli("disk", "sign-policy", "--key", str(tmp_path / "customer.key"), "--pcrs", "7,11",
                      "--pcr-value", f"7={new7.hex()}", "--pcr-value", f"11={eleven.hex()}",
                      "-o", str(tmp_path / "p2.json"))
    assert res.returncode == 0, res.stderr
    blob_before = disk.tokens(str(vol))[0].sealed
    res = obelisk_cli("disk", "unlock", "--device", str(vol), "--test", "--signed-policy", str(tmp_path / "p2.json"),
                      *t)
    assert res.returncode == 0, res.stderr
    assert disk.tokens(str(vol))[0].sealed == blob_before
    # a policy signed by someone else does not help
    other = ec.generate_private_key(ec.SECP256R1())
    values = tpm.pcr_values(swtpm.tcti, "sha256", [7, 11])
    forged = seal.SignedPolicy(pcrs=(7, 11), values=values,
                               signature=sign_tpm_policy(SoftwareKey(other), seal.policy_pcr_digest((7, 11), values)))
    (tmp_path / "forged.json").write_text(json.dumps(policymod.to_json(forged)))
    res = obelisk_cli("disk", "unlock", "--device", str(vol), "--test",
                      "--signed-policy", str(tmp_path / "forged.json"), *t)
    assert res.returncode == 1 and "PCR 7 differs" in res.stderr  # the stored (stale) policy is still tried
    forged_only = Token(keyslot=0, sealed=blob_before)
    with pytest.raises(tpm.TPMError, match="none of the 1 signed PCR policies"):
        seal.unseal(forged_only.sealed, swtpm.tcti, signed=[forged])
    res = obelisk_cli("disk", "add-policy", "--device", str(vol), str(tmp_path / "forged.json"))
    assert res.returncode == 2 and "does not verify under the key" in res.stderr


def test_policy_digest_computed_in_software_matches_the_tpm(swtpm):
    """A trial session in the TPM gives the same PolicyPCR digest obelisk computes."""
    from tpm2_pytss import ESYS_TR, TPM2_ALG, TPM2_SE, TPML_PCR_SELECTION, TPMT_SYM_DEF

    tpm.extend_pcr(swtpm.tcti, 11, b"x")
    values = tpm.pcr_values(swtpm.tcti, "sha256", [0, 7, 11])
    with tpm.open_tpm(swtpm.tcti) as esapi:
        session = esapi.start_auth_session(ESYS_TR.NONE, ESYS_TR.NONE, TPM2_SE.TRIAL,
                                           TPMT_SYM_DEF(algorithm=TPM2_ALG.NULL), TPM2_ALG.SHA256)
        esapi.policy_pcr(session, b"", TPML_PCR_SELECTION.parse("sha256:0,7,11"))
        digest = bytes(esapi.policy_get_digest(session))
        esapi.flush_context(session)
    assert digest == seal.policy_pcr_digest([0, 7, 11], values)


@pytest.mark.swtpm
def test_sealed_key_and_ak_are_exempt_from_dictionary_attack_lockout(swtpm):
    """Empty authValues: DA protection guards nothing, but power cuts would count against it and lock
    /var and quotes out (seen under QEMU); the sealed object and the AK carry noDA."""
    from tpm2_pytss import TPM2B_PUBLIC, TPMA_OBJECT

    from obelisk.tpm import device as tpm
    from obelisk.tpm import seal

    sealed = seal.seal(b"k" * 32, [11], swtpm.tcti)
    public, _ = TPM2B_PUBLIC.unmarshal(sealed.public)
    assert public.publicArea.objectAttributes & TPMA_OBJECT.NODA
    assert tpm.ak_template().publicArea.objectAttributes & TPMA_OBJECT.NODA


def test_enroll_old_and_new_format_volume_spellings(swtpm, tmp_path, obelisk_cli):
    t = ["--tcti", swtpm.tcti]
    for name, spelling, warning in (
            ("old.img", ["--format"], "obelisk: warning: disk enroll --format is deprecated; use --format-volume\n"),
            ("new.img", ["--format-volume", "--format", "json"], "")):
        vol = tmp_path / name
        with open(vol, "wb") as handle:
            handle.truncate(32 * 1024 * 1024)
        res = obelisk_cli("disk", "enroll", "--device", str(vol), "--pcrs", "7", *spelling, *t)
        assert res.returncode == 0, res.stderr
        assert res.stderr == warning
        assert disk.is_luks(str(vol))
    assert json.loads(res.stdout)["formatted"] is True
    res = obelisk_cli("disk", "unlock", "--device", str(vol), "--test", "--format", "json", *t)
    assert res.returncode == 0 and res.stderr == "" and json.loads(res.stdout)["opened"] is True


def test_signed_pcr11_policy_and_pcr7_bound_by_value(swtpm, tmp_path):
    """Issue 13's /var: PolicyAuthorize(customer key) for PCR 11, then PolicyPCR(7) by value. A signed
    PCR 11 policy opens it while PCR 7 holds the sealed value; a changed PCR 7 (Secure Boot off, other
    keys) keeps it shut whatever the customer signed, and the refusal names PCR 7."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    from obelisk.disk import token as tokenmod
    from obelisk.signer.keys import SoftwareKey, sign_tpm_policy

    key = ec.generate_private_key(ec.SECP256R1())
    der = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    pcr7 = tpm.pcr_values(swtpm.tcti, "sha256", [7])[7]
    vol = tmp_path / "v.img"
    with open(vol, "wb") as handle:
        handle.truncate(32 * 1024 * 1024)
    disk.enroll(str(vol), [11], swtpm.tcti, format_volume=True, policy_key=der, bound={7: pcr7}, recovery=False)
    token = disk.tokens(str(vol))[0]
    assert token.sealed.bound == {7: pcr7}
    assert tokenmod.parse(tokenmod.serialize(token), token.token_id, "t") == token
    assert token.sealed.policy == seal.sealing_policy([11], {}, der, {7: pcr7})
    eleven = tpm.pcr_values(swtpm.tcti, "sha256", [11])
    signed = seal.SignedPolicy(pcrs=(11,), values=eleven,
                               signature=sign_tpm_policy(SoftwareKey(key), seal.policy_pcr_digest((11,), eleven)))
    assert seal.unseal(token.sealed, swtpm.tcti, signed=[signed])
    tpm.extend_pcr(swtpm.tcti, 7, b"secure boot disabled")
    with pytest.raises(seal.PolicyMismatch, match="PCR 7 differs") as caught:
        seal.unseal(token.sealed, swtpm.tcti, signed=[signed])
    assert set(caught.value.differing) == {7}


def test_bound_pcr_policy_digest_matches_a_tpm_trial_session(swtpm):
    """PolicyPCR after PolicyAuthorize: the software digest equals the TPM's own (trial session)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from tpm2_pytss import ESYS_TR, TPM2_ALG, TPM2_SE, TPM2B_DIGEST, TPML_PCR_SELECTION, TPMT_SYM_DEF, TPMT_TK_VERIFIED

    der = ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    values = tpm.pcr_values(swtpm.tcti, "sha256", [7])
    with tpm.open_tpm(swtpm.tcti) as esapi:
        session = esapi.start_auth_session(ESYS_TR.NONE, ESYS_TR.NONE, TPM2_SE.TRIAL,
                                           TPMT_SYM_DEF(algorithm=TPM2_ALG.NULL), TPM2_ALG.SHA256)
        ticket = TPMT_TK_VERIFIED(tag=0x8022, hierarchy=0x40000007)  # a trial session takes a null ticket
        esapi.policy_authorize(session, approved_policy=TPM2B_DIGEST(b""), key_sign=seal.key_name(der),
                               check_ticket=ticket, policy_ref=b"")
        esapi.policy_pcr(session, b"", TPML_PCR_SELECTION.parse("sha256:7"))
        digest = bytes(esapi.policy_get_digest(session))
        esapi.flush_context(session)
    assert digest == seal.sealing_policy([11], {}, der, values)
