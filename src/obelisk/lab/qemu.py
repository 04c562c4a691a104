"""The one place obelisk builds a `qemu-system-x86_64` command line and starts it.

Both lab uses go through here: the kernel boot proof (lab/kernel_boot.py, `obelisk kernel boot`)
waits for the guest with `run_kernel`; `obelisk boot` (lab/boot.py) starts a node with `start` and
leaves it running.

    with tpm.swtpm.SwtpmSocket.start(workdir / "tpm") as tpm:
        result = run_kernel(QemuRun(kernel=bz, initramfs=cpio, cmdline="console=ttyS0",
                                    console=workdir / "serial.log", tpm_socket=tpm.socket), timeout=600)

swtpm (started by `obelisk.tpm.swtpm`, the one place it is run) has its control channel on a unix socket, the way QEMU's
`-tpmdev emulator` expects (`-chardev socket,path=...`). `run_kernel` uses software emulation (TCG)
unless asked for KVM (`accel="kvm"` or OBELISK_QEMU_ACCEL=kvm); `-no-reboot` makes a guest reboot or poweroff end QEMU.

A `Firmware` boots the first disk through UEFI instead of `-kernel`: Debian's OVMF (package `ovmf`)
with its variable store on the second pflash. The Secure Boot build of OVMF keeps its variables in
SMM, so it needs `smm=on` and a secure pflash, as libvirt configures it. Firmware boots run under
TCG unless OBELISK_QEMU_ACCEL says otherwise: nested KVM (this project's CI machines) supports
neither SMM nor OVMF's early code (KVM "emulation failure").
"""

from __future__ import annotations

import os
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from obelisk.core import tools
from obelisk.core.errors import ToolFailedError
from obelisk.tpm.swtpm import qemu_tpm_args

QEMU = "qemu-system-x86_64"


@dataclass(frozen=True)
class Drive:
    """A raw virtio disk."""

    path: Path
    readonly: bool = True

    def arg(self) -> str:
        return f"file={self.path},if=virtio,format=raw" + (",readonly=on" if self.readonly else "")


OVMF_PACKAGE = "ovmf"
OVMF_SECURE_CODE = Path("/usr/share/OVMF/OVMF_CODE_4M.secboot.fd")
OVMF_CODE = Path("/usr/share/OVMF/OVMF_CODE_4M.fd")
OVMF_VARS_TEMPLATE = Path("/usr/share/OVMF/OVMF_VARS_4M.fd")  # empty store: no keys, Secure Boot off


@dataclass(frozen=True)
class Firmware:
    """UEFI firmware for a guest: OVMF's code (read-only) and this guest's own variable store (written)."""

    variables: Path  # the guest's NVRAM: a copy, never Debian's template; its PK, KEK, db and
    # SecureBootEnable decide whether Secure Boot is enforced
    smm: bool = True  # the SMM build, which keeps the variables out of the OS's reach (as on hardware)

    @property
    def code(self) -> Path:
        return OVMF_SECURE_CODE if self.smm else OVMF_CODE

    def check(self) -> None:
        from obelisk.core.errors import InputError

        for path in (self.code, OVMF_VARS_TEMPLATE):
            if not path.is_file():
                raise InputError(f"{path} is missing: install Debian package {OVMF_PACKAGE}")

    def args(self) -> list[str]:
        out = ["-drive", f"if=pflash,format=raw,unit=0,file={self.code},readonly=on",
               "-drive", f"if=pflash,format=raw,unit=1,file={self.variables}"]
        if self.smm:
            out = ["-global", "driver=cfi.pflash01,property=secure,value=on", *out]
        return out


@dataclass(frozen=True)
class PortForward:
    """host_ip:host_port on the host to guest_ip:guest_port in the guest (user networking, TCP)."""

    host_port: int
    guest_ip: str
    guest_port: int
    host_ip: str = "127.0.0.1"

    def arg(self) -> str:
        return f"hostfwd=tcp:{self.host_ip}:{self.host_port}-{self.guest_ip}:{self.guest_port}"


@dataclass(frozen=True)
class GuestForward:
    """Connections the guest opens to guest_ip:guest_port reach host_ip:host_port on the host (user
    networking's guestfwd, one socat per connection). `restrict=on` still holds for everything else:
    this is the only way out, as a node behind NAT reaches its fleet service and nothing more."""

    guest_ip: str
    guest_port: int
    host_port: int
    host_ip: str = "127.0.0.1"

    def arg(self) -> str:
        return (f"guestfwd=tcp:{self.guest_ip}:{self.guest_port}-cmd:{tools.which('socat')} - "
                f"TCP:{self.host_ip}:{self.host_port}")


