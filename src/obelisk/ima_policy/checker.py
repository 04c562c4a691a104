"""The per-entry work of `ima log verify`, run over byte ranges of a list in parallel.

A list is cut into chunks at entry boundaries; each worker process walks its chunk,
recomputes every template hash, hashes the template data for each PCR bank, and checks
each measured file against the reference manifest and trusted keys. The PCR fold,
which is sequential by nature, happens in the calling process chunk by chunk as the results
arrive in order (`RunningPcr`), while the workers walk the next chunks.

The list may be an mmap of the file: chunks are found lazily, at most IN_FLIGHT per worker
are queued, and the pages of a walked chunk are handed back to the kernel, so the memory
used does not grow with the list's length.

Binary chunks are cut where an entry header (PCR 10 and one of the template names seen at
the start of the list) recurs; a chunk is accepted only if the previous chunk's last entry ends exactly where
it starts, so a false cut (a file name that happens to contain the pattern) is caught
and that part of the list is re-walked from the true boundary.
"""

from __future__ import annotations

import binascii
import collections
import hashlib
import mmap
import multiprocessing
import os
import re
import struct
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from obelisk.core.errors import ParseError
from obelisk.ima_policy import boot_aggregate, templates
from obelisk.ima_policy.keyring import VALID, Keyring
from obelisk.ima_policy.measurement_list import (
    ASCII,
    MAX_TEMPLATE_DATA,
    ZERO_DIGEST,
    ByteOrder,
    iter_binary,
    parse_ascii_line,
    read_entry,
    split_fields,
)
from obelisk.ima_policy.reference import ANY_DIGEST, ReferenceManifest
from obelisk.ima_policy.replay import BANK_SIZES, IMA_PCR

CHUNK_TARGET = 2 * 1024 * 1024  # bytes of list per task (bounds the memory of each worker)
SPLIT_WINDOW = 1024 * 1024  # bytes searched for a chunk boundary past each target
IN_FLIGHT = 2  # chunks queued per worker: bounds the results waiting to be folded

# The list: bytes, or a read-only mmap of the file (pages are dropped once walked, so a
# list of any length is checked in bounded memory).
ListData = bytes | mmap.mmap

_Unpack = Callable[["ListData", int], tuple[Any, ...]]  # a bound struct.Struct.unpack_from
_BankOut = tuple[Callable[[bytes], "hashlib._Hash"], Callable[[bytes], None]]  # (hash constructor, append)


@dataclass(frozen=True)
class Problem:
    kind: str  # template-hash, violation, unknown-file, digest-mismatch, unsigned, unknown-key, ...
    number: int  # entry number (global once rebased)
    path: str
    detail: str
    observed: str | None = None
    expected: str | None = None


@dataclass
class ChunkResult:
    start: int
    end: int = 0
    stop: int = 0  # the end of the range the chunk was asked to walk
    lines: int = 0  # ascii: newlines in [start, end) (the chunk's share of the line numbers)
    count: int = 0  # entries walked
    # per-bank extend digests of the PCR-10 entries (all ones for violations); "sha1" always present
    bank_digests: dict[str, bytes] = field(default_factory=dict)
    other_pcrs: Counter = field(default_factory=Counter)
    problems: list[Problem] = field(default_factory=list)
    problem_counts: Counter = field(default_factory=Counter)
    stats: Counter = field(default_factory=Counter)
    first: tuple[str, str, bytes] | None = None  # (path, algo, digest) of the list's first entry
    error: str | None = None
    error_offset: int | None = None

    def copy(self) -> ChunkResult:
        """A copy whose counters and lists are its own (problems are frozen: shared)."""
        return replace(self, bank_digests=dict(self.bank_digests), other_pcrs=Counter(self.other_pcrs),
                                   problems=list(self.problems), problem_counts=Counter(self.problem_counts),
                                   stats=Counter(self.stats))


@dataclass
class Job:
    data: ListData
    encoding: str
    byte_order: ByteOrder
    banks: tuple[str, ...]
    reference: ReferenceManifest | None
    keyring: Keyring | None
    max_problems: int
    source: str


_JOB: Job | None = None  # set before the worker processes fork, so they share the list's bytes


