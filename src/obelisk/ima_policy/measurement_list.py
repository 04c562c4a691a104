"""IMA runtime measurement lists: parse and serialize, ascii and binary, every template.

Binary (`binary_runtime_measurements`, kernel ima_fs.c), per entry, in the kernel's
native byte order or little endian when booted with `ima_canonical_fmt`:

    u32 pcr | u8[20] sha1 template hash | u32 name_len | name | u32 data_len | data

where `data` is the template's fields, each `u32 len | bytes`. The legacy `ima`
template has no data_len and shows `u8[20] digest | u32 len | name` (no NUL).

Ascii (`ascii_runtime_measurements`): `pcr template-hash template-name field...`, one
line per entry, each field preceded by one space (an empty field shows as nothing).

`Entry.template_data` always holds the bytes the kernel hashed for the template hash,
so `hashlib.new(bank, entry.template_data)` is that bank's template hash on kernels
>= 5.8, and `sha1(template_data) == template_digest` checks every entry.

Untrusted input never raises anything but `ParseError`, whose one-line message names
the entry number and byte offset.
"""

from __future__ import annotations

import hashlib
import mmap
import struct
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from obelisk.core.errors import ParseError
from obelisk.ima_policy import templates
from obelisk.ima_policy.templates import Template

SHA1_SIZE = 20
ZERO_DIGEST = bytes(SHA1_SIZE)
# Upper bound for one entry's template data; real entries are below a few KiB (ima-buf
# with a kexec command line, an SELinux policy hash). Anything larger is hostile.
MAX_TEMPLATE_DATA = 16 * 1024 * 1024
MAX_PCR = 63

ByteOrder = Literal["little", "big"]  # of a binary list's u32 fields

ASCII = "ascii"
BINARY = "binary"


@dataclass(frozen=True, slots=True)
class Entry:
    number: int  # 1-based position in the list (= line number of an ascii list)
    pcr: int
    template_digest: bytes  # SHA-1 template hash as listed; all zeros for a violation
    template_name: str
    template_data: bytes  # what the kernel hashed (see the module docstring)
    offset: int = 0  # byte offset of the entry in the source
    byte_order: ByteOrder = "little"  # of the u32 field lengths inside template_data

    @property
    def violation(self) -> bool:
        """A ToMToU/open-writers violation: listed as zeros, extended into the PCR as all ones."""
        return self.template_digest == ZERO_DIGEST

    @property
    def template(self) -> Template:
        return templates.lookup(self.template_name, f"entry {self.number}")

    def fields(self) -> tuple[bytes, ...]:
        """The template's field values in order (ParseError if template_data is malformed)."""
        return split_fields(self.template, self.template_data, self.number, self.offset, self.byte_order)

    def measurement(self) -> Measurement:
        return decode(self)


@dataclass(frozen=True)
class MeasurementList:
    entries: tuple[Entry, ...]
    encoding: str  # "ascii" or "binary"
    byte_order: ByteOrder = "little"  # of the binary list (and of the template data's field lengths)

    def __len__(self) -> int:
        return len(self.entries)

    def __iter__(self) -> Iterator[Entry]:
        return iter(self.entries)


@dataclass(frozen=True)
class Measurement:
    """The fields of an entry that verification looks at, decoded."""

    path: str  # n / n-ng (file name or buffer name such as "boot_aggregate", "kexec-cmdline")
    digest_algo: str  # "sha256", ...; "sha1" for the legacy template
    digest: bytes  # file data digest (or digest of the buffer)
    digest_type: str = "ima"  # d-ngv2: "ima" or "verity"
    signature: bytes = b""  # sig: the security.ima value (type 0x03 v2 or 0x06 v3)
    buf: bytes = b""  # ima-buf
    modsig_digest_algo: str = ""
    modsig_digest: bytes = b""
    modsig: bytes = b""
    evmsig: bytes = b""


# ----------------------------------------------------------------------------- parse

def detect_encoding(data: bytes) -> str:
    """Ascii lists start with a decimal PCR number; binary ones with a u32 PCR (< 64, so never a digit)."""
    return ASCII if data[:1].isdigit() else BINARY


