"""obelisk and evmctl (ima-evm-utils) must accept each other's signatures, byte for byte."""

import os
import shutil
import subprocess
from pathlib import Path

from obelisk.core import tools
from obelisk.signer import imasig
from obelisk.signer.keys import load_certificate, load_signing_key
from obelisk.signer.sign import sign_tree
from obelisk.signer.verify import Outcome, TrustedKeys, verify_tree

from .conftest import regular_files


def evmctl_verify(path: Path, cert_der: Path) -> bool:
    proc = subprocess.run([tools.which("evmctl"), "ima_verify", "--key", str(cert_der), str(path)],
                          capture_output=True, text=True)
    return proc.returncode == 0


def copy_tree(src: Path, dst: Path) -> None:
    shutil.copytree(src, dst, symlinks=True, ignore=lambda d, names: [n for n in names if n == "fifo"])


def xattr(path: Path) -> bytes:
    return os.getxattr(path, "security.ima")


def obelisk_sign(tree: Path, keys, **kw) -> None:
    sign_tree([str(tree)], load_signing_key(str(keys.ima_key)), load_certificate(keys.ima_cert), quiet=True, **kw)


def test_obelisk_signs_and_evmctl_accepts_every_file(tree, keys):
    obelisk_sign(tree, keys)
    files = regular_files(tree)
    assert len(files) == 16
    for f in files:
        assert evmctl_verify(f, keys.ima_cert_der), f
    report = verify_tree([str(tree)], [("ima.pem", load_certificate(keys.ima_cert))], quiet=True)
    assert not report.failed and report.findings[0].observed == "16 of 16 files verified"


def test_evmctl_signs_and_obelisk_accepts(tree, keys):
    subprocess.run([tools.which("evmctl"), "ima_sign", "-r", "--key", str(keys.ima_key), str(tree)],
                   check=True, capture_output=True)
    report = verify_tree([str(tree)], [("ima.der", load_certificate(keys.ima_cert_der))], quiet=True)
    assert not report.failed, report.findings


def test_rsa_signatures_are_byte_identical_to_evmctl(tree, rsa_keys, tmp_path):
    evm_tree = tmp_path / "evm"
    copy_tree(tree, evm_tree)
    obelisk_sign(tree, rsa_keys)
    subprocess.run([tools.which("evmctl"), "ima_sign", "-r", "--key", str(rsa_keys.ima_key), str(evm_tree)],
                   check=True, capture_output=True)
    for ours in regular_files(tree):
        theirs = evm_tree / ours.relative_to(tree)
        assert xattr(ours) == xattr(theirs), ours


