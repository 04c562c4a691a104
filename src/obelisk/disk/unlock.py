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

import base64
import ctypes
import os
from collections.abc import Callable
from typing import TYPE_CHECKING

from obelisk.core import tools
from obelisk.core.errors import ObeliskError

if TYPE_CHECKING:
    from obelisk.disk.recipe import VarRecipe
    from obelisk.tpm.seal import Sealed

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


def create_var(device: str, recipe_file: str, tcti: str, policy_file: str = SIGNED_POLICY) -> str:
    """First boot: LUKS2 on the blank /var partition, its key sealed as the image's recipe says."""
    from obelisk.disk import recipe as recipemod
    from obelisk.disk import volume as disk

    with open(recipe_file, "rb") as handle:
        recipe = recipemod.parse(handle.read(64 * 1024), recipe_file)
    pcrs = recipe.signed_pcrs or recipe.bound_at_first_boot
    floor = ""
    if recipe.rollback_index is not None:
        floor = "; " + provision_floor(recipe, tcti, signed_policies(policy_file, recipe.policy_key))
    # No recovery keyslot: a node has nobody to hand a recovery key to at first boot, and a key
    # written anywhere on the node would open /var for whoever reads the disk.
    if recipe.policy_key:
        disk.enroll(device, pcrs, tcti, format_volume=True, policy_key=recipe.policy_key, bound=dict(recipe.bound),
                    recovery=False, policy_ref=_policy_ref(recipe))
    else:
        disk.enroll(device, [*recipe.bound, *recipe.bound_at_first_boot], tcti, format_volume=True,
                    values=dict(recipe.bound), recovery=False)
    return "created LUKS2 /var (first boot)" + floor


def _policy_ref(recipe: VarRecipe) -> bytes:
    from obelisk.tpm import rollback_policy

    return rollback_policy.UNSEAL_REF if recipe.rollback_index is not None else b""


def provision_floor(recipe: VarRecipe, tcti: str, approvals: list) -> str:
    """When /var is created: define the rollback floor (tpm/rollback.py) and write it if it never was,
    to this image's index when the image advances the floor, else to 0 (PolicyNV needs a written index).
    A floor kept from an earlier install of this node stays where it is (it only goes up)."""
    from obelisk.tpm import rollback

    assert recipe.policy_key is not None and recipe.rollback_index is not None
    done = rollback.provision(recipe.policy_key, tcti)
    state = rollback.read_floor(tcti)
    if state is not None and state.rollback_index is None:
        target = recipe.rollback_index if recipe.advance_rollback_index else 0
        rollback.advance(target, recipe.policy_key, approvals, tcti)
        done += f", floor {target}"
    return done


def advance_floor(recipe: VarRecipe, tcti: str, approvals: list, sealed: Sealed) -> str:
    """After /var opened for this image: raise the node's rollback floor to the image's index if the
    image says so (upgrade.advance_rollback_index). Still at leave-initrd: the approval needs it.
    A volume sealed before rollback protection (no policyRef) has no floor to raise: it opened with
    the PCR-only approval and stays as it was."""
    from obelisk.tpm import rollback

    if (recipe.rollback_index is None or not recipe.advance_rollback_index or recipe.policy_key is None
            or not sealed.policy_ref):
        return ""
    if os.path.exists(TRIAL_MARKER):  # an A/B trial may still roll back: raise the floor after it committed
        return ", rollback floor kept (trial boot: raised at the first boot after the commit)"
    before, after = rollback.advance(recipe.rollback_index, recipe.policy_key, approvals, tcti)
    return f", rollback floor raised from {before} to {after}" if before != after else ""


# written by `node_init slot-boot` when this boot is the one trial boot of a newly written slot (docs/upgrade.md)
TRIAL_MARKER = "/run/obelisk/trial"

FleetKey = Callable[[], bytes]  # the fleet's part of /var's key, after a round that verified; raises if refused
FinishBoot = Callable[[], None]  # extends PCR 11 with the sysinit phase (then nothing here unseals again)
KEY_INFO = b"obelisk var key/1 "  # HKDF info, followed by the unlock mode