def parse_measurement_list(data: bytes, source: str = "measurement list") -> MeasurementList:
    """Parse an ascii or binary list, detecting which (and the binary byte order)."""
    if detect_encoding(data) == ASCII:
        return parse_ascii(data, source)
    return parse_binary(data, source)


def detect_byte_order(data: bytes, source: str = "measurement list") -> ByteOrder:
    if len(data) < 4:
        raise ParseError(f"entry 1: truncated: {len(data)} bytes, the PCR field needs 4", source=source, offset=0)
    if int.from_bytes(data[:4], "little") <= MAX_PCR:
        return "little"
    if int.from_bytes(data[:4], "big") <= MAX_PCR:
        return "big"
    raise ParseError("entry 1: not an IMA measurement list (first PCR index out of range)", source=source, offset=0)


def iter_binary(data: bytes, start: int = 0, stop: int | None = None, order: ByteOrder = "little",
                first_number: int = 1, source: str = "measurement list"
                ) -> Iterator[tuple[int, int, int, bytes, str, bytes]]:
    """Yield (number, offset, pcr, template_digest, template_name, template_data) of entries
    starting at `start` until an entry begins at or after `stop` (default: end of data)."""
    u32 = struct.Struct("<I" if order == "little" else ">I").unpack_from
    if stop is None:
        stop = len(data)
    off = start
    number = first_number
    names: dict[bytes, Template] = {}
    while off < stop:
        pcr, digest, tpl, template_data, next_off = read_entry(data, off, u32, number, source, names)
        yield number, off, pcr, digest, tpl.name, template_data
        off = next_off
        number += 1


def read_entry(data: bytes | mmap.mmap, off: int, u32: Callable[[Any, int], tuple[Any, ...]], number: int, source: str,
               names: dict[bytes, Template]) -> tuple[int, bytes, Template, bytes, int]:
    """The binary entry at `off`: (pcr, template_digest, template, template_data, offset of the next entry).

    The one reader of the binary layout (`u32` is the list's bound `Struct.unpack_from`; `names`
    caches the templates seen). Every bound is checked; a bad one is a ParseError naming the entry
    number and the offset of the field."""
    end = len(data)
    if end - off < 28:
        raise ParseError(f"entry {number}: truncated header ({end - off} bytes left, at least 28 needed)",
                         source=source, offset=off)
    pcr = u32(data, off)[0]
    if pcr > MAX_PCR:
        raise ParseError(f"entry {number}: PCR index {pcr} out of range", source=source, offset=off)
    digest = data[off + 4:off + 24]
    name_len = u32(data, off + 24)[0]
    off += 28
    if name_len == 0 or name_len > templates.MAX_TEMPLATE_NAME or name_len > end - off:
        raise ParseError(f"entry {number}: template name length {name_len} invalid "
                         f"({end - off} bytes left)", source=source, offset=off - 4)
    raw_name = data[off:off + name_len]
    tpl = names.get(raw_name)
    if tpl is None:
        try:
            name = raw_name.decode("ascii")
        except UnicodeDecodeError:
            raise ParseError(f"entry {number}: template name is not ascii", source=source, offset=off) from None
        if not name.isprintable():
            raise ParseError(f"entry {number}: template name is not printable", source=source, offset=off)
        tpl = names[raw_name] = templates.lookup(name, f"entry {number}", source, off)
    off += name_len
    if tpl.legacy:
        # legacy layout: digest[20] | u32 len | name (no NUL); hashed as digest | name padded to 256
        if end - off < 24:
            raise ParseError(f"entry {number}: truncated 'ima' template data", source=source, offset=off)
        file_digest = data[off:off + 20]
        nlen = u32(data, off + 20)[0]
        off += 24
        if nlen > templates.IMA_NAME_HASHED_LEN - 1 or nlen > end - off:
            raise ParseError(f"entry {number}: file name length {nlen} invalid ({end - off} bytes left)",
                             source=source, offset=off - 4)
        return pcr, digest, tpl, file_digest + data[off:off + nlen].ljust(templates.IMA_NAME_HASHED_LEN, b"\0"), \
            off + nlen
    if end - off < 4:
        raise ParseError(f"entry {number}: truncated before template data length", source=source, offset=off)
    data_len = u32(data, off)[0]
    off += 4
    if data_len > MAX_TEMPLATE_DATA or data_len > end - off:
        raise ParseError(f"entry {number}: template data length {data_len} exceeds the {end - off} bytes left",
                         source=source, offset=off - 4)
    return pcr, digest, tpl, data[off:off + data_len], off + data_len


