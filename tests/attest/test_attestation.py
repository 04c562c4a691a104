"""Attestation against a real swtpm, with tpm2-tools as the independent checker."""

from __future__ import annotations

import base64
import json
import os
import subprocess

import pytest

from obelisk.attest import akrecord, evidence, verify
from obelisk.core import tools
from obelisk.core.findings import Status
from obelisk.tpm import device as tpm
from obelisk.tpm import eventlog
from tests.attest import synth

pytestmark = pytest.mark.swtpm

PCRS_0_11 = "sha256:" + ",".join(str(i) for i in range(12))


def tt(swtpm, *args: str, cwd=None) -> subprocess.CompletedProcess[str]:
    """Run a tpm2-tools command on the swtpm, then flush transient objects (no resource manager here)."""
    env = {**os.environ, **swtpm.env}
    proc = subprocess.run([tools.which(args[0]), *args[1:]], env=env, cwd=cwd, capture_output=True, text=True)
    subprocess.run([tools.which("tpm2_flushcontext"), "-t"], env=env, capture_output=True)
    return proc


def statuses(report) -> dict[str, Status]:
    return {f.id: f.status for f in report.findings}


@pytest.fixture
def enrolled(swtpm, tmp_path, obelisk_cli):
    """EK and AK created by obelisk, AK proven by make/activate credential; returns the AK record path."""
    res = obelisk_cli("attest", "ak", "create", "--tcti", swtpm.tcti, "--record", str(tmp_path / "ak.json"),
                      "--tss", str(tmp_path / "ak.pub"), "--pem", str(tmp_path / "ak.pem"))
    assert res.returncode == 0, res.stderr
    res = obelisk_cli("attest", "credential", "make", "--ak", str(tmp_path / "ak.json"),
                      "--secret-out", str(tmp_path / "secret"), "--challenge", str(tmp_path / "challenge.json"))
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "secret").stat().st_mode & 0o777 == 0o600
    res = obelisk_cli("attest", "credential", "activate", "--tcti", swtpm.tcti, str(tmp_path / "challenge.json"),
                      "--response", str(tmp_path / "response"))
    assert res.returncode == 0, res.stderr
    res = obelisk_cli("attest", "credential", "check", "--ak", str(tmp_path / "ak.json"), "--secret",
                      str(tmp_path / "secret"), "--response", str(tmp_path / "response"),
                      "--record", str(tmp_path / "ak-activated.json"))
    assert res.returncode == 0, res.stderr
    assert json.loads((tmp_path / "ak-activated.json").read_text())["activated"] is True
    return tmp_path / "ak-activated.json"


def test_activation_fails_for_an_ak_from_another_tpm(swtpm, tmp_path):
    from obelisk.tpm.swtpm import SoftwareTPM

    mine = tpm.create_keys(swtpm.tcti)
    with SoftwareTPM.start(tmp_path / "other") as other:
        theirs = tpm.create_keys(other.tcti)
        # challenge bound to our AK name but encrypted to the other TPM's EK: it cannot be activated here
        blob, enc = tpm.make_credential(theirs.ek_public, mine.name, b"s" * 32)
        with pytest.raises(tpm.TPMError, match="credential activation"):
            tpm.activate_credential(blob, enc, swtpm.tcti)
        # and the right TPM recovers the secret
        blob, enc = tpm.make_credential(mine.ek_public, mine.name, b"s" * 32)
        assert tpm.activate_credential(blob, enc, swtpm.tcti) == b"s" * 32


