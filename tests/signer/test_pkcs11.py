"""Signing with a key that never leaves a SoftHSM2 token, through PKCS#11."""

import datetime as dt
import os
import shutil
import subprocess

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from obelisk.core import tools
from obelisk.core.errors import InputError
from obelisk.signer.keys import load_certificate, load_signing_key
from obelisk.signer.sign import sign_tree

from .conftest import regular_files

pytestmark = pytest.mark.hsm


@pytest.fixture
def softhsm(tmp_path, monkeypatch):
    tokens = tmp_path / "tokens"
    tokens.mkdir()
    conf = tmp_path / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {tokens}\nobjectstore.backend = file\nlog.level = ERROR\n")
    monkeypatch.setenv("SOFTHSM2_CONF", str(conf))
    tools.run("softhsm2-util", ["--init-token", "--free", "--label", "obelisk", "--pin", "4321", "--so-pin", "8765"])
    pin = tmp_path / "pin"
    pin.write_text("4321\n")
    pin.chmod(0o600)
    return pin


def reload_tokens() -> None:
    """The PKCS#11 library is loaded once per process: make it see this test's token directory."""
    import pkcs11

    pkcs11.lib("/usr/lib/softhsm/libsofthsm2.so").reinitialize()


def import_key(key_path, label: str, key_id: str, tmp_path) -> None:
    """Put an existing private key on the token (as one would when migrating a key into an HSM)."""
    key = serialization.load_pem_private_key(key_path.read_bytes(), None)
    der = tmp_path / f"{label}.der"
    der.write_bytes(key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption()))
    pub = tmp_path / f"{label}.pub.der"
    pub.write_bytes(key.public_key().public_bytes(serialization.Encoding.DER,
                                                  serialization.PublicFormat.SubjectPublicKeyInfo))
    for kind, path in (("privkey", der), ("pubkey", pub)):
        tools.run("pkcs11-tool", ["--module", "/usr/lib/softhsm/libsofthsm2.so", "--login", "--pin", "4321",
                                  "--write-object", str(path), "--type", kind, "--id", key_id, "--label", label])


def uri(label: str, pin) -> str:
    return f"pkcs11:token=obelisk;object={label};type=private?pin-source=file:{pin}"


def test_rsa_key_on_token_signs_byte_identically_to_the_pem_key(softhsm, rsa_keys, tree, tmp_path):
    import_key(rsa_keys.ima_key, "ima-rsa", "01", tmp_path)
    reload_tokens()
    hsm_key = load_signing_key(uri("ima-rsa", softhsm))
    sign_tree([str(tree)], hsm_key, load_certificate(rsa_keys.ima_cert), quiet=True, in_process=True)
    for f in regular_files(tree):
        subprocess.run([tools.which("evmctl"), "ima_verify", "--key", str(rsa_keys.ima_cert_der), str(f)],
                       check=True, capture_output=True)
    hsm_sigs = {f: os.getxattr(f, "security.ima") for f in regular_files(tree)}
    sign_tree([str(tree)], load_signing_key(str(rsa_keys.ima_key)), load_certificate(rsa_keys.ima_cert), quiet=True)
    assert hsm_sigs == {f: os.getxattr(f, "security.ima") for f in regular_files(tree)}


def test_ec_key_generated_on_token_signs_and_evmctl_accepts(softhsm, rsa_keys, tree, tmp_path):
    tools.run("pkcs11-tool", ["--module", "/usr/lib/softhsm/libsofthsm2.so", "--login", "--pin", "4321",
                              "--keypairgen", "--key-type", "EC:prime256v1", "--id", "02", "--label", "ima-ec"])
    reload_tokens()
    hsm_key = load_signing_key(uri("ima-ec", softhsm))
    # the customer CA certifies the token's public key; the private key is never exported
    ca_key = serialization.load_pem_private_key(rsa_keys.ca_key.read_bytes(), None)
    ca = load_certificate(rsa_keys.ca_cert)
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(x509.Name.from_rfc4514_string("CN=hsm ima"))
            .issuer_name(ca.subject).public_key(hsm_key.public_key).serial_number(x509.random_serial_number())
            .not_valid_before(now).not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(hsm_key.public_key), critical=False)
            .sign(ca_key, hashes.SHA256()))
    der = tmp_path / "hsm.der"
    der.write_bytes(cert.public_bytes(serialization.Encoding.DER))
    sign_tree([str(tree)], hsm_key, cert, quiet=True, in_process=True)
    for f in regular_files(tree):
        subprocess.run([tools.which("evmctl"), "ima_verify", "--key", str(der), str(f)],
                       check=True, capture_output=True)


def test_pkcs11_errors_are_one_line(softhsm, tmp_path):
    reload_tokens()
    with pytest.raises(InputError, match="pin-value is refused"):
        load_signing_key("pkcs11:token=obelisk;object=x?pin-value=4321")
    with pytest.raises(InputError, match="no PKCS#11 token"):
        load_signing_key(uri("x", softhsm).replace("token=obelisk", "token=nope"))
    bad_pin = tmp_path / "badpin"
    bad_pin.write_text("0000\n")
    with pytest.raises(InputError, match="PIN incorrect"):
        load_signing_key(uri("x", bad_pin))
    with pytest.raises(InputError, match="no key pair"):
        load_signing_key(uri("missing", softhsm))
    assert shutil.which("pkcs11-tool")


def test_rsa_key_on_token_signs_an_oci_layout_byte_identically_to_the_pem_key(softhsm, rsa_keys, tmp_path):
    from obelisk.signer.oci_sign import sign_layout

    from .test_oci_layout import build

    import_key(rsa_keys.ima_key, "ima-rsa", "01", tmp_path)
    reload_tokens()
    cert = load_certificate(rsa_keys.ima_cert)
    by_token, by_pem = build(tmp_path / "token"), build(tmp_path / "pem")
    assert sign_layout(str(by_token), load_signing_key(uri("ima-rsa", softhsm)), cert).signed == 6
    sign_layout(str(by_pem), load_signing_key(str(rsa_keys.ima_key)), cert)
    assert (by_token / "index.json").read_bytes() == (by_pem / "index.json").read_bytes()
    assert sorted(p.name for p in (by_token / "blobs/sha256").iterdir()) == \
        sorted(p.name for p in (by_pem / "blobs/sha256").iterdir())
