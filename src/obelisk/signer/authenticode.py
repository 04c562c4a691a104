"""PE/COFF images for UEFI: parse their headers, compute their Authenticode digest, sign them for Secure Boot.

`parse_pe` reads what the digest, the UKI assembly (image/uki.py) and the PCR 4 prediction need: the
COFF header, the optional header's checksum, alignments and data directories, and the section table.
The bytes are untrusted (a UKI handed to `image verify`, a stub from the build host): every offset
and size is checked against the file before it is used, and a bad one is a ParseError naming the
offset of the field.

`authenticode_digest` is the hash of the Microsoft PE/COFF specification ("Calculating the PE Image
Hash"), which is what UEFI firmware compares with db/dbx when Secure Boot checks an image and what
edk2 (DxeTpm2MeasureBootLib) extends into PCR 4 for an EFI application it loads:

    1. the headers up to SizeOfHeaders, leaving out the CheckSum field and the Certificate Table
       data-directory entry (both change when the image is signed);
    2. each section's raw data, in PointerToRawData order;
    3. whatever follows the last section, up to the attribute certificate table at the end.

So a signed image and the unsigned image it came from have the same digest, provided the unsigned
file's length is a multiple of 8 (signers pad the file to 8 bytes before the certificate table; the
padding is then part of the digest). UKIs from image/uki.py are FileAlignment-aligned.

`sign_pe` runs osslsigncode (the one place it runs), the only signer in Debian 12 that lets us fix
the PKCS#7 signingTime: sbsign stamps the wall clock into every signature, so the same UKI signed
twice differs and a rebuilt disk.raw would not be byte-identical. sbverify (sbsigntool) accepts the
result; tests check it with sbverify and compare the digest in the signature with ours.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import struct
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from obelisk.core import tools
from obelisk.core.errors import InputError, ParseError, ToolFailedError
from obelisk.core.inputs import map_bounded
from obelisk.signer.keys import PassphraseSource

# A UKI carries a kernel and an initramfs: tens of MiB. Far more than that is not an EFI image we made.
MAX_PE_SIZE = 1 << 30
# The PE specification caps NumberOfSections at 96.
MAX_SECTIONS = 96

_DOS_MAGIC = b"MZ"
_PE_MAGIC = b"PE\0\0"
_PE32 = 0x10B
_PE32_PLUS = 0x20B
_COFF = struct.Struct("<HHIIIHH")  # Machine, NumberOfSections, TimeDateStamp, PointerToSymbolTable,
#                                     NumberOfSymbols, SizeOfOptionalHeader, Characteristics
_SECTION = struct.Struct("<8sIIIIIIHHI")  # Name, VirtualSize, VirtualAddress, SizeOfRawData, PointerToRawData,
#                                           PointerToRelocations, PointerToLinenumbers, Number..., Characteristics
SECTION_HEADER_SIZE = _SECTION.size  # 40
DATA_DIRECTORY_SECURITY = 4  # IMAGE_DIRECTORY_ENTRY_SECURITY: the Certificate Table
IMAGE_FILE_MACHINE_AMD64 = 0x8664
IMAGE_SUBSYSTEM_EFI_APPLICATION = 10


@dataclass(frozen=True)
class PeSection:
    name: str
    virtual_size: int
    virtual_address: int
    raw_size: int
    raw_offset: int
    characteristics: int
    header_offset: int  # where this section's header is in the file


@dataclass(frozen=True)
class PeImage:
    """The header fields of a PE32/PE32+ image that obelisk reads or rewrites, with their file offsets."""

    size: int  # file length
    machine: int
    pe32_plus: bool
    subsystem: int
    coff_offset: int  # the COFF file header (right after "PE\0\0")
    optional_header_offset: int
    optional_header_size: int
    checksum_offset: int
    section_alignment: int
    file_alignment: int
    size_of_image: int
    size_of_headers: int
    size_of_initialized_data: int
    data_directory_offset: int
    data_directory_count: int
    certificate_table: tuple[int, int]  # (file offset, size); (0, 0) when unsigned
    symbol_table: tuple[int, int]  # (PointerToSymbolTable, NumberOfSymbols): deprecated for images
    section_table_offset: int
    sections: tuple[PeSection, ...]

    @property
    def certificate_entry_offset(self) -> int | None:
        """File offset of the Certificate Table data-directory entry, None if the image has too few entries."""
        if self.data_directory_count <= DATA_DIRECTORY_SECURITY:
            return None
        return self.data_directory_offset + 8 * DATA_DIRECTORY_SECURITY

    def section(self, name: str) -> PeSection | None:
        return next((s for s in self.sections if s.name == name), None)

    def raw_end(self) -> int:
        """End of the headers and of the last section's raw data."""
        return max([self.size_of_headers, *(s.raw_offset + s.raw_size for s in self.sections if s.raw_size)])


