"""A reference manifest's file digests in bounded memory: what `ima log verify --reference` looks up.

A dict of a million `path -> "sha256:hex"` strings takes about 500 MB; `DigestTable` keeps ~41
bytes a file. Per digest algorithm, one `array('q')` holds the files' 64-bit path keys, sorted,
and one bytes object their digests in the same order; a lookup is a bucket (the key's top 12
bits) and a binary search in it. The path key is Python's hash of the path's bytes, SipHash under
a random per-process key (a keyed BLAKE2b when PYTHONHASHSEED turns that off), so nobody can pick
a path that collides with a listed one; two of a manifest's million paths share a key with a
probability of about 3e-8.

Paths whose digests mix algorithms or do not have the algorithm's length (which can never match a
measurement but must still be shown as expected) stay as they were, in a small dict.

`stream_object` reads the manifest's `files` (or a Keylime policy's `digests`) object in windows of a
few MiB: a regular expression finds where the window's last complete `"path": value,` ends and
orjson parses the entries up to there, so the manifest is never whole in memory either.
"""

from __future__ import annotations

import array
import hashlib
import itertools
import operator
import os
import re
import sys
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterator
from typing import Any, cast

_BITS = 12  # the table is sorted in this many parts (by the key's top bits) ...
_BUCKETS = 1 << _BITS
_SHIFT = 64 - _BITS
_HALF = _BUCKETS // 2
_FINE_BITS = 18  # ... and a lookup starts from one of these (about 4 keys each at 10^6 files: one cache line)
_FINE = 1 << _FINE_BITS
_FINE_SHIFT = 64 - _FINE_BITS
_FINE_HALF = _FINE // 2
_PER_BUCKET = 1 << (_FINE_BITS - _BITS)


def _fine_starts(keys: array.array) -> array.array:
    """starts[f]: the index of the first key of fine bucket f in the sorted `keys` (and len(keys) at the end)."""
    return array.array("I", (bisect_left(keys, (f - _FINE_HALF) << _FINE_SHIFT) for f in range(_FINE + 1)))

SIZES = {"md5": 16, "sha1": 20, "sha224": 28, "sha256": 32, "sha384": 48, "sha512": 64, "sha3_256": 32,
         "sha3_384": 48, "sha3_512": 64, "sm3": 32}

Value = str | tuple[str, ...]  # a manifest's digests of one file: "algo:hex" or several


def _path_key_function() -> Callable[[bytes], int]:
    if sys.flags.hash_randomization:
        return hash
    secret = os.urandom(16)

    def keyed(path: bytes) -> int:
        return int.from_bytes(hashlib.blake2b(path, digest_size=8, key=secret).digest(), "little", signed=True)

    return keyed


path_key = _path_key_function()


class _AlgoTable:
    """One algorithm's digests: `keys` sorted, `records[i]` the index in `digests` (of `size` bytes
    each, in manifest order) of the digest listed under `keys[i]`; `starts[b]` the first index of
    bucket b (one more at the end)."""

    __slots__ = ("size", "keys", "records", "digests", "starts")

    def __init__(self, size: int, keys: array.array, records: array.array, digests: bytearray,
                 starts: array.array) -> None:
        self.size = size
        self.keys = keys
        self.records = records
        self.digests = digests
        self.starts = starts

    def find(self, key: int) -> Iterator[bytes | bytearray]:
        bucket = (key >> _FINE_SHIFT) + _FINE_HALF
        keys = self.keys
        hi = self.starts[bucket + 1]
        i = bisect_left(keys, key, self.starts[bucket], hi)
        size = self.size
        while i < hi and keys[i] == key:
            r = self.records[i] * size
            yield self.digests[r:r + size]
            i += 1


