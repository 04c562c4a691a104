"""Measured boot against the build's predictions: the node's UEFI event log, its quote, and what differs.

For each PCR the build predicts (4: the UKI as the firmware started it, 7: the Secure Boot state and the
key that admitted the UKI, 11: the UKI's sections as systemd-stub measured them):

1. the log's events on that PCR are replayed (sha256 bank) and compared with the quoted value: a log that
   does not replay to the quote is not the log of this boot, so nothing it says about that PCR is used;
2. the quoted value is compared with the prediction: equal passes;
3. otherwise the log's events are aligned with the expected ones (by position and digest) and every
   difference is named in an operator's words, from the expected event's `name` and the logged data.

The engine is the alignment; what an event means is one `Describer` per event type in `DESCRIBERS`, and
the checks per PCR are `PCR_CHECKS`. Event data is the node's word (only digests are bound by the quote),
so it is decoded within fixed bounds, never trusted to be well formed, and only used to describe.
"""

from __future__ import annotations

import difflib
import struct
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum

from obelisk.core.errors import ParseError
from obelisk.core.findings import Evidence, Finding, Reference, Severity, Status
from obelisk.tpm import eventlog
from obelisk.tpm.eventlog import Event, EventLog
from obelisk.tpm.prediction import BANK, ExpectedEvent, PcrPrediction

BENCHMARK = "attestation"
SECTION = "boot"
# A real PCR 4, 7 or 11 carries a few dozen events at most; beyond this the log is not aligned (the
# alignment is quadratic) and the PCR fails as unexplained.
MAX_EVENTS_PER_PCR = 512
MAX_LISTED = 16  # differences named in a finding's detail; all (up to MAX_EVIDENCE) are evidence records
MAX_EVIDENCE = 64
MAX_TEXT = 96  # characters of logged text (a section name, an action) quoted in a finding
MAX_CERTIFICATES = 4  # certificates of a signature list named in a finding
_SHORT = 12  # hex digits of a digest an operator compares by eye


@dataclass(frozen=True)
class PcrCheck:
    """One check: its stable finding id, its title, and the controls it evidences."""

    pcr: int
    title: str
    remediation: str
    references: tuple[Reference, ...] = (Reference("nist-800-53", "SI-7(9)"),)

    @property
    def id(self) -> str:
        return check_id(self.pcr)


PCR_CHECKS: dict[int, PcrCheck] = {c.pcr: c for c in (
    PcrCheck(4, "The firmware started the build's UKI (PCR 4)",
             "Boot the image's signed UKI (\\EFI\\BOOT\\BOOTX64.EFI on its ESP); find what replaced it."),
    PcrCheck(7, "Secure Boot is on with the customer's keys (PCR 7)",
             "Enable Secure Boot and enroll the customer's PK, KEK and db (obelisk keys generate); "
             "find who changed the firmware's variables.",
             (Reference("nist-800-53", "SI-7(9)"), Reference("nist-800-53", "SI-7(15)"))),
    PcrCheck(11, "systemd-stub measured the build's UKI sections (PCR 11)",
             "Boot the UKI the build signed; a changed kernel, initrd or command line is not the image's."),
)}


def check_id(pcr: int) -> str:
    """The finding id of the check of `pcr`: stable, so that reports and waivers can address it."""
    return f"attest.boot.pcr{pcr}"


def _check(pcr: int) -> PcrCheck:
    return PCR_CHECKS.get(pcr) or PcrCheck(pcr, f"PCR {pcr} equals the build's prediction (UEFI event log)",
                                           "Boot the image the build produced.")


# ---- what differs ----------------------------------------------------------------------------------------

class Change(StrEnum):
    DIFFERS = "differs"  # a logged event where the build expects another one
    EXTRA = "extra"  # a logged event the build does not expect
    MISSING = "missing"  # an expected event the log does not have


@dataclass(frozen=True)
class Difference:
    pcr: int
    change: Change
    expected: ExpectedEvent | None
    logged: Event | None
    text: str  # the operator's words, "PCR 7: Secure Boot is disabled (SecureBoot variable = 0)"


def _short(digest: bytes | None) -> str:
    return digest.hex()[:_SHORT] + "…" if digest else "no sha256 digest"


def _sha256(ev: Event) -> bytes | None:
    return ev.digest(BANK)


