"""The dm-verity hash tree over the root SquashFS, and the kernel argument that mounts it checked.

`format_hash_tree` runs `veritysetup format` (cryptsetup-bin) on two regular files, rootless: the
data is the SquashFS, the hash tree (with its superblock at offset 0) goes to a separate file that
becomes the root-verity partition of disk.raw. The salt and the superblock UUID are derived from a
seed the caller gives (the spec digest), so the same inputs give the same root hash and the same
hash file byte for byte.

`dm_mod_create_argument` gives `dm-mod.create="..."` (CONFIG_DM_INIT,
Documentation/admin-guide/device-mapper/dm-init.rst): the kernel sets the verity device up itself
from the signed UKI's command line, before /init runs, so no userspace tool chooses the root hash.
The devices are named `PARTUUID=...`: dm-init's dm_get_device() falls back to name_to_dev_t()
(drivers/md/dm-table.c dm_get_dev_t, 6.1), which resolves PARTUUID= for GPT partitions
(CONFIG_EFI_PARTITION). dm-init runs as a late initcall after wait_for_device_probe(), and
virtio-blk registers its disk during probe, so the partitions exist by then; asynchronously probed
disks (USB, MMC) would need `dm-mod.waitfor=PARTUUID=...` too (`waitfor_argument`).
The mapped device is /dev/dm-0 when it is the only one (the initramfs mounts it read-only).
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from obelisk.core import atomic, tools
from obelisk.core.errors import InputError
from obelisk.image.derived_ids import derived_bytes, derived_uuid

BLOCK_SIZE = 4096  # data and hash blocks: the page size, the SquashFS padding and the kernel's default
SECTOR = 512  # device-mapper tables count 512-byte sectors
HASH_ALGORITHM = "sha256"
FORMAT_VERSION = 1  # dm-verity hash format 1 (the salt is prepended; format 0 is Chrome OS's)
SALT_BYTES = 32
# What dm-verity does when a block does not match: return EIO to the reader (the default), or
# reboot / panic the node. Any of them keeps a changed root from being read as genuine.
ON_CORRUPTION = {"eio": (), "restart": ("restart_on_corruption",), "panic": ("panic_on_corruption",)}

_HEX = re.compile(r"[0-9a-f]+")
# a device for the table: a PARTUUID=, a /dev path or major:minor; no separator dm-init splits on
_DEVICE = re.compile(r"(PARTUUID=[0-9a-fA-F-]{36}(/PARTNROFF=-?[0-9]+)?|/dev/[A-Za-z0-9/_.-]+|[0-9]+:[0-9]+)")
_NAME = re.compile(r"[A-Za-z0-9_.-]{1,127}")


@dataclass(frozen=True)
class VerityTree:
    """What the kernel needs to check the root: the root hash and the tree's geometry."""

    root_hash: str  # hex, the hash of the top hash block; the UKI's command line carries it
    salt: str  # hex
    uuid: str  # in the hash file's superblock (veritysetup dump shows it)
    hash_algorithm: str
    data_block_size: int
    hash_block_size: int
    data_blocks: int  # blocks of the data covered; data_blocks * data_block_size is the whole SquashFS
    hash_offset: int  # bytes into the hash file/partition where the superblock starts
    hash_start_block: int  # the table's <hash_start_block>: first tree block in the hash device, in hash blocks
                           # (hash_offset / hash_block_size + 1: the superblock fills the block before)
    hash_size: int  # bytes of the hash file (superblock + tree)
    format_version: int = FORMAT_VERSION

    @property
    def data_sectors(self) -> int:
        return self.data_blocks * self.data_block_size // SECTOR

    def to_json(self) -> dict[str, Any]:
        return {"root_hash": self.root_hash, "salt": self.salt, "uuid": self.uuid,
                "hash_algorithm": self.hash_algorithm, "data_block_size": self.data_block_size,
                "hash_block_size": self.hash_block_size, "data_blocks": self.data_blocks,
                "hash_offset": self.hash_offset, "hash_start_block": self.hash_start_block,
                "hash_size": self.hash_size, "format_version": self.format_version}

    @classmethod
    def from_json(cls, obj: Any, source: str = "verity") -> VerityTree:
        if not isinstance(obj, dict):
            raise InputError("expected an object", source=source)
        fields: dict[str, Any] = {}
        for key in ("root_hash", "salt", "uuid", "hash_algorithm"):
            value = obj.get(key)
            if not isinstance(value, str) or not value:
                raise InputError(f"{key}: expected a non-empty string", source=source)
            fields[key] = value
        for key in ("data_block_size", "hash_block_size", "data_blocks", "hash_offset", "hash_start_block",
                    "hash_size", "format_version"):
            value = obj.get(key)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise InputError(f"{key}: expected a non-negative integer", source=source)
            fields[key] = value
        for key in ("root_hash", "salt"):
            if not _HEX.fullmatch(fields[key]):
                raise InputError(f"{key}: expected lower-case hex", source=source)
        unknown = set(obj) - set(fields)
        if unknown:
            raise InputError(f"unknown field {sorted(unknown)[0]!r}", source=source)
        return cls(**fields)


