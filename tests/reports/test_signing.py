"""`report sign` / `report verify` with real keys and CAs; openssl as the independent checker."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import subprocess

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from obelisk.reports import signing
from obelisk.reports.statement import (
    PAYLOAD_TYPE,
    Statement,
    pae,
    parse_signature,
    parse_statement,
    serialize_statement,
)


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Example Agency"),
                      x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _write_key(path, key, passphrase: bytes | None = None):
    enc = serialization.BestAvailableEncryption(passphrase) if passphrase else serialization.NoEncryption()
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, enc))
    path.chmod(0o600)


def _cert(subject_key, cn, issuer_key, issuer_name, *, ca: bool, days: int = 365):
    now = dt.datetime.now(dt.UTC)
    b = (x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(issuer_name or _name(cn))
         .public_key(subject_key.public_key()).serial_number(x509.random_serial_number())
         .not_valid_before(now - dt.timedelta(days=1)).not_valid_after(now + dt.timedelta(days=days))
         .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
         .add_extension(x509.KeyUsage(digital_signature=not ca, content_commitment=False, key_encipherment=False,
                                      data_encipherment=False, key_agreement=False, key_cert_sign=ca,
                                      crl_sign=ca, encipher_only=False, decipher_only=False), critical=True))
    return b.sign(issuer_key, hashes.SHA256())


class Pki:
    """A customer CA with an intermediate and a report-signing leaf, written as PEM files."""

    def __init__(self, d, curve=None, cn="Customer"):
        curve = ec.SECP256R1() if curve is None else curve
        d.mkdir(parents=True, exist_ok=True)
        self.dir = d
        ca_key = ec.generate_private_key(curve)
        ca = _cert(ca_key, f"{cn} Root CA", ca_key, None, ca=True)
        mid_key = ec.generate_private_key(curve)
        mid = _cert(mid_key, f"{cn} Issuing CA", ca_key, ca.subject, ca=True)
        leaf_key = ec.generate_private_key(curve)
        leaf = _cert(leaf_key, f"{cn} report signer", mid_key, mid.subject, ca=False)
        self.ca = d / "ca.pem"
        self.ca.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
        self.cert = d / "signer-chain.pem"
        self.cert.write_bytes(leaf.public_bytes(serialization.Encoding.PEM)
                              + mid.public_bytes(serialization.Encoding.PEM))
        self.leaf_pem = d / "signer.pem"
        self.leaf_pem.write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
        self.key = d / "signer.key"
        _write_key(self.key, leaf_key)
        self.leaf_key = leaf_key
        self.mid_key, self.mid = mid_key, mid


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return Pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def foreign_pki(tmp_path_factory):
    return Pki(tmp_path_factory.mktemp("foreign"), cn="Attacker")


@pytest.fixture
def html_report(obelisk_cli, results_files, tmp_path):
    out = tmp_path / "report.html"
    proc = obelisk_cli("report", *map(str, results_files), "--format", "html", "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    return out


def test_sign_and_verify_html(obelisk_cli, html_report, pki):
    proc = obelisk_cli("report", "sign", str(html_report), "--key", str(pki.key), "--cert", str(pki.cert))
    assert proc.returncode == 0, proc.stderr
    sig = html_report.with_name("report.html.sig")
    doc = json.loads(sig.read_text())
    statement = parse_statement(base64.b64decode(doc["dsseEnvelope"]["payload"]))
    assert statement.digest == hashlib.sha256(html_report.read_bytes()).hexdigest()
    assert statement.subject.name == "worker-01.prod.example"
    assert statement.subject.digest == "sha256:" + "ab" * 32
    assert statement.scanned_at == "2026-11-24T04:12:30Z"
    proc = obelisk_cli("report", "verify", str(html_report), "--cert", str(pki.ca),
                       "--subject", "worker-01.prod.example")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("OK: ") and "Customer report signer" in proc.stdout


def test_altered_report_fails_with_one_line(obelisk_cli, html_report, pki):
    assert obelisk_cli("report", "sign", str(html_report), "--key", str(pki.key), "--cert",
                       str(pki.cert)).returncode == 0
    html_report.write_bytes(html_report.read_bytes().replace(b"worker-01 ", b"worker-01 "))
    data = html_report.read_bytes()
    html_report.write_bytes(data.replace(b"4</span><span class=\"l\">Fail", b"0</span><span class=\"l\">Fail", 1))
    assert html_report.read_bytes() != data
    proc = obelisk_cli("report", "verify", str(html_report), "--cert", str(pki.ca))
    assert proc.returncode == 1
    assert proc.stderr.count("\n") == 1 and "altered after signing" in proc.stderr


def test_foreign_key_fails(obelisk_cli, html_report, pki, foreign_pki):
    proc = obelisk_cli("report", "sign", str(html_report), "--key", str(foreign_pki.key), "--cert",
                       str(foreign_pki.cert))
    assert proc.returncode == 0, proc.stderr
    proc = obelisk_cli("report", "verify", str(html_report), "--cert", str(pki.ca))
    assert proc.returncode == 1
    assert proc.stderr.count("\n") == 1 and "does not chain to the customer CA" in proc.stderr


def test_leaf_without_its_intermediate_does_not_chain(obelisk_cli, html_report, pki):
    proc = obelisk_cli("report", "sign", str(html_report), "--key", str(pki.key), "--cert", str(pki.leaf_pem))
    assert proc.returncode == 0
    proc = obelisk_cli("report", "verify", str(html_report), "--cert", str(pki.ca))
    assert proc.returncode == 1 and "does not chain" in proc.stderr


def test_swapped_signature_and_subject_replay(obelisk_cli, results_files, tmp_path, pki):
    """A genuine signature for node A's report does not make node B's report verify."""
    a = tmp_path / "a.json"
    b = tmp_path / "b.json"
    assert obelisk_cli("report", str(results_files[0]), "--format", "json", "-o", str(a)).returncode == 0
    doc = json.loads(a.read_text())
    doc["subject"]["name"] = "worker-02.prod.example"
    b.write_text(json.dumps(doc, indent=2) + "\n")
    assert obelisk_cli("report", "sign", str(a), "--key", str(pki.key), "--cert", str(pki.cert)).returncode == 0
    proc = obelisk_cli("report", "verify", str(b), "--cert", str(pki.ca), "--signature", f"{a}.sig")
    assert proc.returncode == 1 and "altered" in proc.stderr
    proc = obelisk_cli("report", "verify", str(a), "--cert", str(pki.ca), "--subject", "worker-02.prod.example")
    assert proc.returncode == 1 and "signed for node worker-01.prod.example, not worker-02" in proc.stderr


def test_forged_statement_fails(obelisk_cli, html_report, pki, tmp_path):
    assert obelisk_cli("report", "sign", str(html_report), "--key", str(pki.key), "--cert",
                       str(pki.cert)).returncode == 0
    sig = html_report.with_name("report.html.sig")
    doc = json.loads(sig.read_text())
    payload = json.loads(base64.b64decode(doc["dsseEnvelope"]["payload"]))
    payload["predicate"]["subject"]["name"] = "other-node"
    doc["dsseEnvelope"]["payload"] = base64.b64encode(json.dumps(payload).encode()).decode()
    sig.write_text(json.dumps(doc))
    proc = obelisk_cli("report", "verify", str(html_report), "--cert", str(pki.ca))
    assert proc.returncode == 1 and "signature does not verify" in proc.stderr


def test_keyid_is_bound_to_the_signer_key(obelisk_cli, html_report, pki):
    """DSSE's keyid is not signed: a flipped keyid is refused (exit 1), an absent one is allowed."""
    assert obelisk_cli("report", "sign", str(html_report), "--key", str(pki.key), "--cert",
                       str(pki.cert)).returncode == 0
    sig = html_report.with_name("report.html.sig")
    doc = json.loads(sig.read_text())
    keyid = doc["dsseEnvelope"]["signatures"][0]["keyid"]
    assert keyid == signing.key_id(x509.load_pem_x509_certificate(doc["certificates"][0].encode()))
    flipped = keyid[:-1] + ("0" if keyid[-1] != "0" else "1")
    for value, code, needle in ((flipped, 1, "does not name the signer certificate's key"),
                                (7, 2, "keyid: expected a string"), ("", 0, "OK: ")):
        doc["dsseEnvelope"]["signatures"][0]["keyid"] = value
        sig.write_text(json.dumps(doc))
        proc = obelisk_cli("report", "verify", str(html_report), "--cert", str(pki.ca))
        assert proc.returncode == code and needle in (proc.stdout + proc.stderr), (value, proc.stderr)
        assert proc.stderr.count("\n") == (0 if code == 0 else 1)
    del doc["dsseEnvelope"]["signatures"][0]["keyid"]
    sig.write_text(json.dumps(doc))
    assert obelisk_cli("report", "verify", str(html_report), "--cert", str(pki.ca)).returncode == 0