class DigestTable:
    """path -> allowed digests, looked up by the path's bytes as the list shows them."""

    def __init__(self, tables: dict[bytes, _AlgoTable], extra: dict[str, Value], count: int) -> None:
        self._tables = tables
        self._extra = extra
        self._count = count
        self._matcher: Callable[[bytes, bytes], bool] | None = None  # built once, used by every chunk

    def __len__(self) -> int:
        return self._count

    def __getstate__(self) -> None:
        # the keys are this process's hashes: valid here and in its forked workers, nowhere else
        raise TypeError("a DigestTable cannot leave its process (its keys use the process's hash key)")

    def get(self, path: str, default: Value | None = None) -> Value | None:
        """The digests listed for `path` ("algo:hex", or a tuple of them), as the manifest's dict would give."""
        if path in self._extra:
            return self._extra[path]
        try:
            raw = path.encode("utf-8", "surrogateescape")
        except UnicodeEncodeError:
            return default
        key = path_key(raw)
        for algo, table in self._tables.items():
            found = [f"{algo.decode()}:{d.hex()}" for d in table.find(key)]
            if found:
                return found[0] if len(found) == 1 else tuple(found)
        return default

    def matcher(self) -> Callable[[bytes, bytes], bool]:
        """`match(path, field)`: the file at `path` (bytes as listed, no NUL) is listed with the digest
        of the d-ng/d-ngv2 field `[type:]algo:\\0digest` (the hot path: everything bound once)."""
        if self._matcher is None:
            self._matcher = self._make_matcher()
        return self._matcher

    def _make_matcher(self) -> Callable[[bytes, bytes], bool]:
        extra = self._extra
        extra_keys = set()  # the extra dict's paths by key: most lookups then skip decoding the path
        for p in extra:
            try:
                extra_keys.add(path_key(p.encode("utf-8", "surrogateescape")))
            except UnicodeEncodeError:
                pass
        tables = {algo: (t.size, t.keys, t.records, t.digests, t.starts) for algo, t in self._tables.items()}
        by_head: dict[bytes, tuple[int, array.array, array.array, bytearray, array.array] | None] = {}
        key_of = path_key

        def match(path: bytes, field: bytes) -> bool:
            head, sep, digest = field.partition(b":\0")
            if not sep:
                return False
            key = key_of(path)
            if key in extra_keys:
                expected = extra.get(path.decode("utf-8", "surrogateescape"))
                if expected is not None:
                    value = f"{head.rsplit(b':', 1)[-1].decode('ascii', 'replace')}:{digest.hex()}"
                    return expected == value or (type(expected) is tuple and value in expected)
            if head in by_head:
                table = by_head[head]
            else:
                table = by_head[head] = tables.get(head.rsplit(b":", 1)[-1])
            if table is None:
                return False
            size, keys, records, digests, starts = table
            if len(digest) != size:
                return False
            bucket = (key >> _FINE_SHIFT) + _FINE_HALF
            hi = starts[bucket + 1]
            i = bisect_left(keys, key, starts[bucket], hi)
            while i < hi and keys[i] == key:
                r = records[i] * size
                if digests[r:r + size] == digest:
                    return True
                i += 1
            return False

        return match


def _release_freed_memory() -> None:
    """Hand the building's freed heap back to the kernel (glibc keeps freed small blocks mapped; ~10 MB
    here), so that neither this process nor the workers it forks carry it."""
    try:
        import ctypes

        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to do
        pass


class _Pending:
    """One algorithm's records in manifest order: path key and digest. Which entry (its sequence
    number in the manifest) a record comes from is kept as runs, not per record: a bulk piece is one
    run of consecutive entries, a file with several digests one run of records of the same entry."""

    __slots__ = ("keys", "digests", "run_starts", "run_seqs", "run_steps")

    def __init__(self) -> None:
        self.keys = array.array("q")
        self.digests = bytearray()
        self.run_starts = array.array("I")  # first record of each run
        self.run_seqs = array.array("I")  # its entry's sequence number
        self.run_steps = array.array("B")  # 1: one record per entry, 0: all records of one entry

    def run(self, seq: int, step: int) -> None:
        self.run_starts.append(len(self.keys))
        self.run_seqs.append(seq)
        self.run_steps.append(step)

    def seq(self, record: int) -> int:
        r = bisect_right(self.run_starts, record) - 1
        return self.run_seqs[r] + (record - self.run_starts[r]) * self.run_steps[r]