def verity_salt(seed: str) -> str:
    return derived_bytes(seed, "dm-verity salt", SALT_BYTES).hex()


def verity_uuid(seed: str) -> str:
    return str(derived_uuid(seed, "dm-verity superblock"))


def _data_size(data: Path) -> int:
    try:
        st = os.stat(data)
    except OSError as exc:
        raise InputError(f"cannot read the verity data: {exc.strerror}", source=str(data)) from None
    if not os.path.isfile(data):
        raise InputError("the verity data is not a regular file", source=str(data))
    # veritysetup covers whole blocks only: a tail shorter than a block would be read unchecked
    if st.st_size == 0 or st.st_size % BLOCK_SIZE:
        raise InputError(f"the verity data is {st.st_size} bytes, not a non-zero multiple of {BLOCK_SIZE} "
                         "(a partial last block would not be checked)", source=str(data))
    return st.st_size


def format_hash_tree(data: str | os.PathLike[str], hash_output: str | os.PathLike[str], *, seed: str) -> VerityTree:
    """Hash `data` (the root SquashFS) into `hash_output` (written atomically); the tree's record.

    Rootless and reproducible: `veritysetup format` on regular files with the salt and UUID
    derived from `seed`, 4096-byte blocks, SHA-256, hash format 1, superblock at offset 0.
    """
    data_path = Path(data)
    size = _data_size(data_path)
    salt, uuid = verity_salt(seed), verity_uuid(seed)
    with tempfile.TemporaryDirectory(prefix="obelisk-verity-") as tmp, atomic.atomic_file(hash_output) as hash_tmp:
        root_hash_file = Path(tmp) / "root-hash"
        tools.run("veritysetup", ["format", data_path, hash_tmp, "--hash", HASH_ALGORITHM,
                                  "--data-block-size", str(BLOCK_SIZE), "--hash-block-size", str(BLOCK_SIZE),
                                  "--format", str(FORMAT_VERSION), "--salt", salt, "--uuid", uuid,
                                  "--root-hash-file", root_hash_file])
        root_hash = root_hash_file.read_text().strip().lower()
        if not _HEX.fullmatch(root_hash) or len(root_hash) != 64:
            raise InputError(f"veritysetup wrote an unexpected root hash {root_hash[:80]!r}",
                             source=str(root_hash_file))
        hash_size = hash_tmp.stat().st_size
    return VerityTree(root_hash=root_hash, salt=salt, uuid=uuid, hash_algorithm=HASH_ALGORITHM,
                      data_block_size=BLOCK_SIZE, hash_block_size=BLOCK_SIZE, data_blocks=size // BLOCK_SIZE,
                      hash_offset=0, hash_start_block=1, hash_size=hash_size)


def verify_hash_tree(data: str | os.PathLike[str], hash_file: str | os.PathLike[str], tree: VerityTree) -> None:
    """Check every block of `data` against `hash_file` and `tree.root_hash` (`veritysetup verify`).

    Raises InputError naming the data file when a block or the root hash does not match.
    """
    verify_root_hash(data, hash_file, tree.root_hash, hash_offset=tree.hash_offset)