def parse_binary(data: bytes, source: str = "measurement list", byte_order: ByteOrder | None = None) -> MeasurementList:
    data = bytes(data)
    if not data:
        return MeasurementList((), BINARY)
    order = byte_order or detect_byte_order(data, source)
    entries = tuple(Entry(n, pcr, digest, name, tdata, off, order)
                    for n, off, pcr, digest, name, tdata in iter_binary(data, 0, None, order, 1, source))
    for e in entries:  # the field structure of every entry must hold, not just its length
        split_fields(e.template, e.template_data, e.number, e.offset, order, source)
    return MeasurementList(entries, BINARY, order)


def parse_ascii_line(line: bytes, number: int, offset: int = 0, source: str = "measurement list"
                     ) -> tuple[int, bytes, str, bytes]:
    """(pcr, template_digest, template_name, template_data) of one ascii line."""
    tokens = line.split(b" ")
    if len(tokens) < 4:
        raise ParseError(f"entry {number} (line {number}): expected 'pcr template-hash template field...', "
                         f"got {len(tokens)} fields", source=source, offset=offset)
    pcr_text, digest_hex, name_b = tokens[0], tokens[1], tokens[2]
    if not pcr_text.isdigit() or len(pcr_text) > 2 or int(pcr_text) > MAX_PCR:
        raise ParseError(f"entry {number} (line {number}): PCR {pcr_text[:16]!r} is not a number 0-{MAX_PCR}",
                         source=source, offset=offset)
    digest = _hex(digest_hex, number, "template-hash", source, offset)
    if len(digest) != SHA1_SIZE:
        raise ParseError(f"entry {number} (line {number}): template-hash must be 40 hex digits",
                         source=source, offset=offset)
    try:
        name = name_b.decode("ascii")
    except UnicodeDecodeError:
        raise ParseError(f"entry {number} (line {number}): template name is not ascii",
                         source=source, offset=offset) from None
    if len(name) > templates.MAX_TEMPLATE_NAME:
        raise ParseError(f"entry {number} (line {number}): template name too long", source=source, offset=offset)
    tpl = templates.lookup(name, f"entry {number} (line {number})", source, offset)
    values = tokens[3:]
    nfields = len(tpl.fields)
    if len(values) < nfields:
        raise ParseError(f"entry {number} (line {number}): template {name} has {nfields} fields, "
                         f"line has {len(values)}", source=source, offset=offset)
    if len(values) > nfields:
        # file names may contain spaces: the extra tokens belong to the first text field
        text_index = next((i for i, f in enumerate(tpl.fields) if f in ("n", "n-ng")), None)
        if text_index is None:
            raise ParseError(f"entry {number} (line {number}): template {name} has {nfields} fields, "
                             f"line has {len(values)}", source=source, offset=offset)
        extra = len(values) - nfields
        values = values[:text_index] + [b" ".join(values[text_index:text_index + extra + 1])] \
            + values[text_index + extra + 1:]
    encoded = [_encode_ascii_field(fid, tok, tpl.legacy, number, source, offset)
               for fid, tok in zip(tpl.fields, values)]
    return int(pcr_text), digest, name, join_fields(tpl, encoded)


def parse_ascii(data: bytes, source: str = "measurement list") -> MeasurementList:
    entries = []
    offset = 0
    number = 1
    for line in bytes(data).split(b"\n"):
        line_off = offset
        offset += len(line) + 1
        if not line:
            continue
        if number == 1 and line.startswith(b"PCR "):  # a column header some tools print
            continue
        pcr, digest, name, tdata = parse_ascii_line(line, number, line_off, source)
        entries.append(Entry(number, pcr, digest, name, tdata, line_off))
        number += 1
    return MeasurementList(tuple(entries), ASCII, "little")