def _u16(data: bytes, offset: int) -> int:
    return int(struct.unpack_from("<H", data, offset)[0])


def _u32(data: bytes, offset: int) -> int:
    return int(struct.unpack_from("<I", data, offset)[0])


def parse_pe(data: bytes, source: str = "PE image") -> PeImage:
    """The headers of the PE/COFF image `data`. Raises ParseError naming the offset of a bad field."""
    size = len(data)

    def need(offset: int, length: int, what: str) -> None:
        if offset < 0 or length < 0 or offset + length > size:
            raise ParseError(f"truncated {what}: needs {length} bytes, file has {size}", source=source,
                             offset=offset)

    need(0, 0x40, "DOS header")
    if data[:2] != _DOS_MAGIC:
        raise ParseError("not a PE image: no 'MZ' DOS header", source=source, offset=0)
    pe = _u32(data, 0x3C)
    need(pe, 4 + _COFF.size, "PE signature and COFF header")
    if data[pe:pe + 4] != _PE_MAGIC:
        raise ParseError("not a PE image: no 'PE\\0\\0' signature at e_lfanew", source=source, offset=pe)
    coff = pe + 4
    machine, nsections, _stamp, symptr, nsyms, opt_size, _chars = _COFF.unpack_from(data, coff)
    if nsections == 0 or nsections > MAX_SECTIONS:
        raise ParseError(f"NumberOfSections is {nsections} (allowed 1..{MAX_SECTIONS})", source=source,
                         offset=coff + 2)
    opt = coff + _COFF.size
    need(opt, opt_size, "optional header")
    if opt_size < 2:
        raise ParseError(f"SizeOfOptionalHeader is {opt_size}: an image needs an optional header", source=source,
                         offset=coff + 16)
    magic = _u16(data, opt)
    if magic not in (_PE32, _PE32_PLUS):
        raise ParseError(f"optional header magic 0x{magic:x} is neither PE32 nor PE32+", source=source, offset=opt)
    plus = magic == _PE32_PLUS
    # Fixed part of the optional header up to NumberOfRvaAndSizes: 108 bytes (PE32) or 112 (PE32+).
    directory_at = opt + (112 if plus else 96)
    if opt_size < directory_at - opt:
        raise ParseError(f"SizeOfOptionalHeader {opt_size} is too small for a {'PE32+' if plus else 'PE32'} header",
                         source=source, offset=coff + 16)
    section_alignment = _u32(data, opt + 32)
    file_alignment = _u32(data, opt + 36)
    size_of_image = _u32(data, opt + 56)
    size_of_headers = _u32(data, opt + 60)
    checksum_offset = opt + 64
    subsystem = _u16(data, opt + 68)
    initialized = _u32(data, opt + 8)
    count_at = directory_at - 4
    directory_count = _u32(data, count_at)
    if directory_count > 16 or directory_at + 8 * directory_count > opt + opt_size:
        raise ParseError(f"NumberOfRvaAndSizes {directory_count} does not fit the optional header", source=source,
                         offset=count_at)
    for value, what, at in ((file_alignment, "FileAlignment", opt + 36),
                            (section_alignment, "SectionAlignment", opt + 32)):
        if value == 0 or value & (value - 1):
            raise ParseError(f"{what} {value} is not a power of two", source=source, offset=at)
    section_table = opt + opt_size
    need(section_table, nsections * SECTION_HEADER_SIZE, "section table")
    if size_of_headers > size or size_of_headers < section_table + nsections * SECTION_HEADER_SIZE:
        raise ParseError(f"SizeOfHeaders {size_of_headers} does not cover the section table or exceeds the file",
                         source=source, offset=opt + 60)
    sections = []
    for index in range(nsections):
        at = section_table + index * SECTION_HEADER_SIZE
        name, vsize, vaddr, rsize, roffset, _r, _l, _nr, _nl, chars = _SECTION.unpack_from(data, at)
        if rsize and (roffset < size_of_headers or roffset + rsize > size):
            raise ParseError(f"section {index} raw data [{roffset}, {roffset + rsize}) lies outside the file "
                             f"({size} bytes) or inside its headers", source=source, offset=at + 16)
        try:
            text = name.rstrip(b"\0").decode("ascii")
        except UnicodeDecodeError:
            raise ParseError(f"section {index} name is not ASCII", source=source, offset=at) from None
        sections.append(PeSection(text, vsize, vaddr, rsize, roffset, chars, at))
    certificate = (0, 0)
    if directory_count > DATA_DIRECTORY_SECURITY:
        entry = directory_at + 8 * DATA_DIRECTORY_SECURITY
        cert_offset, cert_size = _u32(data, entry), _u32(data, entry + 4)
        if cert_size:
            raw_end = max([size_of_headers, *(s.raw_offset + s.raw_size for s in sections if s.raw_size)])
            # The certificate table is a file offset (not an RVA) and must be the last thing in the file:
            # the digest excludes it by its size from the end.
            if cert_offset < raw_end or cert_offset + cert_size != size:
                raise ParseError(f"certificate table [{cert_offset}, {cert_offset + cert_size}) is not at the end "
                                 f"of the file ({size} bytes) after the sections", source=source, offset=entry)
            certificate = (cert_offset, cert_size)
    return PeImage(size=size, machine=machine, pe32_plus=plus, subsystem=subsystem, coff_offset=coff,
                   optional_header_offset=opt, optional_header_size=opt_size, checksum_offset=checksum_offset,
                   section_alignment=section_alignment, file_alignment=file_alignment, size_of_image=size_of_image,
                   size_of_headers=size_of_headers, size_of_initialized_data=initialized,
                   data_directory_offset=directory_at, data_directory_count=directory_count,
                   certificate_table=certificate, symbol_table=(symptr, nsyms), section_table_offset=section_table,
                   sections=tuple(sections))


