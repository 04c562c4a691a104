"""--xattr-file output feeds `gensquashfs -A`; the signatures read back from the image verify."""

import os
import subprocess

from obelisk.core import tools
from obelisk.signer.keys import load_certificate, load_signing_key
from obelisk.signer.sign import sign_tree
from obelisk.signer.verify import Outcome, TrustedKeys, verify_tree

from .conftest import regular_files


def test_gensquashfs_image_carries_signatures_that_verify(tree, keys, tmp_path):
    dump = tmp_path / "ima.dump"
    sign_tree([str(tree)], load_signing_key(str(keys.ima_key)), load_certificate(keys.ima_cert),
              xattr_file=str(dump), quiet=True)
    # nothing was written to the files themselves
    assert all("security.ima" not in os.listxattr(f) for f in regular_files(tree))
    os.unlink(tree / "etc/fifo")
    image = tmp_path / "rootfs.sqfs"
    tools.run("gensquashfs", ["--pack-dir", str(tree), "--xattr-file", str(dump), "--defaults", "mtime=0",
                              "--quiet", str(image)])

    trusted = TrustedKeys([("ima.pem", load_certificate(keys.ima_cert))])
    files = regular_files(tree)
    for f in files:
        rel = "/" + str(f.relative_to(tree))
        out = tools.run("rdsquashfs", ["-x", rel, str(image)]).stdout.decode()
        (line,) = [line for line in out.splitlines() if line.startswith("security.ima=")]
        value = bytes.fromhex(line.split("=0x", 1)[1])
        assert trusted.check(value, str(f))[0] is Outcome.VALID, rel

    # unpacked with the xattrs set (by rdsquashfs and by squashfs-tools' unsquashfs), every file verifies
    for unpacked, cmd, args in [
        (tmp_path / "rd", "rdsquashfs", ["-u", "/", "-p", str(tmp_path / "rd"), "-X", str(image)]),
        (tmp_path / "un", "unsquashfs", ["-q", "-n", "-xattrs", "-d", str(tmp_path / "un"), str(image)]),
    ]:
        tools.run(cmd, args)
        report = verify_tree([str(unpacked)], [("ima.pem", load_certificate(keys.ima_cert))], quiet=True)
        assert not report.failed and report.findings[0].observed == f"{len(files)} of {len(files)} files verified"
        subprocess.run([tools.which("evmctl"), "ima_verify", "--key", str(keys.ima_cert_der),
                        str(unpacked / "usr/bin/large")], check=True, capture_output=True)

    # and the dump itself verifies against the tree without touching it
    report = verify_tree([str(tree)], [("ima.pem", load_certificate(keys.ima_cert))], xattr_file=str(dump), quiet=True)
    assert not report.failed