def _hex(token: bytes, number: int, field: str, source: str, offset: int) -> bytes:
    try:
        return bytes.fromhex(token.decode("ascii"))
    except (ValueError, UnicodeDecodeError):
        raise ParseError(f"entry {number} (line {number}): field {field}: invalid hex", source=source,
                         offset=offset) from None


def _encode_ascii_field(fid: str, token: bytes, legacy: bool, number: int, source: str, offset: int) -> bytes:
    kind = templates.FIELD_KINDS[fid]
    if not token:
        return b""
    if kind == templates.STRING:
        return token if (legacy and fid == "n") else token + b"\0"
    if kind == templates.HEX or kind == templates.DIGEST:
        return _hex(token, number, fid, source, offset)
    if kind in (templates.DIGEST_ALGO, templates.DIGEST_TYPE_ALGO):
        prefix, colon, hexpart = token.rpartition(b":")
        if not colon:
            raise ParseError(f"entry {number} (line {number}): field {fid}: expected 'algo:hex'",
                             source=source, offset=offset)
        return prefix + b":\0" + _hex(hexpart, number, fid, source, offset)
    # UINT
    if not token.isdigit() or len(token) > 10:
        raise ParseError(f"entry {number} (line {number}): field {fid}: not a number", source=source, offset=offset)
    size = 2 if fid == "imode" else 4
    value = int(token)
    if value >= 1 << (8 * size):
        raise ParseError(f"entry {number} (line {number}): field {fid}: {value} out of range",
                         source=source, offset=offset)
    return value.to_bytes(size, "little")


# ----------------------------------------------------------------------------- fields

def join_fields(tpl: Template, values: Sequence[bytes], order: ByteOrder = "little") -> bytes:
    """Template data as hashed from field values (legacy 'ima': digest | name padded to 256)."""
    if tpl.legacy:
        digest, name = values
        return digest.ljust(SHA1_SIZE, b"\0") + name.ljust(templates.IMA_NAME_HASHED_LEN, b"\0")
    return b"".join(len(v).to_bytes(4, order) + v for v in values)


def split_fields(tpl: Template, data: bytes, number: int = 0, offset: int = 0, order: ByteOrder = "little",
                 source: str = "measurement list") -> tuple[bytes, ...]:
    if tpl.legacy:
        if len(data) != SHA1_SIZE + templates.IMA_NAME_HASHED_LEN:
            raise ParseError(f"entry {number}: 'ima' template data must be 276 bytes", source=source, offset=offset)
        return data[:SHA1_SIZE], data[SHA1_SIZE:].split(b"\0", 1)[0]
    out = []
    pos = 0
    end = len(data)
    for fid in tpl.fields:
        if end - pos < 4:
            raise ParseError(f"entry {number}: template data ends before field {fid}", source=source, offset=offset)
        flen = int.from_bytes(data[pos:pos + 4], order)
        pos += 4
        if flen > end - pos:
            raise ParseError(f"entry {number}: field {fid} length {flen} exceeds the {end - pos} bytes left",
                             source=source, offset=offset)
        out.append(data[pos:pos + flen])
        pos += flen
    if pos != end:
        raise ParseError(f"entry {number}: {end - pos} bytes after the last field of template {tpl.name}",
                         source=source, offset=offset)
    return tuple(out)


def _split_digest(value: bytes) -> tuple[str, str, bytes]:
    """'ima:sha256:\\0<digest>' / 'sha256:\\0<digest>' -> (type, algo, digest)."""
    head, sep, digest = value.partition(b":\0")
    if not sep:
        return "ima", "", value
    parts = head.decode("ascii", "replace").split(":")
    if len(parts) == 2:
        return parts[0], parts[1], digest
    return "ima", parts[0], digest