def authenticode_digest(data: bytes, algo: str = "sha256", *, source: str = "PE image") -> bytes:
    """The Authenticode digest of the PE image `data` (see the module docstring for what it covers)."""
    image = parse_pe(data, source)
    view = memoryview(data)
    h = hashlib.new(algo)
    h.update(view[:image.checksum_offset])
    entry = image.certificate_entry_offset
    if entry is None:
        h.update(view[image.checksum_offset + 4:image.size_of_headers])
    else:
        h.update(view[image.checksum_offset + 4:entry])
        h.update(view[entry + 8:image.size_of_headers])
    hashed = image.size_of_headers
    for section in sorted((s for s in image.sections if s.raw_size), key=lambda s: s.raw_offset):
        h.update(view[section.raw_offset:section.raw_offset + section.raw_size])
        hashed += section.raw_size
    end = image.size - image.certificate_table[1]
    if end > hashed:
        h.update(view[hashed:end])
    return h.digest()


def load_authenticode_digest(path: str | os.PathLike[str], algo: str = "sha256") -> bytes:
    """`authenticode_digest` of the file at `path`, read through a bounded mapping."""
    data = map_bounded(path, "PE image", MAX_PE_SIZE)
    try:
        return authenticode_digest(data, algo, source=os.fspath(path))  # type: ignore[arg-type]
    finally:
        if hasattr(data, "close"):
            data.close()


def pe_checksum(data: bytes, checksum_offset: int) -> int:
    """The PE optional-header CheckSum of `data` (16-bit one's-complement word sum plus the file length),
    computed as if the CheckSum field held zero."""
    length = len(data)
    # The 16-bit words summed with end-around carry: that is their sum modulo 0xFFFF (65536 = 1 mod 0xFFFF),
    # which int.from_bytes and % compute in C instead of a Python loop over tens of millions of words.
    field = data[checksum_offset:checksum_offset + 4]
    whole = int.from_bytes(data, "little") - int.from_bytes(field, "little") * (1 << (8 * checksum_offset))
    total = whole % 0xFFFF
    if total == 0 and whole:
        total = 0xFFFF
    return (total + length) & 0xFFFFFFFF


# ---- Secure Boot signing ------------------------------------------------------------------------------