def _text(data: bytes) -> str | None:
    """Printable text from event data that is UTF-16LE (systemd-stub, EDK2) or ASCII (others), NUL-ended."""
    data = data[:4 * MAX_TEXT]
    candidates = []
    if len(data) >= 2 and len(data) % 2 == 0 and data[1::2].count(0) == len(data) // 2:
        candidates.append(data.decode("utf-16-le", "replace"))
    candidates.append(data.decode("latin-1"))
    for text in candidates:
        text = text.rstrip("\0")
        if text and text.isascii() and text.isprintable():
            return text if len(text) <= MAX_TEXT else text[:MAX_TEXT] + "…"
    return None


# ---- event data, read through the formats' own parsers (tpm/uefi.py, signer/efi_signature_list.py) ------
# Here a malformed structure only makes the words vaguer: the digests decide.

@dataclass(frozen=True)
class _Variable:
    guid_text: str
    name: str
    value: bytes


_OWNER = 16  # an EFI_SIGNATURE_DATA (an authority event's value) starts with its owner's GUID
_SHIM15_PADDING = 6  # shim 15 logs 6 bytes after its EV_EFI_VARIABLE_AUTHORITY structure (eventlog._SHIM15_PAD)


def _variable(data: bytes) -> _Variable | None:
    """UEFI_VARIABLE_DATA (also with shim 15's trailing padding), or None when it does not parse."""
    from obelisk.tpm.uefi import parse_variable_data

    for candidate in (data, data[:-_SHIM15_PADDING] if len(data) > _SHIM15_PADDING else None):
        if candidate is None:
            continue
        try:
            var = parse_variable_data(candidate)
        except ParseError:
            continue
        return _Variable(str(var.vendor), var.name, var.data)
    return None


def _certificate_name(der: bytes) -> str:
    """The certificate's subject CN (else the whole subject), or its size when it does not parse."""
    from cryptography import x509

    try:
        with warnings.catch_warnings():  # cryptography warns on RFC 5280 violations: the node's bytes, not our bug
            warnings.simplefilter("ignore")
            subject = x509.load_der_x509_certificate(der).subject
            cns = subject.get_attributes_for_oid(x509.oid.NameOID.COMMON_NAME)
            name = str(cns[0].value) if cns else subject.rfc4514_string()
    except (ValueError, TypeError, x509.InvalidVersion):
        return f"an unreadable certificate of {len(der)} bytes"
    return repr(name[:MAX_TEXT])


def _signature_lists(data: bytes) -> str:
    """What a db/KEK/PK/dbx value holds, in words."""
    from obelisk.signer import efi_signature_list as esl

    try:
        lists = esl.parse_database(data)
    except ParseError:
        return f"{len(data)} bytes that are not EFI signature lists"
    x509 = [e.data for sl in lists if sl.signature_type == esl.EFI_CERT_X509_GUID for e in sl.entries]
    hashes = sum(len(sl.entries) for sl in lists if sl.signature_type == esl.EFI_CERT_SHA256_GUID)
    other = sum(len(sl.entries) for sl in lists) - len(x509) - hashes
    parts = []
    if x509:
        names = ", ".join(_certificate_name(der) for der in x509[:MAX_CERTIFICATES])
        more = f" and {len(x509) - MAX_CERTIFICATES} more" if len(x509) > MAX_CERTIFICATES else ""
        parts.append(f"{len(x509)} certificate{'s' if len(x509) > 1 else ''}: {names}{more}")
    if hashes:
        parts.append(f"{hashes} sha256 hash{'es' if hashes > 1 else ''}")
    if other:
        parts.append(f"{other} other entr{'ies' if other > 1 else 'y'}")
    return "; ".join(parts) or "nothing (empty)"


# ---- one describer per event type: what a logged event is, and how it differs from the expected one -------

@dataclass(frozen=True)
class Describer:
    event_type: int
    what: Callable[[Event], str]  # the logged event in words (an extra event)
    differs: Callable[[ExpectedEvent, Event], str]  # why this logged event is not the expected one
    source: str  # where the meaning of the data comes from


def _application_what(ev: Event) -> str:
    return f"the application the firmware started (Authenticode sha256 {_short(_sha256(ev))}, " \
           f"{eventlog.describe(ev)})"


def _application_differs(expected: ExpectedEvent, ev: Event) -> str:
    return f"{_application_what(ev)} is not {expected.name}: expected {_short(expected.digest)}"


