"""Secure Boot keys from `keys generate`: openssl verifies their chains, the preflight accepts only the customer's."""

from __future__ import annotations

import datetime as _dt
import stat
import struct

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID

from obelisk.core import tools
from obelisk.core.errors import InputError, ParseError
from obelisk.signer import efi_signature_list as esl
from obelisk.signer import keygen, secureboot
from obelisk.signer.keys import load_certificate, load_signing_key


@pytest.fixture(scope="module")
def ec_keys(tmp_path_factory) -> keygen.GeneratedKeys:
    return keygen.generate(tmp_path_factory.mktemp("p384"), "ecdsa-p384")


@pytest.mark.parametrize("which", ["rsa_keys", "ec_keys"])
def test_secure_boot_keys_chain_to_the_customer_ca(which, request):
    made: keygen.GeneratedKeys = request.getfixturevalue(which)
    sb = made.secure_boot
    assert sb is not None
    for role in keygen.SECURE_BOOT_ROLES:
        key_path, cert_path = getattr(sb, f"{role}_key"), getattr(sb, f"{role}_cert")
        assert (key_path.name, cert_path.name) == (f"{role}.key", f"{role}.pem")
        assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
        proc = tools.run("openssl", ["verify", "-x509_strict", "-CAfile", made.ca_cert, cert_path], check=False)
        assert proc.returncode == 0 and b": OK" in proc.stdout, proc.stderr
        cert = load_certificate(cert_path)
        public = cert.public_key()
        assert isinstance(public, rsa.RSAPublicKey) and public.key_size == 2048  # even under an ECDSA CA
        key = load_signing_key(str(key_path))
        assert key.public_key.public_numbers() == public.public_numbers()
        secureboot.check_secure_boot_certificate(cert, load_certificate(made.ca_cert), field=role,
                                                 at=_dt.datetime.now(_dt.UTC))
    assert sb.enroll_dir is not None
    assert sorted(p.name for p in sb.enroll_dir.iterdir()) == sorted(
        f"{n}.{ext}" for n in ("PK", "KEK", "db") for ext in ("auth", "der", "esl"))
    enrolled = secureboot.load_enrollment(made.ca_cert, sb.pk_cert, sb.kek_cert, sb.db_cert)
    assert (sb.enroll_dir / "db.esl").read_bytes() == enrolled.variable("db")
    assert secureboot.parse_authenticated_update((sb.enroll_dir / "KEK.auth").read_bytes(), "KEK")[2] == \
        enrolled.variable("KEK")
    db = load_certificate(sb.db_cert)
    eku = [u for u in db.extensions if u.oid.dotted_string == "2.5.29.37"][0].value
    assert list(eku) == [ExtendedKeyUsageOID.CODE_SIGNING]


def test_openssl_refuses_the_chain_under_another_ca(rsa_keys, other_keys):
    proc = tools.run("openssl", ["verify", "-CAfile", other_keys.ca_cert, rsa_keys.secure_boot.db_cert], check=False)
    assert proc.returncode != 0


def test_db_preflight_refuses_a_db_certificate_from_another_ca(rsa_keys, other_keys):
    with pytest.raises(InputError, match=r"^secure_boot.db_cert: .* does not chain to the customer CA"):
        secureboot.check_db_certificate(load_certificate(other_keys.secure_boot.db_cert),
                                        load_certificate(rsa_keys.ca_cert))


def test_db_preflight_refuses_a_non_rsa_2048_key(keys):
    """The IMA certificate chains to the CA, but an ECDSA (or RSA-3072...) key is not what firmware verifies."""
    if keys.key_type == "rsa-2048":
        secureboot.check_db_certificate(load_certificate(keys.ima_cert), load_certificate(keys.ca_cert))
        return
    with pytest.raises(InputError, match="UEFI firmware verifies RSA-2048"):
        secureboot.check_db_certificate(load_certificate(keys.ima_cert), load_certificate(keys.ca_cert))


def test_db_preflight_checks_validity_when_given_a_time(rsa_keys):
    db, ca = load_certificate(rsa_keys.secure_boot.db_cert), load_certificate(rsa_keys.ca_cert)
    with pytest.raises(InputError, match="not valid at"):
        secureboot.check_db_certificate(db, ca, at=_dt.datetime(2000, 1, 1, tzinfo=_dt.UTC))


def test_generate_refuses_to_overwrite_secure_boot_keys(tmp_path):
    (tmp_path / "db.key").write_text("x")
    with pytest.raises(InputError, match="db.key"):
        keygen.generate(tmp_path)


def test_issue_secure_boot_keys_into_an_existing_key_set(rsa_keys, tmp_path):
    """A customer whose keys predate Secure Boot adds PK, KEK and db from the same CA."""
    for name in ("ca.key", "ca.pem"):
        (tmp_path / name).write_bytes((rsa_keys.directory / name).read_bytes())
    sb = keygen.issue_secure_boot_keys(tmp_path)
    secureboot.load_enrollment(tmp_path / "ca.pem", sb.pk_cert, sb.kek_cert, sb.db_cert)
    with pytest.raises(InputError, match="refusing to overwrite"):
        keygen.issue_secure_boot_keys(tmp_path)