def verify_root_hash(data: str | os.PathLike[str], hash_file: str | os.PathLike[str], root_hash: str, *,
                     hash_offset: int = 0) -> None:
    """`verify_hash_tree` with only the root hash known (the rest is in the hash file's superblock)."""
    if not _HEX.fullmatch(root_hash):
        raise InputError(f"root hash {root_hash[:80]!r}: expected lowercase hex", source=os.fspath(data))
    proc = tools.run("veritysetup", ["verify", data, hash_file, root_hash,
                                     "--hash-offset", str(hash_offset)], check=False)
    if proc.returncode != 0:
        detail = (proc.stderr or proc.stdout).decode(errors="replace").strip().splitlines()
        raise InputError(f"dm-verity verification failed: {detail[-1] if detail else 'exit ' + str(proc.returncode)}",
                         source=os.fspath(data))


def partuuid(partition_uuid: str) -> str:
    """How the kernel names a GPT partition by its unique GUID (init/do_mounts.c)."""
    return f"PARTUUID={partition_uuid.lower()}"


def verity_table(tree: VerityTree, *, data_device: str, hash_device: str, on_corruption: str = "eio") -> str:
    """The dm table line of the verity target (Documentation/admin-guide/device-mapper/verity.rst)."""
    for what, device in (("data_device", data_device), ("hash_device", hash_device)):
        if not _DEVICE.fullmatch(device):
            raise InputError(f"{what}: {device!r} is not PARTUUID=<uuid>, /dev/<name> or major:minor")
    if on_corruption not in ON_CORRUPTION:
        raise InputError(f"on_corruption: {on_corruption!r} is not one of {sorted(ON_CORRUPTION)}")
    optional = ON_CORRUPTION[on_corruption]
    args = [str(tree.format_version), data_device, hash_device, str(tree.data_block_size),
            str(tree.hash_block_size), str(tree.data_blocks),
            str(tree.hash_start_block), tree.hash_algorithm,
            tree.root_hash, tree.salt]
    if optional:
        args += [str(len(optional)), *optional]
    return f"0 {tree.data_sectors} verity {' '.join(args)}"


def dm_mod_create_argument(tree: VerityTree, *, data_device: str, hash_device: str, name: str = "root",
                           on_corruption: str = "eio") -> str:
    """`dm-mod.create="<name>,,,ro,<table>"`: the kernel maps the checked root as /dev/dm-0 at boot."""
    if not _NAME.fullmatch(name):
        raise InputError(f"name: {name!r} is not a device-mapper name (letters, digits, _ . -)")
    table = verity_table(tree, data_device=data_device, hash_device=hash_device, on_corruption=on_corruption)
    return f'dm-mod.create="{name},,,ro,{table}"'


def dm_mod_create_slots(tree: VerityTree, slots: Sequence[tuple[str, str, str]], *,
                        on_corruption: str = "eio") -> str:
    """`dm-mod.create="<name>,,,ro,<table>;..."`: one verity device per (name, data device, hash device),
    all with this tree's root hash, in order (/dev/dm-0, /dev/dm-1, ...). With A/B slots the UKI maps both
    slots: only the slot that holds this image has the top hash block that matches (the initramfs picks it)."""
    devices = []
    for name, data_device, hash_device in slots:
        if not _NAME.fullmatch(name):
            raise InputError(f"name: {name!r} is not a device-mapper name (letters, digits, _ . -)")
        table = verity_table(tree, data_device=data_device, hash_device=hash_device, on_corruption=on_corruption)
        devices.append(f"{name},,,ro,{table}")
    if not devices:
        raise InputError("no verity device to create")
    return 'dm-mod.create="' + ";".join(devices) + '"'


def hash_tree_capacity(data_size: int, block_size: int = BLOCK_SIZE) -> int:
    """Bytes of the largest hash file `format_hash_tree` can write for `data_size` bytes of data: the
    superblock's block and every level of the tree (SHA-256: block_size // 32 digests per hash block)."""
    per_block = block_size // 32
    blocks = -(-data_size // block_size)
    total = 1  # the superblock
    while True:
        blocks = -(-blocks // per_block)
        total += blocks
        if blocks <= 1:
            return total * block_size


def waitfor_argument(*devices: str) -> str:
    """`dm-mod.waitfor=` for disks that appear after the initcalls (USB, MMC); not needed for virtio."""
    for device in devices:
        if not _DEVICE.fullmatch(device):
            raise InputError(f"waitfor: {device!r} is not PARTUUID=<uuid>, /dev/<name> or major:minor")
    return "dm-mod.waitfor=" + ",".join(devices)
