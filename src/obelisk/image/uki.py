"""The unified kernel image (UKI): systemd-stub 252 with the kernel, initramfs, command line and os-release
as PE sections, and what booting it measures into PCR 11 and PCR 4.

Assembly (`assemble` / `parse`, `write_uki` / `load`)
    Debian's stub (`linuxx64.efi.stub`, package systemd-boot-efi) gets one section per input, appended
    after its own: section headers go into the slack its headers already reserve (SizeOfHeaders),
    data at the end of the file aligned to FileAlignment, virtual addresses after the stub's image
    (SizeOfImage) aligned to SectionAlignment, each section IMAGE_SCN_CNT_INITIALIZED_DATA|MEM_READ
    with VirtualSize the exact input length, which is what the stub reads and measures. The stub's
    COFF symbol table (deprecated in images, and a gap no Authenticode digest covers) and any
    certificate table are dropped; NumberOfSections, SizeOfImage, SizeOfInitializedData and CheckSum
    are rewritten. Written here rather than by objcopy so that the layout is ours, independent of
    the binutils release, and depends on the inputs alone: the same inputs give the same bytes
    (binutils' objdump/objcopy read the result back in the tests).

PCR 11 (`pcr11_prediction`), from systemd v252 src/boot/efi/stub.c and measure.c, and event by event
    as Debian's stub measured it under OVMF (tests/image/data)
    Before anything else, the stub walks its sections in the fixed order .linux, .osrel, .cmdline,
    .initrd, .splash, .dtb, .pcrpkey (.pcrsig is never measured: it signs these very values) and,
    for each one present, logs two EV_IPL events into PCR 11: one over the section name with its NUL
    (".linux\\0"), then one over the section's VirtualSize bytes. The event data of both is the name
    in UTF-16LE with a NUL. `systemd-measure calculate --phase=` computes the same value (without
    `--phase=` it adds the "enter-initrd" phase that systemd-pcrphase measures later; obelisk's
    initramfs does not run it).

PCR 4 (`pcr4_prediction`), from edk2 (MdeModulePkg Tcg2Dxe OnReadyToBoot, DxeTpm2MeasureBootLib) and
    observed booting such a UKI as \\EFI\\BOOT\\BOOTX64.EFI from a GPT disk under Debian 12's OVMF
    (OVMF_CODE_4M[.secboot].fd) with swtpm; both event logs are in tests/image/data/:
    1. EV_EFI_ACTION "Calling EFI Application from Boot Option" (data: those 40 ASCII bytes, no NUL;
       digest: their sha256). Logged at ReadyToBoot of the first boot attempt, right before the
       firmware loads the boot option's image.
    2. EV_SEPARATOR, data 00000000, digest sha256(00000000): the same ReadyToBoot handler closes
       PCRs 0-6 with it (PCR 7 was closed earlier, after the Secure Boot variables).
       Every later boot attempt (a boot option tried before ours that loaded nothing, e.g. an empty
       CD-ROM or a network boot that timed out) adds EV_EFI_ACTION "Returning from EFI Application
       from Boot Option" and a new "Calling EFI Application from Boot Option" (edk2 source; not observed).
    3. EV_EFI_BOOT_SERVICES_APPLICATION for the UKI: digest = its Authenticode sha256 (signer/
       authenticode.py), the same signed or not; data = UEFI_IMAGE_LOAD_EVENT (load address, length,
       link address, device path of the disk and file), which depends on where the firmware put the
       image, so the prediction leaves it empty. (Between 2 and 3, PCR 7 gets the db entry that
       admitted the UKI when Secure Boot is on, and PCR 5 the GPT.)
    4. Only with Secure Boot off: a second EV_EFI_BOOT_SERVICES_APPLICATION, the kernel in .linux,
       digest = the kernel's own Authenticode sha256, device path a vendor media node. Debian's
       systemd 252.39 stub starts the kernel with LoadImage from memory (a backport: upstream v252
       jumped to the kernel's entry point itself); with Secure Boot on it first installs a
       Security2 override that vouches for its own payload, which also skips the firmware's
       measurement of it, so the kernel shows in PCR 4 only when Secure Boot is off.
    The Linux EFI stub then measures into PCR 9 (EV_EVENT_TAG "LOADED_IMAGE::LoadOptions" and
    "Linux initrd") and the firmware logs ExitBootServices into PCR 5; neither is predicted here.
"""