def test_obelisk_quote_passes_tpm2_checkquote(swtpm, tmp_path, enrolled, obelisk_cli):
    nonce = os.urandom(16).hex()
    res = obelisk_cli("attest", "quote", "--tcti", swtpm.tcti, "--nonce", nonce, "-o", str(tmp_path / "q.json"),
                      "--tpm2-tools-dir", str(tmp_path / "tt"))
    assert res.returncode == 0, res.stderr
    base = ["tpm2_checkquote", "-u", str(tmp_path / "ak.pub"), "-m", str(tmp_path / "tt/quote.msg"),
            "-s", str(tmp_path / "tt/quote.sig"), "-f", str(tmp_path / "tt/quote.pcrs"), "-g", "sha256"]
    ok = tt(swtpm, *base, "-q", nonce)
    assert ok.returncode == 0, ok.stderr
    # obelisk's own checkquote on the same files, with the AK as a bare PEM key: what cannot be known is skipped
    res = obelisk_cli("attest", "checkquote", "--ak", str(tmp_path / "ak.pem"), "-m", str(tmp_path / "tt/quote.msg"),
                      "-s", str(tmp_path / "tt/quote.sig"), "-f", str(tmp_path / "tt/quote.pcrs"), "-q", nonce,
                      "--format", "json")
    assert res.returncode == 0, res.stderr
    found = {f["id"]: f["status"] for f in json.loads(res.stdout)["findings"]}
    assert found["attest.quote.signature"] == "pass" and found["attest.quote.signer"] == "skip"
    assert found["attest.ak.attributes"] == "skip"
    # the independent checker rejects a wrong nonce and a changed PCR value too
    assert tt(swtpm, *base, "-q", "00" + nonce[2:]).returncode != 0
    pcrs = bytearray((tmp_path / "tt/quote.pcrs").read_bytes())
    pcrs[150] ^= 1  # inside the first PCR value (after 132+4+4+2 header bytes)
    (tmp_path / "tt/quote.pcrs").write_bytes(bytes(pcrs))
    assert tt(swtpm, *base, "-q", nonce).returncode != 0


def test_obelisk_verifies_tpm2_quote_output(swtpm, tmp_path, obelisk_cli):
    # keys and quote made entirely by tpm2-tools
    d = tmp_path
    assert tt(swtpm, "tpm2_createek", "-c", "ek.ctx", "-G", "rsa", "-u", "ek.pub", cwd=d).returncode == 0
    r = tt(swtpm, "tpm2_createak", "-C", "ek.ctx", "-c", "ak.ctx", "-G", "rsa", "-g", "sha256", "-s", "rsassa",
           "-u", "ak.pub", "-n", "ak.name", cwd=d)
    assert r.returncode == 0, r.stderr
    nonce = os.urandom(20).hex()
    r = tt(swtpm, "tpm2_quote", "-c", "ak.ctx", "-l", PCRS_0_11, "-q", nonce, "-m", "q.msg", "-s", "q.sig",
           "-o", "q.pcrs", "-g", "sha256", cwd=d)
    assert r.returncode == 0, r.stderr

    def check(*extra: str, nonce_hex: str = nonce, ak: str = "ak.pub") -> tuple[int, dict]:
        res = obelisk_cli("attest", "checkquote", "--ak", str(d / ak), "--ek", str(d / "ek.pub"),
                          "-m", str(d / "q.msg"), "-s", str(d / "q.sig"), "-f", str(d / "q.pcrs"), "-q", nonce_hex,
                          "--format", "json",
                          *extra)
        assert res.returncode in (0, 1), res.stderr
        return res.returncode, {f["id"]: f["status"] for f in json.loads(res.stdout)["findings"]}

    code, found = check()
    assert code == 0 and found["attest.quote.signature"] == "pass" and found["attest.quote.signer"] == "pass"
    assert found["attest.quote.pcr-digest"] == "pass"

    # changed nonce: named
    code, found = check(nonce_hex="ff" + nonce[2:])
    assert code == 1 and found["attest.quote.nonce"] == "fail" and found["attest.quote.signature"] == "pass"

    # changed PCR value: named
    good_pcrs = (d / "q.pcrs").read_bytes()
    bad = bytearray(good_pcrs)
    bad[150] ^= 0x80
    (d / "q.pcrs").write_bytes(bytes(bad))
    code, found = check()
    assert code == 1 and found["attest.quote.pcr-digest"] == "fail"
    (d / "q.pcrs").write_bytes(good_pcrs)

    # changed signature byte: named
    sig = bytearray((d / "q.sig").read_bytes())
    sig[-5] ^= 1
    (d / "q.sig").write_bytes(bytes(sig))
    code, found = check()
    assert code == 1 and found["attest.quote.signature"] == "fail"

    # another AK: the signature fails and the qualified signer is wrong
    (d / "q.sig").write_bytes(bytes(sig[:-5]) + bytes([sig[-5] ^ 1]) + bytes(sig[-4:]))
    r = tt(swtpm, "tpm2_createak", "-C", "ek.ctx", "-c", "ak2.ctx", "-G", "rsa", "-u", "ak2.pub", cwd=d)
    assert r.returncode == 0, r.stderr
    code, found = check(ak="ak2.pub")
    assert code == 1 and found["attest.quote.signature"] == "fail" and found["attest.quote.signer"] == "fail"

    # a signature file that does not parse is named as itself, not as the -m file (issue 18)
    (d / "bad.sig").write_bytes(b"\x00\x14garbage")
    res = obelisk_cli("attest", "checkquote", "--ak", str(d / "ak.pub"), "-m", str(d / "q.msg"),
                      "-s", str(d / "bad.sig"), "-f", str(d / "q.pcrs"), "-q", nonce)
    assert res.returncode == 2 and res.stderr.count("\n") == 1 and str(d / "bad.sig") in res.stderr, res.stderr


