"""On the node: create (first boot), unlock and mount the LUKS2 /var with the TPM (run by /sbin/obelisk-init).

    python3 -m obelisk.cli.node_init unlock-var

It runs from the signed root after the IMA policy is loaded, so this code, Python and cryptsetup
are appraised like everything else, and before obelisk-init extends PCR 11 with the `sysinit`
phase (image/measure.py): the customer signed PCR 11 at the `leave-initrd` phase, and PCR 7 is
bound by value (disk/recipe.py), so the key unseals only under the customer's Secure Boot keys
and a UKI whose PCR 11 the customer signed.

First boot: the /var partition of disk.raw is blank (its first MiB is zeros, as the build left
it). The node formats it as LUKS2 with a fresh key, seals the key as `/etc/obelisk/var-seal.json`
says, and stores the sealed key in the LUKS2 token; a partition that holds anything else is never
formatted (it may hold data, or be planted). The signed policy comes from the UKI's `.pcrsig`
section, which systemd-stub hands to the initramfs as /.extra/tpm2-pcr-signature.json and /init
copies to /run/obelisk. On any failure /var becomes a tmpfs, the reason goes to the console, and
the exit status is 1: the node stays up so that the verifier can ask it why.
"""

from __future__ import annotations

import ctypes
import os

from obelisk.core import tools
from obelisk.core.errors import ObeliskError

MAPPING = "obelisk-var"
SIGNED_POLICY = "/run/obelisk/tpm2-pcr-signature.json"  # the UKI's .pcrsig, copied by /init
BLANK_PROBE = 1 << 20  # a partition whose first MiB is zeros was never used: the first boot may format it
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


def signed_policies(path: str = SIGNED_POLICY, policy_key: bytes | None = None) -> list:
    """The customer-signed PCR policies this image carries (the TPM checks their signatures)."""
    from obelisk.disk import pcrsig

    try:
        with open(path, "rb") as handle:
            data = handle.read(64 * 1024)
    except FileNotFoundError:
        return []
    return list(pcrsig.parse(data, path, policy_key))


def is_blank(device: str) -> bool:
    with open(device, "rb") as handle:
        head = handle.read(BLANK_PROBE)
    return len(head) == BLANK_PROBE and not head.strip(b"\0")


def create_var(device: str, recipe_file: str, tcti: str) -> str:
    """First boot: LUKS2 on the blank /var partition, its key sealed as the image's recipe says."""
    from obelisk.disk import recipe as recipemod
    from obelisk.disk import volume as disk

    with open(recipe_file, "rb") as handle:
        recipe = recipemod.parse(handle.read(64 * 1024), recipe_file)
    pcrs = recipe.signed_pcrs or recipe.bound_at_first_boot
    # No recovery keyslot: a node has nobody to hand a recovery key to at first boot, and a key
    # written anywhere on the node would open /var for whoever reads the disk.
    if recipe.policy_key:
        disk.enroll(device, pcrs, tcti, format_volume=True, policy_key=recipe.policy_key, bound=dict(recipe.bound),
                    recovery=False)
    else:
        disk.enroll(device, [*recipe.bound, *recipe.bound_at_first_boot], tcti, format_volume=True,
                    values=dict(recipe.bound), recovery=False)
    return "created LUKS2 /var (first boot)"


def unlock_var(device: str, *, mountpoint: str = "/var", tcti: str = "device:/dev/tpmrm0",
               policy_file: str = SIGNED_POLICY, recipe_file: str | None = None) -> str:
    from obelisk.disk import recipe as recipemod
    from obelisk.disk import volume as disk

    created = ""
    if not disk.is_luks(device):
        # the image says /var is encrypted: only a never-used partition becomes one; anything else
        # here was put in its place: never use or format it
        if not is_blank(device):
            raise ObeliskError(f"{device} is not a LUKS2 volume and not blank (the image expects an encrypted "
                               "/var; it formats only a partition whose first MiB is zeros)")
        created = create_var(device, recipe_file or recipemod.PATH, tcti) + "; "
    token = disk.tokens(device)[0] if disk.tokens(device) else None
    key = token.sealed.authorize_key if token else None
    token = disk.unlock(device, tcti, name=MAPPING, extra_policies=signed_policies(policy_file, key))
    mapped = f"/dev/mapper/{MAPPING}"
    fresh = not has_ext_filesystem(mapped)
    if fresh:
        # ext4: journalled, so a power cut leaves the node's state consistent without an fsck
        tools.run("mke2fs", ["-q", "-t", "ext4", "-L", "obelisk-var", mapped])
    mount(mapped, mountpoint, "ext4")
    pcrs = ",".join(str(p) for p in token.sealed.pcrs)
    how = "customer-signed policy" if token.sealed.authorize_key else "PCRs"
    bound = "".join(f" + PCR {p} by value" for p in sorted(token.sealed.bound))
    return (f"{created}/var unlocked by the TPM (keyslot {token.keyslot}, {how} {pcrs}{bound})"
            f"{', new filesystem' if fresh else ''}")


def var_device_from_cmdline(default: str = "/dev/vdb") -> str:
    """The /var device named by `obelisk.var=` on this node's kernel command line: a path, or
    `PARTLABEL=name` (the GPT partition name, looked up in sysfs)."""
    try:
        with open("/proc/cmdline") as handle:
            named = cmdline_value(handle.read(), "obelisk.var", default)
    except OSError:
        return default
    return resolve_partlabel(named) if named.startswith("PARTLABEL=") else named


def resolve_partlabel(spec: str, sysfs: str = "/sys/class/block") -> str:
    """`PARTLABEL=name` -> /dev/<the one partition of that GPT name> (uevent's PARTNAME)."""
    label = spec.partition("=")[2]
    found = []
    for entry in sorted(os.listdir(sysfs)) if os.path.isdir(sysfs) else []:
        try:
            with open(os.path.join(sysfs, entry, "uevent")) as handle:
                fields = dict(line.rstrip("\n").partition("=")[::2] for line in handle)
        except OSError:
            continue
        if fields.get("PARTNAME") == label:
            found.append(f"/dev/{fields.get('DEVNAME', entry)}")
    if len(found) != 1:
        # none, or two disks with the same name: refusing is safer than guessing which one is /var
        raise ObeliskError(f"{spec}: {len(found)} partitions have that name (expected one)")
    return found[0]


def unlock_or_tmpfs(device: str | None, *, mountpoint: str = "/var", tcti: str = "device:/dev/tpmrm0") -> int:
    """Unlock and mount /var (`device`, else the command line's), or mount a tmpfs there and say why
    on the console (exit status 1)."""
    try:
        device = device or var_device_from_cmdline()
        print(f"obelisk: {unlock_var(device, mountpoint=mountpoint, tcti=tcti)}", flush=True)
        return 0
    except (ObeliskError, OSError) as exc:
        print(f"obelisk: FATAL: /var stays locked: {exc}; /var is a tmpfs", flush=True)
        try:
            mount("tmpfs", mountpoint, "tmpfs", data="mode=0755")
        except OSError as mount_exc:
            print(f"obelisk: {mount_exc}", flush=True)
        return 1
