"""Secure Boot keys from `keys generate`: openssl verifies their chains, the preflight accepts only the customer's."""

from __future__ import annotations

import datetime as _dt
import stat

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID

from obelisk.core import tools
from obelisk.core.errors import InputError
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
