"""Verifier: check an evidence bundle against a nonce, an AK and (optionally) the build's references.

Each check is one `Finding` (benchmark "attestation"). Checks that depend on the quote's
signature are only trusted when it verified: a PCR value is compared with logs and predictions
only after the quote's pcrDigest has been shown to cover it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from obelisk.attest import akrecord
from obelisk.attest.evidence import Evidence
from obelisk.core.errors import ParseError
from obelisk.core.findings import Evidence as Ev
from obelisk.core.findings import Finding, Report, Severity, Status, Subject
from obelisk.tpm import algorithms, eventlog
from obelisk.tpm import quote as q
from obelisk.tpm.pcr import composite_digest
from obelisk.tpm.prediction import PcrPrediction

if TYPE_CHECKING:
    from obelisk.attest.ima_check import References

REQUIRED_BANK = "sha256"
REQUIRED_PCRS = tuple(range(12))
EVENTLOG_PCRS = tuple(range(10))
IMA_PCR = 10
BENCHMARK = "attestation"


@dataclass(frozen=True)
class Counters:
    clock: int
    reset_count: int
    restart_count: int


@dataclass
class Options:
    nonce: bytes
    ak: akrecord.AKRecord
    predicted_pcrs: dict[int, bytes] = field(default_factory=dict)  # sha256 bank, from the build manifest
    # The build's UEFI measured-boot predictions (PCRs 4, 7, 11: manifest boot.predictions): checked against the
    # firmware event log and the quote by attest.boot_check, each PCR's differences named.
    boot_predictions: tuple[PcrPrediction, ...] = ()
    previous: Counters | None = None
    # Called with (ima_log bytes, format, trusted quoted sha256 PCRs, other banks' PCRs 0-9 from an event
    # log that matched the quote) -> findings; the IMA component's code.
    # (list, format, quoted PCRs, boot banks, boot: the quote's resetCount) -> findings
    ima_check: Callable[[bytes, str, dict[int, bytes], dict[str, dict[int, bytes]], int], list[Finding]] | None = None
    reference_findings: list[Finding] = field(default_factory=list)  # the manifest's own checks
    source: str = "evidence"
    quote_only: bool = False  # tpm2_quote output has no logs: check the quote alone


def _f(fid: str, title: str, status: Status, *, severity: Severity = Severity.HIGH, observed: str | None = None,
       expected: str | None = None, detail: str = "", section: str = "quote", evidence: tuple[Ev, ...] = (),
       target: str = "") -> Finding:
    return Finding(id=f"attest.{fid}", title=title, status=status, severity=severity, observed=observed,
                   expected=expected, detail=detail, benchmark=BENCHMARK, section=section, evidence=evidence,
                   target=target)


def verify(ev: Evidence, opts: Options) -> tuple[Report, Counters | None]:
    """All checks; returns the report and the quote's counters (to store when the report passed)."""
    findings: list[Finding] = []
    src = opts.source
    ak = opts.ak

    # --- the AK itself ---
    if ak.attributes is not None:
        missing = ak.missing_attributes()
        findings.append(_f("ak.attributes", "AK is a restricted signing key bound to its TPM",
                           Status.FAIL if missing else Status.PASS, section="ak",
                           observed=f"0x{ak.attributes:08x}", expected="fixedTPM|fixedParent|sensitiveDataOrigin|"
                           "restricted|sign",
                           detail=f"missing: {', '.join(missing)}" if missing else ""))
    else:
        findings.append(_f("ak.attributes", "AK is a restricted signing key bound to its TPM", Status.SKIP,
                           section="ak", detail="the AK was given as a bare public key: attributes unknown"))

    # --- the quote: structure, then signature ---
    attest = q.parse_attest(ev.attest, f"{src}: quote.attest")
    sig = q.parse_signature(ev.signature, f"{src}: quote.signature")
    quote_ev = (Ev(kind="quote", source=src, detail=f"clock={attest.clock_info.clock} "
                   f"resetCount={attest.clock_info.reset_count} restartCount={attest.clock_info.restart_count}"),)
    try:
        q.verify_signature(ak.public_key, sig, ev.attest)
        findings.append(_f("quote.signature", "Quote is signed by the AK with an allowed hash", Status.PASS,
                           severity=Severity.CRITICAL, observed=f"{sig.scheme_name}-{sig.hash_name}"))
        signed = True
    except q.SignatureError as exc:
        findings.append(_f("quote.signature", "Quote is signed by the AK with an allowed hash", Status.FAIL,
                           severity=Severity.CRITICAL, observed=f"{sig.scheme_name}-{sig.hash_name}",
                           detail=str(exc)))
        signed = False

    findings.append(_f("quote.nonce", "Quote covers the verifier's nonce",
                       Status.PASS if attest.extra_data == opts.nonce else Status.FAIL, severity=Severity.CRITICAL,
                       observed=attest.extra_data.hex(), expected=opts.nonce.hex(),
                       detail="" if attest.extra_data == opts.nonce else "replayed or foreign quote"))

    if ak.qualified_name is not None:
        ok = attest.qualified_signer == ak.qualified_name
        findings.append(_f("quote.signer", "Quote names the AK as its qualified signer",
                           Status.PASS if ok else Status.FAIL, severity=Severity.CRITICAL,
                           observed=attest.qualified_signer.hex(), expected=ak.qualified_name.hex()))
    else:
        findings.append(_f("quote.signer", "Quote names the AK as its qualified signer", Status.SKIP,
                           observed=attest.qualified_signer.hex(),
                           detail="the AK's parent is unknown: give an AK record or --ek"))

    # --- which PCRs, and do the reported values hash to the signed digest? ---
    selected = q.selected_in_order(attest)
    required = [(REQUIRED_BANK, p) for p in REQUIRED_PCRS]
    missing_sel = [f"{b}:{p}" for b, p in required if (b, p) not in selected]
    findings.append(_f("quote.pcr-selection", "Quote covers sha256 PCRs 0-11",
                       Status.FAIL if missing_sel else Status.PASS,
                       observed=",".join(f"{b}:{p}" for b, p in selected), expected="sha256:0-11",
                       detail=f"not quoted: {', '.join(missing_sel)}" if missing_sel else ""))
    banks = {b for b, _ in selected}
    digest_ok = False
    if len(banks) > 1 or (banks and ev.bank not in banks):
        detail = f"bundle carries {ev.bank} values, quote selects {', '.join(sorted(banks))}"
        findings.append(_f("quote.pcr-digest", "Reported PCR values match the quoted digest", Status.FAIL,
                           severity=Severity.CRITICAL, detail=detail))
    else:
        absent = [p for _, p in selected if p not in ev.pcrs]
        size = next((a.digest_size for a in q.BANKS if a.name == ev.bank), -1)
        wrong_size = [p for p, v in ev.pcrs.items() if len(v) != size]
        if absent or wrong_size:
            findings.append(_f("quote.pcr-digest", "Reported PCR values match the quoted digest", Status.FAIL,
                               severity=Severity.CRITICAL,
                               detail=(f"values missing for PCRs {absent}" if absent else
                                       f"PCR values of the wrong size: {wrong_size}")))
        else:
            hash_alg = _digest_alg(ak, attest)
            computed = composite_digest([ev.pcrs[p] for _, p in selected], hash_alg)
            digest_ok = computed == attest.pcr_digest
            findings.append(_f("quote.pcr-digest", "Reported PCR values match the quoted digest",
                               Status.PASS if digest_ok else Status.FAIL, severity=Severity.CRITICAL,
                               observed=computed.hex(), expected=attest.pcr_digest.hex(),
                               detail="" if digest_ok else "a reported PCR value differs from what the TPM signed"))
    trusted = signed and digest_ok and attest.extra_data == opts.nonce
    # only the values the pcrDigest covers: a reported PCR outside the selection is unsigned
    pcrs = {p: ev.pcrs[p] for _, p in selected} if trusted else {}

    # --- clock and counters ---
    ci = attest.clock_info
    current = Counters(ci.clock, ci.reset_count, ci.restart_count)
    findings.append(_clock_finding(current, opts.previous, ci.safe, quote_ev))

    log: eventlog.EventLog | None = None
    if not opts.quote_only:
        # --- event log replay vs PCRs 0-9 ---
        log_findings, boot_banks, log = _eventlog_findings(ev, pcrs, trusted, src)
        findings += log_findings
        # --- IMA list replay vs PCR 10, and reference manifest ---
        findings += _ima_findings(ev, pcrs, trusted, opts, boot_banks, current.reset_count)

    # --- predicted PCR values from the build ---
    findings += opts.reference_findings
    explained = {p.pcr for p in opts.boot_predictions}  # checked event by event below
    for idx, predicted in sorted(opts.predicted_pcrs.items()):
        if idx in explained:
            continue
        if not trusted:
            findings.append(_f(f"reference.pcr{idx}", f"PCR {idx} equals the build's prediction", Status.ERROR,
                               section="reference", detail="no trusted quote to compare with"))
            continue
        got = pcrs.get(idx)
        findings.append(_f(f"reference.pcr{idx}", f"PCR {idx} equals the build's prediction",
                           Status.PASS if got == predicted else Status.FAIL, section="reference",
                           observed=got.hex() if got else "not quoted", expected=predicted.hex()))
    if opts.boot_predictions:
        findings += _uefi_boot_findings(ev, log, pcrs, trusted, opts, src)

    subject = Subject(kind="node", name=ev.kernel.get("hostname", "") or src,
                      attributes=tuple(sorted({"ak_name": (ak.name or b"").hex(),
                                               "kernel": ev.kernel.get("release", "")}.items())))
    report = Report(findings=tuple(findings), subject=subject, command="attest verify")
    return report, current if trusted else None