def decode(entry: Entry) -> Measurement:
    tpl = entry.template
    values = dict(zip(tpl.fields, entry.fields()))
    path_raw = values.get("n-ng", values.get("n", b""))
    path = path_raw.rstrip(b"\0").decode("utf-8", "surrogateescape")
    if "d" in values:
        dtype, algo, digest = "ima", "sha1", values["d"]
    else:
        dtype, algo, digest = _split_digest(values.get("d-ngv2", values.get("d-ng", b"")))
    malgo, mdigest = "", b""
    if values.get("d-modsig"):
        _, malgo, mdigest = _split_digest(values["d-modsig"])
    return Measurement(path=path, digest_algo=algo, digest=digest, digest_type=dtype,
                       signature=values.get("sig", b""), buf=values.get("buf", b""),
                       modsig_digest_algo=malgo, modsig_digest=mdigest, modsig=values.get("modsig", b""),
                       evmsig=values.get("evmsig", b""))


# ----------------------------------------------------------------------------- build / serialize

def template_hash(entry: Entry, algo: str = "sha1") -> bytes:
    return hashlib.new(algo, entry.template_data).digest()


def make_entry(template_name: str, values: Sequence[bytes], *, pcr: int = 10, number: int = 1,
               violation: bool = False, byte_order: ByteOrder = "little") -> Entry:
    """An entry with the given field values and its SHA-1 template hash (zeros for a violation).

    byte_order is that of the measuring kernel (big only for a big-endian machine
    booted without ima_canonical_fmt): the field lengths are hashed in it."""
    tpl = templates.lookup(template_name)
    if len(values) != len(tpl.fields):
        raise ValueError(f"template {template_name} needs {len(tpl.fields)} fields")
    data = join_fields(tpl, values, byte_order)
    digest = ZERO_DIGEST if violation else hashlib.sha1(data).digest()
    return Entry(number, pcr, digest, template_name, data, 0, byte_order)


def digest_field(algo: str, digest: bytes, digest_type: str | None = None) -> bytes:
    """A d-ng (or, with digest_type, d-ngv2) field value."""
    prefix = f"{digest_type}:{algo}" if digest_type else algo
    return prefix.encode() + b":\0" + digest


def name_field(path: str) -> bytes:
    return path.encode("utf-8", "surrogateescape") + b"\0"


def serialize_binary(entries: Sequence[Entry], byte_order: ByteOrder = "little") -> bytes:
    """The binary list as the kernel shows it (canonical = little endian)."""
    u32 = struct.Struct("<I" if byte_order == "little" else ">I")
    out = bytearray()
    for e in entries:
        name = e.template_name.encode("ascii")
        out += u32.pack(e.pcr) + e.template_digest + u32.pack(len(name)) + name
        tpl = e.template
        if tpl.legacy:
            digest, fname = e.fields()
            out += digest + u32.pack(len(fname)) + fname
        elif byte_order == e.byte_order:
            out += u32.pack(len(e.template_data)) + e.template_data
        else:  # re-encode the field lengths (the listed template hash then no longer matches)
            data = join_fields(tpl, e.fields(), byte_order)
            out += u32.pack(len(data)) + data
    return bytes(out)


def _ascii_field(fid: str, value: bytes, legacy: bool, order: ByteOrder = "little") -> bytes:
    kind = templates.FIELD_KINDS[fid]
    if not value:
        return b""
    if kind == templates.STRING:
        return value.rstrip(b"\0") if not legacy else value
    if kind in (templates.DIGEST_ALGO, templates.DIGEST_TYPE_ALGO):
        head, _, digest = value.partition(b":\0")
        return head + b":" + digest.hex().encode()
    if kind == templates.UINT:
        return str(int.from_bytes(value, order)).encode()
    return value.hex().encode()


def serialize_ascii(entries: Sequence[Entry]) -> bytes:
    lines = []
    for e in entries:
        tpl = e.template
        parts = [str(e.pcr).encode(), e.template_digest.hex().encode(), e.template_name.encode()]
        parts += [_ascii_field(fid, v, tpl.legacy, e.byte_order) for fid, v in zip(tpl.fields, e.fields())]
        lines.append(b" ".join(parts) + b"\n")
    return b"".join(lines)
