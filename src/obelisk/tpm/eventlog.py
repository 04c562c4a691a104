"""TCG PC Client firmware event logs: parse, serialize, replay to PCR values.

Two formats exist (TCG PC Client Platform Firmware Profile, section 10):

* the SHA-1-only TCG 1.2 format: every event is `TCG_PCClientPCREvent`
  (pcrIndex u32, eventType u32, digest[20], eventDataSize u32, event[]);
* the crypto-agile TCG2 format: the first event is in the 1.2 format, of type
  EV_NO_ACTION, and carries a `TCG_EfiSpecIDEvent` ("Spec ID Event03") listing every
  digest algorithm with its size plus vendor data; each later event is `TCG_PCR_EVENT2`
  (pcrIndex, eventType, TPML_DIGEST_VALUES {count, (algId u16, digest)...}, eventSize, event).

Everything is little-endian. The log is untrusted input: every length is checked against
the bytes that remain before anything is allocated, so hostile bytes give a `ParseError`
naming the offset, never an exception of another kind, a hang or unbounded memory.

`bind` checks that an event's data is what its digests were computed over, by one rule per event type
(`BINDING_RULES`); events whose digest covers bytes outside the log come back UNVERIFIED.

`replay` extends each bank exactly as the TPM would (EV_NO_ACTION events are not extended;
a StartupLocality event sets PCR 0's initial value), giving the values `tpm2_eventlog`
prints under `pcrs:`.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum

from obelisk.core.errors import ParseError
from obelisk.tpm import algorithms
from obelisk.tpm.pcr import extend as extend_pcr

# Digest sizes of algorithms outside algorithms.HASHES come from the Spec ID event itself, which is
# what makes the format crypto-agile.

EV_NO_ACTION = 0x00000003
EV_SEPARATOR = 0x00000004
EV_IPL = 0x0000000D  # systemd-stub's measurements of the UKI's sections (PCR 11)
EV_EFI_BOOT_SERVICES_APPLICATION = 0x80000003  # the firmware's measurement of an EFI application (PCR 4)
EV_EFI_VARIABLE_DRIVER_CONFIG = 0x80000001
EV_EFI_ACTION = 0x80000007
EV_EFI_VARIABLE_AUTHORITY = 0x800000E0
EV_EFI_EVENT_BASE = 0x80000000
EVENT_TYPES: dict[int, str] = {
    0x00000000: "EV_PREBOOT_CERT",
    0x00000001: "EV_POST_CODE",
    0x00000002: "EV_UNUSED",
    0x00000003: "EV_NO_ACTION",
    0x00000004: "EV_SEPARATOR",
    0x00000005: "EV_ACTION",
    0x00000006: "EV_EVENT_TAG",
    0x00000007: "EV_S_CRTM_CONTENTS",
    0x00000008: "EV_S_CRTM_VERSION",
    0x00000009: "EV_CPU_MICROCODE",
    0x0000000A: "EV_PLATFORM_CONFIG_FLAGS",
    0x0000000B: "EV_TABLE_OF_DEVICES",
    0x0000000C: "EV_COMPACT_HASH",
    0x0000000D: "EV_IPL",
    0x0000000E: "EV_IPL_PARTITION_DATA",
    0x0000000F: "EV_NONHOST_CODE",
    0x00000010: "EV_NONHOST_CONFIG",
    0x00000011: "EV_NONHOST_INFO",
    0x00000012: "EV_OMIT_BOOT_DEVICE_EVENTS",
    0x80000000: "EV_EFI_EVENT_BASE",
    0x80000001: "EV_EFI_VARIABLE_DRIVER_CONFIG",
    0x80000002: "EV_EFI_VARIABLE_BOOT",
    0x80000003: "EV_EFI_BOOT_SERVICES_APPLICATION",
    0x80000004: "EV_EFI_BOOT_SERVICES_DRIVER",
    0x80000005: "EV_EFI_RUNTIME_SERVICES_DRIVER",
    0x80000006: "EV_EFI_GPT_EVENT",
    0x80000007: "EV_EFI_ACTION",
    0x80000008: "EV_EFI_PLATFORM_FIRMWARE_BLOB",
    0x80000009: "EV_EFI_HANDOFF_TABLES",
    0x8000000A: "EV_EFI_PLATFORM_FIRMWARE_BLOB2",
    0x8000000B: "EV_EFI_HANDOFF_TABLES2",
    0x8000000C: "EV_EFI_VARIABLE_BOOT2",
    0x80000010: "EV_EFI_HCRTM_EVENT",
    0x800000E0: "EV_EFI_VARIABLE_AUTHORITY",
    0x800000E1: "EV_EFI_SPDM_FIRMWARE_BLOB",
    0x800000E2: "EV_EFI_SPDM_FIRMWARE_CONFIG",
}

SPEC_ID_SIGNATURE = b"Spec ID Event03\x00"
_SPEC_ID_TCG12 = (b"Spec ID Event00\x00", b"Spec ID Event02\x00")
STARTUP_LOCALITY_SIGNATURE = b"StartupLocality\x00"

# Real firmware logs are tens of KiB; the kernel caps its copy far below this.
MAX_LOG_SIZE = 16 * 1024 * 1024
# PCRs a PC Client TPM has; an event for a higher index is malformed.
PCR_COUNT = 24
# More algorithms than any TPM implements; a larger count in a log is hostile.
MAX_ALGORITHMS = 32

_U32 = struct.Struct("<I")
_U16 = struct.Struct("<H")
_HDR = struct.Struct("<II")  # pcrIndex, eventType
_SPEC_FIXED = struct.Struct("<16sIBBBBI")  # signature, platformClass, minor, major, errata, uintnSize, numAlgs


@dataclass(frozen=True)
class SpecIdAlgorithm:
    alg_id: int
    digest_size: int

    @property
    def name(self) -> str:
        return alg_name(self.alg_id)


@dataclass(frozen=True)
class SpecIdEvent:
    """TCG_EfiSpecIDEvent: the header event of a crypto-agile log."""

    platform_class: int
    spec_version_minor: int
    spec_version_major: int
    spec_errata: int
    uintn_size: int
    algorithms: tuple[SpecIdAlgorithm, ...]
    vendor_info: bytes = b""
    signature: bytes = SPEC_ID_SIGNATURE

    def digest_sizes(self) -> dict[int, int]:
        return {a.alg_id: a.digest_size for a in self.algorithms}


@dataclass(frozen=True)
class Event:
    """One measured event. `digests` is ((alg_id, digest), ...) in log order."""

    pcr: int
    event_type: int
    digests: tuple[tuple[int, bytes], ...]
    data: bytes
    number: int = 0  # position in the log, 0 = the first (header) event
    offset: int = 0  # byte offset in the log

    @property
    def type_name(self) -> str:
        return event_type_name(self.event_type)

    def digest(self, alg: str | int) -> bytes | None:
        alg_id = algorithms.by_name(alg).alg_id if isinstance(alg, str) else alg
        for a, d in self.digests:
            if a == alg_id:
                return d
        return None


@dataclass(frozen=True)
class EventLog:
    """A parsed log. `crypto_agile` tells the format; `spec_id` is set for crypto-agile logs.

    `events` includes the header event (number 0) in both formats.
    """

    crypto_agile: bool
    events: tuple[Event, ...]
    spec_id: SpecIdEvent | None = None
    # The Spec ID event's eventSize stops at vendorInfoSize and the vendor bytes follow the
    # event (seen in tpm2-tools' fixtures; tpm2_eventlog reads them as vendor data). Kept so
    # that such a log round-trips; the bytes are not extended into any PCR either way.
    vendor_info_outside_event: bool = False

    @property
    def format(self) -> str:
        return "tcg2-crypto-agile" if self.crypto_agile else "tcg1.2-sha1"

    @property
    def banks(self) -> tuple[str, ...]:
        if self.spec_id is None:
            return ("sha1",)
        return tuple(a.name for a in self.spec_id.algorithms)


@dataclass(frozen=True)
class Replay:
    """PCR values per bank after replaying a log: pcrs[bank][index] = value.

    Only PCRs that at least one event touched appear (as `tpm2_eventlog` prints them);
    `value(bank, index)` gives the reset value for the others.
    """

    pcrs: dict[str, dict[int, bytes]] = field(default_factory=dict)
    initial: dict[str, dict[int, bytes]] = field(default_factory=dict)

    def value(self, bank: str, index: int) -> bytes:
        if bank in self.pcrs and index in self.pcrs[bank]:
            return self.pcrs[bank][index]
        if bank in self.initial and index in self.initial[bank]:
            return self.initial[bank][index]
        return reset_value(bank, index)


def alg_name(alg_id: int) -> str:
    return algorithms.name_of(alg_id)


def event_type_name(event_type: int) -> str:
    return EVENT_TYPES.get(event_type, f"0x{event_type:08x}")


def reset_value(bank: str, index: int) -> bytes:
    """A PCR's value after TPM2_Startup(CLEAR): zeros, except 17-22 (dynamic RTM) all ones."""
    size = algorithms.by_name(bank).digest_size if bank in _NAMES else 0
    return _reset(index, size)


