"""The initramfs: busybox and one /init script, as a reproducible newc cpio.

/init mounts the signed SquashFS read-only as the new root, mounts /var from the second
virtio disk, and hands over to the node's /sbin/obelisk-init. That script, itself on the
signed root, loads the IMA policy first (by path, so the kernel appraises the policy file's
own signature) and then starts the agent: loading it in the initramfs would subject the
initramfs's own unsigned busybox to the policy's appraisal rules.
The IMA certificate sits at /etc/keys/x509_ima.der, where a kernel built with
CONFIG_IMA_LOAD_X509 loads it into the .ima keyring (it must chain to the built-in CA).
"""

from __future__ import annotations

from pathlib import Path

from obelisk.image import cpio

APPLETS = ("sh", "mount", "umount", "switch_root", "mkdir", "echo", "cat", "sleep", "poweroff", "mke2fs",
           "blkid", "ls", "dmesg", "grep")

INIT = r"""#!/bin/sh
# obelisk initramfs: signed read-only root, IMA policy, /var, then the node's init.
export PATH=/bin
mount -t devtmpfs devtmpfs /dev
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t securityfs securityfs /sys/kernel/security 2>/dev/null
say() { echo "obelisk-init: $*" > /dev/console; }
fail() { say "FATAL: $*"; sleep 2; poweroff -f; }
root=/dev/vda
var=/dev/vdb
for arg in $(cat /proc/cmdline); do
  case "$arg" in
    obelisk.root=*) root="${arg#*=}" ;;
    obelisk.var=*) var="${arg#*=}" ;;
  esac
done
mount -t squashfs -o ro "$root" /newroot || fail "cannot mount the root SquashFS $root"
if [ -b "$var" ]; then
  if ! mount -t ext2 -o nosuid,nodev "$var" /newroot/var 2>/dev/null; then
    say "formatting $var for /var (first boot)"
    mke2fs -q -t ext2 -L obelisk-var "$var" && mount -t ext2 -o nosuid,nodev "$var" /newroot/var \
      || fail "cannot mount /var from $var"
  fi
else
  say "no /var disk ($var): /var is a tmpfs"
  mount -t tmpfs -o mode=0755,nosuid,nodev tmpfs /newroot/var
fi
mount -t tmpfs -o mode=0755,nosuid,nodev tmpfs /newroot/run
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs /newroot/tmp
mount --move /dev /newroot/dev
mount --move /proc /newroot/proc
mount --move /sys /newroot/sys
exec switch_root /newroot /sbin/obelisk-init
"""


def entries(busybox: bytes, ima_cert_der: bytes | None, epoch: int) -> list[cpio.Entry]:
    out = [cpio.Entry.directory(d, mtime=epoch) for d in
           ("bin", "dev", "proc", "sys", "newroot", "run", "tmp", "etc", "etc/keys")]
    out.append(cpio.Entry.device("dev/console", True, 5, 1, mtime=epoch))
    out.append(cpio.Entry.file("bin/busybox", busybox, 0o755, mtime=epoch))
    out += [cpio.Entry.symlink(f"bin/{a}", "busybox", mtime=epoch) for a in APPLETS]
    out.append(cpio.Entry.file("init", INIT.encode(), 0o755, mtime=epoch))
    if ima_cert_der:
        out.append(cpio.Entry.file("etc/keys/x509_ima.der", ima_cert_der, 0o644, mtime=epoch))
    return out


def build(busybox: Path, ima_cert_der: bytes | None, epoch: int) -> bytes:
    return cpio.serialize(entries(busybox.read_bytes(), ima_cert_der, epoch))
