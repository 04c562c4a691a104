"""The initramfs: busybox and one /init script, as a reproducible newc cpio.

/init measures the kernel command line and the whole root device into PCR 11 (see measure.py),
mounts the signed SquashFS read-only as the new root, mounts a plain /var from the second virtio
disk (an encrypted one is left to the root, which has the TPM and cryptsetup tools) and the
node's config disk, and hands over to the node's /sbin/obelisk-init. That script, itself on the
signed root, loads the IMA policy first (by path, so the kernel appraises the policy file's
own signature) and then starts the agent: loading it in the initramfs would subject the
initramfs's own unsigned busybox to the policy's appraisal rules.
The IMA certificate sits at /etc/keys/x509_ima.der, where a kernel built with
CONFIG_IMA_LOAD_X509 loads it into the .ima keyring (it must chain to the built-in CA).
"""

from __future__ import annotations

from pathlib import Path

from obelisk.image import cpio
from obelisk.image import measure as measure_mod

APPLETS = ("sh", "mount", "umount", "switch_root", "mkdir", "echo", "cat", "sleep", "poweroff", "mke2fs",
           "blkid", "ls", "dmesg", "grep", "sha256sum", "cut", "sed", "dd", "od", "tr", "printf")

VAR_MODES = ("plain", "luks2")

INIT = r"""#!/bin/sh
# obelisk initramfs: measure the command line and the root into PCR 11, mount the signed root
# read-only, /var (plain mode) and the node's config disk, then hand over to /sbin/obelisk-init.
export PATH=/bin
mount -t devtmpfs devtmpfs /dev
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t securityfs securityfs /sys/kernel/security 2>/dev/null
say() { echo "obelisk-init: $*" > /dev/console; }
fail() { say "FATAL: $*"; sleep 2; poweroff -f; }
@TPM_FUNCTIONS@
root=/dev/vda
var=/dev/vdb
config=/dev/vdc
for arg in $(cat /proc/cmdline); do
  case "$arg" in
    obelisk.root=*) root="${arg#*=}" ;;
    obelisk.var=*) var="${arg#*=}" ;;
    obelisk.config=*) config="${arg#*=}" ;;
  esac
done
[ -b "$root" ] || fail "no root device $root"
if [ "@MEASURE@" = yes ]; then
  # Before anything from the root runs: a changed command line or root shows in PCR 11, and
  # /var's key (sealed to PCR 11) stays locked. The build predicted both values.
  cmdline_digest=$(sha256sum /proc/cmdline | cut -d' ' -f1)
  root_digest=$(sha256sum "$root" | cut -d' ' -f1)
  tpm_extend "$cmdline_digest" || fail "cannot measure the command line into PCR 11"
  tpm_extend "$root_digest" || fail "cannot measure $root into PCR 11"
  say "measured the command line and $root into PCR 11"
fi
mount -t squashfs -o ro "$root" /newroot || fail "cannot mount the root SquashFS $root"
if [ "@VAR@" = luks2 ]; then
  say "/var is LUKS2: /sbin/obelisk-init unlocks it with the TPM"
elif [ -b "$var" ]; then
  kind=$(blkid "$var" | sed -n 's/.*TYPE="\([^"]*\)".*/\1/p')
  if [ -z "$kind" ]; then
    say "formatting $var for /var (first boot)"
    mke2fs -q -t ext2 -L obelisk-var "$var" || fail "cannot format $var"
    kind=ext2
  fi
  if [ "$kind" != ext2 ] || ! mount -t ext2 -o nosuid,nodev "$var" /newroot/var; then
    # never format a disk that holds something: it may be another node's data
    say "cannot mount /var from $var (${kind}): /var is a tmpfs"
    mount -t tmpfs -o mode=0755,nosuid,nodev tmpfs /newroot/var
  fi
else
  say "no /var disk ($var): /var is a tmpfs"
  mount -t tmpfs -o mode=0755,nosuid,nodev tmpfs /newroot/var
fi
mount -t tmpfs -o mode=0755,nosuid,nodev tmpfs /newroot/run
if [ "@MEASURE@" = yes ]; then
  # the log of what went into PCR 11, for the verifier (it replays it against the quote)
  mkdir -p /newroot/run/obelisk
  printf '11 obelisk.cmdline %s\n11 obelisk.root %s\n' "$cmdline_digest" "$root_digest" \
    > /newroot/run/obelisk/boot-events
fi
if [ -f /etc/obelisk/var-policy.json ]; then
  # the customer's approval of this image's PCR 11 (disk.policy signed): lets the root open /var
  mkdir -p /newroot/run/obelisk
  cat /etc/obelisk/var-policy.json > /newroot/run/obelisk/var-policy.json
fi
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs /newroot/tmp
if [ -b "$config" ]; then
  mkdir -p /newroot/run/obelisk/config
  mount -t ext2 -o ro,nosuid,nodev,noexec "$config" /newroot/run/obelisk/config \
    || say "cannot mount the config disk $config"
fi
mount --move /dev /newroot/dev
mount --move /proc /newroot/proc
mount --move /sys /newroot/sys
exec switch_root /newroot /sbin/obelisk-init
"""


def render_init(*, measure: bool, var_mode: str) -> str:
    if var_mode not in VAR_MODES:
        raise ValueError(f"var_mode: {var_mode!r}")
    return (INIT.replace("@TPM_FUNCTIONS@", measure_mod.shell_functions())
            .replace("@MEASURE@", "yes" if measure else "no").replace("@VAR@", var_mode))


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
