"""disk.raw: the bootable GPT disk image, built rootless and byte-for-byte reproducible.

Partitions, typed per the UAPI Group's Discoverable Partitions Specification (`systemd-id128 show`
lists the same type GUIDs), in two slots (A/B, docs/upgrade.md) and a shared /var:

  1 esp            slot a's boot: the EFI System Partition, FAT32, the signed UKI at EFI/BOOT/BOOTX64.EFI
  2 root-a         slot a's root: the IMA-signed root SquashFS (dm-verity data)
  3 root-a-verity  its dm-verity hash tree (image/dmverity.py)
  4 boot-b         slot b's boot (XBOOTLDR type, FAT32, the same files as esp once written): zeros
  5 root-b         slot b's root: zeros until an upgrade writes it
  6 root-b-verity  slot b's hash tree: zeros
  7 var            zeros (a hole in the file), LUKS-formatted by the node at first boot

With `slot_size` given, the slots have that fixed size (and the boot partitions `esp_size`), so
every image of one name has the same partition table and an upgrade writes only a slot's contents.

No loop device and no mount: `sfdisk` writes the GPT into a regular file, `mkfs.vfat` and mtools
(`mmd`, `mcopy`) build the ESP as a separate file, and each partition's bytes are copied into
place. The disk GUID and the partition GUIDs are derived from a seed (the spec digest), the FAT
volume id too, and FAT timestamps come from SOURCE_DATE_EPOCH (mtools 4.0.32 takes "now" from it;
TZ=UTC because FAT stores local time). The partition GUIDs are known before the disk exists
(`partition_uuid`), which the UKI needs: its command line names the root partitions by PARTUUID=
and the UKI itself goes into the ESP.

The disk is written under a temporary name and renamed when complete (core/atomic.py), so a build
killed midway leaves no disk.raw. `parse_gpt` reads a GPT back (bounded; errors name the offset)
and `verify_disk_image` checks a disk against its layout record.
"""

from __future__ import annotations

import hashlib
import os
import re
import struct
import tempfile
import uuid
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from obelisk.core import atomic, inputs, tools
from obelisk.core.errors import InputError, ParseError
from obelisk.image.derived_ids import derived_bytes, derived_uuid
from obelisk.image.dmverity import VerityTree, dm_mod_create_slots, hash_tree_capacity, partuuid

SECTOR = 512
ALIGNMENT = 1 << 20  # every partition starts and ends on a MiB boundary
MIB = 1 << 20

# Discoverable Partitions Specification (https://uapi-group.org/specifications/specs/discoverable_partitions_specification/)
ESP_TYPE = "c12a7328-f81f-11d2-ba4b-00a0c93ec93b"
ROOT_X86_64_TYPE = "4f68bce3-e8cd-4db1-96e7-fbcaf984b709"
ROOT_X86_64_VERITY_TYPE = "2c7357ed-ebd2-46d9-aec1-23d437ec2bf5"
VAR_TYPE = "4d21b016-b534-45c2-a9fb-5c16e091fd2d"
XBOOTLDR_TYPE = "bc13c2ff-59e6-4262-a352-b275fd6f7172"

ESP, ROOT, ROOT_VERITY, VAR = "esp", "root-a", "root-a-verity", "var"
BOOT_B, ROOT_B, ROOT_B_VERITY = "boot-b", "root-b", "root-b-verity"
PARTITION_TYPES: dict[str, str] = {ESP: ESP_TYPE, ROOT: ROOT_X86_64_TYPE, ROOT_VERITY: ROOT_X86_64_VERITY_TYPE,
                                   BOOT_B: XBOOTLDR_TYPE, ROOT_B: ROOT_X86_64_TYPE,
                                   ROOT_B_VERITY: ROOT_X86_64_VERITY_TYPE, VAR: VAR_TYPE}
ORDER = (ESP, ROOT, ROOT_VERITY, BOOT_B, ROOT_B, ROOT_B_VERITY, VAR)
# GPT attribute bit 60 is the spec's read-only flag: mounts of root and its hash tree are read-only
READ_ONLY_ATTRIBUTE = 1 << 60
_READ_ONLY = {ROOT, ROOT_VERITY, ROOT_B, ROOT_B_VERITY}


@dataclass(frozen=True)
class Slot:
    """One of the two A/B slots: its boot partition (FAT, the UKI), root and root's hash tree, by GPT name."""

    name: str  # "a" | "b"
    boot: str
    root: str
    verity: str

    @property
    def partitions(self) -> tuple[str, str, str]:
        return (self.boot, self.root, self.verity)