def _uefi_boot_findings(ev: Evidence, log: eventlog.EventLog | None, pcrs: dict[int, bytes], trusted: bool,
                        opts: Options, src: str) -> list[Finding]:
    """The firmware log's PCR 4/7/11 events, and the node's boot phases after them in PCR 11, against
    the build's predictions (attest/boot_check.py)."""
    from obelisk.attest import boot_check

    if opts.quote_only:
        return boot_check.unchecked_findings(opts.boot_predictions, Status.ERROR,
                                             "a bare quote carries no event log to explain the boot with")
    if not trusted:
        return boot_check.unchecked_findings(opts.boot_predictions, Status.ERROR, "no trusted quote to compare with")
    if log is None:
        return boot_check.unchecked_findings(opts.boot_predictions, Status.FAIL,
                                             "the bundle's event log is missing or unreadable (see attest.eventlog)")
    phases, problem = _node_phase_events(ev, log, src)
    findings = [problem] if problem else []
    combined = dataclasses.replace(log, events=log.events + phases)
    return findings + boot_check.uefi_boot_findings(combined, pcrs, opts.boot_predictions, f"{src}: event_log")


def _node_phase_events(ev: Evidence, log: eventlog.EventLog, src: str) -> tuple[tuple[eventlog.Event, ...],
                                                                               Finding | None]:
    """The boot phases the node extended after the firmware's log ended (/run/obelisk/boot-events), as
    events that continue the log: they are the node's word only, and the replay against the quote is
    what makes them count."""
    from obelisk.core.errors import ParseError
    from obelisk.tpm import algorithms, bootevents

    if ev.boot_events is None:
        return (), None
    try:
        logged = bootevents.parse(ev.boot_events, f"{src}: boot_events")
    except ParseError as exc:
        return (), _f("bootevents.parse", "The node's boot phase log is readable", Status.FAIL, section="reference",
                      detail=str(exc))
    sha256 = algorithms.by_name("sha256").alg_id
    first = len(log.events)
    return tuple(eventlog.Event(pcr=e.pcr, event_type=eventlog.EV_IPL, digests=((sha256, e.digest),),
                                data=e.name.encode(), number=first + i) for i, e in enumerate(logged)), None


