"""Incremental verification of a node's IMA list: where the last check stopped, and resuming there.

A verifier that checked a node's list up to entry N keeps `ImaProgress`: the boot it belongs
to, the byte offset and entry count reached, each bank's running PCR 10 value there, and the
totals of the findings so far. The next round walks only the entries after it; when the node
rebooted (its boot count or TPM reset count changed), when the options differ, when the list
no longer reaches the saved offset, or when its first `offset` bytes are not the ones checked
(`prefix` keeps their sha256; a state saved without it resumes nothing), the whole list is
checked. A resumed replay that
matches no quoted PCR 10 falls back to a full check too, so the result is always the one a
full check gives: an old entry rewritten after it was checked shows as a running PCR that no
longer matches the quote.

`parse`/`serialize` give the saved form (JSON, one object); errors name the field.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections import Counter
from dataclasses import dataclass
from typing import Any

from obelisk.core.errors import ParseError
from obelisk.core.jsonsafe import load_json
from obelisk.ima_policy import checker
from obelisk.ima_policy.replay import BANK_SIZES
from obelisk.ima_policy.verify import Resume, VerifyOptions, VerifyResult, check_log

SCHEMA = "obelisk.ima-progress/1"
MAX_PROGRESS_BYTES = 4 * 1024 * 1024


@dataclass(frozen=True)
class ImaProgress:
    boot: int  # the node's boot count or TPM reset count when the list was read
    encoding: str
    byte_order: str
    mode: str  # the replay mode asked for (VerifyOptions.mode)
    offset: int  # bytes of the list checked (an entry boundary)
    entries: int
    lines: int  # ascii: newlines before `offset` (entry numbers are line numbers)
    pcr10_entries: int
    banks: tuple[tuple[str, str, bytes], ...]  # (bank, replay mode, running PCR 10 value after `entries`)
    first: tuple[str, str, bytes] | None  # boot_aggregate as (name, algo, digest)
    other_pcrs: tuple[tuple[int, int], ...] = ()
    problem_counts: tuple[tuple[str, int], ...] = ()
    stats: tuple[tuple[str, int], ...] = ()
    problems: tuple[checker.Problem, ...] = ()
    # sha256 of the list's first `offset` bytes: a list whose checked part was rewritten since is checked whole
    prefix: bytes = b""

    def resume(self) -> Resume:
        totals = checker.ChunkResult(0, end=self.offset, count=self.entries, lines=self.lines,
                                     other_pcrs=Counter(dict(self.other_pcrs)),
                                     problems=list(self.problems), problem_counts=Counter(dict(self.problem_counts)),
                                     stats=Counter(dict(self.stats)), first=self.first)
        return Resume(totals, self.pcr10_entries, self.banks)


def from_check(boot: int, mode: str, result: VerifyResult, resume: Resume) -> ImaProgress:
    t = resume.totals
    return ImaProgress(boot, result.encoding, result.byte_order, mode, t.end, t.count, t.lines,
                       resume.pcr10_entries, resume.banks, t.first, tuple(sorted(t.other_pcrs.items())),
                       tuple(sorted(t.problem_counts.items())), tuple(sorted(t.stats.items())), tuple(t.problems))


def verify_since(data: checker.ListData, source: str, options: VerifyOptions, boot: int,
                 progress: ImaProgress | None) -> tuple[VerifyResult, ImaProgress]:
    """Verify the list read on boot `boot`, walking only what follows `progress` when it applies."""
    checked_part = _applies(progress, data, options, boot) if progress is not None else None
    resume = progress.resume() if progress is not None and checked_part is not None else None
    checked = check_log(data, source, options, resume)
    done = from_check(boot, options.mode, checked.result, checked.resume)
    if progress is not None and checked_part is not None and done.offset >= progress.offset:
        # the part already checked was hashed to compare it: hash only what this round added (a 5,000-entry
        # list is ~2 MB, ~1 ms of SHA-256 a round for each pass over it)
        checked_part.update(memoryview(data)[progress.offset:done.offset])
        prefix = checked_part.digest()
    else:
        prefix = hashlib.sha256(memoryview(data)[:done.offset]).digest()
    return checked.result, dataclasses.replace(done, prefix=prefix)


def _applies(p: ImaProgress, data: checker.ListData, options: VerifyOptions, boot: int) -> Any:
    """The running SHA-256 of the list's first `p.offset` bytes when the saved position applies to `data`
    (the same boot, mode, banks and encoding, and that part unchanged), else None."""
    if p.boot != boot or p.mode != options.mode or p.offset > len(data) or not data:
        return None
    encoding = "ascii" if data[:1].isdigit() else "binary"
    if encoding != p.encoding:
        return None
    if encoding == "ascii" and p.offset and data[p.offset - 1:p.offset] != b"\n":
        return None
    if options.banks is not None and tuple(b for b, _, _ in p.banks) != tuple(options.banks):
        return None
    wanted = options.banks or tuple(b for b in ("sha1", "sha256", "sha384", "sha512")
                                    if options.pcrs and b in options.pcrs.banks)
    if wanted and set(wanted) != {b for b, _, _ in p.banks}:
        return None
    checked_part = hashlib.sha256(memoryview(data)[:p.offset])
    if p.prefix != checked_part.digest():  # an entry already checked was changed (or no digest kept)
        return None
    return checked_part


# ----------------------------------------------------------------------------- saved form

def serialize(p: ImaProgress) -> str:
    obj = {
        "schema": SCHEMA, "boot": p.boot, "encoding": p.encoding, "byte_order": p.byte_order, "mode": p.mode,
        "offset": p.offset, "entries": p.entries, "lines": p.lines, "pcr10_entries": p.pcr10_entries,
        "banks": [[b, m, v.hex()] for b, m, v in p.banks],
        "first": [p.first[0], p.first[1], p.first[2].hex()] if p.first else None,
        "other_pcrs": [list(x) for x in p.other_pcrs], "problem_counts": [list(x) for x in p.problem_counts],
        "stats": [list(x) for x in p.stats],
        "problems": [[q.kind, q.number, q.path, q.detail, q.observed, q.expected] for q in p.problems],
        "prefix": p.prefix.hex(),
    }
    return json.dumps(obj, sort_keys=True) + "\n"


def parse(text: str | bytes, source: str = "IMA progress") -> ImaProgress:
    if len(text) > MAX_PROGRESS_BYTES:
        raise ParseError(f"larger than {MAX_PROGRESS_BYTES} bytes", source=source)
    obj = load_json(text, source, max_bytes=MAX_PROGRESS_BYTES)
    if not isinstance(obj, dict) or obj.get("schema") != SCHEMA:
        raise ParseError(f"schema must be {SCHEMA}", source=source)

    def number(name: str) -> int:
        value = obj.get(name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ParseError(f"field {name}: expected a non-negative integer", source=source)
        return value

    def text_of(name: str) -> str:
        value = obj.get(name)
        if not isinstance(value, str):
            raise ParseError(f"field {name}: expected a string", source=source)
        return value

    def items(name: str) -> list[Any]:
        value = obj.get(name)
        if not isinstance(value, list):
            raise ParseError(f"field {name}: expected a list", source=source)
        return value

    try:
        banks = []
        for b, m, v in items("banks"):
            value = bytes.fromhex(v)
            if b not in BANK_SIZES or len(value) != BANK_SIZES[b] or m not in ("per-bank", "sha1-padded"):
                raise ValueError(f"bank {b!r}")
            banks.append((b, m, value))
        first_raw = obj.get("first")
        first = (str(first_raw[0]), str(first_raw[1]), bytes.fromhex(first_raw[2])) if first_raw else None
        problems = tuple(checker.Problem(str(k), int(n), str(pa), str(d), o, e)
                         for k, n, pa, d, o, e in items("problems"))
        return ImaProgress(
            boot=number("boot"), encoding=text_of("encoding"),
            byte_order=text_of("byte_order"), mode=text_of("mode"),
            offset=number("offset"), entries=number("entries"),
            lines=number("lines"), pcr10_entries=number("pcr10_entries"),
            banks=tuple(banks), first=first,
            other_pcrs=tuple((int(a), int(b)) for a, b in items("other_pcrs")),
            problem_counts=tuple((str(a), int(b)) for a, b in items("problem_counts")),
            stats=tuple((str(a), int(b)) for a, b in items("stats")),
            problems=problems, prefix=bytes.fromhex(text_of("prefix")) if "prefix" in obj else b"")
    except (ValueError, TypeError, IndexError) as exc:
        raise ParseError(f"malformed: {exc}", source=source) from None