_NAMES = frozenset(a.name for a in algorithms.HASHES)


class _Reader:
    """Bounds-checked little-endian reader; every failure names the offset."""

    __slots__ = ("data", "pos", "source")

    def __init__(self, data: bytes, source: str | None):
        self.data = data
        self.pos = 0
        self.source = source

    def remaining(self) -> int:
        return len(self.data) - self.pos

    def fail(self, message: str, offset: int | None = None) -> ParseError:
        return ParseError(message, source=self.source or "event log", offset=self.pos if offset is None else offset)

    def take(self, n: int, what: str) -> bytes:
        if n < 0 or n > self.remaining():
            raise self.fail(f"truncated {what}: needs {n} bytes, {self.remaining()} left")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def u32(self, what: str) -> int:
        return _U32.unpack(self.take(4, what))[0]

    def u16(self, what: str) -> int:
        return _U16.unpack(self.take(2, what))[0]


def _parse_spec_id(data: bytes, source: str | None, base: int,
                   overrun: bytes | None = None) -> tuple[SpecIdEvent, bool]:
    r = _Reader(data, source)
    try:
        sig, pclass, minor, major, errata, uintn, count = _SPEC_FIXED.unpack(r.take(_SPEC_FIXED.size, "Spec ID event"))
        if count == 0 or count > MAX_ALGORITHMS:
            raise r.fail(f"Spec ID event lists {count} algorithms (allowed 1..{MAX_ALGORITHMS})", r.pos - 4)
        if count * 4 > r.remaining():
            raise r.fail(f"Spec ID event lists {count} algorithms but only {r.remaining()} bytes follow")
        algs = []
        seen = set()
        for _ in range(count):
            at = r.pos
            alg_id = r.u16("algorithm id")
            size = r.u16("digest size")
            if alg_id in seen:
                raise r.fail(f"Spec ID event lists {alg_name(alg_id)} twice", at)
            known = algorithms.by_id(alg_id) if algorithms.is_known(alg_id) else None
            if size == 0 or size > 64 or (known is not None and known.digest_size != size):
                raise r.fail(f"Spec ID event: {alg_name(alg_id)} digest size {size} is wrong", at + 2)
            seen.add(alg_id)
            algs.append(SpecIdAlgorithm(alg_id, size))
        vendor_size = r.take(1, "vendorInfoSize")[0]
        if overrun is not None and not r.remaining() and vendor_size:
            # The event ends right after vendorInfoSize: the vendor bytes follow the event
            # (tpm2-tools reads such logs this way; see EventLog.vendor_info_overrun).
            if len(overrun) < vendor_size:
                raise r.fail(f"truncated vendorInfo: needs {vendor_size} bytes after the event, "
                             f"{len(overrun)} left")
            vendor = overrun[:vendor_size]
            outside = True
        else:
            vendor = r.take(vendor_size, "vendorInfo")
            outside = False
        if r.remaining():
            raise r.fail(f"{r.remaining()} bytes after the Spec ID event's vendor data")
    except ParseError as exc:
        # re-anchor the offset on the whole log
        raise ParseError(str(exc).split(": ", 1)[-1], source=source or "event log",
                         offset=base + (exc.offset or 0)) from None
    return SpecIdEvent(platform_class=pclass, spec_version_minor=minor, spec_version_major=major,
                       spec_errata=errata, uintn_size=uintn, algorithms=tuple(algs), vendor_info=vendor,
                       signature=sig), outside