def _digest_alg(ak: akrecord.AKRecord, attest: q.Attest) -> str:
    """pcrDigest uses the signing key's nameAlg; without the TPM public, assume sha256."""
    if ak.name:
        alg = int.from_bytes(ak.name[:2], "big")
        return algorithms.name_of(alg) if algorithms.is_known(alg, q.BANKS) else "sha256"
    return "sha256"


def _clock_finding(current: Counters, previous: Counters | None, safe: bool, quote_ev: tuple[Ev, ...]) -> Finding:
    title = "TPM clock and reset counters never go backwards"
    observed = f"clock={current.clock} reset={current.reset_count} restart={current.restart_count}"
    if previous is None:
        return _f("quote.clock", title, Status.PASS, severity=Severity.MEDIUM, observed=observed,
                  evidence=quote_ev, detail="first quote seen from this AK" + ("" if safe else "; clock not safe"))
    expected = f"clock>{previous.clock} reset>={previous.reset_count} restart>={previous.restart_count}"
    problems = []
    notes = []
    if current.reset_count < previous.reset_count:
        problems.append("resetCount went backwards")
    elif current.reset_count == previous.reset_count and current.restart_count < previous.restart_count:
        problems.append("restartCount went backwards")
    if current.clock <= previous.clock:
        if current.reset_count > previous.reset_count:
            # A TPM Reset after a power loss (no orderly TPM2_Shutdown): the TPM restarts Clock from the
            # value it last saved in NV (every ~70 minutes), below the last quote's; swtpm under a killed
            # QEMU does so even with `safe` set. resetCount is NV and only grows, so (resetCount, clock)
            # still only goes up: a replayed quote or a rolled-back TPM has the old resetCount or a lower one.
            notes.append("clock restarted from its last saved value at a TPM reset (resetCount "
                         f"{previous.reset_count} -> {current.reset_count}{'' if safe else ', clock not safe'})")
        else:
            problems.append("clock did not advance (replayed quote or TPM rolled back)")
    return _f("quote.clock", title, Status.FAIL if problems else Status.PASS, severity=Severity.HIGH,
              observed=observed, expected=expected, evidence=quote_ev, detail="; ".join(problems or notes))