def derived_key(unlock: str, tpm_part: bytes | None, fleet_part: bytes) -> bytes:
    """The LUKS2 passphrase of a fleet-unlocked /var: HKDF-SHA256 over the parts the mode names.

    tpm+fleet needs both parts: LUKS2 keyslots are alternatives (any one opens the volume), so two
    keyslots could not require two secrets; one keyslot whose passphrase is derived from both does,
    and knowing either part alone says nothing about it. HKDF rather than XOR: the parts differ in
    length and form (the TPM's is the base64 text systemd-cryptenroll uses), and the mode is bound in.
    """
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    if unlock not in ("fleet", "tpm+fleet") or (tpm_part is None) != (unlock == "fleet"):
        raise ValueError(f"unlock {unlock}: wrong parts")
    if len(fleet_part) != 32:
        raise ObeliskError(f"the fleet's key part is {len(fleet_part)} bytes, not 32")
    material = (tpm_part or b"") + fleet_part
    okm = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=KEY_INFO + unlock.encode()).derive(material)
    return base64.b64encode(okm)


def unlock_var_with_fleet(device: str, recipe: VarRecipe, *, fleet_key: FleetKey, finish_boot: FinishBoot,
                          tcti: str, policy_file: str = SIGNED_POLICY) -> str:
    """disk.unlock fleet | tpm+fleet: open (first boot: create) `device` as /dev/mapper/MAPPING.

    Order: the TPM part is unsealed (or, at first boot, made and sealed) while PCR 11 is still at
    leave-initrd; then the sysinit phase goes into PCR 11, so the quote the service checks is the
    whole boot the build predicted, and nothing on this node can unseal again; only then is the
    service asked, in a round over its fresh nonce. A refused round formats nothing.
    """
    from obelisk.disk import volume as disk
    from obelisk.disk.token import Token

    new = not disk.is_luks(device)
    if new and not is_blank(device):
        raise ObeliskError(f"{device} is not a LUKS2 volume and not blank (the image expects an encrypted "
                           "/var; it formats only a partition whose first MiB is zeros)")
    tpm_part: bytes | None = None
    sealed = None
    keyslot: int | None = None
    floor = ""
    if recipe.uses_tpm:
        approvals = signed_policies(policy_file, recipe.policy_key) if recipe.rollback_index is not None else []
        if new:
            if recipe.rollback_index is not None:
                floor = "; " + provision_floor(recipe, tcti, approvals)
            tpm_part = disk.new_tpm_key()
            sealed = _seal_as_recipe(tpm_part, recipe, tcti)
        else:
            found = disk.tokens(device)
            key = found[-1].sealed.authorize_key if found else None
            token, tpm_part = disk.unseal_key(device, tcti, signed_policies(policy_file, key))
            keyslot = token.keyslot
            floor = advance_floor(recipe, tcti, approvals, token.sealed)
    finish_boot()
    passphrase = derived_key(recipe.unlock, tpm_part, fleet_key())
    if new:
        disk.create(device, passphrase)
        keyslot = 0
        if sealed is not None:
            disk.import_token(device, Token(keyslot=0, sealed=sealed, derived=recipe.unlock))
    disk.open_with_key(device, passphrase, name=MAPPING, keyslot=keyslot)
    what = "the TPM and the fleet service" if recipe.uses_tpm else "the fleet service"
    return (f"{'created LUKS2 /var (first boot); ' if new else ''}/var unlocked by {what} (keyslot {keyslot})"
            + floor)


def _seal_as_recipe(secret: bytes, recipe: VarRecipe, tcti: str) -> Sealed:
    """Seal `secret` as /etc/obelisk/var-seal.json says (as create_var does for the TPM-only volume)."""
    from obelisk.tpm import seal as sealmod

    if recipe.policy_key:
        return sealmod.seal(secret, recipe.signed_pcrs, tcti, authorize_key=recipe.policy_key,
                            bound=dict(recipe.bound), policy_ref=_policy_ref(recipe))
    return sealmod.seal(secret, [*recipe.bound, *recipe.bound_at_first_boot], tcti, values=dict(recipe.bound))


