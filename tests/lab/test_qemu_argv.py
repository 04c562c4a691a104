"""The qemu-system-x86_64 command lines of both lab uses, pinned: the kernel boot proof (`obelisk kernel
boot`) as it was before lab/qemu.py became the one launcher, and `obelisk boot` (UEFI, and --direct-kernel).

Both are driven through their real entry points with Popen, swtpm and the agent wait replaced, so the
argv QEMU would receive is compared whatever function builds it. The e2e tests that boot real nodes
need a kernel build; these run everywhere.
"""

from __future__ import annotations

import dataclasses
import subprocess
from pathlib import Path
from typing import ClassVar

import pytest

from obelisk.core import tools
from tests.image.manifests import sample_manifest

QEMU = "/usr/bin/qemu-system-x86_64"

# `obelisk boot` of a provisioned node for out=/n/out, run=/n/run, port 12345, 768 MiB, no OBELISK_QEMU_ACCEL:
# OVMF's SMM Secure Boot build (smm=on and a secure pflash, as libvirt wires it) with the node's own
# variable store, the node's disk.raw written to, the config disk read-only, the NIC without its option
# ROM (iPXE would try a network boot first). Everything else as before the firmware boot.
BOOT_ARGV = [
    "-machine", "q35,smm=on", "-cpu", "max", "-m", "768", "-smp", "1", "-nographic", "-no-reboot", "-nodefaults",
    "-global", "driver=cfi.pflash01,property=secure,value=on",
    "-drive", "if=pflash,format=raw,unit=0,file=/usr/share/OVMF/OVMF_CODE_4M.secboot.fd,readonly=on",
    "-drive", "if=pflash,format=raw,unit=1,file={run}/ovmf-vars.fd",
    "-drive", "file={run}/disk.raw,if=virtio,format=raw",
    "-drive", "file={run}/config.img,if=virtio,format=raw,readonly=on",
    "-netdev", "user,id=n0,restrict=on,hostfwd=tcp:127.0.0.1:12345-10.0.2.15:8443",
    "-device", "virtio-net-pci,netdev=n0,romfile=", "-device", "virtio-rng-pci",
    "-chardev", "socket,id=chrtpm,path={run}/swtpm.sock", "-tpmdev", "emulator,id=tpm0,chardev=chrtpm",
    "-device", "tpm-tis,tpmdev=tpm0",
    "-serial", "file:{run}/serial.log", "-monitor", "none",
]

# `obelisk boot --direct-kernel`: the pre-UEFI command line (lab/boot.py's qemu_args before the refactor)
# with the node's disk.raw in place of rootfs.squashfs and var.img.
DIRECT_KERNEL_ARGV = [
    "-machine", "q35", "-cpu", "max", "-m", "768", "-smp", "1", "-nographic", "-no-reboot", "-nodefaults",
    "-kernel", "{out}/bzImage", "-initrd", "{out}/initramfs.cpio", "-append", "console=ttyS0 quiet extra=1",
    "-drive", "file={run}/disk.raw,if=virtio,format=raw",
    "-drive", "file={run}/config.img,if=virtio,format=raw,readonly=on",
    "-netdev", "user,id=n0,restrict=on,hostfwd=tcp:127.0.0.1:12345-10.0.2.15:8443",
    "-device", "virtio-net-pci,netdev=n0", "-device", "virtio-rng-pci",
    "-chardev", "socket,id=chrtpm,path={run}/swtpm.sock", "-tpmdev", "emulator,id=tpm0,chardev=chrtpm",
    "-device", "tpm-tis,tpmdev=tpm0",
    "-serial", "file:{run}/serial.log", "-monitor", "none",
]

# lab/qemu.py's QemuRun.argv as lab/kernel_boot.py used it before the refactor.
KERNEL_BOOT_ARGV = [
    "-machine", "q35,accel={accel}", "-cpu", "{cpu}", "-m", "512", "-smp", "1", "-nographic", "-no-reboot",
    "-nodefaults", "-kernel", "{kernel}", "-append", "console=ttyS0 panic=-1 ima_policy=tcb",
    "-serial", "file:{work}/serial.log", "-monitor", "none", "-initrd", "{work}/initramfs.cpio",
    "-chardev", "socket,id=chrtpm,path={work}/tpm/swtpm.sock", "-tpmdev", "emulator,id=tpm0,chardev=chrtpm",
    "-device", "tpm-tis,tpmdev=tpm0",
]

_FLAGS = {"-nographic", "-no-reboot", "-nodefaults"}
# Options whose relative order QEMU acts on (bus and slot assignment, /dev/vdX order).
_ORDERED = {"-drive", "-device", "-netdev", "-chardev", "-tpmdev"}