def parse(data: bytes, source: str | None = None) -> EventLog:
    """Parse a TCG event log (either format). Raises ParseError naming the offset on bad bytes."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError("event log must be bytes")
    data = bytes(data)
    r = _Reader(data, source)
    if not data:
        raise r.fail("empty event log")
    # The first event is always in the SHA-1 (TCG 1.2) layout.
    first = _parse_sha1_event(r, 0)
    spec_id = None
    crypto_agile = False
    outside = False
    if first.event_type == EV_NO_ACTION and first.data.startswith(SPEC_ID_SIGNATURE):
        if first.pcr != 0:
            raise r.fail(f"Spec ID event on PCR {first.pcr}, must be PCR 0", 0)
        spec_id, outside = _parse_spec_id(first.data, source, first.offset + 32, data[r.pos:r.pos + 255])
        if outside:
            r.pos += len(spec_id.vendor_info)
        crypto_agile = True
    events = [first]
    if crypto_agile:
        assert spec_id is not None
        sizes = spec_id.digest_sizes()
        while r.remaining():
            events.append(_parse_agile_event(r, len(events), sizes))
    else:
        while r.remaining():
            events.append(_parse_sha1_event(r, len(events)))
    return EventLog(crypto_agile=crypto_agile, events=tuple(events), spec_id=spec_id,
                    vendor_info_outside_event=crypto_agile and outside)


def _check_pcr(r: _Reader, pcr: int, at: int) -> None:
    if pcr >= PCR_COUNT:
        raise r.fail(f"event for PCR {pcr} (a PC Client TPM has 0..{PCR_COUNT - 1})", at)


def _parse_sha1_event(r: _Reader, number: int) -> Event:
    at = r.pos
    pcr, etype = _HDR.unpack(r.take(8, f"event {number} header"))
    _check_pcr(r, pcr, at)
    digest = r.take(20, f"event {number} SHA-1 digest")
    size = r.u32(f"event {number} data size")
    payload = r.take(size, f"event {number} data ({size} bytes)")
    return Event(pcr=pcr, event_type=etype, digests=((algorithms.SHA1.alg_id, digest),), data=payload,
                 number=number, offset=at)


def _parse_agile_event(r: _Reader, number: int, sizes: dict[int, int]) -> Event:
    at = r.pos
    pcr, etype = _HDR.unpack(r.take(8, f"event {number} header"))
    _check_pcr(r, pcr, at)
    count_at = r.pos
    count = r.u32(f"event {number} digest count")
    if count > len(sizes):
        raise r.fail(f"event {number} claims {count} digests, the Spec ID event lists {len(sizes)} algorithms",
                     count_at)
    digests = []
    seen = set()
    for _ in range(count):
        alg_at = r.pos
        alg_id = r.u16(f"event {number} digest algorithm")
        size = sizes.get(alg_id)
        if size is None:
            raise r.fail(f"event {number} has a {alg_name(alg_id)} digest, an algorithm the Spec ID event "
                         "does not list", alg_at)
        if alg_id in seen:
            raise r.fail(f"event {number} has two {alg_name(alg_id)} digests", alg_at)
        seen.add(alg_id)
        digests.append((alg_id, r.take(size, f"event {number} {alg_name(alg_id)} digest")))
    size = r.u32(f"event {number} data size")
    payload = r.take(size, f"event {number} data ({size} bytes)")
    return Event(pcr=pcr, event_type=etype, digests=tuple(digests), data=payload, number=number, offset=at)


def serialize(log: EventLog) -> bytes:
    """The exact bytes of `log` in its own format; parse(serialize(x)) == x for parsed logs."""
    out = bytearray()
    for i, ev in enumerate(log.events):
        if i == 0 or not log.crypto_agile:
            sha1 = ev.digest(algorithms.SHA1.alg_id)
            if sha1 is None or len(sha1) != 20 or len(ev.digests) != 1:
                raise ValueError(f"event {i}: the SHA-1 format needs exactly one 20-byte SHA-1 digest")
            out += _HDR.pack(ev.pcr, ev.event_type) + sha1 + _U32.pack(len(ev.data)) + ev.data
            if i == 0 and log.vendor_info_outside_event and log.spec_id is not None:
                out += log.spec_id.vendor_info
        else:
            out += _HDR.pack(ev.pcr, ev.event_type) + _U32.pack(len(ev.digests))
            for alg_id, digest in ev.digests:
                out += _U16.pack(alg_id) + digest
            out += _U32.pack(len(ev.data)) + ev.data
    return bytes(out)


def serialize_spec_id(spec: SpecIdEvent) -> bytes:
    """The event data of a Spec ID header event."""
    out = bytearray(_SPEC_FIXED.pack(spec.signature, spec.platform_class, spec.spec_version_minor,
                                     spec.spec_version_major, spec.spec_errata, spec.uintn_size,
                                     len(spec.algorithms)))
    for a in spec.algorithms:
        out += _U16.pack(a.alg_id) + _U16.pack(a.digest_size)
    out += bytes([len(spec.vendor_info)]) + spec.vendor_info
    return bytes(out)


def build(events: Iterable[tuple[int, int, bytes]], banks: Iterable[str] = ("sha1", "sha256"),
          crypto_agile: bool = True) -> EventLog:
    """A log measuring (pcr, event_type, data) events, digests computed over the data.

    Used to produce logs for tests and for the image build's PCR predictions.
    """
    bank_list = tuple(banks) if crypto_agile else ("sha1",)
    evs: list[Event] = []
    spec = None
    if crypto_agile:
        spec = SpecIdEvent(platform_class=0, spec_version_minor=0, spec_version_major=2, spec_errata=0,
                           uintn_size=2, algorithms=tuple(SpecIdAlgorithm(algorithms.by_name(b).alg_id,
                                                                          algorithms.by_name(b).digest_size)
                                                          for b in bank_list))
        evs.append(Event(pcr=0, event_type=EV_NO_ACTION, digests=((algorithms.SHA1.alg_id, b"\x00" * 20),),
                         data=serialize_spec_id(spec), number=0))
    for pcr, etype, data in events:
        digests = tuple((algorithms.by_name(b).alg_id, algorithms.by_name(b).digest(data)) for b in bank_list)
        evs.append(Event(pcr=pcr, event_type=etype, digests=digests, data=data, number=len(evs)))
    log = EventLog(crypto_agile=crypto_agile, events=tuple(evs), spec_id=spec)
    # Give every event its real offset so that build() output equals parse(serialize(build())).
    return parse(serialize(log))


def _startup_locality(ev: Event) -> int | None:
    if ev.event_type == EV_NO_ACTION and ev.pcr == 0 and ev.data.startswith(STARTUP_LOCALITY_SIGNATURE) \
            and len(ev.data) >= len(STARTUP_LOCALITY_SIGNATURE) + 1:
        return ev.data[len(STARTUP_LOCALITY_SIGNATURE)]
    return None


def replay(log: EventLog) -> Replay:
    """Extend every bank of the log as the TPM did; returns the final PCR values."""
    banks = {alg_id: alg_name(alg_id) for alg_id in
             ((a.alg_id for a in log.spec_id.algorithms) if log.spec_id else (algorithms.SHA1.alg_id,))}
    hashable = {alg_id for alg_id, name in banks.items() if _hashable(name)}
    pcrs: dict[str, dict[int, bytes]] = {name: {} for name in banks.values()}
    initial: dict[str, dict[int, bytes]] = {name: {} for name in banks.values()}
    for ev in log.events:
        if ev.event_type == EV_NO_ACTION:
            locality = _startup_locality(ev)
            if locality is not None:
                for alg_id, name in banks.items():
                    size = algorithms.by_id(alg_id).digest_size if algorithms.is_known(alg_id) else 0
                    if size:
                        initial[name][0] = b"\x00" * (size - 1) + bytes([locality])
            continue
        for alg_id, digest in ev.digests:
            bank_name = banks.get(alg_id)
            if bank_name is None or alg_id not in hashable:
                continue  # an algorithm this Python cannot compute: that bank is not replayed
            bank = pcrs[bank_name]
            current = bank.get(ev.pcr)
            if current is None:
                current = initial[bank_name].get(ev.pcr) or _reset(ev.pcr, len(digest))
            bank[ev.pcr] = extend_pcr(current, digest, bank_name)
    # Banks whose hash this Python lacks are left out rather than reported wrong.
    return Replay(pcrs={n: v for n, v in pcrs.items() if v or _hashable(n)},
                  initial=initial)


def _reset(index: int, size: int) -> bytes:
    return (b"\xff" if 17 <= index <= 22 else b"\x00") * size


def _hashable(name: str) -> bool:
    return name in _NAMES and algorithms.by_name(name).available


def to_json(log: EventLog, result: Replay | None = None, banks: Iterable[str] | None = None,
            events: bool = True) -> dict:
    """A JSON-ready view: format, Spec ID, events (digests and data in hex), final PCRs per bank."""
    result = result if result is not None else replay(log)
    wanted = list(banks) if banks is not None else list(result.pcrs)
    out: dict = {"format": log.format, "event_count": len(log.events), "spec_id": None}
    if log.spec_id is not None:
        spec = log.spec_id
        out["spec_id"] = {
            "platform_class": spec.platform_class, "spec_version_major": spec.spec_version_major,
            "spec_version_minor": spec.spec_version_minor, "spec_errata": spec.spec_errata,
            "uintn_size": spec.uintn_size,
            "algorithms": [{"id": a.alg_id, "name": a.name, "digest_size": a.digest_size}
                           for a in spec.algorithms],
            "vendor_info": spec.vendor_info.hex(),
        }
    if events:
        # "binding": whether the description can be believed (see `bind`): only "bound" data is a fact
        bindings = {b.event.number: b for b in bind_all(log)}
        out["events"] = [{"number": ev.number, "offset": ev.offset, "pcr": ev.pcr, "type": ev.type_name,
                          "type_id": ev.event_type, "size": len(ev.data), "description": describe(ev),
                          "binding": bindings[ev.number].status.value if ev.number in bindings else "header",
                          "binding_detail": bindings[ev.number].detail if ev.number in bindings else "",
                          "digests": {alg_name(a): d.hex() for a, d in ev.digests},
                          "data": ev.data.hex()} for ev in log.events]
    out["pcrs"] = {bank: {str(i): v.hex() for i, v in sorted(result.pcrs.get(bank, {}).items())}
                   for bank in wanted}
    return out


# ---- event data bound to digests ---------------------------------------------------------------------
# Replay proves the digests explain the PCRs; only this proves that the event data (the names and values a
# person reads) is what was hashed. Each event type whose digest is defined over its data is one line of
# BINDING_RULES; `bind` recomputes the digest in every bank the event carries. Everything else is
# UNVERIFIED: its digest covers bytes outside the log (a PE image, a firmware volume, a file GRUB read), so
# its data is only the firmware's (or an attacker's) word.


class Covers(StrEnum):
    """What the digest of an event type is computed over."""

    DATA = "data"  # the whole event data
    VARIABLE = "variable"  # the whole UEFI_VARIABLE_DATA (GUID, name, VariableData)
    VARIABLE_BOOT = "variable-boot"  # VariableData only (the spec, EDK2) or the whole UEFI_VARIABLE_DATA
    NOT_EXTENDED = "not-extended"  # EV_NO_ACTION: never extended, no digest to check
    OUTSIDE = "outside"  # bytes that are not in the log: cannot be bound


@dataclass(frozen=True)
class BindingRule:
    event_type: int
    covers: Covers
    source: str  # where the rule comes from

    @property
    def type_name(self) -> str:
        return event_type_name(self.event_type)


_PFP = "TCG PC Client PFP"
BINDING_RULES: dict[int, BindingRule] = {r.event_type: r for r in (
    BindingRule(0x00000003, Covers.NOT_EXTENDED, f"{_PFP}: EV_NO_ACTION is not extended"),
    BindingRule(0x00000004, Covers.DATA, f"{_PFP}: digest of the 4-byte value (0 or 0xFFFFFFFF; 1 on error)"),
    BindingRule(0x00000005, Covers.DATA, f"{_PFP}: digest of the action string"),
    BindingRule(0x00000008, Covers.DATA, f"{_PFP}: digest of the S-CRTM version string or GUID"),
    BindingRule(0x80000001, Covers.VARIABLE, f"{_PFP}: digest of UEFI_VARIABLE_DATA"),
    BindingRule(0x80000002, Covers.VARIABLE_BOOT, f"{_PFP}: digest of VariableData (EDK2); some firmware "
                                                  "hashes the whole UEFI_VARIABLE_DATA"),
    BindingRule(0x8000000C, Covers.VARIABLE_BOOT, f"{_PFP}: as EV_EFI_VARIABLE_BOOT"),
    BindingRule(0x800000E0, Covers.VARIABLE, f"{_PFP}: digest of UEFI_VARIABLE_DATA (shim 15: + 5 padding bytes)"),
    BindingRule(0x80000006, Covers.DATA, f"{_PFP}: digest of UEFI_GPT_DATA (header and partition entries)"),
    BindingRule(0x80000007, Covers.DATA, f"{_PFP}: digest of the action string"),
    # Not bindable: the digest is over something the log does not carry.
    BindingRule(0x00000001, Covers.OUTSIDE, "digest of the POST code / firmware region, not of its address"),
    BindingRule(0x00000006, Covers.OUTSIDE, "EV_EVENT_TAG: digest of the tagged payload, defined by its tagger"),
    BindingRule(0x0000000D, Covers.OUTSIDE, "EV_IPL: GRUB and systemd-boot hash the file or string they load"),
    BindingRule(0x80000003, Covers.OUTSIDE, "Authenticode digest of the PE image"),
    BindingRule(0x80000004, Covers.OUTSIDE, "Authenticode digest of the PE image"),
    BindingRule(0x80000005, Covers.OUTSIDE, "Authenticode digest of the PE image"),
    BindingRule(0x80000008, Covers.OUTSIDE, "digest of the firmware volume"),
    BindingRule(0x8000000A, Covers.OUTSIDE, "digest of the firmware volume"),
    BindingRule(0x80000009, Covers.OUTSIDE, "digest of the handoff tables"),
    BindingRule(0x8000000B, Covers.OUTSIDE, "digest of the handoff tables"),
)}
_UNKNOWN_RULE_SOURCE = "no rule for this event type: its digest is not checked against its data"
# EV_SEPARATOR values: 0 ends the pre-OS phase under UEFI (PFP); 0xFFFFFFFF is the conventional-BIOS separator
# (SeaBIOS, which QEMU boots by default, writes it on every boot); EDK2 logs 1 when a measurement failed.
SEPARATOR_OK = (b"\0\0\0\0", b"\xff\xff\xff\xff")
SEPARATOR_ERRORS = (b"\x01\0\0\0",)
# shim 15 logged sizeof(its UEFI_VARIABLE_DATA struct) with 5 bytes of padding hashed and 6 logged.
_SHIM15_PAD = 5


class Bound(StrEnum):
    BOUND = "bound"  # every digest the event carries is the digest of its data
    BOUND_VALUE = "bound-value"  # VariableData bound; the variable's name and GUID are not covered by the digest
    MISMATCH = "mismatch"  # a digest is not the digest of the data: the data was made up or altered
    ERROR_SEPARATOR = "error-separator"  # bound, and the firmware says a measurement failed
    UNVERIFIED = "unverified"  # the digest covers bytes outside the log
    NOT_EXTENDED = "not-extended"  # EV_NO_ACTION


@dataclass(frozen=True)
class Binding:
    event: Event
    status: Bound
    rule: BindingRule | None
    detail: str = ""

    @property
    def label(self) -> str:
        """`event N (PCR p, TYPE)`: how the verifier names an event."""
        return f"event {self.event.number} (PCR {self.event.pcr}, {self.event.type_name})"


def _variable_parts(data: bytes) -> tuple[int, int] | None:
    """(end of UEFI_VARIABLE_DATA, start of VariableData), or None when the lengths do not fit the data."""
    if len(data) < 32:
        return None
    name_len, data_len = struct.unpack("<QQ", data[16:32])
    start = 32 + 2 * name_len
    if name_len > len(data) or data_len > len(data) or start + data_len > len(data):
        return None
    return start + data_len, start


def _candidates(rule: BindingRule, data: bytes) -> list[tuple[bytes, Bound]] | str:
    """The byte strings the digest may be over, each with what a match proves; a string says why none."""
    if rule.covers is Covers.DATA:
        if rule.event_type == EV_SEPARATOR and len(data) != 4:
            return f"separator data is {len(data)} bytes, not 4"
        return [(data, Bound.BOUND)]
    parts = _variable_parts(data)
    if parts is None:
        return "event data is not a UEFI_VARIABLE_DATA (lengths do not fit)"
    end, value_at = parts
    whole = [(data[:end], Bound.BOUND)]
    if len(data) == end + _SHIM15_PAD + 1 and rule.event_type == EV_EFI_VARIABLE_AUTHORITY:
        whole.append((data[:end + _SHIM15_PAD], Bound.BOUND))
    elif end != len(data):
        return f"{len(data) - end} bytes after the UEFI_VARIABLE_DATA"
    if rule.covers is Covers.VARIABLE_BOOT:
        return whole + [(data[value_at:end], Bound.BOUND_VALUE)]
    return whole


EFI_GLOBAL_VARIABLE = bytes.fromhex("61dfe48bca93d211aa0d00e098032b8c")  # 8be4df61-93ca-11d2-aa0d-00e098032b8c


def bind(ev: Event) -> Binding:
    """Check that the event's data is what its digests were computed over, in every bank it carries."""
    rule = BINDING_RULES.get(ev.event_type)
    if rule is None:
        return Binding(ev, Bound.UNVERIFIED, None, _UNKNOWN_RULE_SOURCE)
    if rule.covers is Covers.NOT_EXTENDED:
        return Binding(ev, Bound.NOT_EXTENDED, rule)
    if rule.covers is Covers.OUTSIDE:
        return Binding(ev, Bound.UNVERIFIED, rule, rule.source)
    candidates = _candidates(rule, ev.data)
    if isinstance(candidates, str):
        return Binding(ev, Bound.MISMATCH, rule, candidates)
    checked = [(alg_id, digest) for alg_id, digest in ev.digests if _hashable(alg_name(alg_id))]
    if not checked:
        return Binding(ev, Bound.UNVERIFIED, rule, "no digest in an algorithm this verifier can compute")
    status: Bound | None = None
    for alg_id, digest in checked:
        hash_alg = algorithms.by_id(alg_id)
        found = next((what for covered, what in candidates if hash_alg.digest(covered) == digest), None)
        if found is None:
            return Binding(ev, Bound.MISMATCH, rule,
                           f"{hash_alg.name} digest {digest.hex()[:16]}... is not the digest of the event data "
                           f"({rule.source})")
        if status is not None and found is not status:
            return Binding(ev, Bound.MISMATCH, rule, "the banks' digests cover different bytes")
        status = found
    assert status is not None
    if rule.event_type == EV_SEPARATOR and ev.data in SEPARATOR_ERRORS:
        return Binding(ev, Bound.ERROR_SEPARATOR, rule,
                       f"separator 0x{ev.data[::-1].hex()}: the firmware reports a measurement error")
    if rule.event_type == EV_SEPARATOR and ev.data not in SEPARATOR_OK:
        return Binding(ev, Bound.MISMATCH, rule,
                       f"separator value {ev.data.hex()} is neither 0, 0xFFFFFFFF nor the error value 1")
    detail = "VariableData bound; the name and GUID are not covered by the digest" \
        if status is Bound.BOUND_VALUE else ""
    return Binding(ev, status, rule, detail)