def test_signature_verifies_with_openssl(obelisk_cli, html_report, pki, tmp_path):
    """openssl, not obelisk, checks the DSSE signature and the certificate chain."""
    assert obelisk_cli("report", "sign", str(html_report), "--key", str(pki.key), "--cert",
                       str(pki.cert)).returncode == 0
    sig = parse_signature(html_report.with_name("report.html.sig").read_bytes())
    (tmp_path / "pae.bin").write_bytes(pae(PAYLOAD_TYPE, sig.payload))
    (tmp_path / "sig.der").write_bytes(sig.signature)
    pub = tmp_path / "pub.pem"
    subprocess.run(["openssl", "x509", "-in", str(pki.leaf_pem), "-pubkey", "-noout", "-out", str(pub)], check=True)
    ok = subprocess.run(["openssl", "dgst", "-sha256", "-verify", str(pub), "-signature", str(tmp_path / "sig.der"),
                         str(tmp_path / "pae.bin")], capture_output=True, text=True)
    assert ok.returncode == 0 and "Verified OK" in ok.stdout
    mid = tmp_path / "mid.pem"
    mid.write_text(sig.certificates[1])
    chain = subprocess.run(["openssl", "verify", "-CAfile", str(pki.ca), "-untrusted", str(mid), str(pki.leaf_pem)],
                           capture_output=True, text=True)
    assert chain.returncode == 0, chain.stderr


