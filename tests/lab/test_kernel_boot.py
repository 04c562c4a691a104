from __future__ import annotations

import stat
from pathlib import Path

import pytest

from obelisk.core.findings import Status
from obelisk.image import cpio
from obelisk.lab import kernel_boot as bootcheck
from obelisk.lab.qemu import QemuRun

CONSOLE = """[    0.000000] Linux version 6.1.192 (obelisk@obelisk) #1 Thu Jan  1 00:00:00 UTC 1970
[    2.100000] tpm_tis MSFT0101:00: 2.0 TPM (device-id 0x1, rev-id 1)
OBELISK-BOOT-BEGIN
OBELISK-FACT uname=6.1.192
OBELISK-FACT ima_dir=yes
OBELISK-FACT ima_first=10 5b2a... ima-ng sha256:ab12... boot_aggregate
OBELISK-FACT ima_entries=1
OBELISK-FACT dev_tpm0=yes\r
OBELISK-FACT sys_tpm0=yes
OBELISK-FACT tpm_version=2
OBELISK-FACT proc_modules=no
OBELISK-FACT lockdown=none integrity [confidentiality]
OBELISK-BOOT-END
"""


def test_initramfs_is_reproducible_and_complete():
    busybox = Path("/bin/busybox")
    a, b = bootcheck.initramfs(busybox), bootcheck.initramfs(busybox)
    assert a == b
    entries = {e.name: e for e in cpio.parse(a)}
    assert stat.S_IMODE(entries["init"].mode) == 0o755 and entries["init"].data.startswith(b"#!/bin/busybox sh")
    assert stat.S_ISCHR(entries["dev/console"].mode) and (
        entries["dev/console"].rdev_major, entries["dev/console"].rdev_minor) == (5, 1)
    assert entries["bin/busybox"].data == busybox.read_bytes()


def test_findings_from_console():
    found = {f.id: f for f in bootcheck.findings(CONSOLE, "bzImage")}
    assert all(f.status is Status.PASS for f in found.values()), found
    bad = CONSOLE.replace("dev_tpm0=yes", "dev_tpm0=no").replace("sys_tpm0=yes", "sys_tpm0=no") \
                 .replace("boot_aggregate", "other")
    found = {f.id: f for f in bootcheck.findings(bad, "bzImage")}
    assert found["kernel.boot.tpm"].status is Status.FAIL
    assert found["kernel.boot.ima-boot-aggregate"].status is Status.FAIL
    none = bootcheck.findings("Kernel panic - not syncing: No working init found.\n", "bzImage")
    assert len(none) == 1 and none[0].status is Status.FAIL and "Kernel panic" in none[0].detail


def test_qemu_command_line(tmp_path):
    run = QemuRun(kernel=tmp_path / "bz", initramfs=tmp_path / "i.cpio", console=tmp_path / "serial.log",
                  tpm_socket=tmp_path / "swtpm.sock", cmdline="console=ttyS0")
    argv = run.argv("tcg")
    assert "-nographic" in argv and f"file:{tmp_path / 'serial.log'}" in argv
    assert f"socket,id=chrtpm,path={tmp_path / 'swtpm.sock'}" in argv and "tpm-tis,tpmdev=tpm0" in argv
    assert "q35,accel=tcg" in argv


@pytest.mark.swtpm
def test_swtpm_socket_starts_and_stops(tmp_path):
    from obelisk.tpm.swtpm import SwtpmSocket

    with SwtpmSocket.start(tmp_path / "tpm") as tpm:
        assert tpm.socket.exists() and tpm.process is not None and tpm.process.poll() is None
        proc = tpm.process
    assert proc.poll() is not None
