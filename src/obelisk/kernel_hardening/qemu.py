"""Run a kernel under `qemu-system-x86_64` with a software TPM attached; capture the serial console.

    with SwtpmSocket.start(workdir / "tpm") as tpm:
        result = run_kernel(QemuRun(kernel=bz, initramfs=cpio, cmdline="console=ttyS0",
                                    console=workdir / "serial.log", tpm_socket=tpm.socket), timeout=600)

swtpm runs in socket mode with its control channel on a unix socket, the way QEMU's
`-tpmdev emulator` expects (`-chardev socket,path=...`). QEMU uses software emulation (TCG)
unless asked for KVM (`accel="kvm"` or OBELISK_QEMU_ACCEL=kvm); `-no-reboot` makes a guest reboot or poweroff end QEMU.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from obelisk.attest.swtpm import qemu_tpm_args, start_for_qemu
from obelisk.core import tools
from obelisk.core.errors import ToolFailedError


@dataclass
class SwtpmSocket:
    """A running swtpm (TPM 2.0) whose control channel is a unix socket for QEMU."""

    state_dir: Path
    socket: Path
    process: subprocess.Popen[bytes] | None = None
    _owned: tempfile.TemporaryDirectory[str] | None = None

    @classmethod
    def start(cls, state_dir: str | os.PathLike[str] | None = None, timeout: float = 10.0) -> "SwtpmSocket":
        owned = None
        if state_dir is None:
            owned = tempfile.TemporaryDirectory(prefix="obelisk-swtpm-")
            state_dir = owned.name
        state = Path(state_dir)
        sock = state / "swtpm.sock"
        proc = start_for_qemu(state, sock, state / "swtpm.log", timeout=timeout)
        return cls(state_dir=state, socket=sock, process=proc, _owned=owned)

    def qemu_args(self) -> list[str]:
        return qemu_tpm_args(self.socket)

    def stop(self) -> None:
        if self.process is not None:
            if self.process.poll() is None:
                self.process.terminate()
                try:
                    self.process.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    self.process.wait()
            self.process = None
        if self._owned is not None:
            self._owned.cleanup()
            self._owned = None

    def __enter__(self) -> "SwtpmSocket":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


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
