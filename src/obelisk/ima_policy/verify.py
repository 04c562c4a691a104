"""`obelisk ima log verify`: a measurement list checked end to end, as findings.

Template hashes recomputed, PCR 10 replayed per bank and compared with quoted values
(also when the list runs ahead of them), boot_aggregate recomputed from PCR 0-9/0-7,
every measured file checked against the reference manifest, every signature against
the trusted certificates.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from obelisk.core.errors import InputError
from obelisk.core.findings import Evidence, Finding, Report, Severity, Status, Subject
from obelisk.ima_policy import boot_aggregate, checker
from obelisk.ima_policy.keyring import Keyring
from obelisk.ima_policy.measurement_list import ASCII, detect_byte_order, detect_encoding
from obelisk.ima_policy.pcrs import PcrValues
from obelisk.ima_policy.reference import ReferenceManifest
from obelisk.ima_policy.replay import BANK_SIZES, BANKS, IMA_PCR, PER_BANK, SHA1_PADDED, check_banks

AUTO = "auto"
BENCHMARK = "ima"

_KIND = {  # problem kind -> (title, severity)
    "template-hash": ("template hash does not match the entry (tampered or corrupt entry)", Severity.HIGH),
    "violation": ("measurement violation", Severity.MEDIUM),
    "unknown-file": ("measured file is not part of the image", Severity.HIGH),
    "digest-mismatch": ("measured file differs from the image", Severity.HIGH),
    "unknown-buffer": ("buffer measurement not in the reference", Severity.MEDIUM),
    "buffer-mismatch": ("buffer measurement differs from the reference", Severity.HIGH),
    "unsigned": ("measured file carries no IMA signature", Severity.HIGH),
    "unknown-key": ("IMA signature by an untrusted key", Severity.HIGH),
    "bad-signature": ("IMA signature does not verify", Severity.CRITICAL),
    "malformed-signature": ("IMA signature is malformed", Severity.HIGH),
    "modsig-not-verified": ("appended module signature not verified by obelisk", Severity.MEDIUM),
}
_MANUAL = frozenset({"modsig-not-verified"})


@dataclass(frozen=True)
class VerifyOptions:
    banks: tuple[str, ...] | None = None  # default: the banks in `pcrs`, else all four
    pcrs: PcrValues | None = None
    boot_pcrs: dict[str, dict[int, bytes]] | None = None  # PCR 0-9 replayed from the event log
    reference: ReferenceManifest | None = None
    keyring: Keyring | None = None
    mode: str = AUTO  # auto | per-bank | sha1-padded
    max_findings: int = 1000
    workers: int | None = None


@dataclass(frozen=True)
class BankReplay:
    bank: str
    value: bytes  # after the whole list
    mode: str
    quoted: bytes | None
    prefix: int | None  # PCR-10 entries covered by the quoted value (None: no prefix matches)


@dataclass(frozen=True)
class VerifyResult:
    report: Report
    entries: int
    encoding: str
    byte_order: str
    replays: tuple[BankReplay, ...]


@dataclass(frozen=True)
class Resume:
    """Where an earlier check of the same list stopped: the totals of its entries (`totals.end` is
    the byte offset reached, an entry boundary), the PCR-10 entries among them, and each bank's
    replay mode and running PCR 10 value there."""

    totals: checker.ChunkResult
    pcr10_entries: int
    banks: tuple[tuple[str, str, bytes], ...]  # (bank, replay mode, running value)


@dataclass(frozen=True)
class Checked:
    """A verification and what a later round needs to resume it (see `ima_policy.progress`)."""

    result: VerifyResult
    resume: Resume


def verify_log(data: checker.ListData, source: str, options: VerifyOptions = VerifyOptions()) -> VerifyResult:
    return check_log(data, source, options).result


def check_log(data: checker.ListData, source: str, options: VerifyOptions = VerifyOptions(),
              resume: Resume | None = None) -> Checked:
    """Verify the list; with `resume`, only the entries after `resume.totals.end` are walked and the
    PCR replay continues from the saved values. If a resumed replay matches no quoted value, the
    whole list is checked again, so the result is always that of a full check."""
    if options.mode not in (AUTO, PER_BANK, SHA1_PADDED):
        raise InputError(f"replay mode {options.mode!r} is not one of auto, per-bank, sha1-padded")
    encoding = detect_encoding(data[:1])
    order = "little" if encoding == ASCII or not data else detect_byte_order(data[:4], source)
    quoted = options.pcrs.banks if options.pcrs else {}
    banks = check_banks(options.banks or tuple(b for b in BANKS if b in quoted) or BANKS)
    job = checker.Job(data, encoding, order, banks, options.reference, options.keyring,
                      options.max_findings, source)
    targets = {b: quoted.get(b, {}).get(IMA_PCR) for b in banks}
    first_mode = SHA1_PADDED if options.mode == SHA1_PADDED else PER_BANK
    if resume is not None:
        saved = {b: (mode, value) for b, mode, value in resume.banks}
        totals = resume.totals.copy()
        folds = [checker.RunningPcr(b, targets[b], saved[b][1], resume.pcr10_entries) for b in banks]
        modes = [saved[b][0] for b in banks]
        n10 = resume.pcr10_entries
    else:
        totals = checker.ChunkResult(0)
        folds = [checker.RunningPcr(b, targets[b]) for b in banks]
        modes = [first_mode for _ in banks]
        n10 = 0
    counted = [n10]

    def fold_chunk(chunk: checker.ChunkResult) -> None:
        sha1 = chunk.bank_digests["sha1"]
        counted[0] += len(sha1) // 20
        for f, mode in zip(folds, modes):
            f.extend(chunk.bank_digests[f.bank] if mode == PER_BANK else _padded(f.bank, sha1))

    chunks = checker.iter_run(job, options.workers, totals.end, totals.count, totals.lines)
    merged = checker.merge(chunks, options.max_findings, fold_chunk, totals)
    n10 = counted[0]
    replays = [BankReplay(f.bank, f.value, mode, f.target, f.last_match) for f, mode in zip(folds, modes)]
    retry = [f.bank for f in folds if f.target is not None and f.last_match is None and options.mode == AUTO]
    if resume is not None and any(f.target is not None and f.last_match is None for f in folds):
        return check_log(data, source, options)  # a full check decides (prefixes, the other replay mode)
    if retry:  # an older kernel: SHA-1 template hash zero-padded into every bank (a second pass)
        again = [checker.RunningPcr(b, targets[b]) for b in retry]

        def fold_padded(chunk: checker.ChunkResult) -> None:
            for f in again:
                f.extend(_padded(f.bank, chunk.bank_digests["sha1"]))

        sha1_job = checker.Job(data, encoding, order, ("sha1",), None, None, 0, source)
        checker.merge(checker.iter_run(sha1_job, options.workers), 0, fold_padded)
        for f in again:
            if f.last_match is not None:
                i = banks.index(f.bank)
                replays[i] = BankReplay(f.bank, f.value, SHA1_PADDED, f.target, f.last_match)
    result = _result(merged, n10, replays, encoding, order, quoted, options, source)
    return Checked(result, Resume(merged.copy(), n10, tuple((r.bank, r.mode, r.value) for r in replays)))


def _result(merged: checker.ChunkResult, n10: int, replays: list[BankReplay], encoding: str, order: str,
            quoted: dict[str, dict[int, bytes]], options: VerifyOptions, source: str) -> VerifyResult:
    chunks = [merged]
    total = merged.count
    findings: list[Finding] = []
    subject_name = source
    findings += _template_findings(chunks, total, source)
    findings += _pcr_findings(replays, n10, source)
    first = merged.first
    findings += _boot_aggregate_findings(first, options.boot_pcrs or quoted, source,
                                         "the event log" if options.boot_pcrs else "--pcrs")
    if options.boot_pcrs and quoted:
        findings += _eventlog_findings(options.boot_pcrs, quoted, source)
    findings += _problem_findings(chunks, options, source)
    findings += _summary_findings(chunks, options, source)
    attributes = [("entries", str(total)), ("encoding", encoding)]
    if encoding != ASCII:
        attributes.append(("byte-order", order))
    other = merged.other_pcrs
    if other:
        attributes.append(("entries-other-pcrs", ", ".join(f"PCR {p}: {n}" for p, n in sorted(other.items()))))
    for r in replays:
        attributes.append((f"pcr{IMA_PCR}.{r.bank}", r.value.hex()))
    report = Report(findings=tuple(findings), subject=Subject("log", subject_name, attributes=tuple(attributes)),
                    command="ima log verify")
    return VerifyResult(report, total, encoding, order, tuple(replays))


def _padded(bank: str, sha1_digests: bytes) -> bytes:
    """Older kernels: the SHA-1 template hash (all ones for a violation) zero-padded to the bank."""
    size = BANK_SIZES[bank]
    if size == 20:
        return sha1_digests
    pad = bytes(size - 20)
    return b"".join(sha1_digests[i:i + 20] + pad for i in range(0, len(sha1_digests), 20))


def _template_findings(chunks: Sequence[checker.ChunkResult], total: int, source: str) -> list[Finding]:
    bad = sum(c.problem_counts["template-hash"] for c in chunks)
    if bad:
        return []  # each is listed as its own finding
    return [Finding("ima.log.template-hashes", "every template hash matches its entry", Status.PASS,
                    Severity.HIGH, target=source, observed=f"{total} entries", benchmark=BENCHMARK,
                    section="log")]


def _pcr_findings(replays: list[BankReplay], total: int, source: str) -> list[Finding]:
    """`total`: the entries extended into PCR 10 (all of them, unless a policy sends some elsewhere)."""
    out = []
    for r in replays:
        fid = f"ima.pcr.{IMA_PCR}.{r.bank}"
        title = f"PCR {IMA_PCR} ({r.bank}) replayed from the list"
        mode = "kernel >= 5.8: template data hashed per bank" if r.mode == PER_BANK else \
            "kernel < 5.8: SHA-1 template hash zero-padded"
        if r.quoted is None:
            out.append(Finding(fid, title, Status.SKIP, Severity.INFO, target=source, observed=r.value.hex(),
                               benchmark=BENCHMARK, section="pcr",
                               detail=f"no quoted {r.bank} PCR {IMA_PCR} given (--pcrs); replay: {mode}"))
        elif r.prefix is None:
            out.append(Finding(fid, title, Status.FAIL, Severity.CRITICAL, target=source, observed=r.value.hex(),
                               expected=r.quoted.hex(), benchmark=BENCHMARK, section="pcr",
                               detail="no prefix of the list replays to the quoted PCR value: the list was altered, "
                                      "reordered or truncated, or belongs to another boot",
                               remediation="re-read the list and the PCRs from the node; investigate the node"))
        else:
            detail = f"matches the quoted value ({mode})"
            if r.prefix != total:
                detail = (f"the first {r.prefix} of {total} entries replay to the quoted value ({mode}); "
                          f"the list was read after the PCRs and runs {total - r.prefix} entries ahead")
            out.append(Finding(fid, title, Status.PASS, Severity.CRITICAL, target=source, observed=r.quoted.hex(),
                               expected=r.quoted.hex(), benchmark=BENCHMARK, section="pcr", detail=detail))
    return out


def _boot_aggregate_findings(first: tuple[str, str, bytes] | None, quoted: dict[str, dict[int, bytes]], source: str,
                             origin: str) -> list[Finding]:
    fid = "ima.boot-aggregate"
    title = "boot_aggregate matches PCRs 0-9 (0-7)"
    if first is None or first[0] != boot_aggregate.NAME:
        return [Finding(fid, "the list starts with boot_aggregate", Status.FAIL, Severity.HIGH, target=source,
                        observed=first[0] if first else "empty list", expected=boot_aggregate.NAME,
                        benchmark=BENCHMARK, section="boot-aggregate",
                        detail="IMA's first entry is always boot_aggregate; the list is truncated or not IMA's",
                        evidence=(Evidence("log-entry", source, location="entry 1"),))]
    _, algo, digest = first
    bank_values = quoted.get(algo)
    if not bank_values:
        return [Finding(fid, title, Status.SKIP, Severity.HIGH, target=source, observed=f"{algo}:{digest.hex()}",
                        benchmark=BENCHMARK, section="boot-aggregate",
                        detail=f"no {algo} PCR 0-9 values given (--pcrs or --eventlog) to recompute it from")]
    result = boot_aggregate.check(algo, digest, bank_values)
    if result is None:
        return [Finding(fid, title, Status.SKIP, Severity.HIGH, target=source, observed=f"{algo}:{digest.hex()}",
                        benchmark=BENCHMARK, section="boot-aggregate",
                        detail=f"the {algo} PCRs given do not include all of PCR 0-7")]
    if result.ok:
        return [Finding(fid, title, Status.PASS, Severity.HIGH, target=source, observed=f"{algo}:{digest.hex()}",
                        expected=f"{algo}:{digest.hex()}", benchmark=BENCHMARK, section="boot-aggregate",
                        detail=f"{algo} over PCR {result.matched_range} from {origin}")]
    computed = ", ".join(f"PCR {k}: {v.hex()}" for k, v in result.computed.items())
    return [Finding(fid, title, Status.FAIL, Severity.CRITICAL, target=source, observed=f"{algo}:{digest.hex()}",
                    expected=computed, benchmark=BENCHMARK, section="boot-aggregate",
                    detail=f"the list's boot_aggregate does not match the boot PCRs from {origin}: the list comes "
                           "from another boot, or the boot chain was measured differently")]


def _eventlog_findings(replayed: dict[str, dict[int, bytes]], quoted: dict[str, dict[int, bytes]],
                       source: str) -> list[Finding]:
    """The event log's replay must give the quoted boot PCRs, or boot_aggregate proves nothing."""
    out = []
    for bank in sorted(set(replayed) & set(quoted)):
        common = sorted(i for i in range(10) if i in quoted[bank] and i in replayed[bank])
        if not common:
            continue
        bad = [i for i in common if quoted[bank][i] != replayed[bank][i]]
        out.append(Finding(f"ima.eventlog.{bank}", f"event log replays to the quoted {bank} PCRs 0-9",
                           Status.FAIL if bad else Status.PASS, Severity.CRITICAL, target=source,
                           observed=", ".join(f"PCR {i}: {replayed[bank][i].hex()}" for i in bad) or None,
                           expected=", ".join(f"PCR {i}: {quoted[bank][i].hex()}" for i in bad) or None,
                           benchmark=BENCHMARK, section="boot-aggregate",
                           detail=(f"PCR {', '.join(map(str, bad))} differ: the event log is not this boot's"
                                   if bad else f"PCR {', '.join(map(str, common))} match")))
    return out


