"""The reference manifest: what every measured file of an image should hash to.

The image build writes it; `obelisk ima log verify --reference` checks a node's IMA
list against it. JSON, UTF-8:

    {
      "schema": "obelisk.ima-reference/1",
      "image": "worker-2026.11",                        # free text: what it describes
      "files": {                                        # absolute path -> allowed digests
        "/usr/bin/kubelet": "sha256:9f86d0...",         # one "algo:hex" ...
        "/usr/lib/x86_64-linux-gnu/libc.so.6": ["sha256:...", "sha512:..."]   # ... or a list
      },
      "buffers": {"kexec-cmdline": ["sha256:..."]},     # ima-buf entries by name (optional)
      "rules": [                                        # files allowed to vary, first match wins
        {"glob": "/etc/kubernetes/**", "action": "any-digest", "reason": "written at first boot"},
        {"regex": "^/var/lib/containerd/", "action": "ignore", "reason": "container layers"}
      ]
    }

A measured file is checked in this order: listed in `files` with a matching digest ->
pass; else a matching rule decides (`any-digest`: measured file may have any content,
also when unlisted; `ignore`: not checked at all); else listed -> digest mismatch,
unlisted -> unknown file. Globs: `*` and `?` stay within one path component, `**`
crosses `/`. A file's digests may use several algorithms; the one the list used is compared.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from obelisk.core.errors import InputError
from obelisk.ima_policy.digest_table import Builder, DigestTable, NotStreamable, stream_object

SCHEMA = "obelisk.ima-reference/1"
ANY_DIGEST = "any-digest"
IGNORE = "ignore"
ACTIONS = (ANY_DIGEST, IGNORE)
MAX_MANIFEST_BYTES = 1 << 30
_DIGEST = re.compile(r"^(md5|sha1|sha224|sha256|sha384|sha512|sha3_256|sha3_384|sha3_512|sm3):[0-9a-f]+$")


@dataclass(frozen=True)
class Rule:
    pattern: str
    kind: str  # "glob" or "regex"
    action: str  # any-digest | ignore
    reason: str = ""

    def regex(self) -> str:
        return self.pattern if self.kind == "regex" else glob_to_regex(self.pattern)

    def to_json(self) -> dict[str, str]:
        out = {self.kind: self.pattern, "action": self.action}
        if self.reason:
            out["reason"] = self.reason
        return out


@dataclass(frozen=True)
class ReferenceManifest:
    # path -> "sha256:hex", or a tuple of them when a file may have several digests (the single
    # string form keeps million-file manifests fast to load and look up; use `digests(path)`);
    # a DigestTable when loaded with `load_compact` (checking only: it cannot be listed or serialized)
    files: dict[str, str | tuple[str, ...]] | DigestTable
    rules: tuple[Rule, ...] = ()
    buffers: dict[str, tuple[str, ...]] = field(default_factory=dict)
    image: str = ""

    def digests(self, path: str) -> tuple[str, ...]:
        value = self.files.get(path)
        if value is None:
            return ()
        return (value,) if isinstance(value, str) else value

    def allows(self, path: str, digest: str) -> bool:
        value = self.files.get(path)
        return value == digest if isinstance(value, str) else value is not None and digest in value

    def to_json(self) -> dict[str, Any]:
        if isinstance(self.files, DigestTable):
            raise TypeError("a manifest loaded with load_compact cannot be serialized")
        out: dict[str, Any] = {"schema": SCHEMA}
        if self.image:
            out["image"] = self.image
        out["files"] = {p: (d if isinstance(d, str) else list(d)) for p, d in sorted(self.files.items())}
        if self.buffers:
            out["buffers"] = {n: list(d) for n, d in sorted(self.buffers.items())}
        out["rules"] = [r.to_json() for r in self.rules]
        return out

    def matcher(self) -> RuleMatcher:
        return RuleMatcher(self.rules)

    def digest_matcher(self) -> Callable[[bytes, bytes], bool]:
        """`match(path, digest_field)`: the file at `path` (as listed: bytes, no NUL) is in `files` with
        the digest of a d-ng/d-ngv2 field (`[type:]algo:\\0digest`). The hot path of `ima log verify`."""
        files = self.files
        if isinstance(files, DigestTable):
            return files.matcher()
        get = files.get
        prefixes: dict[bytes, str] = {}

        def match(path: bytes, field: bytes) -> bool:
            head, sep, digest = field.partition(b":\0")
            if not sep:
                return False
            prefix = prefixes.get(head)
            if prefix is None:  # "sha256" / "ima:sha256" -> "sha256:", once per algorithm
                prefix = prefixes[head] = head.rsplit(b":", 1)[-1].decode("ascii", "replace") + ":"
            expected = get(path.decode("utf-8", "surrogateescape"))
            if expected is None:
                return False
            value = prefix + digest.hex()
            return expected == value or (type(expected) is tuple and value in expected)

        return match


class RuleMatcher:
    """All rules as one compiled regex; `match(path)` gives the first matching rule."""

    def __init__(self, rules: tuple[Rule, ...]):
        self.rules = rules
        self._re: re.Pattern[str] | None
        if rules:
            self._re = re.compile("|".join(f"(?P<r{i}>{r.regex()})" for i, r in enumerate(rules)))
        else:
            self._re = None

    def match(self, path: str) -> Rule | None:
        if self._re is None:
            return None
        m = self._re.match(path)
        if m is None:
            return None
        return self.rules[int(m.lastgroup[1:])]  # type: ignore[index]


def glob_to_regex(glob: str) -> str:
    out = []
    i = 0
    while i < len(glob):
        c = glob[i]
        if glob.startswith("**", i):
            out.append(".*")
            i += 2
            continue
        if c == "*":
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        else:
            out.append(re.escape(c))
        i += 1
    return "(?:" + "".join(out) + r")\Z"


def _digests(value: Any, where: str) -> tuple[str, ...]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not items:
        raise InputError(f"{where}: expected a digest string or a non-empty list of them")
    out = []
    for d in items:
        if not isinstance(d, str) or not _DIGEST.match(d):
            raise InputError(f"{where}: {str(d)[:80]!r} is not 'algo:lowercase-hex'")
        out.append(d)
    return tuple(out)


_PREFIXES = tuple(f"{a}:" for a in ("md5", "sha1", "sha224", "sha256", "sha384", "sha512", "sha3_256", "sha3_384",
                                      "sha3_512", "sm3"))


def _all_digest_strings(values: list[str]) -> bool:
    """A fast, slightly looser form of _DIGEST over many values: known prefix, one ':', only
    lowercase hex after it (letters of the algorithm names aside), nothing empty. String scans
    in C instead of a regular expression per value: a million digests take a fraction of a second."""
    try:
        joined = "\n" + "\n".join(values) + "\n"
    except TypeError:  # not all strings
        return False
    common = values[0].partition(":")[0] + ":" if values else ""
    if common not in _PREFIXES or joined.count("\n" + common) != len(values):
        if not all(v.startswith(_PREFIXES) for v in values):
            return False
    raw = joined.encode("utf-8", "replace")
    return (raw.count(b":") == len(values) and b":\n" not in raw
            and not raw.translate(None, b"0123456789abcdef:\nshm_"))


def _files(files_in: dict[str, Any], source: str) -> dict[str, str | tuple[str, ...]]:
    """Validate path -> digest(s); single strings are checked in bulk (fast for 10^6 files)."""
    paths = list(files_in)
    if paths and ("\n" + "\n".join(paths)).count("\n/") != len(paths):
        bad = next(p for p in paths if not p.startswith("/") or "\n" in p)
        raise InputError(f"files: {bad[:80]!r} is not an absolute path", source=source)
    values = list(files_in.values())
    if _all_digest_strings(values):
        return files_in
    files: dict[str, str | tuple[str, ...]] = {}
    for path, value in files_in.items():
        digests = _digests(value, f"{source}: files[{path[:80]!r}]")
        files[path] = digests[0] if isinstance(value, str) else digests
    return files


def from_json(data: Any, source: str = "reference manifest") -> ReferenceManifest:
    if not isinstance(data, dict):
        raise InputError("expected a JSON object", source=source)
    if data.get("schema") != SCHEMA:
        raise InputError(f"schema: expected {SCHEMA!r}, got {data.get('schema')!r}", source=source)
    files_in = data.get("files", {})
    if not isinstance(files_in, dict):
        raise InputError("files: expected an object path -> digests", source=source)
    files = _files(files_in, source)
    buffers_in = data.get("buffers", {})
    if not isinstance(buffers_in, dict):
        raise InputError("buffers: expected an object name -> digests", source=source)
    buffers = {n: _digests(v, f"{source}: buffers[{n[:80]!r}]") for n, v in buffers_in.items()}
    rules_in = data.get("rules", [])
    if not isinstance(rules_in, list):
        raise InputError("rules: expected a list", source=source)
    rules = tuple(_rule(r, f"rules[{i}]", source) for i, r in enumerate(rules_in))
    image = data.get("image", "")
    if not isinstance(image, str):
        raise InputError("image: expected a string", source=source)
    return ReferenceManifest(files, rules, buffers, image)


def _rule(data: Any, where: str, source: str) -> Rule:
    if not isinstance(data, dict):
        raise InputError(f"{where}: expected an object", source=source)
    kinds = [k for k in ("glob", "regex") if k in data]
    if len(kinds) != 1 or not isinstance(data[kinds[0]], str):
        raise InputError(f"{where}: needs exactly one of 'glob' or 'regex' (a string)", source=source)
    action = data.get("action")
    if action not in ACTIONS:
        raise InputError(f"{where}.action: {action!r} is not one of {', '.join(ACTIONS)}", source=source)
    reason = data.get("reason", "")
    if not isinstance(reason, str):
        raise InputError(f"{where}.reason: expected a string", source=source)
    rule = Rule(data[kinds[0]], kinds[0], action, reason)
    try:
        re.compile(rule.regex())
    except re.error as exc:
        raise InputError(f"{where}: invalid pattern: {exc}", source=source) from None
    return rule


def _decode_json(data: str | bytes, source: str) -> Any:
    """JSON with orjson when installed (a million-file manifest loads several times faster)."""
    loads: Callable[[str | bytes], Any]
    try:
        import orjson

        loads = orjson.loads
    except ImportError:  # pragma: no cover - orjson is a dependency; keep working without it
        loads = json.loads
    try:
        return loads(data)
    except (ValueError, UnicodeDecodeError) as exc:  # orjson.JSONDecodeError is a ValueError
        raise InputError(f"not JSON: {exc}", source=source) from None
    except RecursionError:
        raise InputError("not JSON: nested too deeply", source=source) from None


def parse(text: str | bytes, source: str = "reference manifest") -> ReferenceManifest:
    return from_json(_decode_json(text, source), source)


def serialize(manifest: ReferenceManifest) -> str:
    return json.dumps(manifest.to_json(), indent=1) + "\n"


def load(path: str | Path) -> ReferenceManifest:
    """The file at `path`: a manifest, or a Keylime runtime policy (recognised by its `digests` key)."""
    from obelisk.ima_policy import keylime

    source = str(path)
    from obelisk.core.inputs import read_bounded

    data = read_bounded(path, "reference manifest", MAX_MANIFEST_BYTES)
    obj = _decode_json(data, source)
    if isinstance(obj, dict) and "schema" not in obj and "digests" in obj:
        return keylime.to_reference(keylime.from_json(obj, source))
    return from_json(obj, source)


# ----------------------------------------------------------------------------- large manifests

STREAM_ABOVE = 16 << 20  # manifests larger than this are read in windows by load_compact
_WS = re.compile(rb"[ \t\n\r]*")
_KEY = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')
_SCALAR = re.compile(rb'-?[0-9][0-9.eE+-]*|true|false|null')
_TOKEN = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{}]|[^"\[\]{}]+')


def load_compact(path: str | Path, stream_above: int = STREAM_ABOVE) -> ReferenceManifest:
    """`load` for checking a list: the files' digests in a DigestTable, a large manifest (or Keylime
    policy) read in windows from a mapping of the file, so memory stays bounded whatever its size.
    Same manifest, same answers as `load`; anything the windowed reader does not take (malformed
    JSON, an unexpected layout) is read by `load`, which names the problem."""
    import mmap

    from obelisk.core.inputs import map_bounded

    source = str(path)
    data = map_bounded(path, "reference manifest", MAX_MANIFEST_BYTES)
    if len(data) <= stream_above:
        manifest = load(path)
        return _compact(manifest)

    def drop(start: int, end: int) -> None:
        """Hand the read pages back, and those a fault mapped around them (a large folio, up to 2 MiB)."""
        if isinstance(data, mmap.mmap) and hasattr(mmap, "MADV_DONTNEED"):
            start = max(0, start - (2 << 20))
            first = start - start % mmap.PAGESIZE
            data.madvise(mmap.MADV_DONTNEED, first, min(len(data), end + (2 << 20)) - first)

    try:
        return _load_streamed(data, source, drop)
    except NotStreamable:
        return load(path)


def _compact(manifest: ReferenceManifest) -> ReferenceManifest:
    if isinstance(manifest.files, DigestTable):
        return manifest
    builder = Builder()
    builder.add_all(manifest.files)
    return ReferenceManifest(builder.table(), manifest.rules, manifest.buffers, manifest.image)


def _load_streamed(doc: Any, source: str, drop: Callable[[int, int], None]) -> ReferenceManifest:
    """The manifest with its one large member (`files`, or a Keylime policy's `digests`) streamed
    into a DigestTable and the rest parsed as usual."""
    from obelisk.ima_policy import keylime

    loads = _json_loads()
    pos = _WS.match(doc, 0).end()  # type: ignore[union-attr]
    if doc[pos:pos + 1] != b"{":
        raise NotStreamable
    pos += 1
    spans: list[tuple[int, int, str, Builder]] = []
    while True:
        pos = _WS.match(doc, pos).end()  # type: ignore[union-attr]
        if doc[pos:pos + 1] == b"}":
            break
        key_match = _KEY.match(doc, pos)
        if key_match is None:
            raise NotStreamable
        try:
            key = loads(key_match.group())
        except ValueError:
            raise NotStreamable from None
        pos = _WS.match(doc, key_match.end()).end()  # type: ignore[union-attr]
        if doc[pos:pos + 1] != b":":
            raise NotStreamable
        pos = _WS.match(doc, pos + 1).end()  # type: ignore[union-attr]
        if key in ("files", "digests") and doc[pos:pos + 1] == b"{":
            builder = Builder()
            start = pos
            for piece_end, piece in stream_object(doc, start, loads, drop):
                _add_piece(builder, key, piece, source)
                pos = piece_end
            spans.append((start, pos, key, builder))
        else:
            pos = _skip_value(doc, pos)
        pos = _WS.match(doc, pos).end()  # type: ignore[union-attr]
        if doc[pos:pos + 1] == b",":
            pos += 1
        elif doc[pos:pos + 1] != b"}":
            raise NotStreamable
    if len(spans) != 1:
        raise NotStreamable  # none (a small manifest in a large file) or a duplicate key: read it whole
    start, end, key, builder = spans[0]
    rest = _decode_json(bytes(doc[:start]) + b"{}" + bytes(doc[end:]), source)
    if isinstance(rest, dict) and "schema" not in rest and "digests" in rest:
        if key != "digests":
            raise NotStreamable
        manifest = keylime.to_reference(keylime.from_json(rest, source))
    else:
        if key != "files":
            raise NotStreamable
        manifest = from_json(rest, source)
    return ReferenceManifest(builder.table(), manifest.rules, manifest.buffers, manifest.image)


def _add_piece(builder: Builder, key: str, piece: dict[str, Any], source: str) -> None:
    """Validate a window of `files` (or Keylime `digests`) as `from_json` (`keylime.from_json`) would."""
    from obelisk.ima_policy import keylime

    if key == "files":
        builder.add_all(_files(piece, source))
        return
    policy = keylime.RuntimePolicy(digests=keylime.hexmap({"digests": piece}, "digests", source))
    builder.add_all(keylime.to_reference(policy).files)  # type: ignore[arg-type]


def _skip_value(doc: Any, pos: int) -> int:
    """The end of the (small) JSON value at `pos`; it is parsed for real later."""
    first = doc[pos:pos + 1]
    if first == b'"':
        m = _KEY.match(doc, pos)
        if m is None:
            raise NotStreamable
        return m.end()
    if first not in (b"[", b"{"):
        m = _SCALAR.match(doc, pos)
        if m is None:
            raise NotStreamable
        return m.end()
    depth = 0
    for m in _TOKEN.finditer(doc, pos):
        t = m.group()[:1]
        if t in (b"[", b"{"):
            depth += 1
        elif t in (b"]", b"}"):
            depth -= 1
            if depth == 0:
                return m.end()
    raise NotStreamable


def _json_loads() -> Callable[[bytes], Any]:
    try:
        import orjson

        return orjson.loads
    except ImportError:  # pragma: no cover - orjson is a dependency
        return json.loads