from __future__ import annotations

import hashlib
import os
import struct
from dataclasses import dataclass
from pathlib import Path

from obelisk.core.atomic import write_bytes
from obelisk.core.errors import InputError, ParseError
from obelisk.core.inputs import read_bounded
from obelisk.signer.authenticode import (
    MAX_PE_SIZE,
    SECTION_HEADER_SIZE,
    PeImage,
    authenticode_digest,
    parse_pe,
    pe_checksum,
)
from obelisk.tpm.eventlog import EV_EFI_ACTION, EV_EFI_BOOT_SERVICES_APPLICATION, EV_IPL, EV_SEPARATOR
from obelisk.tpm.prediction import ExpectedEvent, PcrPrediction

STUB_PATH = Path("/usr/lib/systemd/boot/efi/linuxx64.efi.stub")
STUB_PACKAGE = "systemd-boot-efi"
MAX_STUB_SIZE = 16 * 1024 * 1024

# The order in which systemd-stub 252 measures sections (UnifiedSection in src/fundamental/tpm-pcr.h);
# .pcrsig is carried but never measured. obelisk writes no .splash or .dtb.
MEASURED_ORDER = (".linux", ".osrel", ".cmdline", ".initrd", ".splash", ".dtb", ".pcrpkey")
# The order obelisk lays the sections out in the file: small ones first, the kernel last.
LAYOUT_ORDER = (".osrel", ".cmdline", ".pcrpkey", ".pcrsig", ".initrd", ".linux")
_SECTION_FLAGS = 0x40000040  # IMAGE_SCN_CNT_INITIALIZED_DATA | IMAGE_SCN_MEM_READ
_SECTION_HEADER = struct.Struct("<8sIIIIIIHHI")

PCR_KERNEL_IMAGE = 11
PCR_BOOT_LOADER_CODE = 4
CALLING_EFI_APPLICATION = b"Calling EFI Application from Boot Option"
RETURNING_FROM_EFI_APPLICATION = b"Returning from EFI Application from Boot Option"
SEPARATOR = b"\0\0\0\0"


@dataclass(frozen=True)
class UkiSections:
    """What obelisk puts into a UKI, each section's exact bytes."""

    linux: bytes  # the kernel's bzImage (itself a PE image)
    initrd: bytes
    cmdline: bytes  # the kernel command line as the stub hands it over (no NUL needed)
    osrel: bytes  # os-release(5)
    pcrsig: bytes | None = None  # /.extra/tpm2-pcr-signature.json in the initrd (systemd's convention)
    pcrpkey: bytes | None = None  # /.extra/tpm2-pcr-public-key.pem in the initrd

    def by_name(self) -> dict[str, bytes]:
        """The sections present, by PE section name."""
        named = {".linux": self.linux, ".initrd": self.initrd, ".cmdline": self.cmdline, ".osrel": self.osrel,
                 ".pcrsig": self.pcrsig, ".pcrpkey": self.pcrpkey}
        return {name: data for name, data in named.items() if data is not None}


def load_stub(path: str | os.PathLike[str] = STUB_PATH) -> bytes:
    """The systemd-stub EFI binary; a missing one is one line naming its Debian package."""
    if not os.path.exists(path):
        raise InputError(f"systemd-stub not found (Debian package {STUB_PACKAGE}; run scripts/setup)",
                         source=os.fspath(path))
    return read_bounded(path, "systemd-stub", MAX_STUB_SIZE)


def _align(value: int, alignment: int) -> int:
    return (value + alignment - 1) // alignment * alignment


