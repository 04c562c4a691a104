"""The evidence bundle a node hands to a verifier (schema `obelisk.evidence/1`, JSON).

    {
      "schema": "obelisk.evidence/1",         # older bundles carry it under "format": still read
      "nonce": "HEX",                         # the verifier's nonce, echoed (the quote's extraData decides)
      "quote": {
        "attest": "BASE64",                   # TPMS_ATTEST exactly as the TPM returned it
        "signature": "BASE64",                # TPMT_SIGNATURE, TPM marshalling
        "bank": "sha256",
        "pcrs": {"0": "HEX", ..., "11": "HEX"} # the values the quote's pcrDigest covers
      },
      "ak_name": "HEX",                       # the AK's TPM name, to pick the AK record
      "event_log": "BASE64" | null,           # binary_bios_measurements
      "ima_log": {"format": "binary" | "ascii", "data": "BASE64"} | null,
      "kernel": {"release": "...", "version": "...", "machine": "...", "cmdline": "...",
                 "hostname": "...", "boot_id": "...", "lockdown": "..."},
      "boot_events": "BASE64" | null,         # obelisk's PCR 11 log (attest/bootevents.py), optional
      "rollback_floor": {"attest": "BASE64", "signature": "BASE64"},  # TPM2_NV_Certify of the rollback
                                              # floor by the AK over the nonce; only on nodes that have one
      "collected_at": "RFC 3339 UTC"
    }

Nothing in it is trusted: the verifier trusts only what the AK's signature covers and what the
logs replay to. Parsing is strict, exactly as docs/attest.md's table says: every key required but
`boot_events` and `rollback_floor`, null only where shown, unknown keys refused at every level, every field typed.
"""

from __future__ import annotations

import base64
import binascii
import datetime as _dt
import json
import os
import re
import socket
from dataclasses import dataclass, field

from obelisk.core.errors import InputError, ParseError
from obelisk.core.schema import schema_of
from obelisk.tpm import algorithms

SCHEMA = "obelisk.evidence/1"
MAX_BUNDLE_SIZE = 256 * 1024 * 1024
EVENT_LOG_PATH = "/sys/kernel/security/tpm0/binary_bios_measurements"
IMA_BINARY_PATH = "/sys/kernel/security/ima/binary_runtime_measurements"
IMA_ASCII_PATH = "/sys/kernel/security/ima/ascii_runtime_measurements"
_KERNEL_KEYS = ("release", "version", "machine", "cmdline", "hostname", "boot_id", "lockdown", "var_mount")


@dataclass(frozen=True)
class Evidence:
    nonce: bytes
    attest: bytes
    signature: bytes
    bank: str
    pcrs: dict[int, bytes]
    ak_name: bytes = b""
    event_log: bytes | None = None
    ima_log: bytes | None = None
    ima_format: str = "binary"
    kernel: dict[str, str] = field(default_factory=dict)
    collected_at: str = field(default_factory=lambda: now())
    boot_events: bytes | None = None
    rollback_floor: tuple[bytes, bytes] | None = None  # (TPMS_ATTEST, TPMT_SIGNATURE) of TPM2_NV_Certify

    def to_json(self) -> dict:
        doc = {
            "schema": SCHEMA,
            "nonce": self.nonce.hex(),
            "quote": {"attest": _b64(self.attest), "signature": _b64(self.signature), "bank": self.bank,
                      "pcrs": {str(k): v.hex() for k, v in sorted(self.pcrs.items())}},
            "ak_name": self.ak_name.hex(),
            "event_log": _b64(self.event_log) if self.event_log is not None else None,
            "ima_log": ({"format": self.ima_format, "data": _b64(self.ima_log)}
                        if self.ima_log is not None else None),
            "kernel": dict(sorted(self.kernel.items())),
            "collected_at": self.collected_at,
            "boot_events": _b64(self.boot_events) if self.boot_events is not None else None,
        }
        if self.rollback_floor is not None:  # absent otherwise: bundles read by verifiers before it are unchanged
            doc["rollback_floor"] = {"attest": _b64(self.rollback_floor[0]), "signature": _b64(self.rollback_floor[1])}
        return doc