def _boot(swtpm, tmp_path) -> eventlog.EventLog:
    """A firmware log whose events are also extended into the swtpm, as firmware would."""
    log = eventlog.build([(0, 0x8, b"S-CRTM 1.0"), (0, 0x80000008, b"firmware blob"),
                          (7, 0x80000001, synth.variable("SecureBoot", b"\1")), (7, 4, b"\0\0\0\0"),
                          (4, 0x80000003, b"shim"),
                          (4, 0x80000003, b"kernel"), (9, 0xD, b"initrd"), (8, 0xD, b"cmdline ima_policy=tcb")],
                         banks=("sha1", "sha256"))
    for ev in log.events[1:]:
        tpm.extend_pcr(swtpm.tcti, ev.pcr, ev.data)
    (tmp_path / "eventlog.bin").write_bytes(eventlog.serialize(log))
    return log


def _ima_list(swtpm, tmp_path, entries: int = 20, aggregate_bank: str = "sha256") -> bytes:
    """An IMA list (boot_aggregate first) whose entries are extended into PCR 10 as the kernel would."""
    import hashlib

    from obelisk.ima_policy import measurement_list as ml

    boot = range(10) if aggregate_bank != "sha1" else range(8)  # SHA-1 boot_aggregate covers PCR 0-7
    pcrs = tpm.pcr_values(swtpm.tcti, aggregate_bank, boot)
    aggregate = hashlib.new(aggregate_bank, b"".join(pcrs[i] for i in boot)).digest()
    items = [ml.make_entry("ima-ng", [ml.digest_field(aggregate_bank, aggregate), ml.name_field("boot_aggregate")],
                           number=1)]
    for i in range(2, entries + 1):
        items.append(ml.make_entry("ima-ng", [ml.digest_field("sha256", hashlib.sha256(b"f%d" % i).digest()),
                                              ml.name_field(f"/usr/bin/tool{i}")], number=i))
    from tpm2_pytss import ESYS_TR, TPM2_ALG, TPML_DIGEST_VALUES, TPMT_HA

    with tpm.open_tpm(swtpm.tcti) as esapi:
        for e in items:
            digest = TPMT_HA(hashAlg=TPM2_ALG.SHA256)
            digest.digest.sha256 = hashlib.sha256(e.template_data).digest()
            esapi.pcr_extend(ESYS_TR.PCR10, TPML_DIGEST_VALUES([digest]))
    data = ml.serialize_binary(items)
    (tmp_path / "ima.bin").write_bytes(data)
    return data


def test_evidence_bundle_end_to_end(swtpm, tmp_path, enrolled, obelisk_cli):
    _boot(swtpm, tmp_path)
    _ima_list(swtpm, tmp_path)
    nonce = os.urandom(20).hex()
    bundle = tmp_path / "evidence.json"
    res = obelisk_cli("attest", "evidence", "--tcti", swtpm.tcti, "--nonce", nonce, "--eventlog",
                      str(tmp_path / "eventlog.bin"), "--ima", str(tmp_path / "ima.bin"), "-o", str(bundle))
    assert res.returncode == 0, res.stderr
    doc = json.loads(bundle.read_text())
    assert doc["schema"] == "obelisk.evidence/1" and doc["ima_log"]["format"] == "binary"
    assert set(doc["quote"]["pcrs"]) == {str(i) for i in range(12)} and doc["kernel"]["release"]

    state = tmp_path / "verifier-state.json"
    args = ["attest", "verify", str(bundle), "--nonce", nonce, "--ak", str(enrolled), "--state", str(state),
            "--format", "json"]
    res = obelisk_cli(*args)
    found = {f["id"]: f for f in json.loads(res.stdout)["findings"]}
    assert res.returncode == 0, [f for f in found.values() if f["status"] != "pass"]
    assert all(found[f"attest.eventlog.pcr{i}"]["status"] == "pass" for i in range(10))
    # the IMA component's checks, fed with the quoted PCRs
    assert found["ima.pcr.10.sha256"]["status"] == "pass"
    assert found["ima.boot-aggregate"]["status"] == "pass"
    assert found["ima.log.template-hashes"]["status"] == "pass"
    assert json.loads(state.read_text())  # counters stored

    # the same bundle again: the clock did not advance, a replay
    res = obelisk_cli(*args)
    found = {f["id"]: f for f in json.loads(res.stdout)["findings"]}
    assert res.returncode == 1 and found["attest.quote.clock"]["status"] == "fail"
    assert "clock did not advance" in found["attest.quote.clock"]["detail"]