def assemble(stub: bytes, sections: UkiSections, *, source: str = "systemd-stub") -> bytes:
    """The UKI made of `stub` and `sections` (layout in the module docstring); the same inputs give the same bytes."""
    image = parse_pe(stub, source)
    named = sections.by_name()
    for name, data in named.items():
        if not data:
            raise InputError(f"UKI section {name} is empty: the stub would treat it as missing", source=name)
        if image.section(name) is not None:
            raise InputError(f"the stub already has a {name} section", source=source)
    order = [name for name in LAYOUT_ORDER if name in named]
    headers_end = image.section_table_offset + (len(image.sections) + len(order)) * SECTION_HEADER_SIZE
    if headers_end > image.size_of_headers:
        room = (image.size_of_headers - image.section_table_offset) // SECTION_HEADER_SIZE - len(image.sections)
        raise InputError(f"the stub's headers have room for {room} more sections, {len(order)} needed",
                         source=source)
    # Everything after the stub's last section (its COFF symbol table, a signature) is dropped.
    out = bytearray(stub[:image.raw_end()])
    end_of_image = max([image.size_of_image, *(s.virtual_address + s.virtual_size for s in image.sections)])
    virtual = _align(end_of_image, image.section_alignment)
    header_at = image.section_table_offset + len(image.sections) * SECTION_HEADER_SIZE
    initialized = image.size_of_initialized_data
    for name in order:
        data = named[name]
        raw_at = _align(len(out), image.file_alignment)
        raw_size = _align(len(data), image.file_alignment)
        out += bytes(raw_at - len(out))
        out += data + bytes(raw_size - len(data))
        out[header_at:header_at + SECTION_HEADER_SIZE] = _SECTION_HEADER.pack(
            name.encode("ascii"), len(data), virtual, raw_size, raw_at, 0, 0, 0, 0, _SECTION_FLAGS)
        header_at += SECTION_HEADER_SIZE
        virtual = _align(virtual + len(data), image.section_alignment)
        initialized += raw_size
    _rewrite_headers(out, image, len(image.sections) + len(order), virtual, initialized)
    return bytes(out)


def _rewrite_headers(out: bytearray, image: PeImage, count: int, size_of_image: int, initialized: int) -> None:
    struct.pack_into("<H", out, image.coff_offset + 2, count)
    struct.pack_into("<II", out, image.coff_offset + 8, 0, 0)  # PointerToSymbolTable, NumberOfSymbols
    struct.pack_into("<I", out, image.optional_header_offset + 8, initialized & 0xFFFFFFFF)
    struct.pack_into("<I", out, image.optional_header_offset + 56, size_of_image)
    entry = image.certificate_entry_offset
    if entry is not None:
        struct.pack_into("<II", out, entry, 0, 0)
    struct.pack_into("<I", out, image.checksum_offset, 0)
    struct.pack_into("<I", out, image.checksum_offset, pe_checksum(bytes(out), image.checksum_offset))


def parse(data: bytes, source: str = "UKI") -> UkiSections:
    """The sections of the UKI `data` (the inverse of `assemble`). ParseError names the offset of a bad one."""
    image = parse_pe(data, source)
    found: dict[str, bytes] = {}
    for section in image.sections:
        if section.name not in LAYOUT_ORDER:
            continue
        if section.name in found:
            raise ParseError(f"two {section.name} sections", source=source, offset=section.header_offset)
        if section.virtual_size > section.raw_size:
            raise ParseError(f"section {section.name}: VirtualSize {section.virtual_size} exceeds its "
                             f"{section.raw_size} bytes of raw data", source=source, offset=section.header_offset + 8)
        found[section.name] = bytes(data[section.raw_offset:section.raw_offset + section.virtual_size])
    for required in (".linux", ".initrd", ".cmdline", ".osrel"):
        if required not in found:
            raise ParseError(f"no {required} section: not an obelisk UKI", source=source,
                             offset=image.section_table_offset)
    return UkiSections(linux=found[".linux"], initrd=found[".initrd"], cmdline=found[".cmdline"],
                       osrel=found[".osrel"], pcrsig=found.get(".pcrsig"), pcrpkey=found.get(".pcrpkey"))


def write_uki(out: str | os.PathLike[str], sections: UkiSections, stub: str | os.PathLike[str] = STUB_PATH) -> bytes:
    """Assemble the UKI from the stub at `stub` and write it atomically to `out`; returns its bytes."""
    data = assemble(load_stub(stub), sections, source=os.fspath(stub))
    write_bytes(out, data)
    return data


def load(path: str | os.PathLike[str]) -> UkiSections:
    return parse(read_bounded(path, "UKI", MAX_PE_SIZE), os.fspath(path))


# ---- what booting it measures ---------------------------------------------------------------------------


def _utf16z(text: str) -> bytes:
    return text.encode("utf-16-le") + b"\0\0"