def _eventlog_findings(ev: Evidence, pcrs: dict[int, bytes], trusted: bool, src: str
                       ) -> tuple[list[Finding], dict[str, dict[int, bytes]], eventlog.EventLog | None]:
    """Findings, the other banks' PCR 0-9 values once the log has been shown to match the quote
    (IMA's SHA-1 boot_aggregate needs the SHA-1 bank, which the sha256 quote does not cover), and the parsed
    log (None when absent or unreadable) for the boot check."""
    title = "Firmware event log replays to the quoted PCRs 0-9"
    if ev.event_log is None:
        return [_f("eventlog", title, Status.FAIL, section="eventlog", detail="the bundle has no event log")], {}, None
    if len(ev.event_log) > eventlog.MAX_LOG_SIZE:  # bounded work and memory on hostile bundles
        return [_f("eventlog", title, Status.FAIL, section="eventlog",
                   detail=f"event log of {len(ev.event_log)} bytes exceeds {eventlog.MAX_LOG_SIZE}")], {}, None
    try:
        analysis = LOG_ANALYSES.analyse(ev.event_log, f"{src}: event_log")
    except ParseError as exc:
        return [_f("eventlog", title, Status.FAIL, section="eventlog", detail=str(exc))], {}, None
    log, result = analysis.log, analysis.replay
    binding = _binding_finding(analysis.bindings, src)
    if REQUIRED_BANK not in log.banks:
        return [_f("eventlog", title, Status.FAIL, section="eventlog",
                   detail=f"the log ({log.format}) has no {REQUIRED_BANK} bank to compare with the quote")], {}, log
    if not trusted:
        return [_f("eventlog", title, Status.ERROR, section="eventlog",
                   detail="no trusted quote to compare with"), binding], {}, log
    out = [binding]
    for idx in EVENTLOG_PCRS:
        replayed = result.value(REQUIRED_BANK, idx)
        quoted = pcrs.get(idx)
        status = Status.PASS if quoted == replayed else Status.FAIL
        out.append(_f(f"eventlog.pcr{idx}", f"Event log replay equals quoted PCR {idx}", status, section="eventlog",
                      observed=replayed.hex(), expected=quoted.hex() if quoted else "not quoted",
                      detail="" if status is Status.PASS else
                      "the firmware log does not explain this PCR: events missing, added or altered"))
    boot_banks: dict[str, dict[int, bytes]] = {}
    if all(f.status is Status.PASS for f in out[1:]):
        boot_banks = {bank: {i: result.value(bank, i) for i in EVENTLOG_PCRS}
                      for bank in result.pcrs if bank != REQUIRED_BANK}
    return out, boot_banks, log