def sign_pe(unsigned: Path, out: Path, key_ref: str, cert: Path, pin: str | None = None, *,
            signing_time: int | None = None, passphrase: PassphraseSource | None = None) -> None:
    """Sign the EFI image `unsigned` for Secure Boot into `out` (Authenticode, sha256, the certificate
    `cert` embedded), with the key at `key_ref`: a PEM file or a `pkcs11:` URI.

    For a PKCS#11 key the PIN is `pin`, else the URI's `pin-source=file:`, else OBELISK_PKCS11_PIN;
    it reaches the signer through a 0600 file named in the URI it is given (never on a command
    line). An encrypted PEM key's `passphrase` reaches it the same way. `signing_time` (seconds since
    the epoch) goes into the signature's signingTime; by default SOURCE_DATE_EPOCH, else now. `out` is
    written atomically.
    """
    if signing_time is None:
        epoch = os.environ.get("SOURCE_DATE_EPOCH")
        signing_time = int(epoch) if epoch and epoch.isdigit() else int(time.time())
    data = map_bounded(unsigned, "EFI image", MAX_PE_SIZE)
    try:
        parse_pe(data, os.fspath(unsigned))  # type: ignore[arg-type]
    finally:
        if hasattr(data, "close"):
            data.close()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".sign-", dir=out.parent) as scratch:
        signed = Path(scratch) / "signed.efi"
        with _key_arguments(key_ref, pin, passphrase, Path(scratch)) as key_args:
            try:
                tools.run("osslsigncode", ["sign", *key_args, "-certs", cert, "-h", "sha256",
                                           "-time", str(signing_time), "-in", unsigned, "-out", signed],
                          input=b"")
            except ToolFailedError as exc:
                raise InputError(f"cannot sign {unsigned} with {_redact(key_ref)}: "
                                 f"{_last_line(exc.detail)}", source=os.fspath(unsigned)) from None
        os.chmod(signed, 0o644)
        os.replace(signed, out)


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "no output"


def _redact(key_ref: str) -> str:
    return key_ref.split("?", 1)[0]


def _secret_file(scratch: Path, name: str, secret: bytes) -> Path:
    """`secret` in a new 0600 file under `scratch` (removed with it), without a newline."""
    path = scratch / name
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, secret)
    finally:
        os.close(fd)
    return path


@contextlib.contextmanager
def _key_arguments(key_ref: str, pin: str | None, passphrase: PassphraseSource | None,
                   scratch: Path) -> Iterator[list[str]]:
    """osslsigncode's key options for a PEM path or a PKCS#11 URI (with a PIN or passphrase file that lives
    as long as the signing)."""
    if not key_ref.startswith("pkcs11:"):
        if not Path(key_ref).is_file():
            raise InputError("signing key not found", source=key_ref)
        secret = passphrase.read() if passphrase is not None else None
        if secret is None:
            yield ["-key", key_ref]
            return
        # osslsigncode -readpass takes the file's first line
        yield ["-key", key_ref, "-readpass", str(_secret_file(scratch, "passphrase", secret))]
        return
    from obelisk.signer.pkcs11key import Pkcs11Uri

    uri = Pkcs11Uri.parse(key_ref)
    token_pin = pin if pin is not None else uri.pin()
    # libp11 reads the URI's path attributes itself; obelisk's query attributes (module-path, our own
    # pin-source) are replaced: the module is passed as an option, the PIN as a file we control.
    path_part = key_ref[len("pkcs11:"):].split("?", 1)[0]
    args = ["-pkcs11module", uri.module()]
    if token_pin is None:
        yield [*args, "-key", f"pkcs11:{path_part}"]
        return
    # no newline: libp11 takes the whole file as the PIN
    pin_file = _secret_file(scratch, "pin", token_pin.encode())
    yield [*args, "-key", f"pkcs11:{path_part}?pin-source=file:{pin_file}"]


def verify_pe_signature(signed: Path, cert: Path) -> None:
    """Raise InputError unless `signed` carries an Authenticode signature that `cert` verifies (sbverify:
    the checker Secure Boot tooling uses; the same digest rules as the firmware)."""
    proc = tools.run("sbverify", ["--cert", cert, signed], check=False)
    if proc.returncode != 0:
        detail = _last_line((proc.stderr or proc.stdout).decode(errors="replace"))
        raise InputError(f"Secure Boot signature does not verify with {cert}: {detail}", source=os.fspath(signed))
