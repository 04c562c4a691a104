"""The newc ("070701") cpio format the kernel unpacks as initramfs: parse/serialize.

`serialize` is reproducible by construction: entries sorted by name, inode numbers assigned
in that order, owners and mtimes taken from the entries (the initramfs step sets them to
0 and SOURCE_DATE_EPOCH). `parse` reads untrusted archives with bounded memory and names
the offset of anything malformed.
"""

from __future__ import annotations

import stat
from dataclasses import dataclass

from obelisk.core.errors import ParseError

MAGIC = b"070701"
TRAILER = "TRAILER!!!"
_HEADER_LEN = 110
MAX_NAME = 4096
MAX_ENTRIES = 1_000_000


@dataclass(frozen=True)
class Entry:
    name: str  # without leading "/", e.g. "bin/busybox"
    mode: int  # full st_mode: type bits | permission bits
    data: bytes = b""  # file content, or the target of a symlink
    uid: int = 0
    gid: int = 0
    mtime: int = 0
    nlink: int = 1
    rdev_major: int = 0
    rdev_minor: int = 0

    @classmethod
    def directory(cls, name: str, perm: int = 0o755, mtime: int = 0) -> Entry:
        return cls(name, stat.S_IFDIR | perm, mtime=mtime, nlink=2)

    @classmethod
    def file(cls, name: str, data: bytes, perm: int = 0o644, mtime: int = 0) -> Entry:
        return cls(name, stat.S_IFREG | perm, data, mtime=mtime)

    @classmethod
    def symlink(cls, name: str, target: str, mtime: int = 0) -> Entry:
        return cls(name, stat.S_IFLNK | 0o777, target.encode(), mtime=mtime)

    @classmethod
    def device(cls, name: str, char: bool, major: int, minor: int, perm: int = 0o600, mtime: int = 0) -> Entry:
        return cls(name, (stat.S_IFCHR if char else stat.S_IFBLK) | perm, mtime=mtime,
                   rdev_major=major, rdev_minor=minor)


def _pad4(n: int) -> bytes:
    return b"\0" * (-n % 4)


def _header(ino: int, e: Entry, namesize: int, filesize: int) -> bytes:
    fields = (ino, e.mode, e.uid, e.gid, e.nlink, e.mtime, filesize, 0, 0, e.rdev_major, e.rdev_minor,
              namesize, 0)
    for value in fields:
        if not 0 <= value <= 0xFFFFFFFF:
            raise ValueError(f"cpio: field value {value} of {e.name!r} does not fit newc's 32 bits")
    return MAGIC + b"".join(b"%08X" % v for v in fields)


def serialize(entries: list[Entry] | tuple[Entry, ...]) -> bytes:
    """A newc archive of `entries` sorted by name, ending with the trailer."""
    seen: set[str] = set()
    out = bytearray()
    for ino, e in enumerate(sorted(entries, key=lambda x: x.name.encode()), start=1):
        name = e.name.strip("/")
        if not name or name in seen:
            raise ValueError(f"cpio: empty or duplicate name {e.name!r}")
        seen.add(name)
        raw = name.encode() + b"\0"
        out += _header(ino, e, len(raw), len(e.data))
        out += raw + _pad4(_HEADER_LEN + len(raw))
        out += e.data + _pad4(len(e.data))
    raw = TRAILER.encode() + b"\0"
    out += _header(0, Entry(TRAILER, 0, nlink=1), len(raw), 0) + raw + _pad4(_HEADER_LEN + len(raw))
    return bytes(out)


def _field(header: bytes, index: int, offset: int) -> int:
    text = header[6 + 8 * index:14 + 8 * index]
    try:
        return int(text, 16)
    except ValueError:
        raise ParseError(f"cpio header field {index} is not hex: {text!r}", offset=offset) from None


def parse(data: bytes, source: str = "cpio") -> tuple[Entry, ...]:
    """Entries of a newc archive up to its trailer. Trailing zero padding is allowed."""
    entries: list[Entry] = []
    pos = 0
    while True:
        if pos + _HEADER_LEN > len(data):
            raise ParseError("truncated header (no trailer)", source=source, offset=pos)
        header = data[pos:pos + _HEADER_LEN]
        if header[:6] != MAGIC:
            raise ParseError(f"bad magic {header[:6]!r} (only newc 070701 is read)", source=source, offset=pos)
        try:
            f = [_field(header, i, pos) for i in range(13)]
        except ParseError as exc:
            raise ParseError(str(exc), source=source) from None
        _, mode, uid, gid, nlink, mtime, filesize, _, _, rmaj, rmin, namesize, _ = f
        if not 1 <= namesize <= MAX_NAME:
            raise ParseError(f"name size {namesize} out of range", source=source, offset=pos)
        name_start = pos + _HEADER_LEN
        data_start = name_start + namesize + (-(_HEADER_LEN + namesize) % 4)
        data_end = data_start + filesize
        if data_end > len(data):
            raise ParseError(f"entry of {filesize} bytes runs past the end", source=source, offset=pos)
        raw_name = data[name_start:name_start + namesize]
        if raw_name[-1:] != b"\0":
            raise ParseError("name not NUL-terminated", source=source, offset=name_start)
        try:
            name = raw_name[:-1].decode()
        except UnicodeDecodeError:
            raise ParseError("name is not UTF-8", source=source, offset=name_start) from None
        if name == TRAILER:
            return tuple(entries)
        if len(entries) >= MAX_ENTRIES:
            raise ParseError(f"more than {MAX_ENTRIES} entries", source=source, offset=pos)
        entries.append(Entry(name, mode, data[data_start:data_end], uid, gid, mtime, nlink, rmaj, rmin))
        pos = data_end + (-filesize % 4)