class Builder:
    """Collects `path -> digests` (validated) in stream order; a path given twice keeps its last value,
    as a JSON object's duplicate key does."""

    def __init__(self) -> None:
        self._pending: dict[str, _Pending] = {}
        self._extra: dict[str, tuple[int, Value]] = {}
        self._seq = 0

    def _for(self, algo: str) -> _Pending:
        pending = self._pending.get(algo)
        if pending is None:
            pending = self._pending[algo] = _Pending()
        return pending

    def add_all(self, files: dict[str, Value], split: bool = True) -> None:
        """`add` for each item; a piece whose values are all "algo:hex" strings of one algorithm and
        whose paths are ascii (what the image build writes) is taken in bulk, without a Python loop."""
        values = list(files.values())
        first = values[0] if values else None
        blob = b""
        if type(first) is str:
            algo, _, hexpart = first.partition(":")
            size = SIZES.get(algo, 0)
            prefix = algo + ":"
            try:
                joined = "".join(cast(list[str], values))
            except TypeError:  # not all strings
                joined = ""
            if (size and len(hexpart) == 2 * size and len(joined) == len(first) * len(values)
                    and joined.count(prefix) == len(values) and all(p.isascii() for p in files)):
                try:
                    blob = bytes.fromhex(joined.replace(prefix, ""))
                except ValueError:
                    blob = b""
        if not blob or len(blob) != size * len(values):
            if not split:  # the general case: one item at a time
                for path, value in files.items():
                    self.add(path, value)
                return
            run: dict[str, Value] = {}  # lists alone, the runs of strings between them in bulk if they allow it
            for path, value in files.items():
                if type(value) is str:
                    run[path] = value
                    continue
                if run:
                    self.add_all(run, split=False)
                    run = {}
                self.add(path, value)
            if run:
                self.add_all(run, split=False)
            return
        pending = self._for(algo)
        pending.run(self._seq + 1, 1)
        pending.keys.extend(map(path_key, [p.encode("ascii") for p in files]))
        pending.digests += blob
        self._seq += len(values)

    def add(self, path: str, value: Value) -> None:
        self._seq += 1
        digests = (value,) if isinstance(value, str) else value
        algo = digests[0].partition(":")[0] if digests else ""
        size = SIZES.get(algo, 0)
        if not size or not all(d.startswith(algo + ":") and len(d) == len(algo) + 1 + 2 * size for d in digests):
            self._extra[path] = (self._seq, value)
            return
        try:
            raw = path.encode("utf-8", "surrogateescape")
        except UnicodeEncodeError:
            return  # no list entry decodes to this path: it can never be looked up
        if not path.isascii() and raw.decode("utf-8", "surrogateescape") != path:
            return
        key = path_key(raw)
        pending = self._for(algo)
        pending.run(self._seq, 0)
        for d in digests:
            pending.keys.append(key)
            pending.digests += bytes.fromhex(d[len(algo) + 1:])

    def table(self) -> DigestTable:
        """The finished table: each algorithm's keys sorted (bucket by bucket), digests left in place;
        a key given more than once keeps only the records of its last entry."""
        sorted_by: dict[str, tuple[array.array, array.array, array.array]] = {}
        for algo, pending in self._pending.items():
            keys = pending.keys
            buckets = [array.array("I") for _ in range(_BUCKETS)]
            for i, k in enumerate(keys):
                buckets[(k >> _SHIFT) + _HALF].append(i)
            order = array.array("I")
            starts = array.array("I")
            for b, bucket in enumerate(buckets):
                ranked = sorted(bucket, key=keys.__getitem__)
                ranked_keys = list(map(keys.__getitem__, ranked))
                first = (b - _HALF) << _SHIFT
                starts.extend(len(order) + bisect_left(ranked_keys, first + (f << _FINE_SHIFT))
                              for f in range(_PER_BUCKET))
                order.extend(ranked)
                buckets[b] = array.array("I")
            starts.append(len(order))
            del buckets
            sorted_by[algo] = (array.array("q", map(keys.__getitem__, order)), order, starts)
            pending.keys = array.array("q")
        repeated = self._repeated_keys(sorted_by)
        if repeated:
            self._keep_last(sorted_by, repeated)
        tables = {algo.encode(): _AlgoTable(SIZES[algo], keys, order, self._pending[algo].digests, starts)
                  for algo, (keys, order, starts) in sorted_by.items() if keys}
        extra = {path: value for path, (_, value) in self._extra.items()}
        count = self._seq
        self._pending, self._extra = {}, {}
        _release_freed_memory()
        return DigestTable(tables, extra, count)

    def _repeated_keys(self, sorted_by: dict[str, tuple[array.array, array.array, array.array]]) -> set[int]:
        """Keys listed by more than one record: a duplicate path, a file with several digests, a path
        under two algorithms or also in the extra dict (or, once in ~10^13 manifests, two paths)."""
        repeated: set[int] = set()
        for keys, _, _ in sorted_by.values():
            if any(map(operator.eq, keys, itertools.islice(keys, 1, None))):
                repeated.update(a for a, b in zip(keys, itertools.islice(keys, 1, None)) if a == b)
        tables = sorted(sorted_by.values(), key=lambda t: len(t[0]))
        for n, (small, _, _) in enumerate(tables):
            for keys, _, _ in tables[n + 1:]:
                for k in small:
                    i = bisect_left(keys, k)
                    if i < len(keys) and keys[i] == k:
                        repeated.add(k)
        for path in self._extra:
            try:
                repeated.add(path_key(path.encode("utf-8", "surrogateescape")))
            except UnicodeEncodeError:
                pass
        return repeated

    def _keep_last(self, sorted_by: dict[str, tuple[array.array, array.array, array.array]],
                   repeated: set[int]) -> None:
        latest: dict[int, int] = {}
        for algo, (keys, order, _) in sorted_by.items():
            seq_of = self._pending[algo].seq
            for k, i in zip(keys, order):
                if k in repeated and latest.get(k, 0) < seq_of(i):
                    latest[k] = seq_of(i)
        for path, (seq, _) in list(self._extra.items()):
            try:
                k = path_key(path.encode("utf-8", "surrogateescape"))
            except UnicodeEncodeError:
                continue
            if k in latest:
                if seq > latest[k]:
                    latest[k] = -1  # the later value is the extra dict's
                else:
                    del self._extra[path]
        for algo, (keys, order, _) in list(sorted_by.items()):
            seq_of = self._pending[algo].seq
            kept_keys, kept = array.array("q"), array.array("I")
            for k, i in zip(keys, order):
                if k not in latest or latest[k] == seq_of(i):
                    kept_keys.append(k)
                    kept.append(i)
            sorted_by[algo] = (kept_keys, kept, _fine_starts(kept_keys))