def _variable_what(ev: Event) -> str:
    var = _variable(ev.data)
    if var is None:
        return f"a variable event whose data is not a UEFI_VARIABLE_DATA ({len(ev.data)} bytes)"
    if var.name == "SecureBoot":
        if var.value in (b"", b"\0"):
            return "Secure Boot is disabled (SecureBoot variable = 0)"
        return f"SecureBoot variable = {var.value[:8].hex()}"
    return f"{var.name} holding {_signature_lists(var.value)}"


def _variable_differs(expected: ExpectedEvent, ev: Event) -> str:
    var = _variable(ev.data)
    wanted = _variable(expected.data)
    if var is None:
        return f"{_variable_what(ev)} where the build expects {expected.name}"
    if wanted is not None and (wanted.name, wanted.guid_text) != (var.name, var.guid_text):
        return f"variable {var.name} ({var.guid_text}) is measured where the build expects {expected.name}"
    if var.name == "SecureBoot":
        return _variable_what(ev) if var.value in (b"", b"\0") else \
            f"{_variable_what(ev)} is not {expected.name}"
    return f"{var.name} is not the build's {expected.name}: it holds {_signature_lists(var.value)} " \
           f"(sha256 {_short(_sha256(ev))}, expected {_short(expected.digest)})"


_CERTIFICATE_AUTHORITIES = ("db", "MokList", "Shim", "vendor_db")  # authority variables holding a certificate


def _admitting_certificate(ev: Event) -> str | None:
    var = _variable(ev.data)
    if var is None or var.name not in _CERTIFICATE_AUTHORITIES or len(var.value) <= _OWNER:
        return None
    return f"the boot application was admitted by the {var.name} certificate {_certificate_name(var.value[_OWNER:])}"


def _authority_what(ev: Event) -> str:
    admitted = _admitting_certificate(ev)
    if admitted is not None:
        return admitted
    var = _variable(ev.data)
    if var is None:
        return f"an authority event whose data is not a UEFI_VARIABLE_DATA ({len(ev.data)} bytes)"
    return f"authority {var.name} ({len(var.value)} bytes, sha256 {_short(_sha256(ev))})"


def _authority_differs(expected: ExpectedEvent, ev: Event) -> str:
    admitted = _admitting_certificate(ev)
    if admitted is None:
        return f"{_authority_what(ev)} where the build expects {expected.name}"
    return f"{admitted}, not by the build's {expected.name} (sha256 {_short(_sha256(ev))}, " \
           f"expected {_short(expected.digest)})"


def _ipl_name(ev: Event) -> str:
    return _text(ev.data) or f"{len(ev.data)} bytes of data"


# What systemd-stub 252 measures as EV_IPL, per PCR (systemd's TPM2_PCR_MEASUREMENTS.md): the event data is its
# description (a section name, the command line, a constant string) in UTF-16.
IPL_LABELS = {11: "UKI section", 12: "kernel command line or credentials", 13: "system extension"}


def _ipl_what(ev: Event) -> str:
    return f"{IPL_LABELS.get(ev.pcr, 'loaded item')} {_ipl_name(ev)} (sha256 {_short(_sha256(ev))})"


def _ipl_differs(expected: ExpectedEvent, ev: Event) -> str:
    logged = _text(ev.data)
    known = _text(expected.data) if expected.data else None
    same = logged is not None and (logged == known or (known is None and logged in expected.name.split()))
    if same:
        return f"{expected.name} differs (sha256 {_short(_sha256(ev))}, expected {_short(expected.digest)})"
    return f"{_ipl_what(ev)} is measured where the build expects {expected.name}"


def _separator_what(ev: Event) -> str:
    return f"separator {ev.data[:8].hex()}" + (" (a measurement error)" if ev.data in
                                                eventlog.SEPARATOR_ERRORS else "")


def _action_what(ev: Event) -> str:
    return f"action {_text(ev.data) or eventlog.describe(ev)!r}"


def _generic_what(ev: Event) -> str:
    return f"{ev.type_name} event ({eventlog.describe(ev)}, sha256 {_short(_sha256(ev))})"


def _generic_differs_with(what: Callable[[Event], str]) -> Callable[[ExpectedEvent, Event], str]:
    def differs(expected: ExpectedEvent, ev: Event) -> str:
        return f"{what(ev)} where the build expects {expected.name}"
    return differs