def now() -> str:
    """The current time as the bundle's `collected_at` (RFC 3339 UTC, seconds)."""
    return _dt.datetime.now(_dt.UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def serialize(ev: Evidence) -> str:
    return json.dumps(ev.to_json(), indent=1, sort_keys=True) + "\n"


# The documented schema (docs/attest.md), one entry per field: top-level keys, whether the key may be absent,
# whether null is allowed. The nested objects are checked by parse below, against the same doc.
_FIELDS: dict[str, tuple[bool, bool]] = {  # key: (may be absent, may be null)
    "schema": (True, False), "format": (True, False),  # one of the two: schema_of checks
    "nonce": (False, False), "quote": (False, False), "ak_name": (False, False),
    "event_log": (False, True), "ima_log": (False, True), "kernel": (False, False),
    "collected_at": (False, False),
    "boot_events": (True, True),  # added after the first bundles: absent reads as null
    "rollback_floor": (True, False),  # rollback protection (docs/upgrade.md): absent on nodes without a floor
}
_QUOTE_KEYS = ("attest", "signature", "bank", "pcrs")
_IMA_KEYS = ("format", "data")
MAX_NONCE = 64  # TPM2B_DATA: at most the largest digest
_RFC3339_UTC = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?Z")


def parse(data: bytes | str, source: str = "evidence") -> Evidence:
    """Parse a bundle against its documented schema; every problem is one ParseError naming the field."""
    if len(data) > MAX_BUNDLE_SIZE:
        raise ParseError(f"bundle larger than {MAX_BUNDLE_SIZE} bytes", source=source)
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise ParseError(f"not JSON: {str(exc).splitlines()[0]}", source=source) from None
    return from_json(doc, source)


def from_json(doc: object, source: str = "evidence") -> Evidence:
    """A bundle from its parsed JSON (`parse` without the decoding: a caller that has already decoded
    the document it is part of, as the fleet's rounds); the same checks and errors as `parse`."""

    def bad(where: str, message: str) -> ParseError:
        return ParseError(f"{where}: {message}", source=source)

    if not isinstance(doc, dict):
        raise bad("top level", "expected an object")
    try:
        schema = schema_of(doc)
    except ValueError as exc:
        raise bad("schema", str(exc)) from None
    if schema != SCHEMA:
        raise bad("schema", f"expected {SCHEMA!r}, got {schema!r}")
    extra = sorted(set(doc) - set(_FIELDS))
    if extra:
        raise bad(str(extra[0])[:80], "unknown field")
    for key, (may_be_absent, may_be_null) in _FIELDS.items():
        if key not in doc and not may_be_absent:
            raise bad(key, "missing")
        if key in doc and doc[key] is None and not may_be_null:
            raise bad(key, "must not be null")

    def obj(value: object, where: str, keys: tuple[str, ...]) -> dict:
        if not isinstance(value, dict):
            raise bad(where, "expected an object")
        unknown = sorted(set(value) - set(keys))
        if unknown:
            raise bad(f"{where}.{str(unknown[0])[:80]}", "unknown field")
        missing = [k for k in keys if k not in value]
        if missing:
            raise bad(f"{where}.{missing[0]}", "missing")
        return value

    def text(value: object, where: str, *, empty: bool = False) -> str:
        if not isinstance(value, str):
            raise bad(where, "expected a string")
        if not value and not empty:
            raise bad(where, "empty")
        return value

    def hexfield(value: object, where: str, *, empty: bool = False) -> bytes:
        try:
            return bytes.fromhex(text(value, where, empty=empty))
        except ValueError:
            raise bad(where, "not hex") from None

    def b64field(value: object, where: str) -> bytes:
        if not isinstance(value, str):
            raise bad(where, "expected base64 text")
        try:  # strict: only the base64 alphabet and correct padding (and 3x faster than validate=True)
            return binascii.a2b_base64(value.encode("ascii"), strict_mode=True)
        except (binascii.Error, ValueError, UnicodeEncodeError):
            raise bad(where, "not base64") from None

    nonce = hexfield(doc["nonce"], "nonce")
    if len(nonce) > MAX_NONCE:
        raise bad("nonce", f"{len(nonce)} bytes, at most {MAX_NONCE}")
    quote = obj(doc["quote"], "quote", _QUOTE_KEYS)
    pcrs_doc = quote["pcrs"]
    if not isinstance(pcrs_doc, dict) or not pcrs_doc or len(pcrs_doc) > 32:
        raise bad("quote.pcrs", "expected an object of 1 to 32 PCRs")
    pcrs: dict[int, bytes] = {}
    for key, value in pcrs_doc.items():
        if not (isinstance(key, str) and key.isascii() and key.isdigit() and len(key) <= 2 and int(key) < 32):
            raise bad(f"quote.pcrs.{str(key)[:8]}", "PCR index must be 0..31")
        pcrs[int(key)] = hexfield(value, f"quote.pcrs.{key}")
    bank = text(quote["bank"], "quote.bank")
    if bank not in {a.name for a in algorithms.SHA_BANKS}:
        raise bad("quote.bank", f"must be one of {', '.join(a.name for a in algorithms.SHA_BANKS)}")
    ima_log = None
    ima_format = "binary"
    if doc["ima_log"] is not None:
        ima = obj(doc["ima_log"], "ima_log", _IMA_KEYS)
        ima_format = text(ima["format"], "ima_log.format")
        if ima_format not in ("binary", "ascii"):
            raise bad("ima_log.format", "must be binary or ascii")
        ima_log = b64field(ima["data"], "ima_log.data")
    kernel_doc = doc["kernel"]
    if not isinstance(kernel_doc, dict):
        raise bad("kernel", "expected an object of strings")
    for key, value in kernel_doc.items():
        if key not in _KERNEL_KEYS:
            raise bad(f"kernel.{str(key)[:80]}", f"unknown field (known: {', '.join(_KERNEL_KEYS)})")
        text(value, f"kernel.{key}", empty=True)
    collected_at = text(doc["collected_at"], "collected_at")
    if not _RFC3339_UTC.fullmatch(collected_at):
        raise bad("collected_at", "expected RFC 3339 UTC, YYYY-MM-DDTHH:MM:SS[.frac]Z")
    try:
        _dt.datetime.fromisoformat(collected_at.replace("Z", "+00:00"))
    except ValueError:
        raise bad("collected_at", "not a valid date and time") from None
    event_log = doc["event_log"]
    boot_events = doc.get("boot_events")
    floor_doc = obj(doc["rollback_floor"], "rollback_floor", _QUOTE_KEYS[:2]) if "rollback_floor" in doc else None
    return Evidence(
        nonce=nonce,
        attest=b64field(quote["attest"], "quote.attest"),
        signature=b64field(quote["signature"], "quote.signature"),
        bank=bank,
        pcrs=pcrs,
        ak_name=hexfield(doc["ak_name"], "ak_name", empty=True),
        event_log=b64field(event_log, "event_log") if event_log is not None else None,
        ima_log=ima_log,
        ima_format=ima_format,
        kernel=dict(kernel_doc),
        collected_at=collected_at,
        boot_events=b64field(boot_events, "boot_events") if boot_events is not None else None,
        rollback_floor=((b64field(floor_doc["attest"], "rollback_floor.attest"),
                         b64field(floor_doc["signature"], "rollback_floor.signature")) if floor_doc else None),
    )


def _read_optional(path: str | None, limit: int) -> bytes | None:
    if not path:
        return None
    try:
        with open(path, "rb") as handle:
            data = handle.read(limit + 1)
    except OSError:
        return None
    if len(data) > limit:
        raise InputError(f"larger than {limit} bytes", source=path)
    return data


def kernel_facts() -> dict[str, str]:
    """What the running kernel says about itself (only facts, no secrets)."""
    uname = os.uname()
    facts = {"release": uname.release, "version": uname.version, "machine": uname.machine,
             "hostname": socket.gethostname()}
    for key, path in (("cmdline", "/proc/cmdline"), ("boot_id", "/proc/sys/kernel/random/boot_id"),
                      ("lockdown", "/sys/kernel/security/lockdown")):
        data = _read_optional(path, 1 << 16)
        if data is not None:
            facts[key] = data.decode("utf-8", "replace").strip()
    mounts = _read_optional("/proc/self/mounts", 1 << 20)
    if mounts is not None:
        var = var_mount(mounts.decode("utf-8", "replace"))
        if var:
            facts["var_mount"] = var
    return facts


def var_mount(mounts: str) -> str:
    """'SOURCE FSTYPE' of what is mounted on /var (the last mount wins), from /proc/self/mounts."""
    found = ""
    for line in mounts.splitlines():
        fields = line.split()
        if len(fields) >= 3 and fields[1] == "/var":
            found = f"{fields[0]} {fields[2]}"
    return found


def collect(nonce: bytes, tcti: str | None = None, *, ak_handle: int | None = None,
            event_log_path: str | None = EVENT_LOG_PATH, ima_path: str | None = None,
            pcrs: tuple[int, ...] | None = None, boot_events_path: str | None = None) -> Evidence:
    """Quote over `nonce` and gather the logs. A log that cannot be read is left null (the verifier says so)."""
    from obelisk.tpm import bootevents, eventlog, rollback
    from obelisk.tpm import device as tpm

    raw = tpm.quote(nonce, tcti, ak_handle=ak_handle or tpm.AK_HANDLE, pcrs=pcrs or tpm.QUOTE_PCRS)
    info = tpm.read_ak(tcti, ak_handle=ak_handle or tpm.AK_HANDLE, with_certificate=False)
    ima_format = "binary"
    if ima_path is None:
        ima_log = _read_optional(IMA_BINARY_PATH, MAX_BUNDLE_SIZE // 2)
        if ima_log is None:
            ima_log, ima_format = _read_optional(IMA_ASCII_PATH, MAX_BUNDLE_SIZE // 2), "ascii"
    else:
        ima_log = _read_optional(ima_path, MAX_BUNDLE_SIZE // 2)
        if ima_log is None:
            raise InputError("IMA log not readable", source=ima_path)
        ima_format = "ascii" if _looks_ascii(ima_log) else "binary"
    event_log = _read_optional(event_log_path, eventlog.MAX_LOG_SIZE)
    boot_events = _read_optional(boot_events_path or bootevents.LOG_PATH, bootevents.MAX_SIZE)
    return Evidence(nonce=nonce, attest=raw.attest, signature=raw.signature, bank=raw.bank, pcrs=raw.pcrs,
                    ak_name=info.name, event_log=event_log, ima_log=ima_log, ima_format=ima_format,
                    kernel=kernel_facts(), boot_events=boot_events, collected_at=now(),
                    rollback_floor=rollback.certify_floor(nonce, tcti, ak_handle=ak_handle or tpm.AK_HANDLE))


def _looks_ascii(data: bytes) -> bool:
    head = data[:64]
    return bool(head) and head[:2].isdigit() and all(32 <= b < 127 or b in (9, 10) for b in head)
