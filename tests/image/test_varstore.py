"""The OVMF variable store: virt-fw-vars reads back the customer's keys and the Secure Boot state; rebuilds are
byte-identical; the contents fed to the PCR 7 prediction are the store's."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import pytest

from obelisk.core.errors import InputError, ObeliskError
from obelisk.image import varstore
from obelisk.signer import efi_signature_list as esl
from obelisk.signer import keygen, secureboot
from obelisk.tpm import uefi

VIRT_FW_VARS = Path(__file__).resolve().parents[2] / ".venv" / "bin" / "virt-fw-vars"


@pytest.fixture(scope="module")
def customer(tmp_path_factory) -> tuple[keygen.GeneratedKeys, secureboot.Enrollment]:
    made = keygen.generate(tmp_path_factory.mktemp("keys"), "ecdsa-p256", organization="varstore test")
    sb = made.secure_boot
    assert sb is not None
    return made, secureboot.load_enrollment(made.ca_cert, sb.pk_cert, sb.kek_cert, sb.db_cert)


def virt_fw_vars(*args: str | Path) -> str:
    proc = subprocess.run([str(VIRT_FW_VARS), *map(str, args)], capture_output=True, text=True, check=True)
    return proc.stdout + proc.stderr


def test_enrolled_keys_and_enforcing_state_as_virt_fw_vars_reads_them(customer, tmp_path):
    made, enrolled = customer
    out = tmp_path / "OVMF_VARS.fd"
    seen = varstore.write_varstore(out, enrolled)
    assert out.stat().st_size == varstore.OVMF_VARS_TEMPLATE.stat().st_size
    compact = virt_fw_vars("-i", out, "--print")
    lines = {line.split(":", 1)[0].strip(): line.split(":", 1)[1].strip() for line in compact.splitlines()
             if ":" in line and not line.startswith(("INFO", "WARNING"))}
    assert lines["SecureBootEnable"] == "bool: ON"
    assert lines["CustomMode"] == "bool: off"
    assert "dbx" not in lines
    verbose = virt_fw_vars("-i", out, "--print", "--verbose")
    for role, what in (("PK", "platform key (PK)"), ("KEK", "key exchange key (KEK)"),
                       ("db", "signature database key (db)")):
        block = verbose.split(f"name={role} ", 1)[1].split("\n\n", 1)[0]
        assert "siglist type=guid:EfiCertX509 count=1" in block
        assert f"subject CN=varstore test Secure Boot {what}" in block
        assert "issuer CN=varstore test IMA CA" in block
    # the certificates themselves, extracted by virt-fw-vars, are the customer's (DER-identical)
    extract = tmp_path / "extract"
    extract.mkdir()
    subprocess.run([str(VIRT_FW_VARS), "-i", str(out), "--extract-certs"], cwd=extract, check=True,
                   capture_output=True)
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding
    extracted = {x509.load_pem_x509_certificate(p.read_bytes()).public_bytes(Encoding.DER)
                 for p in extract.glob("*.pem")}
    assert extracted == {enrolled.pk, enrolled.kek, enrolled.db}
    assert all(str(enrolled.owner) in p.name for p in extract.glob("*.pem"))
    # what the build hands to the PCR 7 prediction is what the store holds
    assert seen == varstore.SecureBootVariables(True, enrolled.variable("PK"), enrolled.variable("KEK"),
                                                enrolled.variable("db"), b"")


def test_secure_boot_off_keeps_the_keys_and_clears_secure_boot_enable(customer, tmp_path):
    _, enrolled = customer
    on, off = tmp_path / "on.fd", tmp_path / "off.fd"
    seen_on = varstore.write_varstore(on, enrolled)
    seen_off = varstore.write_varstore(off, enrolled, secure_boot=False)
    assert "SecureBootEnable    : bool: off" in virt_fw_vars("-i", off, "--print")
    assert (seen_off.pk, seen_off.kek, seen_off.db, seen_off.dbx) == (seen_on.pk, seen_on.kek, seen_on.db, seen_on.dbx)
    assert not seen_off.secure_boot
    p_on = uefi.pcr7_prediction(True, seen_on.pk, seen_on.kek, seen_on.db, seen_on.dbx, enrolled.db_authority)
    p_off = uefi.pcr7_prediction(False, seen_off.pk, seen_off.kek, seen_off.db, seen_off.dbx, None)
    assert [e.name for e in p_on.events if e not in p_off.events] == \
        ["SecureBoot", "db certificate that verified the UKI (authority)"]


def test_rebuild_is_byte_identical(customer, tmp_path):
    _, enrolled = customer
    first, second = tmp_path / "a.fd", tmp_path / "b.fd"
    varstore.write_varstore(first, enrolled)
    varstore.write_varstore(second, enrolled)
    assert hashlib.sha256(first.read_bytes()).digest() == hashlib.sha256(second.read_bytes()).digest()


def test_authenticated_variable_timestamps_are_the_certificates_not_before(customer, tmp_path):
    """The only time in the store comes from the certificates (virt-firmware's choice), never the clock."""
    _, enrolled = customer
    out = tmp_path / "vars.fd"
    varstore.write_varstore(out, enrolled)
    from virt.firmware.varstore.edk2 import Edk2VarStore
    variables = Edk2VarStore(str(out)).get_varlist()
    from cryptography import x509
    for role, der in (("PK", enrolled.pk), ("KEK", enrolled.kek), ("db", enrolled.db)):
        assert variables[role].time == x509.load_der_x509_certificate(der).not_valid_before_utc
    assert variables["SecureBootEnable"].time is None


def test_a_template_with_other_keys_gets_only_the_customers(customer, tmp_path):
    _, enrolled = customer
    ms = Path("/usr/share/OVMF/OVMF_VARS_4M.ms.fd")
    seen = varstore.write_varstore(tmp_path / "vars.fd", enrolled, template=ms)
    assert [len(esl.parse_database(v)) for v in (seen.pk, seen.kek, seen.db)] == [1, 1, 1]
    assert seen.dbx == b""
    assert "Microsoft" not in virt_fw_vars("-i", tmp_path / "vars.fd", "--print", "--verbose")


def test_missing_or_bad_template_is_one_line(customer, tmp_path):
    _, enrolled = customer
    with pytest.raises(ObeliskError, match=r"not found \(Debian package ovmf"):
        varstore.write_varstore(tmp_path / "x.fd", enrolled, template=tmp_path / "missing.fd")
    junk = tmp_path / "junk.fd"
    junk.write_bytes(b"\0" * 4096)
    with pytest.raises(InputError, match="not an edk2"):
        varstore.write_varstore(tmp_path / "x.fd", enrolled, template=junk)
    assert not (tmp_path / "x.fd").exists()