# ----------------------------------------------------------------------------- streaming JSON

_WS = rb"[ \t\n\r]*"
_STR = rb'"[^"\\]*(?:\\.[^"\\]*)*"'
_VALUE = rb"(?:" + _STR + rb"|\[" + _WS + rb"(?:" + _STR + _WS + rb"(?:," + _WS + _STR + _WS + rb")*)?\])"
_ENTRY = _WS + _STR + _WS + rb":" + _WS + _VALUE + _WS
_RUN = re.compile(rb"(?:" + _ENTRY + rb",)*", re.S)  # complete entries, each followed by a comma
_LAST = re.compile(_ENTRY + rb"\}", re.S)  # the object's last entry and its closing brace
_WINDOW = 256 << 10


class NotStreamable(Exception):
    """The object holds something the windowed reader does not take (the caller parses it whole)."""


def stream_object(doc: Any, pos: int, loads: Callable[[bytes], object],
                  drop: Callable[[int, int], None]) -> Iterator[tuple[int, dict]]:
    """The members of the JSON object of string -> string / list of strings that starts at `doc[pos]`
    (`{`), as (end offset, dict) pieces of about a window each; the last piece ends after the `}`.
    `drop(start, end)` is called for the bytes consumed (to hand a mapping's pages back).

    A piece is cut after a `",` or `],` and parsed by orjson as an object: it parses only if that comma
    really separates two members (a cut inside a string leaves it unterminated, a cut inside a list
    leaves it open), so no byte is interpreted by this code. The object's end is the first `}` at
    which the rest parses; a window the cheap cuts cannot split goes to the regular expression."""
    n = len(doc)
    if doc[pos:pos + 1] != b"{":
        raise NotStreamable
    pos += 1
    opened = pos
    window = _WINDOW
    while True:
        end = min(n, pos + window)
        brace = doc.find(b"}", pos, end)
        for _ in range(4):
            if brace < 0:
                break
            piece = _parse(loads, b"{" + bytes(doc[pos:brace + 1]))
            if piece is not None:
                if not piece and pos > opened:
                    raise NotStreamable  # a comma before the closing brace
                yield brace + 1, piece
                drop(pos, brace + 1)
                return
            brace = doc.find(b"}", brace + 1, end)
        cut = -1
        piece = None
        if brace < 0:
            cut = max(doc.rfind(b'",', pos, end), doc.rfind(b"],", pos, end))
            for _ in range(8):
                if cut <= pos:
                    break
                piece = _parse(loads, b"{" + bytes(doc[pos:cut + 1]) + b"}")
                if piece is not None:
                    break
                cut = max(doc.rfind(b'",', pos, cut), doc.rfind(b"],", pos, cut))
        if piece is None:  # braces or commas inside strings: the careful reader takes this window
            run = _RUN.match(doc, pos, end)
            stop = run.end() if run else pos
            last = _LAST.match(doc, stop, end)
            if last is not None:
                piece = _parse(loads, b"{" + bytes(doc[pos:last.end()]))
                if piece is None:
                    raise NotStreamable
                yield last.end(), piece
                drop(pos, last.end())
                return
            if stop == pos:  # not one whole member in the window
                if end >= n:
                    raise NotStreamable
                window *= 2
                continue
            piece = _parse(loads, b"{" + bytes(doc[pos:stop - 1]) + b"}")
            cut = stop - 2
            if piece is None:
                raise NotStreamable
        yield cut + 2, piece
        drop(pos, cut + 2)
        pos = cut + 2
        window = _WINDOW


def _parse(loads: Callable[[bytes], object], text: bytes) -> dict | None:
    """The object `text`, or None if it does not parse (a cut inside a string or a list)."""
    try:
        value = loads(text)
    except (ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) else None
