"""The signer's commands as a user runs them: exit codes, one-line errors, JSON."""

import json
import os
import stat

import pytest

from .conftest import make_tree, regular_files


@pytest.fixture(scope="module")
def cli_keys(tmp_path_factory):
    from tests.conftest import run_obelisk

    out = tmp_path_factory.mktemp("clikeys") / "keys"
    proc = run_obelisk("keys", "generate", "--out", str(out), "--type", "ecdsa-p256", "--format", "json")
    assert proc.returncode == 0, proc.stderr
    return out, json.loads(proc.stdout)


def one_line_error(proc, *needles):
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_keys_generate_json_and_modes(cli_keys):
    out, data = cli_keys
    assert data["ima_key_id"] and data["key_type"] == "ecdsa-p256"
    assert stat.S_IMODE(os.stat(out / "ima.key").st_mode) == 0o600
    assert (out / "ca.der").is_file()


def test_keys_generate_refuses_to_overwrite(obelisk_cli, cli_keys):
    out, _ = cli_keys
    one_line_error(obelisk_cli("keys", "generate", "--out", str(out)), "refusing to overwrite")


def test_sign_then_verify_exit_codes_and_named_failures(obelisk_cli, cli_keys, tmp_path):
    out, _ = cli_keys
    tree = make_tree(tmp_path / "t")
    signed = obelisk_cli("ima", "sign", "--key", str(out / "ima.key"), "--cert", str(out / "ima.pem"),
                         "--format", "json", str(tree))
    assert signed.returncode == 0, signed.stderr
    summary = json.loads(signed.stdout)
    assert summary["signed"] == 16 and summary["skipped"] == {"symlink": 1, "fifo": 1}

    ok = obelisk_cli("ima", "verify", "--cert", str(out / "ima.der"), str(tree), "--format", "json")
    assert ok.returncode == 0
    assert json.loads(ok.stdout)["summary"]["fail"] == 0

    victim = regular_files(tree)[3]
    victim.write_bytes(victim.read_bytes() + b"!")
    bad = obelisk_cli("ima", "verify", "--cert", str(out / "ima.der"), str(tree), "--format", "text")
    assert bad.returncode == 1
    assert str(victim) in bad.stdout and "bad-signature" in bad.stdout


def test_xattr_file_output_is_written_whole(obelisk_cli, cli_keys, tmp_path):
    out, _ = cli_keys
    tree = make_tree(tmp_path / "t")
    dump = tmp_path / "sigs.dump"
    proc = obelisk_cli("ima", "sign", "--key", str(out / "ima.key"), "--cert", str(out / "ima.pem"),
                       "--xattr-file", str(dump), str(tree), "--format", "json")
    assert proc.returncode == 0, proc.stderr
    assert dump.read_bytes().count(b"# file: ") == 16
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".sigs.dump")]  # no temporary left behind
    verify = obelisk_cli("ima", "verify", "--cert", str(out / "ima.pem"), "--xattr-file", str(dump), str(tree))
    assert verify.returncode == 0, verify.stdout


def test_bad_input_is_one_line_with_exit_2(obelisk_cli, cli_keys, tmp_path, other_keys):
    out, _ = cli_keys
    tree = make_tree(tmp_path / "t")
    key, cert = str(out / "ima.key"), str(out / "ima.pem")
    one_line_error(obelisk_cli("ima", "sign", "--key", str(tmp_path / "nokey"), "--cert", cert, str(tree)),
                   "nokey", "cannot read key")
    unreadable = tmp_path / "unreadable.key"
    unreadable.write_bytes((out / "ima.key").read_bytes())
    unreadable.chmod(0)
    if os.geteuid() != 0:  # root reads anything; a directory is unreadable as a key for everyone
        one_line_error(obelisk_cli("ima", "sign", "--key", str(unreadable), "--cert", cert, str(tree)), "cannot read")
    one_line_error(obelisk_cli("ima", "sign", "--key", str(tmp_path), "--cert", cert, str(tree)), "cannot read key")
    one_line_error(obelisk_cli("ima", "sign", "--key", key, "--cert", str(other_keys.ima_cert), str(tree)),
                   "does not match")
    one_line_error(obelisk_cli("ima", "sign", "--key", key, "--cert", key, str(tree)), "not an X.509 certificate")
    from .test_keys import _damaged_copy  # the signer skips OpenSSL's RSA check and proves the key instead

    damaged = _damaged_copy(other_keys, tmp_path)
    one_line_error(obelisk_cli("ima", "sign", "--key", str(damaged), "--cert", str(other_keys.ima_cert), str(tree)),
                   "signatures its certificate does not verify")
    assert not any("security.ima" in os.listxattr(f) for f in regular_files(tree))  # nothing signed
    one_line_error(obelisk_cli("ima", "sign", "--key", key, "--cert", cert, str(tmp_path / "missing")),
                   "missing", "cannot read")

    enc_dir = tmp_path / "enc"
    assert obelisk_cli("keys", "generate", "--out", str(enc_dir), "--passphrase-env", "P",
                       env={"P": "s3cret"}).returncode == 0
    one_line_error(obelisk_cli("ima", "sign", "--key", str(enc_dir / "ima.key"), "--cert", str(enc_dir / "ima.pem"),
                               "--passphrase-env", "P", str(tree), env={"P": "wrong"}), "wrong passphrase")
    assert obelisk_cli("ima", "sign", "--key", str(enc_dir / "ima.key"), "--cert", str(enc_dir / "ima.pem"),
                       "--passphrase-env", "P", str(tree), env={"P": "s3cret"}).returncode == 0

    # a malformed security.ima value is a named failure of verify (exit 1), not a crash
    dump = tmp_path / "bad.dump"
    dump.write_bytes(b"# file: usr/bin/tool0\nsecurity.ima=0sAwIE\n")
    bad_dump = obelisk_cli("ima", "verify", "--cert", cert, "--xattr-file", str(dump), str(tree), "--format", "text")
    assert bad_dump.returncode == 1 and "Traceback" not in bad_dump.stderr
    assert "malformed" in bad_dump.stdout and "tool0" in bad_dump.stdout
    broken = tmp_path / "broken.dump"
    broken.write_bytes(b"security.ima=0sAA==\n")
    one_line_error(obelisk_cli("ima", "verify", "--cert", cert, "--xattr-file", str(broken), str(tree)),
                   "broken.dump", "line 1")


