"""The UEFI firmware QEMU boots a node with: Debian's OVMF, named when missing; the Secure Boot build's
SMM wiring; no option ROM on the NIC."""

from __future__ import annotations

from pathlib import Path

import pytest

from obelisk.core.errors import InputError
from obelisk.lab import qemu


def test_missing_ovmf_is_one_line_naming_the_package(tmp_path, monkeypatch):
    monkeypatch.setattr(qemu, "OVMF_SECURE_CODE", tmp_path / "OVMF_CODE_4M.secboot.fd")
    with pytest.raises(InputError) as caught:
        qemu.Firmware(tmp_path / "vars.fd").check()
    assert "install Debian package ovmf" in str(caught.value) and "\n" not in str(caught.value)


def test_secure_boot_firmware_argv(tmp_path):
    run = qemu.QemuRun(kernel=None, console=tmp_path / "serial.log", firmware=qemu.Firmware(tmp_path / "vars.fd"),
                       forwards=(qemu.PortForward(1234, "10.0.2.15", 8443),))
    argv = run.argv()
    assert argv[argv.index("-machine") + 1] == "q35,smm=on"
    assert "driver=cfi.pflash01,property=secure,value=on" in argv
    assert f"if=pflash,format=raw,unit=0,file={qemu.OVMF_SECURE_CODE},readonly=on" in argv
    assert f"if=pflash,format=raw,unit=1,file={tmp_path / 'vars.fd'}" in argv
    assert "-kernel" not in argv and "-append" not in argv
    assert "virtio-net-pci,netdev=n0,romfile=" in argv  # no iPXE network boot before the disk
    assert Path(qemu.OVMF_SECURE_CODE).is_file() and Path(qemu.OVMF_VARS_TEMPLATE).is_file()
