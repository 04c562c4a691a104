"""The initramfs: busybox and one /init script, as a reproducible newc cpio.

It is the UKI's `.initrd`, measured into PCR 11 by systemd-stub. /init (templates/init.sh.j2)
extends the enter-initrd and leave-initrd boot phases into PCR 11 (measure.py), mounts the
dm-verity root (set up by the kernel from the UKI's command line) read-only as the new root, a
plain /var (an encrypted one is left to the root, which has the TPM and cryptsetup tools) and the
node's config disk, and hands over to the node's /sbin/obelisk-init. That script, itself on the
signed root, loads the IMA policy first (by path, so the kernel appraises the policy file's
own signature) and then starts the agent: loading it in the initramfs would subject the
initramfs's own unsigned busybox to the policy's appraisal rules.
The IMA certificate sits at /etc/keys/x509_ima.der, where a kernel built with
CONFIG_IMA_LOAD_X509 loads it into the .ima keyring (it must chain to the built-in CA).
"""

from __future__ import annotations

from pathlib import Path

from obelisk.image import cpio, scripts
from obelisk.image import measure as measure_mod

APPLETS = ("sh", "mount", "umount", "switch_root", "mkdir", "echo", "cat", "sleep", "poweroff", "mke2fs",
           "blkid", "ls", "dmesg", "grep", "sha256sum", "cut", "sed", "dd", "od", "tr", "printf")

VAR_MODES = ("plain", "luks2")


def render_init(*, measure: bool, var_mode: str) -> str:
    """/init, from templates/init.sh.j2."""
    if var_mode not in VAR_MODES:
        raise ValueError(f"var_mode: {var_mode!r}")
    return scripts.render("init.sh.j2", measure="yes" if measure else "no", var_mode=var_mode,
                          tpm_prefix=measure_mod.command_prefix_hex(measure_mod.PCR),
                          enter_initrd=measure_mod.phase_digest("enter-initrd").hex(),
                          leave_initrd=measure_mod.phase_digest("leave-initrd").hex())


def entries(busybox: bytes, ima_cert_der: bytes | None, epoch: int, init: str,
            extra: dict[str, bytes] | None = None) -> list[cpio.Entry]:
    out = [cpio.Entry.directory(d, mtime=epoch) for d in
           ("bin", "dev", "proc", "sys", "newroot", "run", "tmp", "etc", "etc/keys")]
    out.append(cpio.Entry.device("dev/console", True, 5, 1, mtime=epoch))
    out.append(cpio.Entry.file("bin/busybox", busybox, 0o755, mtime=epoch))
    out += [cpio.Entry.symlink(f"bin/{a}", "busybox", mtime=epoch) for a in APPLETS]
    out.append(cpio.Entry.file("init", init.encode(), 0o755, mtime=epoch))
    if ima_cert_der:
        out.append(cpio.Entry.file("etc/keys/x509_ima.der", ima_cert_der, 0o644, mtime=epoch))
    for path, data in sorted((extra or {}).items()):
        parent = path.rpartition("/")[0]
        if parent and not any(e.name == parent for e in out):
            out.append(cpio.Entry.directory(parent, mtime=epoch))
        out.append(cpio.Entry.file(path, data, 0o644, mtime=epoch))
    return out


def build(busybox: Path, ima_cert_der: bytes | None, epoch: int, init: str,
          extra: dict[str, bytes] | None = None) -> bytes:
    return cpio.serialize(entries(busybox.read_bytes(), ima_cert_der, epoch, init, extra))