def test_event_log_not_matching_quote_names_the_pcr(swtpm, tmp_path, enrolled):
    log = _boot(swtpm, tmp_path)
    tpm.extend_pcr(swtpm.tcti, 7, b"an event the log does not show")
    nonce = os.urandom(16)
    ev = evidence.collect(nonce, swtpm.tcti, event_log_path=str(tmp_path / "eventlog.bin"),
                          ima_path=str(_ima_list(swtpm, tmp_path) and tmp_path / "ima.bin"))
    ak = akrecord.parse(enrolled.read_bytes(), str(enrolled))
    report, _ = verify.verify(evidence.parse(evidence.serialize(ev)), verify.Options(nonce=nonce, ak=ak))
    st = statuses(report)
    assert st["attest.eventlog.pcr7"] is Status.FAIL
    assert all(st[f"attest.eventlog.pcr{i}"] is Status.PASS for i in range(10) if i != 7)
    assert st["attest.quote.signature"] is Status.PASS
    assert len(log.events) == 9

    # a tampered PCR value in the bundle is caught by the digest, and then no log is trusted
    doc = json.loads(evidence.serialize(ev))
    doc["quote"]["pcrs"]["7"] = "00" * 32
    report, counters = verify.verify(evidence.parse(json.dumps(doc)), verify.Options(nonce=nonce, ak=ak))
    st = statuses(report)
    assert st["attest.quote.pcr-digest"] is Status.FAIL and st["attest.eventlog"] is Status.ERROR
    assert counters is None


def test_verify_rejects_hostile_bundles_with_one_line(tmp_path, obelisk_cli, swtpm, enrolled):
    nonce = "00" * 16
    ev = evidence.collect(bytes(16), swtpm.tcti, event_log_path=None, ima_path=None)
    good = json.loads(evidence.serialize(ev))
    cases = {
        "truncated.json": evidence.serialize(ev)[:100],
        "type.json": json.dumps({**good, "quote": []}),
        "b64.json": json.dumps({**good, "quote": {**good["quote"], "attest": "***"}}),
        "attest.json": json.dumps({**good, "quote": {
            **good["quote"], "attest": base64.b64encode(b"\xff\x54\x43\x47\x80\x18").decode()}}),
        "trailing.json": json.dumps({**good, "quote": {**good["quote"], "attest": base64.b64encode(
            base64.b64decode(good["quote"]["attest"]) + b"\0").decode()}}),
        "magic.json": json.dumps({**good, "quote": {**good["quote"], "attest": base64.b64encode(
            b"\0\0\0\0" + base64.b64decode(good["quote"]["attest"])[4:]).decode()}}),
    }
    for name, text in cases.items():
        (tmp_path / name).write_text(text)
        res = obelisk_cli("attest", "verify", str(tmp_path / name), "--nonce", nonce, "--ak", str(enrolled))
        assert res.returncode == 2, (name, res.stdout, res.stderr)
        assert res.stderr.count("\n") == 1 and "Traceback" not in res.stderr, (name, res.stderr)
        assert name in res.stderr
    res = obelisk_cli("attest", "verify", str(tmp_path / "trailing.json"), "--nonce", nonce, "--ak", str(enrolled))
    assert "trailing" in res.stderr
    res = obelisk_cli("attest", "verify", str(tmp_path / "magic.json"), "--nonce", nonce, "--ak", str(enrolled))
    assert "magic" in res.stderr