_PFP = "TCG PC Client PFP"
DESCRIBERS: dict[int, Describer] = {d.event_type: d for d in (
    Describer(0x80000003, _application_what, _application_differs,
              f"{_PFP}: UEFI_IMAGE_LOAD_EVENT; the digest is the image's Authenticode hash"),
    Describer(0x80000004, _application_what, _application_differs, f"{_PFP}: as EV_EFI_BOOT_SERVICES_APPLICATION"),
    Describer(0x80000005, _application_what, _application_differs, f"{_PFP}: as EV_EFI_BOOT_SERVICES_APPLICATION"),
    Describer(0x80000001, _variable_what, _variable_differs,
              f"{_PFP}: UEFI_VARIABLE_DATA (SecureBoot, PK, KEK, db, dbx); values are EFI_SIGNATURE_LISTs"),
    Describer(0x800000E0, _authority_what, _authority_differs,
              f"{_PFP}: UEFI_VARIABLE_DATA whose value is the EFI_SIGNATURE_DATA that verified the image"),
    Describer(0x0000000D, _ipl_what, _ipl_differs,
              "systemd-stub 252: the section name as event data (UTF-16LE), digest of the name, then of the data"),
    Describer(0x00000004, _separator_what, _generic_differs_with(_separator_what), f"{_PFP}: EV_SEPARATOR"),
    Describer(0x80000007, _action_what, _generic_differs_with(_action_what), f"{_PFP}: the action string"),
    Describer(0x00000005, _action_what, _generic_differs_with(_action_what), f"{_PFP}: the action string"),
)}
_GENERIC = Describer(-1, _generic_what, _generic_differs_with(_generic_what), "event type not described")


def _describer(ev: Event) -> Describer:
    return DESCRIBERS.get(ev.event_type, _GENERIC)


def _differs(pcr: int, expected: ExpectedEvent, ev: Event) -> Difference:
    describer = _describer(ev)
    try:
        text = describer.differs(expected, ev) if ev.event_type == expected.event_type else \
            f"{describer.what(ev)} where the build expects {expected.name}"
    except (ValueError, TypeError, struct.error, UnicodeError):  # a decoder's bound missed: say less, never fail
        text = f"{_generic_what(ev)} where the build expects {expected.name}"
    return Difference(pcr, Change.DIFFERS, expected, ev, f"PCR {pcr}: {text}")


def _extra(pcr: int, ev: Event) -> Difference:
    try:
        what = _describer(ev).what(ev)
    except (ValueError, TypeError, struct.error, UnicodeError):
        what = _generic_what(ev)
    return Difference(pcr, Change.EXTRA, None, ev, f"PCR {pcr}: an extra event: {what}")


def _missing(pcr: int, expected: ExpectedEvent) -> Difference:
    return Difference(pcr, Change.MISSING, expected, None,
                      f"PCR {pcr}: missing event {expected.name} (sha256 {_short(expected.digest)})")


def differences(pcr: int, logged: Sequence[Event], expected: Sequence[ExpectedEvent]) -> list[Difference]:
    """Align the events the log extended into `pcr` with the expected ones and name what differs.

    Events are matched on (type, sha256 digest) keeping their order (difflib's longest matching blocks);
    inside an unmatched stretch the k-th logged event is compared with the k-th expected one, and what is
    left over on either side is extra or missing."""
    logged_keys = [(ev.event_type, _sha256(ev)) for ev in logged]
    expected_keys = [(e.event_type, e.digest) for e in expected]
    out: list[Difference] = []
    matcher = difflib.SequenceMatcher(a=expected_keys, b=logged_keys, autojunk=False)
    for op, e1, e2, l1, l2 in matcher.get_opcodes():
        if op == "equal":
            continue
        paired = min(e2 - e1, l2 - l1)
        out += [_differs(pcr, expected[e1 + k], logged[l1 + k]) for k in range(paired)]
        out += [_missing(pcr, e) for e in expected[e1 + paired:e2]]
        out += [_extra(pcr, ev) for ev in logged[l1 + paired:l2]]
    return out


# ---- the findings ----------------------------------------------------------------------------------------

def _finding(check: PcrCheck, status: Status, *, observed: str | None = None, expected: str | None = None,
             detail: str = "", evidence: tuple[Evidence, ...] = ()) -> Finding:
    return Finding(id=check.id, title=check.title, status=status, severity=Severity.CRITICAL,
                   target=f"PCR {check.pcr}", observed=observed, expected=expected, evidence=evidence,
                   remediation=check.remediation if status is not Status.PASS else "",
                   references=check.references, benchmark=BENCHMARK, section=SECTION, detail=detail)


