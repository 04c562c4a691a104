"""The `getfattr --dump` text format: what `obelisk ima sign --xattr-file` writes and
`gensquashfs -A` reads.

    # file: usr/bin/kubelet
    security.ima=0sAwIE...

    # file: ...

Paths are relative to the signed directory and written as raw bytes: `gensquashfs -A`
takes the rest of the `# file:` line literally (it does not undo getfattr's octal
escapes), so a name with a backslash must be written as is to match; a name with a line
break cannot be named at all and is refused. Values are `0s` base64, `0x` hex, or a
double-quoted string.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Callable
from dataclasses import dataclass

from obelisk.core.errors import InputError, ParseError

MAX_DUMP_BYTES = 1 << 30
_NAME_RE = re.compile(rb"^[A-Za-z0-9_.\-]+$")


@dataclass(frozen=True)
class XattrRecord:
    path: bytes  # relative path, raw bytes as on disk
    attributes: tuple[tuple[str, bytes], ...]  # (name, value), in file order

    def get(self, name: str) -> bytes | None:
        for key, value in self.attributes:
            if key == name:
                return value
        return None


def check_path(path: bytes) -> bytes:
    """A path as the dump names it: raw bytes, as gensquashfs reads them (it does not unescape)."""
    if b"\n" in path or b"\r" in path:
        raise InputError(f"file name {path!r} contains a line break and cannot be named in an xattr dump")
    return path


def serialize(records: list[XattrRecord]) -> bytes:
    return b"".join(serialize_record(rec.path, rec.attributes) for rec in records)


def serialize_record(path: bytes, attributes: tuple[tuple[str, bytes], ...]) -> bytes:
    """One file's part of the dump (`serialize` is these, joined): a signer's workers make them."""
    chunks = [b"# file: " + check_path(path) + b"\n"]
    for name, value in attributes:
        chunks.append(name.encode() + b"=0s" + base64.b64encode(value) + b"\n")
    chunks.append(b"\n")
    return b"".join(chunks)


def record_serializer(name: str) -> Callable[[bytes, bytes], bytes]:
    """`serialize_record(path, ((name, value),))` with the name bound once, as one call: a signer makes
    one record for each of thousands of files, and the general form costs 3 us a record."""
    between = b"\n" + name.encode() + b"=0s"
    b64encode = base64.b64encode

    def record(path: bytes, value: bytes) -> bytes:
        if b"\n" in path or b"\r" in path:
            check_path(path)  # raises
        return b"# file: " + path + between + b64encode(value) + b"\n\n"

    return record


def _unescape_value(text: bytes, line_no: int) -> bytes:
    """Quoted values use getfattr's three-digit octal escapes."""
    out = bytearray()
    i = 0
    while i < len(text):
        if text[i] == 0x5C:
            octal = text[i + 1:i + 4]
            if len(octal) != 3 or not all(0x30 <= c <= 0x37 for c in octal):
                raise ParseError("bad escape in quoted value (expected \\ooo)", source=f"line {line_no}")
            out.append(int(octal, 8) & 0xFF)
            i += 4
        else:
            out.append(text[i])
            i += 1
    return bytes(out)


def _decode_value(raw: bytes, line_no: int) -> bytes:
    try:
        if raw.startswith(b"0s"):
            return base64.b64decode(raw[2:], validate=True)
        if raw.startswith(b"0x"):
            return binascii.unhexlify(raw[2:])
    except (binascii.Error, ValueError):
        raise ParseError("value is not valid base64/hex", source=f"line {line_no}") from None
    if len(raw) >= 2 and raw[:1] == b'"' and raw[-1:] == b'"':
        return _unescape_value(raw[1:-1], line_no)
    raise ParseError("value must start with 0s, 0x or a double quote", source=f"line {line_no}")


def parse(data: bytes, source: str = "xattr file") -> list[XattrRecord]:
    """Parse a dump; ParseError names the file and line."""
    if len(data) > MAX_DUMP_BYTES:
        raise ParseError(f"larger than {MAX_DUMP_BYTES} bytes", source=source)
    records: list[XattrRecord] = []
    path: bytes | None = None
    attrs: list[tuple[str, bytes]] = []
    try:
        for line_no, line in enumerate(data.split(b"\n"), start=1):
            line = line.rstrip(b"\r")
            if line.startswith(b"# file: "):
                if path is not None:
                    records.append(XattrRecord(path, tuple(attrs)))
                path = line[8:]
                if not path:
                    raise ParseError("empty path", source=f"line {line_no}")
                attrs = []
            elif not line.strip() or line.startswith(b"#"):
                continue
            else:
                if path is None:
                    raise ParseError("attribute before any '# file:' line", source=f"line {line_no}")
                name, sep, raw = line.partition(b"=")
                if not sep or not _NAME_RE.match(name):
                    raise ParseError("expected name=value", source=f"line {line_no}")
                attrs.append((name.decode("ascii"), _decode_value(raw, line_no)))
    except ParseError as exc:
        raise ParseError(str(exc), source=source) from None
    if path is not None:
        records.append(XattrRecord(path, tuple(attrs)))
    return records