@dataclass(frozen=True)
class QemuRun:
    """One guest: q35, one CPU, no default devices, the serial console written to `console`.

    `forwards` adds a user-mode network restricted to those forwarded ports (virtio-net), and
    `guest_forwards` the guest's only ways out of it; `rng` a
    virtio RNG; `tpm_socket` a TIS TPM backed by the swtpm listening there.
    """

    kernel: Path | None  # None: `firmware` boots the first disk
    console: Path  # the serial console is written here
    initramfs: Path | None = None
    cmdline: str = "console=ttyS0"
    tpm_socket: Path | None = None
    memory_mib: int = 512
    drives: tuple[Drive | Path, ...] = ()  # a bare Path is a read-only drive
    forwards: tuple[PortForward, ...] = ()
    guest_forwards: tuple[GuestForward, ...] = ()
    rng: bool = False
    extra_args: tuple[str, ...] = field(default_factory=tuple)
    firmware: Firmware | None = None
    reboot: bool = False  # a guest reboot resets the machine in place (A/B upgrades); default: QEMU exits

    def argv(self, accel: str | None = None) -> list[str]:
        """QEMU's arguments; `accel` None leaves QEMU's default accelerator (TCG) and CPU model `max`."""
        machine = "q35" if accel is None else f"q35,accel={accel}"
        if self.firmware is not None and self.firmware.smm:
            machine += ",smm=on"
        # KVM: the host's CPU without IA32_ARCH_CAPABILITIES, which nested KVM refuses to set (QEMU aborts)
        args = ["-machine", machine, "-cpu", "max" if accel in (None, "tcg") else "host,-arch-capabilities",
                "-m", str(self.memory_mib), "-smp", "1", "-nographic", *(() if self.reboot else ("-no-reboot",)),
                "-nodefaults"]
        if self.firmware is not None:
            args += self.firmware.args()
        if self.kernel is not None:
            args += ["-kernel", str(self.kernel)]
            if self.initramfs is not None:
                args += ["-initrd", str(self.initramfs)]
            args += ["-append", self.cmdline]
        for drive in self.drives:
            args += ["-drive", (drive if isinstance(drive, Drive) else Drive(drive)).arg()]
        if self.forwards:
            # romfile= (none): under UEFI the NIC's iPXE option ROM would try a network boot first
            nic = "virtio-net-pci,netdev=n0" + (",romfile=" if self.firmware is not None else "")
            args += ["-netdev", ",".join(["user,id=n0,restrict=on", *(f.arg() for f in self.forwards),
                                          *(g.arg() for g in self.guest_forwards)]),
                     "-device", nic]
        if self.rng:
            args += ["-device", "virtio-rng-pci"]
        if self.tpm_socket is not None:
            args += qemu_tpm_args(self.tpm_socket)
        args += ["-serial", f"file:{self.console}", "-monitor", "none"]
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


def start(run: QemuRun, *, stderr: Path, accel: str | None = None, detach: bool = False) -> subprocess.Popen[bytes]:
    """Start QEMU for `run`, its stderr written to `stderr`; `detach` puts it in its own session so that
    it outlives this process (a node `obelisk boot` leaves running)."""
    argv = [tools.which(QEMU), *run.argv(accel)]
    with open(stderr, "wb") as err:
        return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
                                start_new_session=detach)


def run_kernel(run: QemuRun, *, timeout: float = 600, until: str | None = None, accel: str | None = None) -> QemuResult:
    """Boot and wait for QEMU to exit (guest poweroff), for `until` on the console, or the timeout."""
    # software emulation by default (as in CI); OBELISK_QEMU_ACCEL=kvm where /dev/kvm is usable
    accel = accel or os.environ.get("OBELISK_QEMU_ACCEL") or "tcg"
    run.console.unlink(missing_ok=True)
    started = time.monotonic()
    errlog = run.console.with_name(run.console.name + ".qemu-stderr")
    proc = start(run, stderr=errlog, accel=accel)
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
        raise ToolFailedError(QEMU, proc.returncode, errlog.read_text(errors="replace"))
    return QemuResult(console=console, returncode=None if timed_out else proc.returncode,
                      seconds=time.monotonic() - started, timed_out=timed_out, accel=accel)
