import stat
import subprocess

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from obelisk.core import tools
from obelisk.core.errors import InputError
from obelisk.signer import hashalgo, keygen
from obelisk.signer.keys import (
    PassphraseSource,
    check_key_matches_certificate,
    ima_key_id,
    load_certificate,
    load_signing_key,
    verify_digest_signature,
)


@pytest.mark.parametrize("key_type", keygen.KEY_TYPES)
def test_generated_ca_and_ima_certificate_fit_the_kernel(tmp_path, key_type):
    made = keygen.generate(tmp_path, key_type)
    for secret in (made.ca_key, made.ima_key):
        assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    ca = load_certificate(made.ca_cert)
    ima = load_certificate(made.ima_cert_der)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is True
    assert ca.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign is True
    usage = ima.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.digital_signature and not usage.key_cert_sign
    assert ima.issuer == ca.subject
    ima.verify_directly_issued_by(ca)
    assert ima_key_id(ima).hex() == made.ima_key_id
    key = load_signing_key(str(made.ima_key))
    expected = rsa.RSAPublicKey if key_type.startswith("rsa") else ec.EllipticCurvePublicKey
    assert isinstance(key.public_key, expected)
    check_key_matches_certificate(key, ima)
    # openssl, the independent checker, accepts the chain
    subprocess.run([tools.which("openssl"), "verify", "-CAfile", str(made.ca_cert), str(made.ima_cert)],
                   check=True, capture_output=True)


def test_key_id_is_what_evmctl_computes_from_the_public_key(rsa_keys):
    out = subprocess.run([tools.which("evmctl"), "-v", "ima_sign", "--key", str(rsa_keys.ima_key), "-n",
                          str(rsa_keys.ima_cert)], capture_output=True, text=True)
    assert f"keyid: {rsa_keys.ima_key_id}" in out.stdout + out.stderr


def test_encrypted_key_needs_its_passphrase(tmp_path, monkeypatch):
    made = keygen.generate(tmp_path, "ecdsa-p256", passphrase=b"correct horse")
    assert b"ENCRYPTED" in made.ima_key.read_bytes()
    with pytest.raises(InputError, match="encrypted"):
        load_signing_key(str(made.ima_key))
    monkeypatch.setenv("IMA_PASS", "wrong")
    with pytest.raises(InputError, match="wrong passphrase"):
        load_signing_key(str(made.ima_key), PassphraseSource(env="IMA_PASS"))
    monkeypatch.setenv("IMA_PASS", "correct horse")
    key = load_signing_key(str(made.ima_key), PassphraseSource(env="IMA_PASS"))
    secret_file = tmp_path / "pass"
    secret_file.write_text("correct horse\n")
    assert load_signing_key(str(made.ima_key), PassphraseSource(file=str(secret_file))).public_key.public_numbers() \
        == key.public_key.public_numbers()


@pytest.mark.parametrize("algo", ["rsa:2048", "ec:prime256v1"])
def test_keys_made_by_openssl_work(tmp_path, algo):
    openssl = tools.which("openssl")
    if algo.startswith("ec:"):
        args = ["-newkey", "ec", "-pkeyopt", f"ec_paramgen_curve:{algo[3:]}"]
    else:
        args = ["-newkey", algo]
    subprocess.run([openssl, "req", "-x509", *args, "-nodes", "-keyout", str(tmp_path / "k.pem"),
                    "-out", str(tmp_path / "c.pem"), "-subj", "/CN=openssl ima", "-days", "30"],
                   check=True, capture_output=True)
    key = load_signing_key(str(tmp_path / "k.pem"))
    cert = load_certificate(tmp_path / "c.pem")
    check_key_matches_certificate(key, cert)
    digest = b"\x42" * 32
    sig = key.sign_digest(digest, hashalgo.by_name("sha256"))
    assert verify_digest_signature(cert.public_key(), sig, digest, hashalgo.by_name("sha256"))
    assert not verify_digest_signature(cert.public_key(), sig, b"\x43" * 32, hashalgo.by_name("sha256"))


def test_mismatched_certificate_and_bad_files_are_input_errors(tmp_path, rsa_keys, other_keys):
    key = load_signing_key(str(rsa_keys.ima_key))
    with pytest.raises(InputError, match="does not match"):
        check_key_matches_certificate(key, load_certificate(other_keys.ima_cert))
    with pytest.raises(InputError, match="cannot read key"):
        load_signing_key(str(tmp_path / "missing.pem"))
    (tmp_path / "junk.pem").write_text("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
    with pytest.raises(InputError, match="not a private key"):
        load_signing_key(str(tmp_path / "junk.pem"))
    with pytest.raises(InputError, match="not an X.509 certificate"):
        load_certificate(rsa_keys.ima_key)


def _damaged_copy(rsa_keys, tmp_path):
    """The IMA key with its private exponents altered: the public half still matches the certificate."""
    from cryptography.hazmat.primitives import serialization

    good = load_signing_key(str(rsa_keys.ima_key)).key
    n = good.private_numbers()
    bad = rsa.RSAPrivateNumbers(n.p, n.q, n.d ^ 2, n.dmp1 ^ 2, n.dmq1, n.iqmp, n.public_numbers)
    path = tmp_path / "damaged.key"
    path.write_bytes(bad.private_key(unsafe_skip_rsa_key_validation=True).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return path


def test_a_damaged_rsa_key_is_refused_with_or_without_the_prime_check(tmp_path, rsa_keys):
    damaged = _damaged_copy(rsa_keys, tmp_path)
    with pytest.raises(InputError, match="not a private key"):
        load_signing_key(str(damaged))  # OpenSSL's own check
    key = load_signing_key(str(damaged), check_rsa_primes=False)  # the signer's fast path...
    with pytest.raises(InputError, match="signatures its certificate does not verify"):
        check_key_matches_certificate(key, load_certificate(rsa_keys.ima_cert))  # ...proves the key instead
    fast = load_signing_key(str(rsa_keys.ima_key), check_rsa_primes=False)
    check_key_matches_certificate(fast, load_certificate(rsa_keys.ima_cert))
    digest = b"\x42" * 32
    algo = hashalgo.by_name("sha256")
    assert fast.sign_digest(digest, algo) == load_signing_key(str(rsa_keys.ima_key)).sign_digest(digest, algo)