SLOTS: dict[str, Slot] = {"a": Slot("a", ESP, ROOT, ROOT_VERITY), "b": Slot("b", BOOT_B, ROOT_B, ROOT_B_VERITY)}

ESP_MIN_SIZE = 64 * MIB  # FAT32 with 512-byte clusters needs at least 65525 clusters (~33 MiB)
ESP_LABEL = "OBELISK-ESP"
VAR_MIN_SIZE = 64 * MIB  # LUKS2's header (16 MiB) plus a file system worth having
_COPY_CHUNK = 4 * MIB
# a path on the ESP: FAT-safe components, no "." or ".."
_ESP_COMPONENT = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,63}")
_MTOOLS_ENV = {"MTOOLS_SKIP_CHECK": "1", "TZ": "UTC"}

# GPT bounds (UEFI 2.10 section 5.3): the parser refuses anything beyond them before reading it
_GPT_SIGNATURE = b"EFI PART"
_GPT_HEADER = struct.Struct("<8sIIIIQQQQ16sQIII")  # 92 bytes
_GPT_ENTRY = struct.Struct("<16s16sQQQ72s")  # 128 bytes
_MAX_ENTRIES = 1024
_MAX_ENTRY_SIZE = 4096


@dataclass(frozen=True)
class Partition:
    """One partition of disk.raw as built: where it is and what it holds."""

    number: int  # 1-based, as the kernel numbers them (vda1..)
    name: str  # the GPT partition name
    type_guid: str
    uuid: str  # the unique partition GUID: the kernel's PARTUUID=
    start: int  # bytes from the start of the disk
    size: int  # bytes
    sha256: str | None  # of all `size` bytes; None for var (the node's) and slot b (empty until an upgrade)

    def to_json(self) -> dict[str, Any]:
        return {"number": self.number, "name": self.name, "type_guid": self.type_guid, "uuid": self.uuid,
                "start": self.start, "size": self.size, "sha256": self.sha256}


@dataclass(frozen=True)
class DiskLayout:
    """disk.raw's partition table and the digest of each partition's content."""

    disk_guid: str
    size: int  # bytes of disk.raw
    sector_size: int
    partitions: tuple[Partition, ...]

    def partition(self, name: str) -> Partition:
        for part in self.partitions:
            if part.name == name:
                return part
        raise KeyError(name)

    def to_json(self) -> dict[str, Any]:
        return {"disk_guid": self.disk_guid, "size": self.size, "sector_size": self.sector_size,
                "partitions": [part.to_json() for part in self.partitions]}

    @classmethod
    def from_json(cls, obj: Any, source: str = "disk layout") -> DiskLayout:
        if not isinstance(obj, dict):
            raise InputError("expected an object", source=source)
        if set(obj) != {"disk_guid", "size", "sector_size", "partitions"}:
            raise InputError(f"expected the fields disk_guid, size, sector_size, partitions, got {sorted(obj)}",
                             source=source)
        disk_guid = _guid_field(obj, "disk_guid", source)
        size, sector_size = _int_field(obj, "size", source), _int_field(obj, "sector_size", source)
        parts = obj["partitions"]
        if not isinstance(parts, list) or len(parts) > _MAX_ENTRIES:
            raise InputError(f"partitions: expected a list of at most {_MAX_ENTRIES}", source=source)
        partitions = []
        for index, item in enumerate(parts):
            where = f"{source}: partitions[{index}]"
            if not isinstance(item, dict) or set(item) != {"number", "name", "type_guid", "uuid", "start", "size",
                                                             "sha256"}:
                raise InputError("expected number, name, type_guid, uuid, start, size, sha256", source=where)
            name = item["name"]
            if not isinstance(name, str) or not 0 < len(name) <= 36:
                raise InputError("name: expected 1 to 36 characters", source=where)
            digest = item["sha256"]
            if digest is not None and (not isinstance(digest, str) or not re.fullmatch(r"[0-9a-f]{64}", digest)):
                raise InputError("sha256: expected 64 lower-case hex digits or null", source=where)
            partitions.append(Partition(number=_int_field(item, "number", where), name=name,
                                        type_guid=_guid_field(item, "type_guid", where),
                                        uuid=_guid_field(item, "uuid", where), start=_int_field(item, "start", where),
                                        size=_int_field(item, "size", where), sha256=digest))
        return cls(disk_guid=disk_guid, size=size, sector_size=sector_size, partitions=tuple(partitions))


