"""Kernel images as bytes: bzImage (x86 boot protocol) and vmlinux (ELF), stripped or not.

`parse` turns untrusted bytes into a `KernelImage`: the decompressed kernel ELF, its sections
and (when present) symbols, the `Linux version` banner, and the embedded config (IKCONFIG).
Errors name the offset; decompression is bounded.
"""

from __future__ import annotations

import io
import re
import struct
from dataclasses import dataclass, field

from obelisk.core.decompress import inflate
from obelisk.core.errors import InputError, ParseError

MAX_IMAGE_BYTES = 512 * 1024 * 1024
MAX_KERNEL_BYTES = 256 * 1024 * 1024
MAX_KERNEL_RATIO = 32  # a vmlinux is 3-6 times its xz or gzip stream

_COMPRESSIONS = (
    (b"\x1f\x8b", "gzip"),
    (b"\xfd7zXZ\x00", "xz"),
    (b"\x5d\x00\x00", "lzma"),
    (b"BZh", "bzip2"),
    (b"\x28\xb5\x2f\xfd", "zstd"),
    (b"\x02\x21\x4c\x18", "lz4"),
    (b"\x89LZO", "lzo"),
)


@dataclass(frozen=True)
class Section:
    name: str
    addr: int
    offset: int
    size: int
    nobits: bool


@dataclass(frozen=True)
class KernelImage:
    source: str
    format: str  # "bzImage" or "vmlinux"
    compression: str  # payload compression for a bzImage, "" for vmlinux
    elf: bytes  # the kernel ELF (decompressed from a bzImage)
    sections: tuple[Section, ...]
    symbols: dict[str, tuple[int, int]] = field(default_factory=dict)  # name -> (address, size)
    banner: str = ""
    config_text: str | None = None  # embedded .config (IKCONFIG), if any
    boot_protocol: str = ""

    @property
    def stripped(self) -> bool:
        return not self.symbols

    def section(self, name: str) -> Section | None:
        return next((s for s in self.sections if s.name == name), None)

    def read(self, addr: int, size: int) -> bytes:
        """Bytes at a virtual address, from the section that contains it."""
        for s in self.sections:
            if not s.nobits and s.addr <= addr and addr + size <= s.addr + s.size:
                start = s.offset + (addr - s.addr)
                return self.elf[start:start + size]
        raise ParseError(f"address {addr:#x} is not inside a loaded section", source=self.source)


def _decompress(payload: bytes, kind: str, source: str, offset: int) -> bytes:
    if kind not in ("gzip", "xz", "lzma", "bzip2"):
        raise InputError(f"bzImage payload compressed with {kind}: not supported by obelisk "
                         f"(build with CONFIG_KERNEL_XZ or CONFIG_KERNEL_GZIP)", source=source)
    return inflate(payload, kind, limit=MAX_KERNEL_BYTES, ratio=MAX_KERNEL_RATIO, floor=64 << 20, source=source,
                   offset=offset, what="compressed kernel")


def _bzimage_payload(data: bytes, source: str) -> tuple[bytes, str, str]:
    if len(data) < 0x250:
        raise ParseError(f"truncated bzImage: {len(data)} bytes, the setup header alone needs 592",
                         source=source, offset=len(data))
    setup_sects = data[0x1F1] or 4
    version = struct.unpack_from("<H", data, 0x206)[0]
    if version < 0x208:
        raise InputError(f"boot protocol {version >> 8}.{version & 0xff} is older than 2.08: no payload field",
                         source=source)
    payload_offset, payload_length = struct.unpack_from("<II", data, 0x248)
    pm_start = (setup_sects + 1) * 512
    start = pm_start + payload_offset
    end = start + payload_length
    if payload_length == 0 or end > len(data):
        raise ParseError(f"truncated bzImage: the compressed kernel ends at offset {end}, "
                         f"the file has {len(data)} bytes", source=source, offset=len(data))
    payload = data[start:end]
    kind = next((name for magic, name in _COMPRESSIONS if payload.startswith(magic)), None)
    if kind is None:
        raise ParseError("unknown compression of the bzImage payload", source=source, offset=start)
    return _decompress(payload, kind, source, start), kind, f"{version >> 8}.{version & 0xff:02d}"