def _ascii_chunk(data: ListData, start: int, stop: int, first_number: int, source: str) -> tuple[bytes, list[int]]:
    """The ascii lines in [start, stop) as a little-endian binary list, and each entry's line number.

    Plain `ima-ng` lines take a fast path; any other line, or one the fast path cannot read,
    goes through `parse_ascii_line`, which names what is wrong.
    """
    out: list[bytes] = []
    app = out.append
    numbers: list[int] = []
    num_app = numbers.append
    pack = struct.Struct("<I20sI").pack
    u32 = struct.Struct("<I").pack
    unhex = binascii.unhexlify
    ng_name = b"ima-ng"
    names: dict[str, bytes] = {}
    pos = start
    number = first_number
    for line in data[start:stop].split(b"\n"):
        line_pos = pos
        pos += len(line) + 1
        number += 1
        if not line or (line_pos == 0 and line.startswith(b"PCR ")):
            continue
        tokens = line.split(b" ")
        if len(tokens) == 5 and tokens[2] == b"ima-ng" and len(tokens[1]) == 40 and tokens[0] == b"10":
            algo, colon, hexd = tokens[3].partition(b":")
            try:
                digest = unhex(tokens[1])
                fdigest = unhex(hexd)
            except (binascii.Error, ValueError):
                colon = b""
            if colon and algo and b":" not in hexd:
                dng = algo + b":\0" + fdigest
                name = tokens[4]
                app(pack(10, digest, 6) + ng_name + u32(len(dng) + len(name) + 9) + u32(len(dng)) + dng
                    + u32(len(name) + 1) + name + b"\0")
                num_app(number - 1)
                continue
        pcr, digest, tname, tdata = parse_ascii_line(line, number - 1, line_pos, source)
        raw = names.get(tname)
        if raw is None:
            raw = names[tname] = tname.encode("ascii")
        if tname == "ima":  # the binary list shows the legacy template unpadded
            fname = tdata[20:].split(b"\0", 1)[0]
            app(pack(pcr, digest, len(raw)) + raw + tdata[:20] + u32(len(fname)) + fname)
        else:
            app(pack(pcr, digest, len(raw)) + raw + u32(len(tdata)) + tdata)
        num_app(number - 1)
    return b"".join(out), numbers


def check_range(start: int, stop: int, first_number: int = 1, job: Job | None = None) -> ChunkResult:
    """Walk [start, stop) of `job`'s list; a forked pool worker gets its job from `_JOB`, set before the fork."""
    job = job if job is not None else _JOB
    assert job is not None
    res = ChunkResult(start, stop=stop)
    try:
        if job.encoding == ASCII:
            chunk = job.data[start:stop]
            if not _ascii_fast(job, res, chunk, start == 0):
                res = ChunkResult(start, stop=stop)
                buf, numbers = _ascii_chunk(job.data, start, stop, first_number, job.source)
                _walk(job, res, buf, 0, len(buf), "little", numbers, start == 0)
                res.lines = chunk.count(b"\n")
            res.end = stop
        else:
            res.end = _walk(job, res, job.data, start, stop, job.byte_order, None, start == 0, first_number)
    except ParseError as exc:
        res.error = str(exc)
        res.error_offset = exc.offset
    _drop_pages(job.data, start, max(res.end, stop))
    return res


_FOLIO = 2 * 1024 * 1024  # a fault may map a whole large folio around the byte touched


def _drop_pages(data: ListData, start: int, end: int) -> None:
    """Let the kernel take back the walked pages of a mapped list (they are not read again), and
    whatever a fault mapped around them."""
    if isinstance(data, mmap.mmap) and hasattr(mmap, "MADV_DONTNEED"):
        start = max(0, start - _FOLIO)
        first = start - start % mmap.PAGESIZE
        end = min(end + _FOLIO, len(data))
        if end > first:
            data.madvise(mmap.MADV_DONTNEED, first, end - first)