def _semantics(argv: list[str]) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(every other option, sorted; the device options in order): equal for command lines QEMU treats alike."""
    pairs, i = [], 0
    while i < len(argv):
        if argv[i] in _FLAGS:
            pairs.append((argv[i], ""))
            i += 1
        else:
            pairs.append((argv[i], argv[i + 1]))
            i += 2
    return sorted(p for p in pairs if p[0] not in _ORDERED), [p for p in pairs if p[0] in _ORDERED]


class _FakePopen:
    calls: ClassVar[list[list[str]]] = []

    def __init__(self, argv, **kwargs):
        _FakePopen.calls.append([str(a) for a in argv])
        self.pid = 4242
        self.returncode = 0

    def poll(self):
        return 0

    def kill(self):
        pass

    def wait(self):
        return 0


@pytest.fixture
def popen(monkeypatch):
    _FakePopen.calls = []
    monkeypatch.setattr(subprocess, "Popen", _FakePopen)
    monkeypatch.setattr(tools, "which", lambda tool: f"/usr/bin/{tool}")
    return _FakePopen.calls


class _FakeSwtpm:
    def __init__(self, state_dir):
        self.socket = Path(state_dir) / "swtpm.sock"
        self.pid = 4343

    @classmethod
    def start(cls, state_dir):
        return cls(state_dir)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        pass


@pytest.mark.parametrize("accel,cpu", [("tcg", "max"), ("kvm", "host,-arch-capabilities")])
def test_kernel_boot_proof_argv_is_unchanged(tmp_path, popen, monkeypatch, accel, cpu):
    from obelisk.lab import kernel_boot
    from obelisk.tpm import swtpm

    monkeypatch.setattr(swtpm, "SwtpmSocket", _FakeSwtpm)
    monkeypatch.setenv("OBELISK_QEMU_ACCEL", accel)
    kernel = tmp_path / "bzImage"
    work = tmp_path / "work"
    kernel_boot.boot(kernel, work, busybox=Path("/bin/busybox"), extra_cmdline="ima_policy=tcb")
    assert len(popen) == 1 and popen[0][0] == QEMU
    expected = [a.format(accel=accel, cpu=cpu, kernel=kernel, work=work) for a in KERNEL_BOOT_ARGV]
    # The unified launcher writes -initrd next to -kernel and the console last; nothing else moved.
    assert _semantics(popen[0][1:]) == _semantics(expected)


@pytest.mark.parametrize("direct", [None, "console=ttyS0 quiet extra=1"], ids=["firmware", "direct-kernel"])
def test_obelisk_boot_argv(tmp_path, popen, monkeypatch, direct):
    """A reboot of a provisioned node: the image is installed into its disk first, then QEMU starts."""
    from obelisk.lab import boot

    out, run = tmp_path / "out", tmp_path / "run"
    run.mkdir()
    monkeypatch.delenv("OBELISK_QEMU_ACCEL", raising=False)
    monkeypatch.setattr(boot, "_start_swtpm", lambda run_dir: _FakeSwtpm(run_dir))
    monkeypatch.setattr(boot, "wait_for_agent", lambda *a, **k: None)
    monkeypatch.setattr(boot, "is_provisioned", lambda run_dir: True)
    installed = []
    monkeypatch.setattr(boot, "install_image", lambda *a: installed.append(a))

    class _Bar:
        def stage(self, text):
            pass

        def advance(self):
            pass

    sample = sample_manifest()
    manifest = dataclasses.replace(sample, boot=dataclasses.replace(sample.boot, cmdline="console=ttyS0 quiet"))
    node = boot._boot(out, run, manifest, tmp_path / "ca.pem", tmp_path / "ca.key", 12345, 768, 5, direct, False,
                      _Bar())
    assert installed == [(out, run, manifest)]
    assert len(popen) == 1 and popen[0][0] == QEMU
    expected = BOOT_ARGV if direct is None else DIRECT_KERNEL_ARGV
    assert popen[0][1:] == [a.format(out=out, run=run) for a in expected]
    assert node.qemu_pid == 4242 and (run / "qemu.pid").read_text() == "4242\n"


def test_a_guest_forward_is_the_restricted_networks_only_way_out(tmp_path):
    """QEMU's guestfwd runs socat for each connection the node opens to 10.0.2.100:8444; restrict=on stays."""
    from obelisk.lab.qemu import GuestForward, PortForward, QemuRun

    run = QemuRun(kernel=None, console=tmp_path / "serial.log", forwards=(PortForward(1234, "10.0.2.15", 8443),),
                  guest_forwards=(GuestForward("10.0.2.100", 8444, 9000),))
    argv = run.argv()
    netdev = argv[argv.index("-netdev") + 1].split(",")
    assert netdev[:3] == ["user", "id=n0", "restrict=on"]
    assert netdev[3] == "hostfwd=tcp:127.0.0.1:1234-10.0.2.15:8443"
    assert netdev[4] == f"guestfwd=tcp:10.0.2.100:8444-cmd:{tools.which('socat')} - TCP:127.0.0.1:9000"
    # without a guest forward, the command line is the one pinned above
    assert "guestfwd" not in ",".join(QemuRun(kernel=None, console=tmp_path / "s",
                                              forwards=(PortForward(1, "10.0.2.15", 8443),)).argv())
