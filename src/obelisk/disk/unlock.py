"""On the node: unlock the LUKS2 /var with the TPM and mount it (run by /sbin/obelisk-init).

    python3 -m obelisk.cli.node_init unlock-var

It runs from the signed root after the IMA policy is loaded, so this code, Python and cryptsetup
are appraised like everything else, and before obelisk-init extends PCR 11 with the end-of-boot
event (measure.py): the key is sealed to PCR 11 as the initramfs left it, so it unseals only for
the command line and root the build predicted. The volume was formatted and enrolled when the
node was provisioned (`obelisk boot`, or `obelisk disk enroll` on real hardware); the first boot
finds no filesystem inside and makes one (ext4). On any failure /var becomes a tmpfs, the reason
goes to the console, and the exit status is 1: the node stays up so that the verifier can ask it why.
"""

from __future__ import annotations

import ctypes
import os

from obelisk.core import tools
from obelisk.core.errors import ObeliskError

MAPPING = "obelisk-var"
SIGNED_POLICY = "/run/obelisk/var-policy.json"  # from the initramfs (disk.policy signed)
MS_NOSUID = 0x2
MS_NODEV = 0x4
EXT2_MAGIC_OFFSET = 1024 + 56
EXT2_MAGIC = b"\x53\xef"


def cmdline_value(cmdline: str, key: str, default: str) -> str:
    for word in cmdline.split():
        name, sep, value = word.partition("=")
        if sep and name == key:
            return value
    return default


def has_ext_filesystem(device: str) -> bool:
    """ext2/3/4 superblock magic: the one thing decided before formatting (never format data)."""
    with open(device, "rb") as handle:
        handle.seek(EXT2_MAGIC_OFFSET)
        return handle.read(2) == EXT2_MAGIC


def mount(source: str, target: str, fstype: str, flags: int = MS_NOSUID | MS_NODEV, data: str = "") -> None:
    """mount(2) through libc: Debian's essential set has no mount(8)."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.mount(source.encode(), target.encode(), fstype.encode(), ctypes.c_ulong(flags),
                  data.encode() or None) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount {source} on {target}: {os.strerror(err)}")


def signed_policies(path: str = SIGNED_POLICY) -> list:
    """The customer-signed PCR 11 policy this image carries, if any (the TPM checks its signature)."""
    from obelisk.disk import policy

    try:
        with open(path, "rb") as handle:
            data = handle.read(64 * 1024)
    except FileNotFoundError:
        return []
    return [policy.parse(data, path)]


def unlock_var(device: str, *, mountpoint: str = "/var", tcti: str = "device:/dev/tpmrm0",
               policy_file: str = SIGNED_POLICY) -> str:
    from obelisk.disk import volume as disk

    if not disk.is_luks(device):
        # the image says /var is encrypted: a plain disk here was put in its place; never use or format it
        raise ObeliskError(f"{device} is not a LUKS2 volume (the image expects an encrypted /var)")
    token = disk.unlock(device, tcti, name=MAPPING, extra_policies=signed_policies(policy_file))
    mapped = f"/dev/mapper/{MAPPING}"
    fresh = not has_ext_filesystem(mapped)
    if fresh:
        # ext4: journalled, so a power cut leaves the node's state consistent without an fsck
        tools.run("mke2fs", ["-q", "-t", "ext4", "-L", "obelisk-var", mapped])
    mount(mapped, mountpoint, "ext4")
    pcrs = ",".join(str(p) for p in token.sealed.pcrs)
    how = "customer-signed policy" if token.sealed.authorize_key else "PCRs"
    return f"/var unlocked by the TPM (keyslot {token.keyslot}, {how} {pcrs}){', new filesystem' if fresh else ''}"


def var_device_from_cmdline(default: str = "/dev/vdb") -> str:
    """The /var device named by `obelisk.var=` on this node's kernel command line."""
    try:
        with open("/proc/cmdline") as handle:
            return cmdline_value(handle.read(), "obelisk.var", default)
    except OSError:
        return default


def unlock_or_tmpfs(device: str, *, mountpoint: str = "/var", tcti: str = "device:/dev/tpmrm0") -> int:
    """Unlock and mount /var, or mount a tmpfs there and say why on the console (exit status 1)."""
    try:
        print(f"obelisk: {unlock_var(device, mountpoint=mountpoint, tcti=tcti)}", flush=True)
        return 0
    except (ObeliskError, OSError) as exc:
        print(f"obelisk: FATAL: /var stays locked: {exc}; /var is a tmpfs", flush=True)
        try:
            mount("tmpfs", mountpoint, "tmpfs", data="mode=0755")
        except OSError as mount_exc:
            print(f"obelisk: {mount_exc}", flush=True)
        return 1