def _walk(job: Job, res: ChunkResult, data: ListData, start: int, stop: int, order: ByteOrder,
          numbers: list[int] | None, at_list_start: bool, first_number: int = 1) -> int:
    """Check the binary entries from `start` until one begins at or after `stop`; return the end offset.

    Entries are read by `measurement_list.read_entry`, the one reader of the binary layout, and
    checked by the careful path (`_EntryContext`), which names every problem. After an entry of
    a plain template (`_FAST`), the entries that follow go through `_run` while they look exactly
    like it and are intact (a loop with as little work per entry as possible); the first one that
    does not -- another template, a hash mismatch, a violation, a file the manifest does not
    allow, bytes that do not parse -- comes back here.
    """
    source = job.source
    u32 = struct.Struct("<I" if order == "little" else ">I").unpack_from
    banks = job.banks
    other_names = [b for b in banks if b != "sha1"]
    other_outs: list[list[bytes]] = [[] for _ in other_names]
    other_banks = [(getattr(hashlib, b), o.append) for b, o in zip(other_names, other_outs)]
    sha1_out: list[bytes] = []  # always kept: the SHA-1 bank, and the base of the sha1-padded replay
    sha1_app = sha1_out.append
    sha1 = hashlib.sha1
    ref = job.reference
    match = ref.digest_matcher() if ref is not None else None
    check_sigs = job.keyring is not None
    stats = res.stats
    ctx = _EntryContext(job, res, order)
    names: dict[bytes, templates.Template] = {}
    run: _RunShape | None = None
    index = 0
    off = start
    while off < stop:
        if run is not None:
            off, count, matched = _run(data, off, stop, run, sha1_app, other_banks, match)
            index += count
            stats["files-matched"] += matched
            if check_sigs:
                stats["no-signature-field"] += count
            if off >= stop:
                break
        # the careful path: one entry
        number = numbers[index] if numbers is not None else first_number + index
        pcr, listed, tpl, tdata, next_off = read_entry(data, off, u32, number, source, names)
        computed = sha1(tdata).digest()
        violation = computed != listed and listed == ZERO_DIGEST
        if violation:
            stats["violations"] += 1
        if pcr == IMA_PCR:
            if violation:
                sha1_app(b"\xff" * 20)
                for (_, app), b in zip(other_banks, other_names):
                    app(b"\xff" * BANK_SIZES[b])
            else:
                sha1_app(computed)
                for ctor, app in other_banks:
                    app(ctor(tdata).digest())
        else:
            res.other_pcrs[pcr] += 1
        ctx.entry(number, off, tpl, tdata, computed, listed, violation, index == 0 and at_list_start)
        run = _run_shape(order, tpl, tdata, check_sigs)
        index += 1
        off = next_off
    res.count += index
    res.bank_digests["sha1"] = b"".join(sha1_out)
    for b, out in zip(other_names, other_outs):
        res.bank_digests[b] = b"".join(out)
    return off


# Templates `_run` decodes inline: number of fields
_FAST = {("d-ng", "n-ng"): 2, ("d-ngv2", "n-ng"): 2, ("d-ng", "n-ng", "sig"): 3, ("d-ngv2", "n-ng", "sig"): 3}


@dataclass(frozen=True, slots=True)
class _RunShape:
    """What every entry of a run shares with the entry before it: PCR 10, the template name and
    the length of the digest field. One struct call reads an entry's header and its first fields."""

    unpack: _Unpack  # -> pcr (raw), template hash, name length + name (raw), data length, l1, d-ng, l2
    u32: _Unpack
    pcr: bytes
    name: bytes  # u32 length + template name, as listed
    header: int  # bytes before the template data
    l1: int  # length of the digest field
    three: bool  # a signature field follows the name


_SHAPES: dict[tuple[str, str, int], _RunShape | None] = {}


def _run_shape(order: ByteOrder, tpl: templates.Template, tdata: bytes, check_sigs: bool) -> _RunShape | None:
    """The run shape of the entries that may follow this one through `_run`, or None (not a plain template,
    or ima-sig with signatures to verify: those take the careful path)."""
    nfields = _FAST.get(tpl.fields, 0)
    if not nfields or (nfields == 3 and check_sigs) or len(tdata) < 4:
        return None
    l1 = int.from_bytes(tdata[:4], order)
    if l1 > 1024:
        return None
    key = (order, tpl.name, l1)
    shape = _SHAPES.get(key)
    if shape is None:
        e = "<" if order == "little" else ">"
        raw = tpl.name.encode("ascii")
        shape = _RunShape(struct.Struct(f"{e}4s20s{4 + len(raw)}sII{l1}sI").unpack_from,
                          struct.Struct(f"{e}I").unpack_from, IMA_PCR.to_bytes(4, order),
                          len(raw).to_bytes(4, order) + raw, 32 + len(raw), l1, nfields == 3)
        if len(_SHAPES) < 256:
            _SHAPES[key] = shape
    return shape