@dataclass(frozen=True)
class LogAnalysis:
    """What a firmware event log says by itself, whatever quote it comes with: its events, each event's
    data against its digests, and its replay. Only the comparison with a quote's PCRs is the round's."""

    log: eventlog.EventLog
    bindings: tuple[eventlog.Binding, ...]
    replay: eventlog.Replay


class LogAnalyses:
    """Event log analyses kept by the log's sha256, the `kept` most recently used.

    A node sends the same firmware log every round of a boot (it only grows at the next boot), and the
    nodes of one hardware model and firmware often send identical ones: a verifier attesting them every
    interval parses, binds and replays each distinct log once. The analysis is a function of the log's
    bytes alone, so a kept one is the analysis a fresh parse gives; the quote is still compared with it
    every round. A log that does not parse is not kept (its error names the node that sent it)."""

    def __init__(self, kept: int):
        self.kept = kept
        self._lock = threading.Lock()
        self._done: OrderedDict[bytes, LogAnalysis] = OrderedDict()

    def analyse(self, data: bytes, source: str) -> LogAnalysis:
        """The analysis of the log `data`; ParseError (naming `source`) when it does not parse."""
        key = hashlib.sha256(data).digest()
        with self._lock:
            found = self._done.get(key)
            if found is not None:
                self._done.move_to_end(key)
                return found
        log = eventlog.parse(data, source=source)
        analysis = LogAnalysis(log, eventlog.bind_all(log), eventlog.replay(log))
        with self._lock:
            self._done[key] = analysis
            while len(self._done) > self.kept:
                self._done.popitem(last=False)
        return analysis


# A fleet of 10,000 nodes with a distinct log each keeps them all. An analysis takes about three times its
# log's size in memory (35-100 KB for the real logs of testdata/eventlog, whose analysis costs 10-36 ms of
# CPU each), so this bound is about 1 GB at most.
LOG_ANALYSES = LogAnalyses(kept=10_000)


MAX_LISTED_EVENTS = 64  # evidence entries per finding; the rest are counted