def _evidence(diffs: Sequence[Difference], source: str) -> tuple[Evidence, ...]:
    return tuple(Evidence(kind="event", source=source,
                          location=f"event {d.logged.number}, offset {d.logged.offset}" if d.logged else "",
                          detail=f"{d.change.value}: {d.text}") for d in diffs[:MAX_EVIDENCE])


def _pcr_finding(prediction: PcrPrediction, log: EventLog, replayed: eventlog.Replay,
                 quoted: Mapping[int, bytes], source: str) -> Finding:
    pcr = prediction.pcr
    check = _check(pcr)
    predicted = prediction.value
    value = quoted.get(pcr)
    if value is None:
        return _finding(check, Status.FAIL, observed="not quoted", expected=predicted.hex(),
                        detail=f"PCR {pcr} is not in the quote")
    logged = [ev for ev in log.events if ev.pcr == pcr and ev.event_type != eventlog.EV_NO_ACTION]  # as replay
    from_log = replayed.value(BANK, pcr)
    if from_log != value:
        matches = "equals" if value == predicted else "differs from"
        return _finding(check, Status.FAIL, observed=value.hex(), expected=predicted.hex(),
                        detail=f"PCR {pcr}: the event log does not replay to the quoted value ({len(logged)} events "
                               f"replay to {_short(from_log)}): it is not the log of this boot, so it cannot say "
                               f"what was measured; the quoted value {matches} the build's prediction")
    if value == predicted:
        return _finding(check, Status.PASS, observed=value.hex(), expected=predicted.hex(),
                        detail=f"{len(logged)} events, as the build predicts")
    if len(logged) > MAX_EVENTS_PER_PCR or len(prediction.events) > MAX_EVENTS_PER_PCR:
        return _finding(check, Status.FAIL, observed=value.hex(), expected=predicted.hex(),
                        detail=f"PCR {pcr} differs from the build's prediction; {len(logged)} logged events, more "
                               f"than the {MAX_EVENTS_PER_PCR} this check aligns")
    diffs = differences(pcr, logged, prediction.events)
    if not diffs:  # same events, other value: the PCR did not start from zero (e.g. a StartupLocality event)
        detail = f"PCR {pcr}: the log's events are the build's but the PCR started from another value"
    else:
        detail = "; ".join(d.text for d in diffs[:MAX_LISTED])
        if len(diffs) > MAX_LISTED:
            detail += f"; {len(diffs) - MAX_LISTED} more differences"
    return _finding(check, Status.FAIL, observed=value.hex(), expected=predicted.hex(), detail=detail,
                    evidence=_evidence(diffs, source))


def uefi_boot_findings(log: EventLog, quoted: Mapping[int, bytes], predictions: Sequence[PcrPrediction],
                       source: str = "event log") -> list[Finding]:
    """One finding per predicted PCR (`check_id(pcr)`): PASS when the quote equals the prediction and the log
    replays to the quote; FAIL naming what differs otherwise. `quoted` holds sha256 PCR values from a quote
    whose signature, nonce and pcrDigest were verified."""
    replayed = eventlog.replay(log)
    has_bank = BANK in log.banks
    out: dict[str, Finding] = {}
    for prediction in predictions:
        check = _check(prediction.pcr)
        if check.id in out:
            # one finding per id: a second prediction for a PCR is a broken manifest, not a node's fault
            out[check.id] = _finding(check, Status.ERROR, detail=f"the build predicts PCR {prediction.pcr} twice")
        elif not has_bank:
            out[check.id] = _finding(check, Status.FAIL, expected=prediction.value.hex(),
                                     detail=f"the event log ({log.format}) has no {BANK} bank to replay PCR "
                                            f"{prediction.pcr} with")
        else:
            out[check.id] = _pcr_finding(prediction, log, replayed, quoted, source)
    return list(out.values())


def unchecked_findings(predictions: Sequence[PcrPrediction], status: Status, detail: str) -> list[Finding]:
    """The same ids when the check cannot run (no trusted quote, no readable log), so reports stay comparable."""
    out: dict[str, Finding] = {}
    for prediction in predictions:
        check = _check(prediction.pcr)
        out[check.id] = _finding(check, status, expected=prediction.value.hex(), detail=detail)
    return list(out.values())
