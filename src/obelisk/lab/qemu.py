"""Run a kernel under `qemu-system-x86_64` with a software TPM attached; capture the serial console.

    with attest.swtpm.SwtpmSocket.start(workdir / "tpm") as tpm:
        result = run_kernel(QemuRun(kernel=bz, initramfs=cpio, cmdline="console=ttyS0",
                                    console=workdir / "serial.log", tpm_socket=tpm.socket), timeout=600)

swtpm (started by `obelisk.tpm.swtpm`, the one place it is run) has its control channel on a unix socket, the way QEMU's
`-tpmdev emulator` expects (`-chardev socket,path=...`). QEMU uses software emulation (TCG)
unless asked for KVM (`accel="kvm"` or OBELISK_QEMU_ACCEL=kvm); `-no-reboot` makes a guest reboot or poweroff end QEMU.
"""

from __future__ import annotations

import os
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from obelisk.tpm.swtpm import qemu_tpm_args
from obelisk.core import tools
from obelisk.core.errors import ToolFailedError


@dataclass(frozen=True)
class QemuRun:
    kernel: Path
    console: Path  # the serial console is written here
    initramfs: Path | None = None
    cmdline: str = "console=ttyS0"
    tpm_socket: Path | None = None
    memory_mib: int = 512
    drives: tuple[Path, ...] = ()  # raw virtio disks, read-only
    extra_args: tuple[str, ...] = field(default_factory=tuple)

    def argv(self, accel: str) -> list[str]:
        args = ["-machine", f"q35,accel={accel}", "-cpu", "max" if accel == "tcg" else "host",
                "-m", str(self.memory_mib), "-smp", "1", "-nographic", "-no-reboot", "-nodefaults",
                "-kernel", str(self.kernel), "-append", self.cmdline,
                "-serial", f"file:{self.console}", "-monitor", "none"]
        if self.initramfs is not None:
            args += ["-initrd", str(self.initramfs)]
        for drive in self.drives:
            args += ["-drive", f"file={drive},if=virtio,format=raw,readonly=on"]
        if self.tpm_socket is not None:
            args += qemu_tpm_args(self.tpm_socket)
        return args + list(self.extra_args)


@dataclass(frozen=True)
class QemuResult:
    console: str
    returncode: int | None  # None: killed at the timeout or when `until` appeared
    seconds: float
    timed_out: bool
    accel: str


def default_accel() -> str:
    """KVM if this process can open /dev/kvm, else software emulation."""
    try:
        fd = os.open("/dev/kvm", os.O_RDWR)
        os.close(fd)
        return "kvm"
    except OSError:
        return "tcg"


def run_kernel(run: QemuRun, *, timeout: float = 600, until: str | None = None, accel: str | None = None) -> QemuResult:
    """Boot and wait for QEMU to exit (guest poweroff), for `until` on the console, or the timeout."""
    # software emulation by default (as in CI); OBELISK_QEMU_ACCEL=kvm where /dev/kvm is usable
    accel = accel or os.environ.get("OBELISK_QEMU_ACCEL") or "tcg"
    run.console.unlink(missing_ok=True)
    started = time.monotonic()
    errlog = run.console.with_name(run.console.name + ".qemu-stderr")
    with open(errlog, "wb") as err:
        proc = subprocess.Popen([tools.which("qemu-system-x86_64"), *run.argv(accel)],
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err)
        timed_out = False
        try:
            while proc.poll() is None:
                if time.monotonic() - started > timeout:
                    timed_out = True
                    break
                if until and run.console.exists() and until in run.console.read_text(errors="replace"):
                    break
                time.sleep(0.5)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    console = run.console.read_text(errors="replace") if run.console.exists() else ""
    if proc.returncode not in (0, None, -9) and not console:
        raise ToolFailedError("qemu-system-x86_64", proc.returncode, errlog.read_text(errors="replace"))
    return QemuResult(console=console, returncode=None if timed_out else proc.returncode,
                      seconds=time.monotonic() - started, timed_out=timed_out, accel=accel)