def test_one_byte_changes_are_rejected_by_both(tree, keys, other_keys):
    obelisk_sign(tree, keys)
    files = [f for f in regular_files(tree) if f.stat().st_size > 0]
    content_changed, sig_changed = files[0], files[1]
    data = bytearray(content_changed.read_bytes())
    data[len(data) // 2] ^= 0x01
    content_changed.write_bytes(bytes(data))
    value = bytearray(xattr(sig_changed))
    value[-1] ^= 0x01
    os.setxattr(sig_changed, "security.ima", bytes(value))

    assert not evmctl_verify(content_changed, keys.ima_cert_der)
    assert not evmctl_verify(sig_changed, keys.ima_cert_der)
    assert not evmctl_verify(files[2], other_keys.ima_cert_der)  # wrong certificate

    report = verify_tree([str(tree)], [("ima.pem", load_certificate(keys.ima_cert))], quiet=True)
    failed = {f.target: f.observed for f in report.findings if f.status == "fail" and f.id != "ima.signatures"}
    assert failed == {str(content_changed): Outcome.BAD_SIGNATURE.value, str(sig_changed): Outcome.BAD_SIGNATURE.value}
    wrong = verify_tree([str(tree)], [("other.pem", load_certificate(other_keys.ima_cert))], quiet=True)
    unknown = [f for f in wrong.findings if f.observed == Outcome.UNKNOWN_KEY.value]
    assert len(unknown) == len(regular_files(tree))


def test_unsigned_hash_only_and_malformed_values_are_named(tree, rsa_keys):
    files = regular_files(tree)
    obelisk_sign(tree, rsa_keys)
    os.removexattr(files[0], "security.ima")
    subprocess.run([tools.which("evmctl"), "ima_hash", str(files[1])], check=True, capture_output=True)
    os.setxattr(files[2], "security.ima", b"\x03\x02\x04\x00\x00")
    trusted = TrustedKeys([("ima.pem", load_certificate(rsa_keys.ima_cert))])
    assert trusted.check(xattr(files[1]), str(files[1]))[0] is Outcome.UNSIGNED
    report = verify_tree([str(tree)], [("ima.pem", load_certificate(rsa_keys.ima_cert))], quiet=True)
    outcomes = {f.target: f.observed for f in report.findings if f.id != "ima.signatures"}
    assert outcomes == {str(files[0]): "unsigned", str(files[1]): "unsigned", str(files[2]): "malformed"}


def test_verity_v3_signatures_verify_and_detect_changes(tmp_path, keys):
    import io

    from obelisk.signer.keys import ima_key_id
    from obelisk.signer.verity import verity_digest

    f = tmp_path / "blob"
    f.write_bytes(os.urandom(10000))
    key = load_signing_key(str(keys.ima_key))
    cert = load_certificate(keys.ima_cert)
    algo = imasig.hashalgo.by_name("sha256")
    signed = imasig.verity_file_id_digest(algo, verity_digest(io.BytesIO(f.read_bytes())))
    value = imasig.serialize(imasig.ImaSignature(3, algo, ima_key_id(cert), key.sign_digest(signed, algo)))
    trusted = TrustedKeys([("ima.pem", cert)])
    assert trusted.check(value, str(f))[0] is Outcome.VALID
    f.write_bytes(f.read_bytes() + b"x")
    assert trusted.check(value, str(f))[0] is Outcome.BAD_SIGNATURE


def test_ecdsa_signatures_are_deterministic(tree, tmp_path, tmp_path_factory):
    from obelisk.signer import keygen

    keys = keygen.generate(tmp_path_factory.mktemp("ec"), "ecdsa-p256")
    other = tmp_path / "copy"
    copy_tree(tree, other)
    obelisk_sign(tree, keys)
    obelisk_sign(other, keys)
    for f in regular_files(tree):
        assert xattr(f) == xattr(other / f.relative_to(tree))


def test_a_certificate_that_does_not_fit_stops_the_workers_before_they_write(tmp_path, keys, other_keys):
    # the workers sign their first files while the parent reads the certificate: a wrong one must
    # leave every file untouched, in both output modes
    import pytest

    from obelisk.core.errors import InputError

    root = tmp_path / "many"
    for i in range(600):
        (root / f"d{i // 100}").mkdir(parents=True, exist_ok=True)
        (root / f"d{i // 100}" / f"f{i}").write_bytes(os.urandom(64))
    dump = tmp_path / "out.dump"
    for xattr_file in (None, str(dump)):
        with pytest.raises(InputError, match="does not match"):
            sign_tree([str(root)], load_signing_key(str(keys.ima_key)), str(other_keys.ima_cert), jobs=2,
                      xattr_file=xattr_file, quiet=True)
    assert not dump.exists()
    assert all("security.ima" not in os.listxattr(f) for f in regular_files(root))


def test_signatures_held_until_the_key_id_comes_are_all_written(tmp_path, keys, monkeypatch):
    # a worker that may hold only 3 open files waits for the key id whenever it has 3
    from obelisk.signer import sign

    monkeypatch.setattr(sign, "_held_fds_limit", lambda jobs: 3)
    root = tmp_path / "many"
    for i in range(300):
        (root / f"d{i // 50}").mkdir(parents=True, exist_ok=True)
        (root / f"d{i // 50}" / f"f{i}").write_bytes(os.urandom(64))
    summary = sign_tree([str(root)], load_signing_key(str(keys.ima_key)), str(keys.ima_cert), jobs=2, quiet=True)
    files = regular_files(root)
    assert summary.signed == len(files) == 300
    report = verify_tree([str(root)], [("ima", load_certificate(keys.ima_cert))], quiet=True)
    assert not report.failed and report.findings[0].observed == "300 of 300 files verified", report.findings[:3]