def test_usage_errors_exit_2_without_traceback(obelisk_cli):
    proc = obelisk_cli("ima", "sign", "--hash", "md5", "x")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert obelisk_cli("nonsense").returncode == 2


def test_a_file_that_cannot_be_read_while_signing_is_named(tmp_path, rsa_keys):
    from obelisk.core.errors import InputError
    from obelisk.signer import hashalgo
    from obelisk.signer.keys import load_signing_key
    from obelisk.signer.sign import sign_files

    files = [(b"vanished", os.fsencode(tmp_path / "vanished"))]
    with pytest.raises(InputError, match=f"{tmp_path}/vanished: No such file"):
        sign_files(iter(files), load_signing_key(str(rsa_keys.ima_key)), b"1234", hashalgo.by_name("sha256"), jobs=1,
                   write_xattr=True, quiet=True)


def test_a_file_that_cannot_be_read_while_verifying_is_a_named_failure(tmp_path, rsa_keys):
    from obelisk.signer.keys import load_certificate
    from obelisk.signer.tree import TreeFile
    from obelisk.signer.verify import Outcome, TrustedKeys, verify_files

    files = [TreeFile(str(tmp_path), str(tmp_path / "vanished"), b"vanished")]
    (result,) = verify_files(files, TrustedKeys([("c", load_certificate(rsa_keys.ima_cert))]), None, jobs=1,
                             quiet=True)
    assert result.outcome is Outcome.UNREADABLE and result.relpath == "vanished"


def _run_in_terminal(args: list[str], env: dict[str, str]) -> str:
    """Run a command with a pseudo-terminal as stdout/stderr; return what a person would see."""
    import pty
    import subprocess
    import sys

    from tests.conftest import ROOT

    primary, secondary = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "obelisk", *args], stdin=subprocess.DEVNULL, stdout=secondary,
                            stderr=secondary, env={**env, "PYTHONPATH": str(ROOT / "src"), "TERM": "xterm"})
    os.close(secondary)
    chunks = []
    while True:
        try:
            data = os.read(primary, 65536)
        except OSError:
            break
        if not data:
            break
        chunks.append(data)
    proc.wait(timeout=120)
    os.close(primary)
    return b"".join(chunks).decode(errors="replace")


def test_progress_on_a_terminal_and_silence_with_quiet(cli_keys, tmp_path):
    out, _ = cli_keys
    tree = tmp_path / "t"
    for i in range(3000):
        (tree / f"d{i // 100}").mkdir(parents=True, exist_ok=True)
        (tree / f"d{i // 100}" / f"f{i}").write_bytes(b"x" * 64)
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    args = ["ima", "sign", "--key", str(out / "ima.key"), "--cert", str(out / "ima.pem"), str(tree)]
    shown = _run_in_terminal(args, env)
    assert "signing files" in shown and "signed 3000 files" in shown
    quiet = _run_in_terminal([*args, "--quiet"], env)
    assert "signing files" not in quiet and "signed 3000 files" in quiet
    in_ci = _run_in_terminal(args, {**env, "CI": "true"})
    assert "signing files" not in in_ci