def _problem_findings(chunks: Sequence[checker.ChunkResult], options: VerifyOptions, source: str) -> list[Finding]:
    out = []
    counts: Counter = Counter()
    listed: Counter = Counter()
    for c in chunks:
        counts.update(c.problem_counts)
        for p in c.problems:
            if sum(listed.values()) >= options.max_findings:
                break
            listed[p.kind] += 1
            title, severity = _KIND.get(p.kind, (p.kind, Severity.HIGH))
            status = Status.MANUAL if p.kind in _MANUAL else Status.FAIL
            out.append(Finding(f"ima.entry.{p.number}.{p.kind}", title, status, severity,
                               target=p.path, observed=p.observed, expected=p.expected, detail=p.detail,
                               benchmark=BENCHMARK, section="entries",
                               evidence=(Evidence("log-entry", source, detail=p.path,
                                                  location=f"entry {p.number}"),)))
    for kind, n in sorted(counts.items()):
        if n > listed[kind]:
            title, severity = _KIND.get(kind, (kind, Severity.HIGH))
            out.append(Finding(f"ima.entries.{kind}.more", f"{n - listed[kind]} more entries: {title}",
                               Status.MANUAL if kind in _MANUAL else Status.FAIL, severity, target=source,
                               observed=str(n), benchmark=BENCHMARK,
                               section="entries", detail=f"{n} in all; only the first {listed[kind]} are listed "
                                                         f"(--max-findings {options.max_findings})"))
    return out


