"""UEFI boot entries: EFI_LOAD_OPTION (`Boot####`), BootOrder, BootNext, and efivarfs, the node's way to them.

The A/B slots (docs/upgrade.md) are chosen by the firmware alone: each slot has a boot entry whose
device path is the short form `HD(partition, GPT, PARTUUID, start, size)/File(\\EFI\\BOOT\\BOOTX64.EFI)`
(UEFI 2.10 section 3.1.2: the firmware finds the partition by its GUID on any disk), `BootOrder`
lists the committed slot first, and a trial boot of the other slot is `BootNext`, which the firmware
deletes as it boots it (EDK2's BdsEntry): if the trial never commits, the next boot follows
`BootOrder` back to the committed slot, with nobody involved.

`serialize_load_option` / `parse_load_option` are the format (EFI_LOAD_OPTION, UEFI 2.10 section 3.1.3,
with the device path nodes UEFI section 10.3.5.1 and 10.3.5.4); `EfiVars` reads and writes variables
through efivarfs (`/sys/firmware/efi/efivars/NAME-GUID`: four bytes of attributes, then the data, in
one write; the kernel marks most variables immutable, cleared with FS_IOC_SETFLAGS first).
"""

from __future__ import annotations

import errno
import fcntl
import os
import struct
import uuid
from dataclasses import dataclass
from pathlib import Path

from obelisk.core.errors import InputError, ParseError

EFI_GLOBAL_VARIABLE = "8be4df61-93ca-11d2-aa0d-00e098032b8c"
# obelisk's own variables (the trial in progress, the last trial's outcome): a fixed vendor GUID
OBELISK_VARIABLE = "5b0ad1e4-6f62-4c65-b173-6b2d736c6f74"
EFIVARS = "/sys/firmware/efi/efivars"

NON_VOLATILE, BOOTSERVICE_ACCESS, RUNTIME_ACCESS = 0x1, 0x2, 0x4
NV_BS_RT = NON_VOLATILE | BOOTSERVICE_ACCESS | RUNTIME_ACCESS
LOAD_OPTION_ACTIVE = 0x1

_MEDIA, _HARD_DRIVE, _FILE_PATH = 0x04, 0x01, 0x04
_END, _END_ENTIRE = 0x7F, 0xFF
_HD = struct.Struct("<BBHIQQ16sBB")  # type, subtype, length 42, partition number, start, size, signature, format, type
_MBR_TYPE_GPT, _SIGNATURE_GUID = 0x02, 0x02
_MAX_OPTION = 1 << 16

_FS_IOC_GETFLAGS, _FS_IOC_SETFLAGS, _FS_IMMUTABLE_FL = 0x80086601, 0x40086602, 0x00000010


@dataclass(frozen=True)
class LoadOption:
    """One `Boot####`: a file on a GPT partition found by its unique GUID."""

    description: str
    partition_number: int  # 1-based
    partition_start: int  # LBA
    partition_size: int  # LBAs
    partition_uuid: str
    path: str  # on the partition's FAT file system, with backslashes
    attributes: int = LOAD_OPTION_ACTIVE
    # device path nodes before the HD node: the disk as the firmware names it (PciRoot(0x0)/Pci(0x3,0x0)),
    # empty for the short form. OVMF keeps in BootOrder (and does not delete) only options whose path
    # starts with a device QEMU lists, so the node copies the prefix from the firmware's own entry.
    prefix: bytes = b""


def serialize_load_option(option: LoadOption) -> bytes:
    hd = _HD.pack(_MEDIA, _HARD_DRIVE, _HD.size, option.partition_number, option.partition_start,
                  option.partition_size, uuid.UUID(option.partition_uuid).bytes_le, _MBR_TYPE_GPT, _SIGNATURE_GUID)
    name = (option.path + "\0").encode("utf-16-le")
    file_node = struct.pack("<BBH", _MEDIA, _FILE_PATH, 4 + len(name)) + name
    device_path = option.prefix + hd + file_node + struct.pack("<BBH", _END, _END_ENTIRE, 4)
    description = (option.description + "\0").encode("utf-16-le")
    return struct.pack("<IH", option.attributes, len(device_path)) + description + device_path


def _utf16z(data: bytes, at: int, end: int, what: str, source: str) -> tuple[str, int]:
    """A NUL-terminated UCS-2 string from `at`; returns it and the offset after the NUL."""
    pos = at
    while pos + 2 <= end:
        if data[pos:pos + 2] == b"\0\0":
            try:
                return data[at:pos].decode("utf-16-le"), pos + 2
            except UnicodeDecodeError:
                raise ParseError(f"{what} is not UCS-2", source=source, offset=at) from None
        pos += 2
    raise ParseError(f"{what} has no terminating NUL", source=source, offset=at)