def test_tcti_from_environment(swtpm, tmp_path, obelisk_cli):
    res = obelisk_cli("attest", "ak", "create", "--record", str(tmp_path / "ak.json"), env=swtpm.env)
    assert res.returncode == 0, res.stderr
    res = obelisk_cli("attest", "ak", "create", "--record", str(tmp_path / "ak.json"),
                      env={"TPM2TOOLS_TCTI": "swtpm:host=127.0.0.1,port=1"})
    assert res.returncode == 2 and "TCTI" in res.stderr and res.stderr.count("\n") == 1


def _ca(tmp_path, name: str):
    import datetime as dt

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    (tmp_path / f"{name}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / f"{name}.key").write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                             serialization.PrivateFormat.PKCS8,
                                                             serialization.NoEncryption()))
    return tmp_path / f"{name}.pem", tmp_path / f"{name}.key"


def test_verify_against_signed_image_manifest(swtpm, tmp_path, enrolled, obelisk_cli):
    """--reference: the build's signed manifest (signature vs --cert, predicted PCRs, IMA reference values)."""
    import hashlib
    from dataclasses import replace

    from obelisk.attest.agent_certs import issue
    from obelisk.ima_policy import reference
    from obelisk.image import manifest as mf
    from obelisk.signer.keys import load_certificate, load_signing_key
    from tests.image.manifests import sample_manifest

    _boot(swtpm, tmp_path)
    _ima_list(swtpm, tmp_path, entries=6)
    nonce = os.urandom(20)
    ev = evidence.collect(nonce, swtpm.tcti, event_log_path=str(tmp_path / "eventlog.bin"),
                          ima_path=str(tmp_path / "ima.bin"))
    (tmp_path / "evidence.json").write_text(evidence.serialize(ev))

    ca, ca_key = _ca(tmp_path, "customer-ca")
    other_ca, _ = _ca(tmp_path, "other-ca")
    signer = issue(ca, ca_key, tmp_path / "signer", "image signer", server=False)
    files = {f"/usr/bin/tool{i}": ("sha256:" + hashlib.sha256(b"f%d" % i).hexdigest(),)
             for i in range(2, 6)}  # tool6 missing
    sample = sample_manifest()
    doc = replace(sample, image=mf.Image(name="worker", version="1"),
                  ima_reference=reference.ReferenceManifest(
                      files, (reference.Rule("/var/**", "glob", reference.ANY_DIGEST, "allowed to vary"),)),
                  pcrs=replace(sample.pcrs, predicted={7: ev.pcrs[7], 4: b"\0" * 32}))
    out = tmp_path / "image"
    out.mkdir()
    data = mf.serialize(doc)
    (out / "manifest.json").write_bytes(data)
    sig = mf.sign(data, load_signing_key(str(signer.key)), load_certificate(signer.cert))
    (out / "manifest.json.sig").write_text(json.dumps(sig.to_json()))

    def run(ca_path) -> dict:
        res = obelisk_cli("attest", "verify", str(tmp_path / "evidence.json"), "--nonce", nonce.hex(), "--ak",
                          str(enrolled), "--reference", str(out / "manifest.json"), "--cert", str(ca_path),
                          "--format", "json")
        assert res.returncode in (0, 1), res.stderr
        return {f["id"]: f for f in json.loads(res.stdout)["findings"]}

    found = run(ca)
    assert found["attest.reference.signature"]["status"] == "pass"
    assert found["attest.reference.pcr7"]["status"] == "pass"
    assert found["attest.reference.pcr4"]["status"] == "fail"  # the build predicted another PCR 4
    assert found["ima.pcr.10.sha256"]["status"] == "pass"
    unknown = [f for f in found.values() if f["id"].startswith("ima.entry.") and f["status"] == "fail"]
    assert [f["id"] for f in unknown] == ["ima.entry.6.unknown-file"]

    found = run(other_ca)
    assert found["attest.reference.signature"]["status"] == "fail"
    assert "issued by" in found["attest.reference.signature"]["detail"]


