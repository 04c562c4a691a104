"""UEFI variables as the firmware measures them, and the PCR 7 a build predicts from its Secure Boot variables.

`UEFI_VARIABLE_DATA` (TCG PC Client PFP, 10.4.1) is the event data of EV_EFI_VARIABLE_DRIVER_CONFIG,
EV_EFI_VARIABLE_BOOT and EV_EFI_VARIABLE_AUTHORITY events: VariableName (the vendor GUID, despite its
name), UnicodeNameLength (CHAR16s, no terminating NUL), VariableDataLength (both UINT64), the name in
UTF-16LE, the data. `parse_variable_data` / `serialize_variable_data` are its format pair; the parser
is strict (no bytes after the data), because a PCR 7 event's digest covers exactly these bytes.

`pcr7_prediction` follows edk2 as Debian's OVMF (2022.11) runs it:

* `SecurityPkg/Tcg/Tcg2Dxe/Tcg2Dxe.c`, MeasureSecureBootPolicy (on VariableWriteArch, before any
  boot option runs): MeasureAllSecureVariables measures SecureBoot, PK, KEK (EFI global variable
  GUID), db and dbx (EFI_IMAGE_SECURITY_DATABASE_GUID), in that order, as EV_EFI_VARIABLE_DRIVER_CONFIG
  into PCR 7. The digest is over the whole UEFI_VARIABLE_DATA. A variable that does not exist is
  still measured, with VariableDataLength 0 (ReadAndMeasureVariable: "It is valid case"), so an
  absent dbx is an event with empty data, not a missing event. dbt is measured after dbx only if it
  exists; dbr is never measured. Then EV_SEPARATOR (4 zero bytes) into PCR 7 right away; the
  separators of PCRs 0-6 come later, at ReadyToBoot.
* `SecurityPkg/Library/DxeImageVerificationLib`: when Secure Boot is on and an image verifies
  against a certificate in db, SecureBootHook measures EV_EFI_VARIABLE_AUTHORITY into PCR 7: a
  UEFI_VARIABLE_DATA named "db" (image security database GUID) whose data is the EFI_SIGNATURE_DATA
  (owner GUID + DER certificate) of the db entry that verified the image; each distinct entry once
  per boot (IsDataMeasured). With SecureBoot 0 the handler returns before verifying, so no
  authority event is logged at all.

The SecureBoot variable is 1 byte (1 enforcing, 0 not); AuthVariableLib creates it at every boot
from the platform mode and OVMF's SecureBootEnable. Firmware built without Secure Boot support has
no SecureBoot variable and logs it with empty data (seen in the shared Fedora 37 sd-boot log); that
firmware is not what obelisk boots, so `pcr7_prediction` has no case for it.
"""

from __future__ import annotations

import hashlib
import struct
import uuid
from dataclasses import dataclass

from obelisk.core.errors import InputError, ParseError
from obelisk.tpm import eventlog
from obelisk.tpm.eventlog import EV_EFI_VARIABLE_AUTHORITY, EV_SEPARATOR
from obelisk.tpm.prediction import ExpectedEvent, PcrPrediction

EV_EFI_VARIABLE_DRIVER_CONFIG = 0x80000001

EFI_GLOBAL_VARIABLE = uuid.UUID(bytes_le=eventlog.EFI_GLOBAL_VARIABLE)
EFI_IMAGE_SECURITY_DATABASE = uuid.UUID("d719b2cb-3d3a-4596-a3bc-dad00e67656f")

# PCR 7's secure variables in MeasureAllSecureVariables' order, with their vendor GUIDs.
SECURE_VARIABLES: tuple[tuple[str, uuid.UUID], ...] = (
    ("SecureBoot", EFI_GLOBAL_VARIABLE),
    ("PK", EFI_GLOBAL_VARIABLE),
    ("KEK", EFI_GLOBAL_VARIABLE),
    ("db", EFI_IMAGE_SECURITY_DATABASE),
    ("dbx", EFI_IMAGE_SECURITY_DATABASE),
)

_HEADER = struct.Struct("<16sQQ")  # VariableName (GUID), UnicodeNameLength, VariableDataLength
MAX_VARIABLE_DATA = 1 << 20  # an event's data; real db/dbx are tens of KiB
MAX_NAME_CHARS = 1024
SEPARATOR_DATA = eventlog.SEPARATOR_OK[0]  # UEFI's separator: 4 zero bytes