def test_openssl_made_rsa_key_with_passphrase(obelisk_cli, html_report, tmp_path):
    d = tmp_path / "ossl"
    d.mkdir()

    def ossl(*args):
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=d)

    ossl("req", "-x509", "-newkey", "rsa:3072", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "30",
         "-subj", "/CN=OpenSSL CA", "-addext", "basicConstraints=critical,CA:TRUE",
         "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    ossl("genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-aes-256-cbc", "-pass",
         "pass:s3cret-pass", "-out", "signer.key")
    ossl("req", "-new", "-key", "signer.key", "-passin", "pass:s3cret-pass", "-subj", "/CN=RSA signer",
         "-out", "signer.csr")
    (d / "ext.cnf").write_text("keyUsage=critical,digitalSignature\n")
    ossl("x509", "-req", "-in", "signer.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
         "-days", "30", "-extfile", "ext.cnf", "-out", "signer.pem")
    env = {"REPORT_KEY_PASS": "s3cret-pass"}
    proc = obelisk_cli("report", "sign", str(html_report), "--key", str(d / "signer.key"), "--cert",
                       str(d / "signer.pem"), "--passphrase-env", "REPORT_KEY_PASS", env=env)
    assert proc.returncode == 0, proc.stderr
    proc = obelisk_cli("report", "verify", str(html_report), "--cert", str(d / "ca.pem"), "--format", "json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["signer"] == "CN=RSA signer"
    # Wrong passphrase: bad input, one line, exit 2.
    proc = obelisk_cli("report", "sign", str(html_report), "--key", str(d / "signer.key"), "--cert",
                       str(d / "signer.pem"), "--passphrase-env", "REPORT_KEY_PASS", env={"REPORT_KEY_PASS": "no"})
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1


def test_key_not_matching_cert_is_bad_input(obelisk_cli, html_report, pki, foreign_pki):
    proc = obelisk_cli("report", "sign", str(html_report), "--key", str(foreign_pki.key), "--cert", str(pki.cert))
    assert proc.returncode == 2 and "does not match" in proc.stderr


def test_formats_without_subject_need_results(obelisk_cli, results_files, tmp_path, pki):
    ckl = tmp_path / "node.ckl"
    assert obelisk_cli("report", str(results_files[0]), "-o", str(ckl)).returncode == 0
    proc = obelisk_cli("report", "sign", str(ckl), "--key", str(pki.key), "--cert", str(pki.cert))
    assert proc.returncode == 2 and "--results" in proc.stderr
    proc = obelisk_cli("report", "sign", str(ckl), "--key", str(pki.key), "--cert", str(pki.cert),
                       "--results", str(results_files[0]))
    assert proc.returncode == 0, proc.stderr
    proc = obelisk_cli("report", "verify", str(ckl), "--cert", str(pki.ca), "--subject", "worker-01.prod.example")
    assert proc.returncode == 0, proc.stderr


def test_garbage_signature_file_is_one_line(obelisk_cli, html_report, pki):
    html_report.with_name("report.html.sig").write_bytes(b"\x00\xffnot json")
    proc = obelisk_cli("report", "verify", str(html_report), "--cert", str(pki.ca))
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr


def test_statement_round_trips():
    from tests.reports.samples import NODE

    st = Statement(report_name="r.html", digest="0" * 64, subject=NODE, scanned_at="2026-11-24T04:00:00Z",
                   signed_at="2026-11-24T05:00:00Z", report_format="html", tool="obelisk 0.1.0")
    assert parse_statement(serialize_statement(st)) == st


@pytest.mark.hsm
def test_sign_with_key_on_softhsm_token(obelisk_cli, html_report, pki, tmp_path):
    """The signing key never leaves a SoftHSM2 token; the CLI reaches it by a pkcs11: URI."""
    from obelisk.core import tools

    tokens = tmp_path / "tokens"
    tokens.mkdir()
    conf = tmp_path / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {tokens}\nobjectstore.backend = file\nlog.level = ERROR\n")
    env = {"SOFTHSM2_CONF": str(conf)}
    module = "/usr/lib/softhsm/libsofthsm2.so"
    tools.run("softhsm2-util", ["--init-token", "--free", "--label", "reports", "--pin", "4321", "--so-pin", "8765"],
              env=env)
    tools.run("pkcs11-tool", ["--module", module, "--login", "--pin", "4321", "--keypairgen", "--key-type",
                              "EC:prime256v1", "--id", "07", "--label", "report-signer"], env=env)
    pub_der = tmp_path / "pub.der"
    tools.run("pkcs11-tool", ["--module", module, "--read-object", "--type", "pubkey", "--id", "07",
                              "-o", str(pub_der)], env=env)
    public_key = serialization.load_der_public_key(pub_der.read_bytes())
    now = dt.datetime.now(dt.UTC)
    leaf = (x509.CertificateBuilder().subject_name(_name("HSM report signer")).issuer_name(pki.mid.subject)
            .public_key(public_key).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1)).not_valid_after(now + dt.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(pki.mid_key, hashes.SHA256()))
    chain = tmp_path / "hsm-chain.pem"
    chain.write_bytes(leaf.public_bytes(serialization.Encoding.PEM) + pki.mid.public_bytes(serialization.Encoding.PEM))
    pin = tmp_path / "pin"
    pin.write_text("4321\n")
    pin.chmod(0o600)
    key_uri = f"pkcs11:token=reports;object=report-signer;type=private?pin-source=file:{pin}"
    proc = obelisk_cli("report", "sign", str(html_report), "--key", key_uri, "--cert", str(chain), env=env)
    assert proc.returncode == 0, proc.stderr
    proc = obelisk_cli("report", "verify", str(html_report), "--cert", str(pki.ca))
    assert proc.returncode == 0, proc.stderr
    assert "HSM report signer" in proc.stdout
