"""EFI signature lists: the contents of the Secure Boot variables PK, KEK, db and dbx (UEFI 2.9, 32.4.1).

A variable holds a concatenation of EFI_SIGNATURE_LISTs (a "signature database"). Each list:
SignatureType (GUID), SignatureListSize, SignatureHeaderSize, SignatureSize (UINT32 each), a header
of SignatureHeaderSize bytes (empty for every type UEFI defines), then EFI_SIGNATURE_DATA entries of
SignatureSize bytes each: SignatureOwner (GUID) and the signature bytes (a DER certificate for
EFI_CERT_X509_GUID, a digest for EFI_CERT_SHA256_GUID). All GUIDs in their EFI (mixed-endian)
byte order, integers little-endian.

`parse_database` / `serialize_database` are the format pair. The parser reads untrusted bytes (a
variable store, an event log): every size is checked against what remains before it is used, and
malformed input raises ParseError naming the offset and field.

An X.509 list holds one certificate (certificates differ in size and SignatureSize is per list),
which is how firmware setup, efitools and virt-firmware write them. The owner GUID of obelisk's
entries is derived from the customer CA (`owner_guid`), so rebuilding the variable store from the
same keys gives the same bytes, and an entry says whose it is.
"""

from __future__ import annotations

import hashlib
import struct
import uuid
from dataclasses import dataclass

from obelisk.core.errors import ParseError

EFI_CERT_X509_GUID = uuid.UUID("a5c059a1-94e4-4aa7-87b5-ab155c2bf072")
EFI_CERT_SHA256_GUID = uuid.UUID("c1c41626-504c-4092-aca9-41f936934328")

_LIST_HEADER = struct.Struct("<16sIII")  # SignatureType, SignatureListSize, SignatureHeaderSize, SignatureSize
_OWNER_SIZE = 16
MAX_DATABASE_SIZE = 4 << 20  # a full dbx is about 15 KiB, a variable store 540 KiB
MAX_LISTS = 4096

# obelisk's UUID (signer/usage.py) as the name-based namespace for owner GUIDs.
OBELISK_NAMESPACE = uuid.UUID("9c15dc38-15fc-4452-9679-c0df06e9a49f")


@dataclass(frozen=True)
class SignatureData:
    """EFI_SIGNATURE_DATA: who put the entry there, and the signature (certificate or digest) itself."""

    owner: uuid.UUID
    data: bytes

    def to_bytes(self) -> bytes:
        """The entry as the firmware measures it as an EV_EFI_VARIABLE_AUTHORITY (owner GUID + data)."""
        return self.owner.bytes_le + self.data


@dataclass(frozen=True)
class SignatureList:
    """EFI_SIGNATURE_LIST: entries of one type and one size."""

    signature_type: uuid.UUID
    entries: tuple[SignatureData, ...]
    header: bytes = b""


def owner_guid(ca_cert_der: bytes) -> uuid.UUID:
    """The SignatureOwner of the customer's entries: a name-based UUID (v5) of the customer CA's SHA-256."""
    return uuid.uuid5(OBELISK_NAMESPACE, "secure-boot-owner:" + hashlib.sha256(ca_cert_der).hexdigest())


def x509_list(owner: uuid.UUID, cert_der: bytes) -> SignatureList:
    """A list holding one X.509 certificate (DER), as PK, KEK and db entries are enrolled."""
    return SignatureList(EFI_CERT_X509_GUID, (SignatureData(owner, cert_der),))


def serialize_list(sig_list: SignatureList) -> bytes:
    if not sig_list.entries:
        raise ValueError("an EFI signature list needs at least one entry (SignatureSize comes from them)")
    size = _OWNER_SIZE + len(sig_list.entries[0].data)
    if any(_OWNER_SIZE + len(e.data) != size for e in sig_list.entries):
        raise ValueError("the entries of one EFI signature list must have one size")
    body = b"".join(e.owner.bytes_le + e.data for e in sig_list.entries)
    total = _LIST_HEADER.size + len(sig_list.header) + len(body)
    header = _LIST_HEADER.pack(sig_list.signature_type.bytes_le, total, len(sig_list.header), size)
    return header + sig_list.header + body


def serialize_database(lists: tuple[SignatureList, ...] | list[SignatureList]) -> bytes:
    """The variable's contents: the lists one after the other (no padding)."""
    return b"".join(serialize_list(sig_list) for sig_list in lists)


def parse_database(data: bytes, source: str | None = None) -> tuple[SignatureList, ...]:
    """Every EFI_SIGNATURE_LIST in a variable's contents; empty data is an empty database."""
    if len(data) > MAX_DATABASE_SIZE:
        raise ParseError(f"signature database of {len(data)} bytes is larger than obelisk reads "
                         f"({MAX_DATABASE_SIZE})", source=source)
    lists: list[SignatureList] = []
    at = 0
    while at < len(data):
        if len(lists) >= MAX_LISTS:
            raise ParseError(f"more than {MAX_LISTS} signature lists", source=source, offset=at)
        lists.append(_parse_list(data, at, source))
        at += _LIST_HEADER.unpack_from(data, at)[1]
    return tuple(lists)


def _parse_list(data: bytes, at: int, source: str | None) -> SignatureList:
    remaining = len(data) - at
    if remaining < _LIST_HEADER.size:
        raise ParseError(f"EFI_SIGNATURE_LIST header needs {_LIST_HEADER.size} bytes, {remaining} remain",
                         source=source, offset=at)
    type_bytes, list_size, header_size, sig_size = _LIST_HEADER.unpack_from(data, at)
    if list_size > remaining or list_size < _LIST_HEADER.size:
        raise ParseError(f"SignatureListSize {list_size} does not fit ({remaining} bytes remain, header "
                         f"{_LIST_HEADER.size})", source=source, offset=at + 16)
    body_size = list_size - _LIST_HEADER.size
    if header_size > body_size:
        raise ParseError(f"SignatureHeaderSize {header_size} exceeds the list's {body_size} bytes",
                         source=source, offset=at + 20)
    entries_size = body_size - header_size
    if sig_size <= _OWNER_SIZE:
        raise ParseError(f"SignatureSize {sig_size} leaves no room after the 16-byte owner GUID",
                         source=source, offset=at + 24)
    if entries_size == 0 or entries_size % sig_size:
        raise ParseError(f"{entries_size} bytes of entries are not a positive multiple of SignatureSize {sig_size}",
                         source=source, offset=at + 24)
    start = at + _LIST_HEADER.size
    header = data[start:start + header_size]
    entries = []
    for pos in range(start + header_size, at + list_size, sig_size):
        entries.append(SignatureData(uuid.UUID(bytes_le=data[pos:pos + _OWNER_SIZE]),
                                     data[pos + _OWNER_SIZE:pos + sig_size]))
    return SignatureList(uuid.UUID(bytes_le=type_bytes), tuple(entries), header)