def bind_all(log: EventLog) -> tuple[Binding, ...]:
    """`bind` for every event after the header."""
    return tuple(bind(ev) for ev in log.events[1:])


# ---- human-readable event data (for `obelisk attest eventlog`) ------------------------------------
# Best effort and bounded: malformed event data is shown as its size, never an error, because only
# the digests count for replay.

_TEXT_EVENTS = {0x1, 0x5, 0x6, 0xD, 0x80000007}  # POST code, action, tag, IPL, EFI action
_VARIABLE_EVENTS = {0x80000001, 0x80000002, 0x8000000C, 0x800000E0}
_IMAGE_EVENTS = {0x80000003, 0x80000004, 0x80000005}


def _guid(b: bytes) -> str:
    d1, d2, d3 = struct.unpack("<IHH", b[:8])
    return f"{d1:08x}-{d2:04x}-{d3:04x}-{b[8:10].hex()}-{b[10:16].hex()}"


def _printable(data: bytes, limit: int = 96) -> str | None:
    text = data.rstrip(b"\0")
    if text and all(32 <= c < 127 or c in (9, 10, 13) for c in text):
        s = text.decode("ascii").replace("\n", " ")
        return s if len(s) <= limit else s[:limit] + "..."
    return None


def _device_path_files(dp: bytes) -> list[str]:
    out: list[str] = []
    pos = 0
    while pos + 4 <= len(dp) and len(out) < 8:
        typ, sub, length = dp[pos], dp[pos + 1], struct.unpack("<H", dp[pos + 2:pos + 4])[0]
        if length < 4 or pos + length > len(dp):
            break
        if typ == 4 and sub == 4:
            out.append(dp[pos + 4:pos + length].decode("utf-16-le", "replace").rstrip("\0"))
        if typ == 0x7F and sub == 0xFF:
            break
        pos += length
    return out