def pcr11_prediction(sections: UkiSections) -> PcrPrediction:
    """PCR 11 after systemd-stub 252 measured the UKI's sections (the module docstring says how)."""
    named = sections.by_name()
    events: list[ExpectedEvent] = []
    for name in MEASURED_ORDER:
        data = named.get(name)
        if data is None:
            continue
        label = _utf16z(name)
        events.append(ExpectedEvent(PCR_KERNEL_IMAGE, EV_IPL, hashlib.sha256(name.encode() + b"\0").digest(),
                                    f"UKI section name {name}", label))
        events.append(ExpectedEvent(PCR_KERNEL_IMAGE, EV_IPL, hashlib.sha256(data).digest(),
                                    f"UKI section {name}", label))
    return PcrPrediction(PCR_KERNEL_IMAGE, tuple(events))


def pcr4_prediction(uki_authenticode: bytes, *, secure_boot: bool = True, kernel_authenticode: bytes | None = None,
                    earlier_boot_attempts: int = 0) -> PcrPrediction:
    """PCR 4 after OVMF started the UKI with this Authenticode sha256 from a boot option (module docstring).

    With `secure_boot` off the kernel the stub loads is measured too: give its `kernel_authenticode`
    (`kernel_authenticode_digest`). `earlier_boot_attempts` counts boot options the firmware tried first
    that loaded no image (0 when the disk is the first boot option).
    """
    for digest in (uki_authenticode, kernel_authenticode):
        if digest is not None and len(digest) != 32:
            raise ValueError("Authenticode digests here are sha256 (32 bytes)")
    if not secure_boot and kernel_authenticode is None:
        raise ValueError("without Secure Boot the kernel is measured too: give kernel_authenticode")
    if earlier_boot_attempts < 0:
        raise ValueError("earlier_boot_attempts must be 0 or more")
    calling = ExpectedEvent(PCR_BOOT_LOADER_CODE, EV_EFI_ACTION, hashlib.sha256(CALLING_EFI_APPLICATION).digest(),
                            "boot attempt (Calling EFI Application from Boot Option)", CALLING_EFI_APPLICATION)
    returning = ExpectedEvent(PCR_BOOT_LOADER_CODE, EV_EFI_ACTION,
                              hashlib.sha256(RETURNING_FROM_EFI_APPLICATION).digest(),
                              "failed boot attempt (Returning from EFI Application from Boot Option)",
                              RETURNING_FROM_EFI_APPLICATION)
    separator = ExpectedEvent(PCR_BOOT_LOADER_CODE, EV_SEPARATOR, hashlib.sha256(SEPARATOR).digest(),
                              "separator (end of pre-boot)", SEPARATOR)
    events = [calling, separator]
    for _ in range(earlier_boot_attempts):
        events += [returning, calling]
    events.append(ExpectedEvent(PCR_BOOT_LOADER_CODE, EV_EFI_BOOT_SERVICES_APPLICATION, uki_authenticode,
                                "the UKI (Authenticode)"))
    if not secure_boot:
        assert kernel_authenticode is not None
        events.append(ExpectedEvent(PCR_BOOT_LOADER_CODE, EV_EFI_BOOT_SERVICES_APPLICATION, kernel_authenticode,
                                    "the UKI's kernel, loaded by the stub (Authenticode)"))
    return PcrPrediction(PCR_BOOT_LOADER_CODE, tuple(events))


def kernel_authenticode_digest(sections: UkiSections) -> bytes:
    """The Authenticode sha256 of the kernel in .linux, as the firmware measures it when the stub loads it."""
    return authenticode_digest(sections.linux, source="UKI section .linux")


def uki_pcr4_prediction(uki: bytes, *, secure_boot: bool = True, earlier_boot_attempts: int = 0,
                        source: str = "UKI") -> PcrPrediction:
    """`pcr4_prediction` for the UKI `uki` (its bytes, signed or not), both digests computed from it."""
    kernel = kernel_authenticode_digest(parse(uki, source)) if not secure_boot else None
    return pcr4_prediction(authenticode_digest(uki, source=source), secure_boot=secure_boot,
                           kernel_authenticode=kernel, earlier_boot_attempts=earlier_boot_attempts)