@dataclass(frozen=True)
class UefiVariableData:
    """One UEFI_VARIABLE_DATA: which variable (vendor GUID and name) and the bytes measured."""

    vendor: uuid.UUID
    name: str
    data: bytes


def serialize_variable_data(variable: UefiVariableData) -> bytes:
    encoded = variable.name.encode("utf-16-le")
    return _HEADER.pack(variable.vendor.bytes_le, len(encoded) // 2, len(variable.data)) + encoded + variable.data


def parse_variable_data(data: bytes, source: str | None = None) -> UefiVariableData:
    """UEFI_VARIABLE_DATA from event data; ParseError naming the field on any length that does not fit."""
    if len(data) > _HEADER.size + 2 * MAX_NAME_CHARS + MAX_VARIABLE_DATA:
        raise ParseError(f"UEFI_VARIABLE_DATA of {len(data)} bytes is larger than obelisk reads", source=source)
    if len(data) < _HEADER.size:
        raise ParseError(f"UEFI_VARIABLE_DATA needs {_HEADER.size} header bytes, has {len(data)}",
                         source=source, offset=0)
    guid, name_chars, data_length = _HEADER.unpack_from(data)
    if name_chars > MAX_NAME_CHARS or _HEADER.size + 2 * name_chars > len(data):
        raise ParseError(f"UnicodeNameLength {name_chars} does not fit the event data", source=source, offset=16)
    name_end = _HEADER.size + 2 * name_chars
    if data_length != len(data) - name_end:
        raise ParseError(f"VariableDataLength {data_length} but {len(data) - name_end} bytes follow the name",
                         source=source, offset=24)
    try:
        name = data[_HEADER.size:name_end].decode("utf-16-le")
    except UnicodeDecodeError:
        raise ParseError("UnicodeName is not valid UTF-16LE", source=source, offset=_HEADER.size) from None
    return UefiVariableData(uuid.UUID(bytes_le=guid), name, data[name_end:])


def driver_config_event(name: str, vendor: uuid.UUID, value: bytes) -> ExpectedEvent:
    """EV_EFI_VARIABLE_DRIVER_CONFIG in PCR 7: digest over the whole UEFI_VARIABLE_DATA (Tcg2Dxe MeasureVariable)."""
    data = serialize_variable_data(UefiVariableData(vendor, name, value))
    return ExpectedEvent(7, EV_EFI_VARIABLE_DRIVER_CONFIG, hashlib.sha256(data).digest(), name, data)


def authority_event(signature_data: bytes) -> ExpectedEvent:
    """EV_EFI_VARIABLE_AUTHORITY: the db entry (EFI_SIGNATURE_DATA: owner GUID + certificate) that admitted an image."""
    data = serialize_variable_data(UefiVariableData(EFI_IMAGE_SECURITY_DATABASE, "db", signature_data))
    return ExpectedEvent(7, EV_EFI_VARIABLE_AUTHORITY, hashlib.sha256(data).digest(),
                         "db certificate that verified the UKI (authority)", data)


def pcr7_prediction(secure_boot: bool, pk: bytes, kek: bytes, db: bytes, dbx: bytes,
                    authority: bytes | None) -> PcrPrediction:
    """PCR 7 as OVMF extends it before the UKI's stub runs (module docstring).

    `pk`, `kek`, `db`, `dbx` are the variables' contents (EFI signature lists, empty when the variable
    does not exist), exactly as enrolled in the variable store; `authority` is the EFI_SIGNATURE_DATA of
    the db entry that verifies the UKI, which the firmware measures only when Secure Boot enforces
    (None with Secure Boot on: PCR 7 before any image was verified).
    """
    if authority is not None and not secure_boot:
        raise InputError("PCR 7 prediction: with Secure Boot off the firmware verifies nothing, so it measures "
                         "no authority; pass authority=None")
    values = {"SecureBoot": b"\x01" if secure_boot else b"\x00", "PK": pk, "KEK": kek, "db": db, "dbx": dbx}
    events = [driver_config_event(name, vendor, values[name]) for name, vendor in SECURE_VARIABLES]
    events.append(ExpectedEvent(7, EV_SEPARATOR, hashlib.sha256(SEPARATOR_DATA).digest(),
                                "separator (end of the Secure Boot configuration)", SEPARATOR_DATA))
    if authority is not None:
        events.append(authority_event(authority))
    return PcrPrediction(7, tuple(events))