def describe(ev: Event) -> str:
    data = ev.data
    try:
        if ev.event_type == EV_NO_ACTION:
            if data.startswith(SPEC_ID_SIGNATURE):
                return "Spec ID Event03"
            if data.startswith(STARTUP_LOCALITY_SIGNATURE) and len(data) > 16:
                return f"StartupLocality {data[16]}"
            return _printable(data[:16]) or f"{len(data)} bytes"
        if ev.event_type in (0x1, 0x80000008) and len(data) == 16:  # UEFI_PLATFORM_FIRMWARE_BLOB
            base, length = struct.unpack("<QQ", data)
            return f"firmware blob at 0x{base:x}, 0x{length:x} bytes"
        if ev.event_type in _TEXT_EVENTS:
            return _printable(data) or f"{len(data)} bytes"
        if ev.event_type == 0x8:  # S-CRTM version: UTF-16 or a GUID
            if len(data) >= 2 and len(data) % 2 == 0:
                text = data.decode("utf-16-le", "replace").rstrip("\0")
                if text and text.isprintable() and "\ufffd" not in text:
                    return text
            return data.hex() if len(data) <= 32 else f"{len(data)} bytes"
        if ev.event_type == 0x4:
            return f"separator {data.hex()}" if len(data) <= 8 else f"separator, {len(data)} bytes"
        if ev.event_type in _VARIABLE_EVENTS and len(data) >= 32:
            name_len, data_len = struct.unpack("<QQ", data[16:32])
            if name_len <= 1024 and 32 + 2 * name_len <= len(data):
                name = data[32:32 + 2 * name_len].decode("utf-16-le", "replace")
                return f"{name} ({_guid(data[:16])}, {data_len} bytes)"
        if ev.event_type in _IMAGE_EVENTS and len(data) >= 32:
            _, length, _, dp_len = struct.unpack("<QQQQ", data[:32])
            files = _device_path_files(data[32:32 + min(dp_len, len(data) - 32)])
            return f"image {length} bytes" + (f" {' '.join(files)}" if files else "")
    except (struct.error, UnicodeDecodeError, ValueError):
        pass
    return f"{len(data)} bytes"