def _int_field(obj: Mapping[str, Any], key: str, source: str) -> int:
    value = obj.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise InputError(f"{key}: expected a non-negative integer", source=source)
    return value


def _guid_field(obj: Mapping[str, Any], key: str, source: str) -> str:
    value = obj.get(key)
    try:
        if not isinstance(value, str):
            raise ValueError
        guid = str(uuid.UUID(value))
    except ValueError:
        raise InputError(f"{key}: expected a GUID", source=source) from None
    if guid != value:
        raise InputError(f"{key}: expected the lower-case form {guid}", source=source)
    return guid


# ---- identifiers ---------------------------------------------------------------------------------

def disk_guid(seed: str) -> str:
    return str(derived_uuid(seed, "gpt disk"))


def partition_uuid(seed: str, name: str) -> str:
    """The PARTUUID partition `name` gets in the disk built from `seed` (known before it is built)."""
    if name not in PARTITION_TYPES:
        raise InputError(f"unknown partition {name!r}: one of {sorted(PARTITION_TYPES)}")
    return str(derived_uuid(seed, f"gpt partition {name}"))


def verity_root_argument(tree: VerityTree, seed: str, *, on_corruption: str = "eio") -> str:
    """The UKI's `dm-mod.create=` for the disk built from `seed`: both slots' roots and hash trees named by
    PARTUUID= (root-a is /dev/dm-0, root-b /dev/dm-1), each checked against this image's root hash; the
    initramfs mounts the one whose top hash block matches (`obelisk.root=slot`)."""
    return dm_mod_create_slots(tree, [(f"root-{slot.name}", partuuid(partition_uuid(seed, slot.root)),
                                       partuuid(partition_uuid(seed, slot.verity))) for slot in SLOTS.values()],
                               on_corruption=on_corruption)


def esp_volume_id(seed: str) -> str:
    return derived_bytes(seed, "esp volume id", 4).hex()


# ---- the ESP -------------------------------------------------------------------------------------