def _binding_finding(results: tuple[eventlog.Binding, ...], src: str) -> Finding:
    """Each event's data against its digests (`eventlog.bind_all`'s `results`): a mismatch fails and names
    the event; events whose digest covers bytes outside the log are listed as unverified, never shown as facts."""
    title = "Firmware event data matches its digests"
    bad = [b for b in results if b.status in (eventlog.Bound.MISMATCH, eventlog.Bound.ERROR_SEPARATOR)]
    unverified = [b for b in results if b.status in (eventlog.Bound.UNVERIFIED, eventlog.Bound.BOUND_VALUE)]
    counts = {s: sum(1 for b in results if b.status is s) for s in eventlog.Bound}
    observed = ", ".join(f"{n} {s.value}" for s, n in counts.items() if n)
    listed = (bad + unverified)[:MAX_LISTED_EVENTS]
    evidence = tuple(Ev(kind="event", source=f"{src}: event_log", location=f"offset {b.event.offset}",
                        detail=f"{b.status.value}: {b.label} {eventlog.describe(b.event)!r}"
                               + (f": {b.detail}" if b.detail else "")) for b in listed)
    more = len(bad) + len(unverified) - len(listed)
    note = f"; {more} more not listed" if more > 0 else ""
    if bad:
        return _f("eventlog.data", title, Status.FAIL, section="eventlog", observed=observed,
                  expected="every bindable event's digests computed over its data", evidence=evidence,
                  detail="; ".join(f"{b.label}: {b.detail}" for b in bad[:8])
                  + (f"; {len(bad) - 8} more" if len(bad) > 8 else ""))
    detail = (f"{len(unverified)} events unverified (their digests cover bytes outside the log, e.g. a PE "
              f"image; their descriptions are the node's word, not facts){note}") if unverified else ""
    return _f("eventlog.data", title, Status.PASS, section="eventlog", observed=observed, detail=detail,
              evidence=evidence)


def _ima_findings(ev: Evidence, pcrs: dict[int, bytes], trusted: bool, opts: Options,
                  boot_banks: dict[str, dict[int, bytes]], boot: int) -> list[Finding]:
    title = "IMA measurement list replays to the quoted PCR 10"
    if ev.ima_log is None:
        return [_f("ima", title, Status.FAIL, section="ima", detail="the bundle has no IMA measurement list")]
    if opts.ima_check is None:
        return [_f("ima", title, Status.ERROR, section="ima", detail="IMA list verification is not available")]
    if not trusted:
        return [_f("ima", title, Status.ERROR, section="ima", detail="no trusted quote to compare with")]
    return opts.ima_check(ev.ima_log, ev.ima_format, pcrs, boot_banks, boot)


# ---- verifier state: the counters last seen per AK (attest/verifier_state.py keeps the file) ----------------

def parse_state(data: bytes | str, source: str = "verifier state") -> dict[str, Counters]:
    """The counters per AK in a verifier state file, either version (verifier_state.parse)."""
    from obelisk.attest import verifier_state

    return {key: node.counters for key, node in verifier_state.parse(data, source).items()}


def load_state(path: str | None, ak: akrecord.AKRecord) -> Counters | None:
    """The counters last seen for `ak` in the state file at `path` (None: no file, or not seen yet)."""
    from obelisk.attest import verifier_state

    node = verifier_state.load(path, ak)
    return node.counters if node is not None else None


def save_state(path: str, ak: akrecord.AKRecord, counters: Counters) -> None:
    """Record `counters` for `ak` (and no IMA position) in the state file at `path`."""
    from obelisk.attest import verifier_state

    verifier_state.save(path, ak, verifier_state.NodeState(counters))


def configure_references(opts: Options, reference: str | None, cert: str | None) -> None:
    """Attach the IMA checker, the reference manifest's checks and its PCR predictions to `opts`."""
    from obelisk.attest import ima_check

    apply_references(opts, ima_check.load_references(reference, cert))


def apply_references(opts: Options, refs: References) -> None:
    """Use already loaded references (a verifier checking many nodes of one image loads them once)."""
    from obelisk.attest import ima_check

    opts.ima_check = ima_check.make_checker(refs)
    opts.predicted_pcrs = refs.predicted
    opts.boot_predictions = refs.boot_predictions
    opts.reference_findings = list(refs.findings)
