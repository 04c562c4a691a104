"""tpm2-pcr-signature.json: obelisk's signed PCR 11 policy is byte-compatible with `systemd-measure sign`.

systemd-measure (systemd 252, Debian) is the reference: for the same UKI sections and boot phase it
signs the same PolicyPCR digest, and with RSA (PKCS#1 v1.5, deterministic) the same signature.
"""

from __future__ import annotations

import hashlib
import json
import subprocess

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from obelisk.core.errors import InputError
from obelisk.disk import pcrsig
from obelisk.image import measure
from obelisk.signer.keys import SoftwareKey, sign_tpm_policy
from obelisk.tpm import seal
from obelisk.tpm.eventlog import EV_IPL
from obelisk.tpm.prediction import ExpectedEvent

MEASURE = "/usr/lib/systemd/systemd-measure"
SECTIONS = {".linux": b"kernel" * 100, ".osrel": b"ID=obelisk\n", ".cmdline": b"console=ttyS0 ro",
            ".initrd": b"initrd" * 50}


def stub_events(sections: dict[str, bytes]) -> tuple[ExpectedEvent, ...]:
    """systemd-stub 252: each section's name (with its NUL), then its contents, as EV_IPL into PCR 11."""
    out = []
    for name, data in sections.items():
        out.append(ExpectedEvent(11, EV_IPL, hashlib.sha256(name.encode() + b"\0").digest(), f"name {name}"))
        out.append(ExpectedEvent(11, EV_IPL, hashlib.sha256(data).digest(), f"section {name}"))
    return tuple(out)


@pytest.mark.swtpm
def test_signed_policy_equals_systemd_measure_sign(swtpm, tmp_path):
    key = rsa.generate_private_key(65537, 2048)
    (tmp_path / "k.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                       serialization.NoEncryption()))
    (tmp_path / "p.pem").write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                                   serialization.PublicFormat.SubjectPublicKeyInfo))
    args = []
    for name, data in SECTIONS.items():
        (tmp_path / name[1:]).write_bytes(data)
        args.append(f"--{name[1:]}={tmp_path / name[1:]}")
    reference = subprocess.run([MEASURE, "sign", *args, "--bank=sha256", f"--phase={measure.UNSEAL_PHASE}",
                                f"--private-key={tmp_path / 'k.pem'}", f"--public-key={tmp_path / 'p.pem'}",
                                f"--tpm2-device={swtpm.tcti}"], capture_output=True, check=True).stdout
    der = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    unseal = measure.predict(stub_events(SECTIONS)).unseal
    approved = seal.policy_pcr_digest((11,), {11: unseal})
    ours = pcrsig.serialize([seal.SignedPolicy(pcrs=(11,), values={11: unseal},
                                               signature=sign_tpm_policy(SoftwareKey(key), approved))], der)
    assert json.loads(ours) == json.loads(reference)
    parsed = pcrsig.parse(reference, "reference", der)
    assert [p.approved for p in parsed] == [approved]
    assert seal.check_policy_signature(der, parsed[0])
    other = rsa.generate_private_key(65537, 2048).public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    assert pcrsig.parse(reference, "reference", other) == ()


@pytest.mark.parametrize("data", [b"[]", b'{"sha256": {}}', b'{"sha256": [{"pcrs": [24], "pol": "", "sig": ""}]}',
                                  b'{"sha256": [{"pcrs": [11], "pkfp": "", "pol": "zz", "sig": ""}]}',
                                  b'{"sha256": [{"pcrs": [11], "pkfp": "", "pol": "' + b"00" * 32 + b'", "sig": "%"}]}',
                                  b'{"sha256": [1]}', b"\xff"])
def test_malformed_files_are_one_line_errors(data):
    with pytest.raises(InputError) as caught:
        pcrsig.parse(data, "sig.json")
    assert "\n" not in str(caught.value) and "sig.json" in str(caught.value)