def _round_up(value: int, unit: int) -> int:
    return -(-value // unit) * unit


def _check_esp_path(path: str) -> tuple[str, ...]:
    parts = tuple(path.split("/"))
    if not parts or not all(_ESP_COMPONENT.fullmatch(part) for part in parts):
        raise InputError(f"ESP path {path!r}: expected '/'-separated names of letters, digits, '.', '_', '-'")
    return parts


def esp_size_for(esp_files: Mapping[str, Path]) -> int:
    """Room for the files (rounded to 512-byte clusters), FAT32's tables and 25% to spare; at least 64 MiB."""
    content = sum(_round_up(_file_size(path, f"ESP file {name}"), SECTOR) for name, path in esp_files.items())
    return max(ESP_MIN_SIZE, _round_up(content + content // 4 + 8 * MIB, ALIGNMENT))


def build_esp(output: str | os.PathLike[str], esp_files: Mapping[str, Path], *, size: int, volume_id: str,
              source_date_epoch: int) -> None:
    """A FAT32 file system image of `size` bytes holding `esp_files` (ESP path -> file), written atomically."""
    if size % ALIGNMENT or size < ESP_MIN_SIZE:
        raise InputError(f"ESP size {size}: expected a multiple of 1 MiB, at least {ESP_MIN_SIZE}")
    if not re.fullmatch(r"[0-9a-f]{8}", volume_id):
        raise InputError(f"ESP volume id {volume_id!r}: expected 8 hex digits")
    paths = {name: _check_esp_path(name) for name in esp_files}
    directories = sorted({parts[:depth] for parts in paths.values() for depth in range(1, len(parts))},
                         key=lambda parts: (len(parts), parts))
    env = {**_MTOOLS_ENV, "SOURCE_DATE_EPOCH": str(source_date_epoch)}
    with atomic.atomic_file(output) as tmp:
        os.truncate(tmp, size)
        # --invariant first: it fixes the values mkfs would randomise, then -i sets ours
        tools.run("mkfs.vfat", ["-F", "32", "-S", str(SECTOR), "-s", "1", "--invariant", "-i", volume_id,
                                "-n", ESP_LABEL, tmp], env=env)
        for parts in directories:
            tools.run("mmd", ["-i", tmp, "::/" + "/".join(parts)], env=env)
        for name in sorted(esp_files):
            tools.run("mcopy", ["-i", tmp, "-o", esp_files[name], "::/" + name], env=env)


# ---- disk.raw ------------------------------------------------------------------------------------

def _file_size(path: Path, what: str) -> int:
    try:
        st = os.stat(path)
    except OSError as exc:
        raise InputError(f"cannot read {what}: {exc.strerror}", source=str(path)) from None
    if not os.path.isfile(path):
        raise InputError(f"{what} is not a regular file", source=str(path))
    return st.st_size


def _sfdisk_script(layout: DiskLayout) -> str:
    lines = ["label: gpt", f"label-id: {layout.disk_guid.upper()}", "unit: sectors", "sector-size: 512",
             f"first-lba: {ALIGNMENT // SECTOR}", ""]
    for part in layout.partitions:
        attrs = ', attrs="GUID:60"' if part.name in _READ_ONLY else ""
        lines.append(f"start={part.start // SECTOR}, size={part.size // SECTOR}, type={part.type_guid.upper()}, "
                     f'uuid={part.uuid.upper()}, name="{part.name}"{attrs}')
    return "\n".join(lines) + "\n"


def _copy_into(disk: Any, source: Path | None, start: int, size: int) -> str:
    """Copy `source` to offset `start` of the open disk and return the sha256 of the whole `size`-byte extent
    (the file then the zeros the disk already holds after it). The disk is a fresh hole there, so chunks
    of zeros are skipped rather than written: disk.raw stays sparse."""
    if source is None:
        return ""  # left as zeros (a hole); nothing to copy or to vouch for
    digest = hashlib.sha256()
    zeros = bytes(_COPY_CHUNK)
    written = 0
    disk.seek(start)
    with open(source, "rb") as src:
        while chunk := src.read(_COPY_CHUNK):
            if written + len(chunk) > size:
                raise InputError(f"grew past its partition ({size} bytes) while being copied", source=str(source))
            if chunk == zeros[:len(chunk)]:
                disk.seek(len(chunk), os.SEEK_CUR)
            else:
                disk.write(chunk)
            digest.update(chunk)
            written += len(chunk)
    while written < size:
        step = min(_COPY_CHUNK, size - written)
        digest.update(zeros[:step])
        written += step
    return digest.hexdigest()


def plan_layout(*, esp_size: int, root_size: int, verity_size: int, var_size: int, seed: str) -> DiskLayout:
    """Where each partition goes (1 MiB aligned, slot a, slot b, var), with no digests yet. Both slots get
    the same sizes."""
    slot_sizes = (esp_size, _round_up(root_size, ALIGNMENT), _round_up(verity_size, ALIGNMENT))
    sizes = {VAR: _round_up(var_size, ALIGNMENT)}
    for slot in SLOTS.values():
        sizes.update(zip(slot.partitions, slot_sizes, strict=True))
    start = ALIGNMENT
    partitions = []
    for number, name in enumerate(ORDER, start=1):
        partitions.append(Partition(number=number, name=name, type_guid=PARTITION_TYPES[name],
                                    uuid=partition_uuid(seed, name), start=start, size=sizes[name], sha256=None))
        start += sizes[name]
    # the backup GPT (33 sectors) lives in the last MiB
    return DiskLayout(disk_guid=disk_guid(seed), size=start + ALIGNMENT, sector_size=SECTOR,
                      partitions=tuple(partitions))


def slot_verity_size(slot_size: int) -> int:
    """The hash tree partition of a slot of `slot_size` bytes: room for the tree of a full slot."""
    return _round_up(hash_tree_capacity(slot_size), ALIGNMENT)


def build_disk_image(output: str | os.PathLike[str], *, esp_files: Mapping[str, Path], root: Path,
                     root_verity: Path, var_size: int, seed: str, source_date_epoch: int,
                     esp_size: int | None = None, slot_size: int | None = None) -> DiskLayout:
    """Write disk.raw at `output` (atomically) and return its layout.

    `esp_files` maps ESP paths ("EFI/BOOT/BOOTX64.EFI") to files; `root` is the SquashFS and
    `root_verity` its hash tree (dmverity.format_hash_tree), written into slot a; slot b and
    `var_size` bytes of var are left as zeros (holes). `slot_size` fixes the root partitions' size
    (the verity ones follow), else they fit this root. The same inputs give the same bytes.
    """
    if var_size < VAR_MIN_SIZE:
        raise InputError(f"var size {var_size}: at least {VAR_MIN_SIZE} bytes (LUKS2 header and a file system)")
    root_size = _file_size(root, "the root image")
    verity_size = _file_size(root_verity, "the verity hash tree")
    if root_size == 0 or verity_size == 0:
        raise InputError("the root image and its hash tree must not be empty", source=str(root))
    if slot_size is not None:
        if root_size > slot_size:
            raise InputError(f"the root image ({root_size} bytes) does not fit its slot ({slot_size} bytes): "
                             "raise upgrade.slot_size_mib", source=str(root))
        root_size, verity_size = slot_size, slot_verity_size(slot_size)
    planned = plan_layout(esp_size=esp_size if esp_size is not None else esp_size_for(esp_files),
                          root_size=root_size, verity_size=verity_size, var_size=var_size, seed=seed)
    contents: dict[str, Path | None] = {ROOT: root, ROOT_VERITY: root_verity, VAR: None, BOOT_B: None, ROOT_B: None,
                                        ROOT_B_VERITY: None}
    digests: dict[str, str | None] = {}
    target = Path(output)
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".obelisk-esp-", dir=target.parent) as tmp, \
            atomic.atomic_file(target) as disk_path:
        esp_image = Path(tmp) / "esp.img"
        build_esp(esp_image, esp_files, size=planned.partition(ESP).size, volume_id=esp_volume_id(seed),
                  source_date_epoch=source_date_epoch)
        contents[ESP] = esp_image
        os.truncate(disk_path, planned.size)
        tools.run("sfdisk", ["--no-reread", "--no-tell-kernel", "--quiet", "--wipe", "never", disk_path],
                  input=_sfdisk_script(planned).encode())
        with open(disk_path, "r+b") as disk:
            for part in planned.partitions:
                digest = _copy_into(disk, contents[part.name], part.start, part.size)
                digests[part.name] = digest if contents[part.name] is not None else None
        layout = DiskLayout(disk_guid=planned.disk_guid, size=planned.size, sector_size=SECTOR,
                            partitions=tuple(Partition(**{**part.to_json(), "sha256": digests[part.name]})
                                             for part in planned.partitions))
        # what sfdisk wrote must be what was asked for, read back by our own parser
        _compare_table(read_gpt(disk_path), layout, str(disk_path))
    return layout


def convert_to_qcow2(raw: str | os.PathLike[str], output: str | os.PathLike[str]) -> None:
    """A qcow2 copy of disk.raw (qemu-img convert; zeros stay unallocated), written atomically."""
    with atomic.atomic_file(output) as tmp:
        tools.run("qemu-img", ["convert", "-q", "-f", "raw", "-O", "qcow2", raw, tmp])


# ---- reading a GPT back --------------------------------------------------------------------------

@dataclass(frozen=True)
class GptPartition:
    number: int  # index in the entry array + 1
    type_guid: str
    uuid: str
    first_lba: int
    last_lba: int  # inclusive
    attributes: int
    name: str


@dataclass(frozen=True)
class GptTable:
    disk_guid: str
    first_usable_lba: int
    last_usable_lba: int
    alternate_lba: int  # the backup header's LBA (the disk's last sector)
    entries_lba: int
    entry_count: int  # slots in the entry array (128 as sfdisk writes it), used or not
    entry_size: int
    partitions: tuple[GptPartition, ...]  # used entries only (type GUID not all zeros)


def _guid(raw: bytes) -> str:
    return str(uuid.UUID(bytes_le=raw))


def parse_gpt(disk: bytes | Any, source: str = "disk") -> GptTable:
    """The primary GPT of `disk` (bytes or a read-only mapping of the whole disk, 512-byte sectors).

    Checks the protective MBR, the header's signature, size, CRC32 and LBAs, and the entry array's
    bounds and CRC32; every error is a ParseError naming the byte offset.
    """
    total = len(disk)
    if total < 34 * SECTOR:
        raise ParseError(f"{total} bytes: too small for a GPT (34 sectors)", source=source, offset=0)
    if disk[510:512] != b"\x55\xaa":
        raise ParseError("no protective MBR (boot signature 55aa missing)", source=source, offset=510)
    if disk[446 + 4] != 0xEE:
        raise ParseError(f"protective MBR: first partition type {disk[450]:#04x}, expected 0xee", source=source,
                         offset=450)
    header_at = SECTOR
    (signature, revision, header_size, header_crc, _reserved, my_lba, alternate_lba, first_usable, last_usable,
     disk_guid_raw, entries_lba, entry_count, entry_size, entries_crc) = _GPT_HEADER.unpack_from(disk, header_at)
    if signature != _GPT_SIGNATURE:
        raise ParseError(f"GPT header signature {signature!r}, expected {_GPT_SIGNATURE!r}", source=source,
                         offset=header_at)
    if revision != 0x00010000:
        raise ParseError(f"GPT revision {revision:#x}, expected 0x10000", source=source, offset=header_at + 8)
    if not _GPT_HEADER.size <= header_size <= SECTOR:
        raise ParseError(f"GPT header size {header_size}, expected 92..512", source=source, offset=header_at + 12)
    header = bytearray(disk[header_at:header_at + header_size])
    header[16:20] = b"\0\0\0\0"
    if zlib.crc32(bytes(header)) != header_crc:
        raise ParseError("GPT header CRC32 does not match", source=source, offset=header_at + 16)
    if my_lba != 1:
        raise ParseError(f"GPT header's own LBA is {my_lba}, expected 1", source=source, offset=header_at + 24)
    sectors = total // SECTOR
    if not 1 < first_usable <= last_usable < sectors or alternate_lba >= sectors:
        raise ParseError(f"GPT usable LBAs {first_usable}..{last_usable} (alternate {alternate_lba}) "
                         f"outside a disk of {sectors} sectors", source=source, offset=header_at + 32)
    if not 0 < entry_count <= _MAX_ENTRIES:
        raise ParseError(f"{entry_count} partition entries, expected 1..{_MAX_ENTRIES}", source=source,
                         offset=header_at + 80)
    if entry_size < _GPT_ENTRY.size or entry_size > _MAX_ENTRY_SIZE or entry_size % 8:
        raise ParseError(f"partition entry size {entry_size}, expected 128..{_MAX_ENTRY_SIZE} in steps of 8",
                         source=source, offset=header_at + 84)
    entries_at = entries_lba * SECTOR
    entries_end = entries_at + entry_count * entry_size
    if entries_lba < 2 or entries_end > first_usable * SECTOR:
        raise ParseError(f"partition entries at LBA {entries_lba} overlap the header or the usable area",
                         source=source, offset=header_at + 72)
    entries = bytes(disk[entries_at:entries_end])
    if zlib.crc32(entries) != entries_crc:
        raise ParseError("partition entry array CRC32 does not match", source=source, offset=header_at + 88)
    partitions = []
    for index in range(entry_count):
        at = index * entry_size
        type_raw, unique_raw, first_lba, last_lba, attributes, name_raw = _GPT_ENTRY.unpack_from(entries, at)
        if type_raw == bytes(16):
            continue
        if not first_usable <= first_lba <= last_lba <= last_usable:
            raise ParseError(f"partition {index + 1}: LBAs {first_lba}..{last_lba} outside the usable "
                             f"{first_usable}..{last_usable}", source=source, offset=entries_at + at + 32)
        try:
            name = name_raw.decode("utf-16-le").split("\0", 1)[0]
        except UnicodeDecodeError:
            raise ParseError(f"partition {index + 1}: name is not UTF-16LE", source=source,
                             offset=entries_at + at + 56) from None
        partitions.append(GptPartition(number=index + 1, type_guid=_guid(type_raw), uuid=_guid(unique_raw),
                                       first_lba=first_lba, last_lba=last_lba, attributes=attributes, name=name))
    return GptTable(disk_guid=_guid(disk_guid_raw), first_usable_lba=first_usable, last_usable_lba=last_usable,
                    alternate_lba=alternate_lba, entries_lba=entries_lba, entry_count=entry_count,
                    entry_size=entry_size, partitions=tuple(partitions))


def _entry_array(table: GptTable) -> bytes:
    entries = bytearray(table.entry_count * table.entry_size)
    for part in table.partitions:
        name = part.name.encode("utf-16-le")
        if len(name) > 72 or not 0 < part.number <= table.entry_count:
            raise InputError(f"partition {part.number}: name longer than 36 UTF-16 units or number out of range")
        _GPT_ENTRY.pack_into(entries, (part.number - 1) * table.entry_size, uuid.UUID(part.type_guid).bytes_le,
                             uuid.UUID(part.uuid).bytes_le, part.first_lba, part.last_lba, part.attributes,
                             name.ljust(72, b"\0"))
    return bytes(entries)


def _header(table: GptTable, *, my_lba: int, alternate_lba: int, entries_lba: int, entries_crc: int) -> bytes:
    fields = [_GPT_SIGNATURE, 0x00010000, _GPT_HEADER.size, 0, 0, my_lba, alternate_lba, table.first_usable_lba,
              table.last_usable_lba, uuid.UUID(table.disk_guid).bytes_le, entries_lba, table.entry_count,
              table.entry_size, entries_crc]
    fields[3] = zlib.crc32(_GPT_HEADER.pack(*fields))
    return _GPT_HEADER.pack(*fields).ljust(SECTOR, b"\0")


def serialize_gpt(table: GptTable) -> tuple[bytes, bytes]:
    """The disk's first sectors (protective MBR, primary header, entry array) and its last ones (backup
    entry array, backup header), as `parse_gpt` reads them back; the backup ends at `alternate_lba`."""
    entries = _entry_array(table)
    entries_crc = zlib.crc32(entries)
    entry_sectors = -(-len(entries) // SECTOR)
    mbr = bytearray(SECTOR)
    # one partition of type 0xee from LBA 1 over the whole disk (capped at 2^32-1 sectors), CHS saturated
    mbr[446:462] = struct.pack("<B3sB3sII", 0, b"\x00\x02\x00", 0xEE, b"\xff\xff\xff", 1,
                               min(table.alternate_lba, 0xFFFFFFFF))
    mbr[510:512] = b"\x55\xaa"
    padded = entries.ljust(entry_sectors * SECTOR, b"\0")
    primary = bytes(mbr) + _header(table, my_lba=1, alternate_lba=table.alternate_lba, entries_lba=table.entries_lba,
                                   entries_crc=entries_crc)
    primary += bytes((table.entries_lba - 2) * SECTOR) + padded
    backup_entries_lba = table.alternate_lba - entry_sectors
    backup = padded + _header(table, my_lba=table.alternate_lba, alternate_lba=1, entries_lba=backup_entries_lba,
                              entries_crc=entries_crc)
    return primary, backup


def read_gpt(path: str | os.PathLike[str]) -> GptTable:
    """The primary GPT of the disk image at `path` (mapped, only the table is read)."""
    data = inputs.map_bounded(path, "disk image", 1 << 42)
    try:
        return parse_gpt(data, os.fspath(path))
    finally:
        if not isinstance(data, bytes):
            data.close()


def _compare_table(table: GptTable, layout: DiskLayout, source: str) -> None:
    if table.disk_guid != layout.disk_guid:
        raise InputError(f"disk GUID {table.disk_guid}, expected {layout.disk_guid}", source=source)
    if len(table.partitions) != len(layout.partitions):
        raise InputError(f"{len(table.partitions)} partitions, expected {len(layout.partitions)}", source=source)
    for found, want in zip(table.partitions, layout.partitions, strict=True):
        got = (found.number, found.name, found.type_guid, found.uuid, found.first_lba * SECTOR,
               (found.last_lba + 1 - found.first_lba) * SECTOR)
        expected = (want.number, want.name, want.type_guid, want.uuid, want.start, want.size)
        for field, a, b in zip(("number", "name", "type_guid", "uuid", "start", "size"), got, expected, strict=True):
            if a != b:
                raise InputError(f"partition {want.name}: {field} is {a}, expected {b}", source=source)


def verify_disk_image(path: str | os.PathLike[str], layout: DiskLayout) -> None:
    """Check that the disk at `path` has `layout`'s partition table and partition contents.

    Raises InputError naming the partition and field that differ (var's content is not checked).
    """
    name = os.fspath(path)
    size = _file_size(Path(name), "the disk image")
    if size != layout.size:
        raise InputError(f"{size} bytes, expected {layout.size}", source=name)
    _compare_table(read_gpt(name), layout, name)
    with open(name, "rb") as disk:
        for part in layout.partitions:
            if part.sha256 is None:
                continue
            disk.seek(part.start)
            digest = hashlib.sha256()
            remaining = part.size
            while remaining:
                chunk = disk.read(min(_COPY_CHUNK, remaining))
                if not chunk:
                    break
                digest.update(chunk)
                remaining -= len(chunk)
            if digest.hexdigest() != part.sha256:
                raise InputError(f"partition {part.name}: sha256 {digest.hexdigest()}, expected {part.sha256}",
                                 source=name)