def parse_load_option(data: bytes, source: str = "load option") -> LoadOption:
    """A load option of the form obelisk writes (HD short form + File path + End); anything else is a
    ParseError naming the offset."""
    if len(data) > _MAX_OPTION or len(data) < 6:
        raise ParseError(f"{len(data)} bytes: not an EFI_LOAD_OPTION", source=source, offset=0)
    attributes, path_length = struct.unpack_from("<IH", data, 0)
    description, at = _utf16z(data, 6, len(data), "description", source)
    if at + path_length > len(data):
        raise ParseError(f"device path of {path_length} bytes runs past the option", source=source, offset=4)
    path_at = at
    prefix_end = _hard_drive_node(data[at:at + path_length], source, at)
    prefix = data[at:at + prefix_end]
    at += prefix_end
    if path_at + path_length - at < _HD.size + 4 + 4:
        raise ParseError("device path too short for a hard drive and a file node", source=source, offset=at)
    (_t, _s, length, number, start, size, signature, mbr_type, signature_type) = _HD.unpack_from(data, at)
    if length != _HD.size or mbr_type != _MBR_TYPE_GPT or signature_type != _SIGNATURE_GUID:
        raise ParseError("hard drive node: expected a GPT partition named by GUID", source=source, offset=at)
    at += _HD.size
    node_type, node_subtype, node_length = struct.unpack_from("<BBH", data, at)
    if (node_type, node_subtype) != (_MEDIA, _FILE_PATH) or node_length < 6:
        raise ParseError("expected a file path node after the hard drive node", source=source, offset=at)
    path, after = _utf16z(data, at + 4, at + node_length, "file path", source)
    at += node_length
    if data[at:at + 4] != struct.pack("<BBH", _END, _END_ENTIRE, 4):
        raise ParseError("device path does not end after the file path", source=source, offset=at)
    return LoadOption(description=description, partition_number=number, partition_start=start,
                      partition_size=size, partition_uuid=str(uuid.UUID(bytes_le=signature)), path=path,
                      attributes=attributes, prefix=prefix)


def _hard_drive_node(path: bytes, source: str, base: int) -> int:
    """The offset of the first hard drive media node in a device path (after any prefix nodes)."""
    at = 0
    while at + 4 <= len(path):
        node_type, node_subtype, length = struct.unpack_from("<BBH", path, at)
        if (node_type, node_subtype) == (_MEDIA, _HARD_DRIVE):
            return at
        if length < 4 or node_type == _END:
            break
        at += length
    raise ParseError("device path has no hard drive media node", source=source, offset=base + at)


def device_prefix(option: bytes, source: str = "load option") -> bytes:
    """The device path nodes of a firmware load option up to its first media node (or its End): for the
    firmware's entry of a whole disk (`PciRoot(0x0)/Pci(0x3,0x0)`), that disk."""
    if len(option) < 6:
        raise ParseError("not an EFI_LOAD_OPTION", source=source, offset=0)
    (path_length,) = struct.unpack_from("<H", option, 4)
    _description, at = _utf16z(option, 6, len(option), "description", source)
    path = option[at:at + path_length]
    pos = 0
    while pos + 4 <= len(path):
        node_type, _subtype, length = struct.unpack_from("<BBH", path, pos)
        if node_type in (_END, _MEDIA) or length < 4:
            break
        pos += length
    return path[:pos]


def boot_name(number: int) -> str:
    if not 0 <= number <= 0xFFFF:
        raise InputError(f"boot entry {number}: expected 0..0xFFFF")
    return f"Boot{number:04X}"


def parse_boot_order(data: bytes, source: str = "BootOrder") -> tuple[int, ...]:
    if len(data) % 2:
        raise ParseError(f"{len(data)} bytes: expected UINT16 entries", source=source, offset=len(data) - 1)
    return struct.unpack(f"<{len(data) // 2}H", data)


def serialize_boot_order(order: tuple[int, ...] | list[int]) -> bytes:
    return struct.pack(f"<{len(order)}H", *order)


class EfiVars:
    """UEFI variables through efivarfs (`root`: a directory of NAME-GUID files; tests give a plain one)."""

    def __init__(self, root: str | os.PathLike[str] = EFIVARS):
        self.root = Path(root)

    def _path(self, name: str, guid: str) -> Path:
        return self.root / f"{name}-{guid}"

    def available(self) -> bool:
        return self.root.is_dir()

    def read(self, name: str, guid: str = EFI_GLOBAL_VARIABLE) -> bytes | None:
        """The variable's data (without its attributes), None if it does not exist."""
        try:
            raw = self._path(name, guid).read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            if exc.errno == errno.ENOENT:
                return None
            raise
        if len(raw) < 4:
            raise ParseError(f"{len(raw)} bytes: no attributes", source=str(self._path(name, guid)), offset=0)
        return raw[4:]

    def _mutable(self, path: Path) -> None:
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            return
        try:
            flags = bytearray(4)
            fcntl.ioctl(fd, _FS_IOC_GETFLAGS, flags)
            value = int.from_bytes(flags, "little")
            if value & _FS_IMMUTABLE_FL:
                fcntl.ioctl(fd, _FS_IOC_SETFLAGS, (value & ~_FS_IMMUTABLE_FL).to_bytes(4, "little"))
        except OSError:
            pass  # not efivarfs (a test directory), or already mutable
        finally:
            os.close(fd)

    def write(self, name: str, data: bytes, guid: str = EFI_GLOBAL_VARIABLE, attributes: int = NV_BS_RT) -> None:
        """Create or replace the variable: the attributes and data in one write, as efivarfs requires."""
        path = self._path(name, guid)
        self._mutable(path)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            payload = struct.pack("<I", attributes) + data
            if os.write(fd, payload) != len(payload):
                raise OSError(errno.EIO, f"short write of {name}")
        finally:
            os.close(fd)

    def delete(self, name: str, guid: str = EFI_GLOBAL_VARIABLE) -> None:
        path = self._path(name, guid)
        self._mutable(path)
        try:
            path.unlink()
        except FileNotFoundError:
            pass

    def boot_order(self) -> tuple[int, ...]:
        data = self.read("BootOrder")
        return parse_boot_order(data) if data is not None else ()

    def boot_current(self) -> int | None:
        data = self.read("BootCurrent")
        return struct.unpack("<H", data[:2])[0] if data is not None and len(data) >= 2 else None