def test_sha1_boot_aggregate_checked_from_the_event_log(swtpm, tmp_path, enrolled):
    """The quote covers sha256 only; a SHA-1 boot_aggregate is recomputed from the event log's SHA-1 bank,
    trusted because the log's sha256 replay matched the quote."""
    _boot(swtpm, tmp_path)
    _ima_list(swtpm, tmp_path, entries=4, aggregate_bank="sha1")
    nonce = os.urandom(16)
    ev = evidence.collect(nonce, swtpm.tcti, event_log_path=str(tmp_path / "eventlog.bin"),
                          ima_path=str(tmp_path / "ima.bin"))
    ak = akrecord.parse(enrolled.read_bytes(), str(enrolled))
    opts = verify.Options(nonce=nonce, ak=ak)
    verify.configure_references(opts, None, None)
    report, _ = verify.verify(ev, opts)
    st = statuses(report)
    assert st["ima.boot-aggregate"] is Status.PASS and st["ima.pcr.10.sha256"] is Status.PASS


def _install_ek_certificate(swtpm, tmp_path, ca_pem, ca_key_pem) -> None:
    """Play the TPM manufacturer: certify the EK with our CA and store the DER in NV 0x01C00002."""
    import datetime as dt

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from tpm2_pytss import ESYS_TR, TPM2_ALG, TPM2B_NV_PUBLIC, TPMA_NV, TPMS_NV_PUBLIC

    info = tpm.create_keys(swtpm.tcti)
    ek_key = akrecord._from_public(info.ek_public, "EK")[0]
    ca = x509.load_pem_x509_certificate(ca_pem.read_bytes())
    ca_key = serialization.load_pem_private_key(ca_key_pem.read_bytes(), None)
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(x509.Name([])).issuer_name(ca.subject).public_key(ek_key)
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=3650))
            .add_extension(x509.SubjectAlternativeName([x509.DirectoryName(x509.Name([]))]), critical=True)
            .sign(ca_key, hashes.SHA256()))
    der = cert.public_bytes(serialization.Encoding.DER)
    with tpm.open_tpm(swtpm.tcti) as esapi:
        attrs = TPMA_NV.OWNERWRITE | TPMA_NV.AUTHREAD | TPMA_NV.OWNERREAD | TPMA_NV.NO_DA
        handle = esapi.nv_define_space(None, TPM2B_NV_PUBLIC(nvPublic=TPMS_NV_PUBLIC(
            nvIndex=tpm.EK_CERT_INDEX["rsa"], nameAlg=TPM2_ALG.SHA256, attributes=attrs, dataSize=len(der))))
        for off in range(0, len(der), 512):
            esapi.nv_write(handle, der[off:off + 512], off, auth_handle=ESYS_TR.OWNER)


def test_ek_certificate_checked_against_the_manufacturer_ca(swtpm, tmp_path, obelisk_cli):
    ca, ca_key = _ca(tmp_path, "tpm-vendor-ca")
    other, _ = _ca(tmp_path, "not-the-vendor")
    _install_ek_certificate(swtpm, tmp_path, ca, ca_key)
    res = obelisk_cli("attest", "ak", "create", "--tcti", swtpm.tcti, "--record", str(tmp_path / "ak.json"))
    assert res.returncode == 0, res.stderr
    record = json.loads((tmp_path / "ak.json").read_text())
    assert record["ek_certificate"].startswith("30")  # DER read from the TPM's NV

    def make(ca_path) -> subprocess.CompletedProcess[str]:
        return obelisk_cli("attest", "credential", "make", "--ak", str(tmp_path / "ak.json"), "--ek-ca", str(ca_path),
                           "--secret-out", str(tmp_path / "secret"), "--challenge", str(tmp_path / "chal.json"))

    res = make(ca)
    assert res.returncode == 0, res.stderr
    assert "warning" not in res.stderr
    res = make(other)
    assert res.returncode == 1 and "not issued by the given CA" in res.stderr
    # a record whose EK was swapped (say, for a software key the attacker controls) no longer matches the certificate
    from obelisk.tpm.swtpm import SoftwareTPM
    with SoftwareTPM.start(tmp_path / "attacker") as attacker:
        fake = tpm.create_keys(attacker.tcti)
    record["ek_public"] = fake.ek_public.hex()
    record["qualified_name"] = ""
    (tmp_path / "swapped.json").write_text(json.dumps(record))
    res = obelisk_cli("attest", "credential", "make", "--ak", str(tmp_path / "swapped.json"), "--ek-ca", str(ca),
                      "--secret-out", str(tmp_path / "secret2"), "--challenge", str(tmp_path / "chal2.json"))
    assert res.returncode == 1 and "certifies another key" in res.stderr