def _summary_findings(chunks: Sequence[checker.ChunkResult], options: VerifyOptions, source: str) -> list[Finding]:
    stats: Counter = Counter()
    counts: Counter = Counter()
    for c in chunks:
        stats.update(c.stats)
        counts.update(c.problem_counts)
    out = []
    if options.reference is not None:
        bad = sum(counts[k] for k in ("unknown-file", "digest-mismatch", "unknown-buffer", "buffer-mismatch"))
        detail = (f"{stats['files-matched']} files match, {stats['allowed-to-vary']} allowed to vary, "
                  f"{stats['ignored']} ignored by rules, {bad} failed")
        out.append(Finding("ima.reference", "measured files match the reference manifest",
                           Status.FAIL if bad else Status.PASS, Severity.HIGH, target=source,
                           benchmark=BENCHMARK, section="reference", detail=detail))
    if options.keyring is not None:
        bad = sum(counts[k] for k in ("unsigned", "unknown-key", "bad-signature", "malformed-signature"))
        nosig = stats["no-signature-field"]
        status = Status.FAIL if bad or nosig else Status.PASS
        detail = f"{stats['signatures-valid']} valid signatures, {bad} failed"
        if counts["modsig-not-verified"]:
            detail += f", {counts['modsig-not-verified']} appended (modsig) signatures left to check"
        if nosig:
            detail += f"; {nosig} entries use a template without a signature field (use ima-sig)"
        out.append(Finding("ima.signatures", "IMA signatures recorded in the list verify", status, Severity.HIGH,
                           target=source, benchmark=BENCHMARK, section="signatures", detail=detail))
    return out