def test_enrollment_variables_and_authority(rsa_keys, other_keys):
    sb = rsa_keys.secure_boot
    enrolled = secureboot.load_enrollment(rsa_keys.ca_cert, sb.pk_cert, sb.kek_cert, sb.db_cert)
    assert enrolled.owner == esl.owner_guid(rsa_keys.ca_cert_der.read_bytes())
    (db_list,) = esl.parse_database(enrolled.variable("db"))
    assert db_list.signature_type == esl.EFI_CERT_X509_GUID
    assert db_list.entries[0].data == enrolled.db
    assert enrolled.db_authority == db_list.entries[0].to_bytes()
    with pytest.raises(InputError, match=r"^secure_boot.kek_cert \(.*other.*\): .* does not chain"):
        secureboot.load_enrollment(rsa_keys.ca_cert, sb.pk_cert, other_keys.secure_boot.kek_cert, sb.db_cert)


def _wrap_content_info(signed_data: bytes) -> bytes:
    """The ContentInfo openssl's cms command reads around the bare SignedData a .auth file carries."""
    def tlv(tag: int, body: bytes) -> bytes:
        if len(body) < 0x80:
            return bytes([tag, len(body)]) + body
        size = len(body).to_bytes((len(body).bit_length() + 7) // 8, "big")
        return bytes([tag, 0x80 | len(size)]) + size + body
    signed_data_oid = bytes.fromhex("06092a864886f70d010702")
    return tlv(0x30, signed_data_oid + tlv(0xA0, signed_data))


def test_auth_files_verify_with_openssl_and_follow_the_hierarchy(rsa_keys, other_keys, tmp_path):
    sb = rsa_keys.secure_boot
    enrolled = secureboot.load_enrollment(rsa_keys.ca_cert, sb.pk_cert, sb.kek_cert, sb.db_cert)
    when = _dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=_dt.UTC)
    files = secureboot.enrollment_files(enrolled, load_signing_key(str(sb.pk_key)), load_certificate(sb.pk_cert),
                                        load_signing_key(str(sb.kek_key)), load_certificate(sb.kek_cert),
                                        timestamp=when)
    assert sorted(files) == ["KEK.auth", "KEK.der", "KEK.esl", "PK.auth", "PK.der", "PK.esl", "db.auth", "db.der",
                             "db.esl"]
    signers = {"PK": sb.pk_cert, "KEK": sb.pk_cert, "db": sb.kek_cert}
    for name, signer in signers.items():
        auth = files[f"{name}.auth"]
        assert auth[:8] == bytes.fromhex("ea07") + bytes([1, 2, 3, 4, 5, 0])  # EFI_TIME 2026-01-02 03:04:05
        pkcs7, payload, contents = secureboot.parse_authenticated_update(auth, name)
        assert contents == files[f"{name}.esl"]
        (tmp_path / "p7.der").write_bytes(_wrap_content_info(pkcs7))
        (tmp_path / "payload").write_bytes(payload)
        verify = ["cms", "-verify", "-binary", "-inform", "DER", "-in", tmp_path / "p7.der",
                  "-content", tmp_path / "payload", "-purpose", "any", "-partial_chain", "-out", "/dev/null"]
        ok = tools.run("openssl", [*verify, "-CAfile", signer], check=False)
        assert ok.returncode == 0, ok.stderr
        # a different signer, or a changed byte of the payload, does not verify
        wrong = sb.kek_cert if signer == sb.pk_cert else sb.pk_cert
        assert tools.run("openssl", [*verify, "-CAfile", wrong], check=False).returncode != 0
        (tmp_path / "payload").write_bytes(payload[:-1] + bytes([payload[-1] ^ 1]))
        assert tools.run("openssl", [*verify, "-CAfile", signer], check=False).returncode != 0
    # deterministic: the same keys and time give the same files
    again = secureboot.enrollment_files(enrolled, load_signing_key(str(sb.pk_key)), load_certificate(sb.pk_cert),
                                        load_signing_key(str(sb.kek_key)), load_certificate(sb.kek_cert),
                                        timestamp=when)
    assert again == files
    # virt-firmware reads the .auth directory back to the same variables
    from virt.firmware.varstore.authfiles import AuthFilesVarStore
    written = secureboot.write_enrollment_files(tmp_path / "enroll", files)
    assert [p.name for p in written] == sorted(files)
    variables = AuthFilesVarStore(str(tmp_path / "enroll")).get_varlist()
    assert {n: bytes(variables[n].data) for n in ("PK", "KEK", "db")} == \
        {n: files[f"{n}.esl"] for n in ("PK", "KEK", "db")}


def test_malformed_auth_file_is_a_parse_error():
    with pytest.raises(ParseError):
        secureboot.parse_authenticated_update(b"\0" * 39, "db")
    with pytest.raises(ParseError, match="dwLength"):
        auth = bytes(16) + struct.pack("<IHH", 5000, 0x0200, 0x0EF1) + secureboot.EFI_CERT_TYPE_PKCS7_GUID.bytes_le
        secureboot.parse_authenticated_update(auth, "db")
