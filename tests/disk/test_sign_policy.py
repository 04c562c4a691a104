"""`disk sign-policy` takes its key through signer.keys: a PEM file or a PKCS#11 token.

No TPM is needed: every PCR value is given with --pcr-value. The signature is checked by
tpm.seal.check_policy_signature, the software twin of the TPM's check at unlock.
"""

from __future__ import annotations

import hashlib

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, utils

from obelisk.core import tools
from obelisk.disk import policy as policymod
from obelisk.signer.keys import SoftwareKey, sign_tpm_policy
from obelisk.tpm import seal
from tests.signer.test_pkcs11 import import_key, softhsm, uri  # noqa: F401 - softhsm is a fixture

VALUES = {7: hashlib.sha256(b"firmware").digest(), 11: hashlib.sha256(b"obelisk boot").digest()}
PCR_ARGS = ["--pcrs", "7,11", *[a for p, v in VALUES.items() for a in ("--pcr-value", f"{p}={v.hex()}")]]


def _write_pem(path, key, passphrase: bytes | None = None):
    enc = serialization.BestAvailableEncryption(passphrase) if passphrase else serialization.NoEncryption()
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, enc))
    path.chmod(0o600)
    return path


def _public_der(key) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def _policy(path) -> seal.SignedPolicy:
    return policymod.parse(path.read_bytes(), str(path))


def _old_sign_policy(private_key, approved: bytes) -> bytes:
    """What tpm.seal.sign_policy did before it took a SigningKey (RSA: deterministic, so comparable)."""
    digest = hashlib.sha256(approved).digest()
    return private_key.sign(digest, padding.PKCS1v15(), utils.Prehashed(hashes.SHA256()))


def test_pem_rsa_signature_is_byte_identical_to_before(obelisk_cli, tmp_path):
    key = rsa.generate_private_key(65537, 2048)
    res = obelisk_cli("disk", "sign-policy", "--key", str(_write_pem(tmp_path / "k.pem", key)), *PCR_ARGS,
                      "-o", str(tmp_path / "p.json"))
    assert res.returncode == 0, res.stderr
    policy = _policy(tmp_path / "p.json")
    assert policy.values == VALUES
    approved = seal.policy_pcr_digest((7, 11), VALUES)
    assert policy.signature == _old_sign_policy(key, approved)
    assert policy.signature == sign_tpm_policy(SoftwareKey(key), approved)
    assert seal.check_policy_signature(_public_der(key), policy)


def test_pem_ec_key_with_passphrase_from_the_environment(obelisk_cli, tmp_path):
    key = ec.generate_private_key(ec.SECP256R1())
    pem = _write_pem(tmp_path / "k.pem", key, b"policy-pass")
    res = obelisk_cli("disk", "sign-policy", "--key", str(pem), *PCR_ARGS, "-o", str(tmp_path / "p.json"))
    assert res.returncode == 2 and "encrypted" in res.stderr
    res = obelisk_cli("disk", "sign-policy", "--key", str(pem), "--passphrase-env", "POLICY_PASS", *PCR_ARGS,
                      "-o", str(tmp_path / "p.json"), env={"POLICY_PASS": "policy-pass"})
    assert res.returncode == 0, res.stderr
    assert seal.check_policy_signature(_public_der(key), _policy(tmp_path / "p.json"))
    assert not seal.check_policy_signature(_public_der(ec.generate_private_key(ec.SECP256R1())),
                                           _policy(tmp_path / "p.json"))


@pytest.mark.hsm
def test_pkcs11_keys_sign_policies(obelisk_cli, softhsm, tmp_path):  # noqa: F811 - the fixture
    rsa_key = rsa.generate_private_key(65537, 2048)
    import_key(_write_pem(tmp_path / "rsa.pem", rsa_key), "policy-rsa", "11", tmp_path)
    res = obelisk_cli("disk", "sign-policy", "--key", uri("policy-rsa", softhsm), *PCR_ARGS,
                      "-o", str(tmp_path / "hsm.json"))
    assert res.returncode == 0, res.stderr
    hsm = _policy(tmp_path / "hsm.json")
    assert hsm.signature == _old_sign_policy(rsa_key, seal.policy_pcr_digest((7, 11), VALUES))  # same bytes as PEM
    assert seal.check_policy_signature(_public_der(rsa_key), hsm)

    tools.run("pkcs11-tool", ["--module", "/usr/lib/softhsm/libsofthsm2.so", "--login", "--pin", "4321",
                              "--keypairgen", "--key-type", "EC:prime256v1", "--id", "12", "--label", "policy-ec"])
    pub = tmp_path / "ec.pub.der"
    tools.run("pkcs11-tool", ["--module", "/usr/lib/softhsm/libsofthsm2.so", "--read-object", "--type", "pubkey",
                              "--id", "12", "-o", str(pub)])
    res = obelisk_cli("disk", "sign-policy", "--key", uri("policy-ec", softhsm), *PCR_ARGS,
                      "-o", str(tmp_path / "hsm-ec.json"))
    assert res.returncode == 0, res.stderr
    assert seal.check_policy_signature(pub.read_bytes(), _policy(tmp_path / "hsm-ec.json"))