def _run(data: ListData, off: int, stop: int, shape: _RunShape, sha1_app: Callable[[bytes], None],
         other_banks: Sequence[_BankOut], match: Callable[[bytes, bytes], bool] | None) -> tuple[int, int, int]:
    """Walk intact PCR-10 entries of the run's shape from `off`; stop before the first entry that
    needs a closer look. Returns (offset reached, entries taken, files matched).

    The loop only cuts the entries and checks their structure (and files); every ~64 KiB the
    template data is hashed for every bank by mapping the hash constructor over it (iterated in
    C), and the SHA-1 hashes compared with the listed ones in one piece. A run is cut before its
    first entry whose hash differs: that entry goes to the careful path, as it would have if
    it had been hashed in the loop."""
    end = len(data)
    unpack = shape.unpack
    u32 = shape.u32
    pcr10 = shape.pcr
    name = shape.name
    header = shape.header
    l1_run = shape.l1
    base = 8 + l1_run  # the name starts this far into the template data
    three = shape.three
    sha1 = hashlib.sha1
    count = 0
    while off < stop:  # in batches, so that the template data of a batch reuses the memory of the one before
        batch_start = off
        limit = min(stop, off + _BATCH_BYTES)
        tdata: list[bytes] = []
        tdata_app = tdata.append
        listed: list[bytes] = []
        listed_app = listed.append
        whole = False  # the batch ended at its limit, not at an entry that needs a closer look
        try:
            while off < limit:
                f_pcr, th, f_name, dlen, l1, dng, l2 = unpack(data, off)
                p = off + header
                q = p + dlen
                if f_pcr != pcr10 or f_name != name or l1 != l1_run or q > end or dlen > MAX_TEMPLATE_DATA:
                    break
                # the field structure must hold exactly (a matching hash proves nothing about it)
                if three:
                    if base + l2 + 4 + u32(data, p + base + l2)[0] != dlen:
                        break
                elif base + l2 != dlen:
                    break
                t = data[p:q]
                if match is not None and (l2 == 0 or t[base + l2 - 1] != 0
                                          or not match(t[base:base + l2 - 1], dng)):
                    break
                tdata_app(t)
                listed_app(th)
                off = q
            else:
                whole = True
        except struct.error:  # too short to hold its fields: the careful path names it
            pass
        computed = b"".join(map(_digest_method(sha1), map(sha1, tdata)))
        if computed != b"".join(listed):
            taken = next(i for i, th in enumerate(listed) if computed[20 * i:20 * i + 20] != th)
            off = batch_start + taken * header + sum(map(len, tdata[:taken]))  # where that entry starts
            del tdata[taken:]
            computed = computed[:20 * taken]
            whole = False
        sha1_app(computed)
        for ctor, app in other_banks:
            app(b"".join(map(_digest_method(ctor), map(ctor, tdata))))
        count += len(tdata)
        if not whole:
            break
    return off, count, count if match is not None else 0


_NUL = b"\0"
_BATCH_LINES = 256  # ascii lines hashed together (their template data stays in the allocator's warm memory)
_BATCH_BYTES = 64 * 1024  # binary run entries hashed together, likewise
_NAME_FIELD_LENGTHS = [(n + 1).to_bytes(4, "little") for n in range(4096)]  # n-ng length of an n-byte name


_DIGEST_METHODS: dict[Callable[..., Any], Callable[[Any], bytes]] = {}


def _digest_method(ctor: Callable[..., Any]) -> Callable[[Any], bytes]:
    """The unbound `digest` of the objects `ctor` returns, to map over many of them in C."""
    method = _DIGEST_METHODS.get(ctor)
    if method is None:
        method = _DIGEST_METHODS[ctor] = type(ctor()).digest
    return method