def unlock_var(device: str, *, mountpoint: str = "/var", tcti: str = "device:/dev/tpmrm0",
               policy_file: str = SIGNED_POLICY, recipe_file: str | None = None,
               fleet_key: FleetKey | None = None, finish_boot: FinishBoot | None = None) -> str:
    from obelisk.disk import recipe as recipemod
    from obelisk.disk import volume as disk

    recipe_path = recipe_file or recipemod.PATH
    recipe = None
    if os.path.exists(recipe_path):
        with open(recipe_path, "rb") as handle:
            recipe = recipemod.parse(handle.read(64 * 1024), recipe_path)
    if recipe is not None and recipe.uses_fleet:
        if fleet_key is None or finish_boot is None:
            raise ObeliskError(f"the image unlocks /var with the fleet service (disk.unlock {recipe.unlock}) "
                               "but this node has no fleet configured (fleet.url)")
        how = unlock_var_with_fleet(device, recipe, fleet_key=fleet_key, finish_boot=finish_boot, tcti=tcti,
                                    policy_file=policy_file)
        return how + _mount_var(mountpoint)
    created = ""
    if not disk.is_luks(device):
        # the image says /var is encrypted: only a never-used partition becomes one; anything else
        # here was put in its place: never use or format it
        if not is_blank(device):
            raise ObeliskError(f"{device} is not a LUKS2 volume and not blank (the image expects an encrypted "
                               "/var; it formats only a partition whose first MiB is zeros)")
        created = create_var(device, recipe_file or recipemod.PATH, tcti, policy_file) + "; "
    # the policy key the volume was sealed to picks which signed policies apply (one luksDump)
    enrolled = disk.tokens(device)
    key = enrolled[0].sealed.authorize_key if enrolled else None
    approvals = signed_policies(policy_file, key)
    token = disk.unlock(device, tcti, name=MAPPING, extra_policies=approvals)
    floor = advance_floor(recipe, tcti, approvals, token.sealed) if recipe is not None and not created else ""
    pcrs = ",".join(str(p) for p in token.sealed.pcrs)
    how = "customer-signed policy" if token.sealed.authorize_key else "PCRs"
    bound = "".join(f" + PCR {p} by value" for p in sorted(token.sealed.bound))
    return (f"{created}/var unlocked by the TPM (keyslot {token.keyslot}, {how} {pcrs}{bound}){floor}"
            + _mount_var(mountpoint))


def _mount_var(mountpoint: str) -> str:
    """ext4 on the opened volume (made at first use), mounted at `mountpoint`; the text to add to the report."""
    mapped = f"/dev/mapper/{MAPPING}"
    fresh = not has_ext_filesystem(mapped)
    if fresh:
        # ext4: journalled, so a power cut leaves the node's state consistent without an fsck
        tools.run("mke2fs", ["-q", "-t", "ext4", "-L", "obelisk-var", mapped])
    mount(mapped, mountpoint, "ext4")
    return ", new filesystem" if fresh else ""


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


def unlock_or_tmpfs(device: str | None, *, mountpoint: str = "/var", tcti: str = "device:/dev/tpmrm0",
                    fleet_key: FleetKey | None = None, finish_boot: FinishBoot | None = None) -> int:
    """Unlock and mount /var (`device`, else the command line's), or mount a tmpfs there and say why
    on the console (exit status 1)."""
    try:
        device = device or var_device_from_cmdline()
        how = unlock_var(device, mountpoint=mountpoint, tcti=tcti, fleet_key=fleet_key, finish_boot=finish_boot)
        print(f"obelisk: {how}", flush=True)
        return 0
    except Exception as exc:  # noqa: BLE001 - whatever went wrong (a library on the node too), /var must not
        # stay the read-only root's directory: say why and make it a tmpfs
        reason = str(exc) if isinstance(exc, (ObeliskError, OSError)) else f"{type(exc).__name__}: {exc}"
        print(f"obelisk: FATAL: /var stays locked: {reason}; /var is a tmpfs", flush=True)
        try:
            mount("tmpfs", mountpoint, "tmpfs", data="mode=0755")
        except OSError as mount_exc:
            print(f"obelisk: {mount_exc}", flush=True)
        return 1