def _elf_tables(elf: bytes, source: str) -> tuple[tuple[Section, ...], dict[str, tuple[int, int]]]:
    from elftools.common.exceptions import ELFError
    from elftools.elf.elffile import ELFFile
    from elftools.elf.sections import SymbolTableSection

    try:
        f = ELFFile(io.BytesIO(elf))
        if f.get_machine_arch() != "x64":
            raise InputError(f"ELF for {f.get_machine_arch()}, not an x86_64 kernel", source=source)
        sections = []
        symbols: dict[str, tuple[int, int]] = {}
        for s in f.iter_sections():
            sections.append(Section(name=s.name, addr=s["sh_addr"], offset=s["sh_offset"], size=s["sh_size"],
                                    nobits=s["sh_type"] == "SHT_NOBITS"))
            if isinstance(s, SymbolTableSection):
                for sym in s.iter_symbols():
                    if sym.name and sym["st_value"]:
                        symbols.setdefault(sym.name, (sym["st_value"], sym["st_size"]))
        return tuple(sections), symbols
    except InputError:
        raise
    except (ELFError, struct.error, ValueError, KeyError, IndexError, AttributeError, TypeError) as exc:
        raise ParseError(f"malformed ELF: {exc}", source=source) from None


def extract_ikconfig(blob: bytes, source: str = "") -> str | None:
    """The .config between the IKCFG_ST and IKCFG_ED markers (kernel/configs.c), gunzipped."""
    start = blob.find(b"IKCFG_ST")
    if start < 0:
        return None
    end = blob.find(b"IKCFG_ED", start)
    if end < 0:
        raise ParseError("embedded config has no end marker", source=source, offset=start)
    from obelisk.kernel_hardening.kconfig_file import MAX_CONFIG_BYTES

    out = inflate(blob[start + 8:end], "gzip", limit=MAX_CONFIG_BYTES, ratio=100, source=source, offset=start + 8,
                  what="embedded config")
    return out.decode("utf-8", errors="replace")


def parse(data: bytes, source: str = "<kernel>") -> KernelImage:
    if len(data) > MAX_IMAGE_BYTES:
        raise InputError(f"larger than {MAX_IMAGE_BYTES} bytes: not a kernel image", source=source)
    if data[:4] == b"\x7fELF":
        elf, fmt, compression, proto = data, "vmlinux", "", ""
    elif len(data) >= 0x206 and data[0x202:0x206] == b"HdrS":
        elf, compression, proto = _bzimage_payload(data, source)
        fmt = "bzImage"
        if elf[:4] != b"\x7fELF":
            raise ParseError("the decompressed bzImage payload is not an ELF kernel", source=source)
    elif len(data) >= 0x202 and data[0x1FE:0x200] == b"\x55\xaa":
        raise ParseError("truncated bzImage: boot sector present, setup header missing", source=source,
                         offset=len(data))
    else:
        raise InputError("not a Linux kernel image (neither an ELF vmlinux nor a bzImage with the 'HdrS' "
                         "setup header)", source=source)
    m = re.search(rb"Linux version \d+\.\d+[^\n\x00]{0,300}", elf)
    if m is None:
        raise InputError("ELF file but not a Linux kernel (no 'Linux version' banner)", source=source)
    sections, symbols = _elf_tables(elf, source)
    return KernelImage(source=source, format=fmt, compression=compression, elf=elf, sections=sections,
                       symbols=symbols, banner=m.group(0).decode(errors="replace").strip(),
                       config_text=extract_ikconfig(elf, source), boot_protocol=proto)


def read(path: str) -> KernelImage:
    from obelisk.core.inputs import read_bounded

    return parse(read_bounded(path, "kernel image", MAX_IMAGE_BYTES), path)