def _ascii_fast(job: Job, res: ChunkResult, chunk: bytes, at_start: bool) -> bool:
    """Check the ascii lines of `chunk` if every one is a plain, intact PCR-10 ima-ng entry
    with the digest algorithm of the chunk's first line (and, with a manifest, a file it allows).

    One Python step per line: it is cut at fixed positions by one struct call and its
    template data joined; every 256 lines, the hashes of every bank are taken by mapping the
    hash constructor over their template data (iterated in C). The listed template hashes are
    decoded and compared in one piece at the end. False (and `res` left to be discarded) if any
    line needs the careful path, which then walks the whole chunk."""
    lines = chunk.split(b"\n")
    newlines = len(lines) - 1
    if not lines[-1]:
        lines.pop()  # the newline ending the chunk's last line
    if at_start and lines and lines[0].startswith(b"PCR "):
        del lines[0]  # the column header some tools print
    head = _ASCII_HEAD.match(lines[0]) if lines else None
    if head is None:
        return False
    algo, hexlen = head.group(1), len(head.group(2))
    if hexlen % 2 or hexlen > 256:
        return False
    line_head = struct.Struct(f"3s40s{9 + len(algo)}s{hexlen}ss")  # "10 " hash " ima-ng algo:" digest " "
    cut = line_head.unpack_from
    name_at = line_head.size
    pcr10, middle, space = b"10 ", b" ima-ng " + algo + b":", b" "
    dng_head = algo + b":\0"
    prefix = (len(dng_head) + hexlen // 2).to_bytes(4, "little") + dng_head
    lengths = _NAME_FIELD_LENGTHS
    unhex = binascii.unhexlify
    join = b"".join
    skip = 0
    if at_start:
        if lines[0][name_at:] != b"boot_aggregate":
            return False  # the careful path decides what a list not starting with boot_aggregate means
        try:
            res.first = (boot_aggregate.NAME, algo.decode("ascii"), unhex(cut(lines[0])[3]))
        except (struct.error, binascii.Error):
            return False
        skip = 1  # the careful path never checks boot_aggregate against the manifest
    ref = job.reference
    match = ref.digest_matcher() if ref is not None else None
    dng_end = len(prefix) + hexlen // 2
    # (bank, constructor, digests of each batch); SHA-1 always: it checks the template hashes
    banks: list[tuple[str, Callable[[bytes], Any], list[bytes]]] = [
        (b, getattr(hashlib, b), []) for b in ("sha1", *(b for b in job.banks if b != "sha1"))]
    listed: list[bytes] = []
    listed_app = listed.append
    # in batches, so that the template data of a batch reuses the memory of the one before
    for first in range(0, len(lines), _BATCH_LINES):
        batch = lines[first:first + _BATCH_LINES]
        tdata: list[bytes] = []
        tdata_app = tdata.append
        try:
            for line in batch:
                f_pcr, th, f_middle, fh, f_space = cut(line)
                if f_pcr != pcr10 or f_middle != middle or f_space != space:
                    return False
                name = line[name_at:]
                tdata_app(join((prefix, unhex(fh), lengths[len(name)], name, _NUL)))
                listed_app(th)
        except (struct.error, binascii.Error, IndexError):  # a short line, bad hex, a name of 4 KiB or more
            return False
        if match is not None:
            pairs = zip(batch, tdata)
            if first < skip:
                next(pairs)
            for line, t in pairs:
                if not match(line[name_at:], t[4:dng_end]):
                    return False
        for _, ctor, out in banks:
            out.append(join(map(_digest_method(ctor), map(ctor, tdata))))
    try:
        listed_all = unhex(join(listed))
    except binascii.Error:
        return False
    digests = {bank: join(out) for bank, _, out in banks}
    if digests["sha1"] != listed_all:
        return False  # a tampered entry or a violation: the careful path names it
    res.bank_digests.update(digests)
    checked = len(lines) - skip
    if ref is not None:
        res.stats["files-matched"] += checked
    if job.keyring is not None:
        res.stats["no-signature-field"] += checked
    res.count = len(lines)
    res.lines = newlines
    return True


_ASCII_HEAD = re.compile(rb"10 [0-9a-f]{40} ima-ng ([a-z0-9_]{1,32}):([0-9a-f]+) ")


class _EntryContext:
    """The slow path: entries that are not plain ima-ng, or that failed a check."""

    def __init__(self, job: Job, res: ChunkResult, order: ByteOrder):
        self.job = job
        self.res = res
        self.order = order
        ref = job.reference
        self.files = ref.files if ref else None
        self.buffers = ref.buffers if ref else {}
        self.matcher = ref.matcher() if ref else None

    def problem(self, kind: str, number: int, path: str, detail: str, observed: str | None = None,
                expected: str | None = None) -> None:
        res = self.res
        res.problem_counts[kind] += 1
        if len(res.problems) < self.job.max_problems:
            res.problems.append(Problem(kind, number, path, detail, observed, expected))

    def file_problem(self, number: int, path: str, algo: str, fdigest: bytes,
                     expected: str | tuple[str, ...] | None) -> None:
        stats = self.res.stats
        rule = self.matcher.match(path)  # type: ignore[union-attr]
        if rule is not None:
            stats["allowed-to-vary" if rule.action == ANY_DIGEST else "ignored"] += 1
            return
        dstr = f"{algo}:{fdigest.hex()}"
        if expected is None:
            self.problem("unknown-file", number, path, "measured file is not in the reference manifest", dstr, None)
        else:
            expected = (expected,) if isinstance(expected, str) else expected
            same = [e for e in expected if e.startswith(algo + ":")]
            self.problem("digest-mismatch", number, path, "file content differs from the built image",
                         dstr, ", ".join(same or expected))

    def ignored(self, path: str) -> bool:
        if self.matcher is None:
            return False
        rule = self.matcher.match(path)
        return rule is not None and rule.action != ANY_DIGEST

    def entry(self, number: int, off: int, tpl: templates.Template, tdata: bytes, computed: bytes, listed: bytes,
              violation: bool, first: bool) -> None:
        job = self.job
        values = split_fields(tpl, tdata, number, off, self.order, job.source)
        vals = dict(zip(tpl.fields, values))
        path_b = vals.get("n-ng", vals.get("n", b""))
        d = vals.get("d-ng", vals.get("d-ngv2", vals.get("d", b"")))
        head, sep, fdigest = d.partition(b":\0")
        if sep:
            algo = head.rsplit(b":", 1)[-1].decode("ascii", "replace")
        else:
            algo, fdigest = "sha1", d
        path = path_b.rstrip(b"\0").decode("utf-8", "surrogateescape")
        if first:
            self.res.first = (path, algo, fdigest)
        if not violation and computed != listed:
            self.problem("template-hash", number, path, "the template hash does not match the entry's data",
                         computed.hex(), listed.hex())
        if violation:
            if self.ignored(path):
                self.res.stats["ignored"] += 1
            else:
                self.problem("violation", number, path, "measured while open for writing (or a time-of-measure/"
                             "time-of-use race): the kernel invalidated the PCR for this entry")
            return
        if first and path == "boot_aggregate":
            return
        is_buffer = "buf" in vals
        stats = self.res.stats
        if self.files is not None:
            dstr = f"{algo}:{fdigest.hex()}"
            if is_buffer:
                expected_buf = self.buffers.get(path)
                if expected_buf is not None and dstr in expected_buf:
                    stats["buffers-matched"] += 1
                elif self.buffers and not self.ignored(path):
                    self.problem("unknown-buffer" if expected_buf is None else "buffer-mismatch", number, path,
                                 "buffer measurement not in the reference", dstr,
                                 ", ".join(expected_buf) if expected_buf else None)
                else:
                    stats["buffers-unchecked"] += 1
            else:
                expected = self.files.get(path)
                if expected == dstr or (type(expected) is tuple and dstr in expected):
                    stats["files-matched"] += 1
                else:
                    self.file_problem(number, path, algo, fdigest, expected)
                    if self.ignored(path):
                        return
        keyring = job.keyring
        if keyring is not None and not is_buffer:
            if "sig" not in vals:
                stats["no-signature-field"] += 1
            elif not vals["sig"] and vals.get("modsig"):
                # appraised by the signature appended to a module or kexec image (PKCS#7), which
                # obelisk does not parse: say so rather than call the file unsigned
                self.problem("modsig-not-verified", number, path, "carries an appended (modsig) signature only; "
                             "verify it with the kernel's keyring or sign the file with an IMA signature too")
            elif not self.ignored(path):
                outcome, detail = keyring.check(vals["sig"], algo, fdigest)
                if outcome == VALID:
                    stats["signatures-valid"] += 1
                else:
                    self.problem(outcome, number, path, detail)


# ----------------------------------------------------------------------------- chunking

def split_points(job: Job) -> list[int]:
    """Candidate chunk starts (0 first)."""
    return list(iter_split_points(job))


def iter_split_points(job: Job, start: int = 0) -> Iterator[int]:
    """Candidate chunk starts (`start` first), found lazily: only a window past each target is searched."""
    data = job.data
    n = len(data)
    yield start
    if n - start <= CHUNK_TARGET:
        return
    if job.encoding == ASCII:
        pos = start + CHUNK_TARGET
        while pos < n:
            nl = data.find(b"\n", pos)
            _drop_pages(data, pos, max(nl, pos))
            if nl < 0 or nl + 1 >= n:
                return
            yield nl + 1
            pos = nl + 1 + CHUNK_TARGET
        return
    # cut where a PCR-10 entry of a template seen among the first entries begins
    names: set[bytes] = set()
    try:
        head = data[:min(n, 64 * 1024)]
        _drop_pages(data, 0, len(head))
        for _, _, _, _, name, _ in iter_binary(head, 0, len(head), job.byte_order, 1, job.source):
            names.add(name.encode("ascii"))
            if len(names) >= 8:
                break
    except ParseError:
        pass  # the walk will name the problem (a partial last entry of the head ends the scan)
    if not names:
        return
    u = job.byte_order
    alternatives = b"|".join(re.escape(len(nm).to_bytes(4, u) + nm) for nm in sorted(names))
    header = re.compile(re.escape(IMA_PCR.to_bytes(4, u)) + b".{20}(?:" + alternatives + b")", re.S)
    pos = start + CHUNK_TARGET
    while pos < n:
        m = header.search(data, pos, min(n, pos + SPLIT_WINDOW))
        if m is None:  # no entry header near the target: try further on (that chunk grows)
            _drop_pages(data, pos, pos + SPLIT_WINDOW)
            pos += SPLIT_WINDOW
            continue
        _drop_pages(data, pos, m.end())
        yield m.start()
        pos = m.start() + CHUNK_TARGET


def run(job: Job, workers: int | None = None) -> list[ChunkResult]:
    """Walk the whole list; results in order, each starting where the previous ended."""
    return list(iter_run(job, workers))


def iter_run(job: Job, workers: int | None = None, start: int = 0, entries_before: int = 0,
             lines_before: int = 0) -> Iterator[ChunkResult]:
    """Walk the list from `start` (an entry boundary, after `entries_before` entries and, in an
    ascii list, `lines_before` lines), yielding the chunk results in order, each starting where
    the previous ended; at most IN_FLIGHT chunks per worker are ahead of the consumer (bounded memory)."""
    global _JOB
    workers = workers or os.cpu_count() or 1
    n = len(job.data)
    points = iter_split_points(job, start)
    ranges = _ranges(points, n)
    if workers > 1 and n - start > CHUNK_TARGET and "fork" in multiprocessing.get_all_start_methods():
        _JOB = job
        try:
            pool = multiprocessing.get_context("fork").Pool(workers)
            try:
                yield from _stitch(job, _pipelined(pool, ranges, workers * IN_FLIGHT), start, entries_before,
                                   lines_before)
            finally:
                # close, not terminate: at most IN_FLIGHT chunks per worker are left to finish, and
                # Pool.terminate can deadlock on the task queue's lock held by an idle worker
                pool.close()
                pool.join()
        finally:
            _JOB = None
    else:
        # in this process the job is passed, never through the global: threads checking several lists at
        # once (the fleet service's) must not see each other's
        yield from _stitch(job, (check_range(a, b, 1, job) for a, b in ranges), start, entries_before,
                           lines_before)


def _ranges(points: Iterator[int], n: int) -> Iterator[tuple[int, int]]:
    prev = next(points, 0)
    for p in points:
        yield prev, p
        prev = p
    yield prev, n


def _pipelined(pool: Any, ranges: Iterator[tuple[int, int]], depth: int) -> Iterator[ChunkResult]:
    """check_range over `ranges` in the pool, in order, with at most `depth` queued."""
    queue: collections.deque = collections.deque()
    for a, b in ranges:
        queue.append(pool.apply_async(check_range, (a, b, 1)))
        if len(queue) >= depth:
            yield queue.popleft().get()
    while queue:
        yield queue.popleft().get()


def _stitch(job: Job, raw: Iterator[ChunkResult], expected_start: int = 0, entries_before: int = 0,
            lines_before: int = 0) -> Iterator[ChunkResult]:
    """Keep chunks while they join up; re-walk from the true boundary after a false cut."""
    n = len(job.data)
    for res in raw:
        if res.start != expected_start:  # a false cut: walk this chunk's range from the true boundary
            if expected_start >= res.stop and res.stop < n:
                continue  # the previous chunk ran past this whole range
            res = check_range(expected_start, max(res.stop, expected_start), 1, job)
        base = lines_before if job.encoding == ASCII else entries_before
        if res.error is not None:
            # re-run with true entry numbers so the message names the right entry
            again = check_range(res.start, res.stop, base + 1, job)
            exc = ParseError(again.error or res.error)
            exc.offset = again.error_offset  # the message already names the source and offset
            raise exc
        _rebase(res, base)
        yield res
        entries_before += res.count
        lines_before += res.lines
        expected_start = res.end
        if res.end >= n:
            break


def _rebase(res: ChunkResult, base: int) -> None:
    if base == 0:
        return
    res.problems = [Problem(p.kind, p.number + base, p.path, p.detail, p.observed, p.expected) for p in res.problems]


# ----------------------------------------------------------------------------- PCR fold

class RunningPcr:
    """One bank's PCR 10 extended chunk after chunk: the value, the entries folded, and the
    last position (entries folded) at which the value equalled `target`."""

    __slots__ = ("bank", "value", "target", "count", "last_match")

    def __init__(self, bank: str, target: bytes | None = None, value: bytes | None = None, count: int = 0):
        self.bank = bank
        self.value = value if value is not None else bytes(BANK_SIZES[bank])
        self.target = target
        self.count = count
        self.last_match: int | None = count if target is not None and target == self.value else None

    def extend(self, digests: bytes) -> None:
        size = BANK_SIZES[self.bank]
        value, matches = _fold_from(self.bank, self.value, digests, self.target)
        if matches:
            self.last_match = self.count + matches[-1]
        self.value = value
        self.count += len(digests) // size


def _fold_from(bank: str, value: bytes, digests: bytes, target: bytes | None) -> tuple[bytes, list[int]]:
    size = BANK_SIZES[bank]
    ctor = getattr(hashlib, bank)
    matches: list[int] = []
    pieces = struct.iter_unpack(f"{size}s", digests)  # one bytes per digest, without a slice per step
    if target is None:
        for (digest,) in pieces:
            value = ctor(value + digest).digest()
        return value, matches
    # the values are kept and searched afterwards (in C): no comparison or counter per step
    values: list[bytes] = []
    keep = values.append
    for (digest,) in pieces:
        value = ctor(value + digest).digest()
        keep(value)
    if target in values:
        matches = [n for n, v in enumerate(values, 1) if v == target]
    return value, matches


def merge(chunks: Iterator[ChunkResult], max_problems: int, on_chunk: Callable[[ChunkResult], None],
          total: ChunkResult | None = None) -> ChunkResult:
    """One result for the whole list from its chunks, in order (added to `total`, the result of
    the entries before them): counts added, problems kept up to `max_problems`; `on_chunk` sees
    each chunk (with its bank digests, which are then dropped)."""
    total = total or ChunkResult(0)
    for c in chunks:
        on_chunk(c)
        if total.count == 0 and c.start == 0:
            total.first = c.first
        total.count += c.count
        total.lines += c.lines
        total.end = c.end
        total.other_pcrs.update(c.other_pcrs)
        total.problem_counts.update(c.problem_counts)
        total.stats.update(c.stats)
        room = max_problems - len(total.problems)
        if room > 0:
            total.problems.extend(c.problems[:room])
        c.bank_digests = {}
    return total
