"""Boot proof: boot a kernel under QEMU with swtpm to a busybox shell that reports what it sees.

The initramfs is a reproducible newc cpio (obelisk.image.cpio) holding busybox-static and an
/init script. The script mounts /proc, /sys and securityfs and prints `OBELISK-FACT key=value`
lines on the serial console; `facts` parses them and `findings` judges them:
IMA active (/sys/kernel/security/ima, boot_aggregate first in the measurement list), a TPM
present (/dev/tpm0 or /sys/class/tpm/tpm0), no module support (/proc/modules absent).
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

from obelisk.core.findings import Evidence, Finding, Report, Severity, Status, Subject

INIT_SCRIPT = """#!/bin/busybox sh
/bin/busybox mkdir -p /proc /sys /dev /tmp
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sysfs /sys
/bin/busybox mount -t devtmpfs devtmpfs /dev 2>/dev/null
/bin/busybox mount -t securityfs securityfs /sys/kernel/security
fact() { echo "OBELISK-FACT $1=$2"; }
echo OBELISK-BOOT-BEGIN
fact uname "$(/bin/busybox uname -r)"
if [ -d /sys/kernel/security/ima ]; then fact ima_dir yes; else fact ima_dir no; fi
first=$(/bin/busybox head -n 1 /sys/kernel/security/ima/ascii_runtime_measurements 2>/dev/null)
fact ima_first "$first"
fact ima_entries "$(/bin/busybox wc -l < /sys/kernel/security/ima/ascii_runtime_measurements 2>/dev/null)"
if [ -e /dev/tpm0 ]; then fact dev_tpm0 yes; else fact dev_tpm0 no; fi
if [ -d /sys/class/tpm/tpm0 ]; then fact sys_tpm0 yes; else fact sys_tpm0 no; fi
fact tpm_version "$(/bin/busybox cat /sys/class/tpm/tpm0/tpm_version_major 2>/dev/null)"
if [ -e /proc/modules ]; then fact proc_modules yes; else fact proc_modules no; fi
fact lockdown "$(/bin/busybox cat /sys/kernel/security/lockdown 2>/dev/null)"
fact lsm "$(/bin/busybox cat /sys/kernel/security/lsm 2>/dev/null)"
echo OBELISK-BOOT-END
/bin/busybox sync
/bin/busybox poweroff -f
"""

BEGIN, END = "OBELISK-BOOT-BEGIN", "OBELISK-BOOT-END"


def initramfs(busybox: Path, script: str = INIT_SCRIPT) -> bytes:
    from obelisk.image import cpio

    entries = [
        cpio.Entry.directory("bin"), cpio.Entry.directory("dev"), cpio.Entry.directory("proc"),
        cpio.Entry.directory("sys"), cpio.Entry.directory("tmp"),
        cpio.Entry.device("dev/console", char=True, major=5, minor=1),
        cpio.Entry.file("bin/busybox", busybox.read_bytes(), perm=0o755),
        cpio.Entry.symlink("bin/sh", "busybox"),
        cpio.Entry.file("init", script.encode(), perm=0o755),
    ]
    return cpio.serialize(entries)


def facts(console: str) -> dict[str, str]:
    out = {}
    for m in re.finditer(r"^OBELISK-FACT ([a-z_0-9]+)=(.*?)\r?$", console, re.M):
        out[m.group(1)] = m.group(2).strip()
    return out


def findings(console: str, target: str) -> list[Finding]:
    f = facts(console)
    ev = (Evidence(kind="console", source=target, detail=" ".join(f"{k}={v}" for k, v in sorted(f.items()))[:1000]),)

    def finding(fid: str, title: str, ok: bool, detail: str, severity: Severity = Severity.HIGH) -> Finding:
        return Finding(id=f"kernel.boot.{fid}", title=title, status=Status.PASS if ok else Status.FAIL,
                       severity=severity, target=target, evidence=ev, benchmark="kernel-hardening",
                       section="boot", detail=detail)

    if BEGIN not in console:
        tail = " | ".join(console.strip().splitlines()[-3:]) or "(empty console)"
        return [finding("shell", "booted to the busybox shell", False, f"the init script never ran; console: {tail}")]
    first = f.get("ima_first", "")
    return [
        finding("shell", "booted to the busybox shell", END in console, f"kernel {f.get('uname', '?')}"),
        finding("ima", "IMA active (/sys/kernel/security/ima)", f.get("ima_dir") == "yes",
                f"ima directory: {f.get('ima_dir', '?')}"),
        finding("ima-boot-aggregate", "IMA measurement list starts with boot_aggregate",
                "boot_aggregate" in first, f"first entry: {first or '(none)'}; {f.get('ima_entries', '?')} entries"),
        finding("tpm", "TPM present (/dev/tpm0 or /sys/class/tpm/tpm0)",
                f.get("dev_tpm0") == "yes" or f.get("sys_tpm0") == "yes",
                f"/dev/tpm0: {f.get('dev_tpm0', '?')}, /sys/class/tpm/tpm0: {f.get('sys_tpm0', '?')}, "
                f"TPM version {f.get('tpm_version') or '?'}"),
        finding("no-modules", "no module support at run time (/proc/modules absent)", f.get("proc_modules") == "no",
                f"/proc/modules present: {f.get('proc_modules', '?')}", Severity.CRITICAL),
        finding("lockdown", "kernel lockdown active (integrity or confidentiality)",
                "[integrity]" in f.get("lockdown", "") or "[confidentiality]" in f.get("lockdown", ""),
                f"/sys/kernel/security/lockdown: {f.get('lockdown') or '(absent)'}"),
    ]


def boot(kernel: Path, workdir: Path, *, busybox: Path | None = None, timeout: float = 900,
         extra_cmdline: str = "") -> tuple[list[Finding], str]:
    from obelisk.core import atomic, tools
    from obelisk.lab.qemu import QemuRun, run_kernel
    from obelisk.tpm.swtpm import SwtpmSocket

    busybox = busybox or Path(tools.which("busybox"))
    workdir.mkdir(parents=True, exist_ok=True)
    cpio_path = workdir / "initramfs.cpio"
    atomic.write_bytes(cpio_path, initramfs(busybox))
    with SwtpmSocket.start(workdir / "tpm") as tpm:
        result = run_kernel(QemuRun(kernel=kernel, initramfs=cpio_path, console=workdir / "serial.log",
                                    cmdline=f"console=ttyS0 panic=-1 {extra_cmdline}".strip(),
                                    tpm_socket=tpm.socket), timeout=timeout, until=END)
    return findings(result.console, str(kernel)), result.console


def boot_report(image: str, *, workdir: str | None = None, timeout: float = 900) -> Report:
    """`obelisk kernel boot`: boot one kernel image and report what it saw."""
    from obelisk.kernel_hardening import kimage

    kimage.read(image)  # one-line error for anything that is not a kernel
    with tempfile.TemporaryDirectory(prefix="obelisk-boot-") as tmp:
        found, _ = boot(Path(image), Path(workdir) if workdir else Path(tmp), timeout=timeout)
    return Report(findings=tuple(found), command="obelisk kernel boot", subject=Subject(kind="kernel", name=image))


__all__ = ["INIT_SCRIPT", "boot", "boot_report", "facts", "findings", "initramfs"]
