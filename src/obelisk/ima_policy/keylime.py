"""Keylime's runtime policy (JSON, schema version 1), read and written, and converted
to and from obelisk's reference manifest so a team can move its policies across.

    {"meta": {"version": 1, "generator": 0, "timestamp": "..."}, "release": 0,
     "digests": {"/usr/bin/bash": ["<hex>", ...]}, "excludes": ["<python regex>", ...],
     "keyrings": {"<keyring>": ["<hex>"]}, "ima-buf": {"<name>": ["<hex>"]},
     "ima": {"ignored_keyrings": [], "log_hash_alg": "sha1", "dm_policy": null},
     "verification-keys": ""}

Keylime digests carry no algorithm name: it follows from the length.
"""

from __future__ import annotations

import datetime as _dt
import json
import re
from dataclasses import dataclass, field
from typing import Any

from obelisk.core.errors import InputError
from obelisk.core.jsonsafe import load_json
from obelisk.ima_policy.reference import IGNORE, ReferenceManifest, Rule

VERSION = 1
GENERATOR_UNKNOWN = 0
_BY_LENGTH = {32: "md5", 40: "sha1", 64: "sha256", 96: "sha384", 128: "sha512"}
_HEX = re.compile(r"^[0-9a-fA-F]+$")


@dataclass(frozen=True)
class RuntimePolicy:
    digests: dict[str, tuple[str, ...]]  # path -> hex digests
    excludes: tuple[str, ...] = ()
    keyrings: dict[str, tuple[str, ...]] = field(default_factory=dict)
    ima_buf: dict[str, tuple[str, ...]] = field(default_factory=dict)
    ignored_keyrings: tuple[str, ...] = ()
    log_hash_alg: str = "sha1"
    release: int = 0
    generator: int = GENERATOR_UNKNOWN
    timestamp: str = ""
    verification_keys: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "meta": {"version": VERSION, "generator": self.generator,
                     "timestamp": self.timestamp or _dt.datetime.now(_dt.UTC).isoformat()},
            "release": self.release,
            "digests": {p: list(d) for p, d in sorted(self.digests.items())},
            "excludes": list(self.excludes),
            "keyrings": {k: list(v) for k, v in sorted(self.keyrings.items())},
            "ima": {"ignored_keyrings": list(self.ignored_keyrings), "log_hash_alg": self.log_hash_alg,
                    "dm_policy": None},
            "ima-buf": {k: list(v) for k, v in sorted(self.ima_buf.items())},
            "verification-keys": self.verification_keys,
        }


def hexmap(data: Any, key: str, source: str) -> dict[str, tuple[str, ...]]:
    value = data.get(key, {})
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InputError(f"{key}: expected an object", source=source)
    out = {}
    for name, digests in value.items():
        if not isinstance(digests, list) or not all(isinstance(d, str) and _HEX.match(d) for d in digests):
            raise InputError(f"{key}[{str(name)[:80]!r}]: expected a list of hex digests", source=source)
        out[name] = tuple(d.lower() for d in digests)
    return out


def from_json(data: Any, source: str = "runtime policy") -> RuntimePolicy:
    if not isinstance(data, dict):
        raise InputError("expected a JSON object", source=source)
    meta = data.get("meta", {})
    if not isinstance(meta, dict) or meta.get("version", VERSION) != VERSION:
        raise InputError(f"meta.version: only Keylime runtime policy version {VERSION} is supported", source=source)
    excludes = data.get("excludes", [])
    if not isinstance(excludes, list) or not all(isinstance(x, str) for x in excludes):
        raise InputError("excludes: expected a list of regular expressions", source=source)
    for i, x in enumerate(excludes):
        try:
            re.compile(x)
        except re.error as exc:
            raise InputError(f"excludes[{i}]: invalid regular expression: {exc}", source=source) from None
    ima = data.get("ima", {}) or {}
    if not isinstance(ima, dict):
        raise InputError("ima: expected an object", source=source)
    ignored = ima.get("ignored_keyrings", []) or []
    if not isinstance(ignored, list) or not all(isinstance(x, str) for x in ignored):
        raise InputError("ima.ignored_keyrings: expected a list of names", source=source)
    release = data.get("release", 0)
    return RuntimePolicy(
        digests=hexmap(data, "digests", source), excludes=tuple(excludes),
        keyrings=hexmap(data, "keyrings", source), ima_buf=hexmap(data, "ima-buf", source),
        ignored_keyrings=tuple(ignored), log_hash_alg=str(ima.get("log_hash_alg", "sha1")),
        release=release if isinstance(release, int) else 0,
        generator=meta.get("generator", 0) if isinstance(meta.get("generator", 0), int) else 0,
        timestamp=str(meta.get("timestamp", "")), verification_keys=str(data.get("verification-keys", "") or ""))


def parse(text: str | bytes, source: str = "runtime policy") -> RuntimePolicy:
    return from_json(load_json(text, source), source)


def serialize(policy: RuntimePolicy) -> str:
    return json.dumps(policy.to_json(), indent=1) + "\n"


def _with_algo(hexdigest: str, where: str) -> str:
    algo = _BY_LENGTH.get(len(hexdigest))
    if algo is None:
        raise InputError(f"{where}: digest of {len(hexdigest)} hex digits matches no hash algorithm")
    return f"{algo}:{hexdigest}"


def to_reference(policy: RuntimePolicy) -> ReferenceManifest:
    files: dict[str, str | tuple[str, ...]] = {
        p: tuple(_with_algo(d, f"digests[{p[:80]!r}]") for d in ds) for p, ds in policy.digests.items()
    }
    buffers = {n: tuple(_with_algo(d, f"ima-buf[{n[:80]!r}]") for d in ds) for n, ds in policy.ima_buf.items()}
    for ring, ds in policy.keyrings.items():
        buffers.setdefault(ring, ())
        buffers[ring] += tuple(_with_algo(d, f"keyrings[{ring[:80]!r}]") for d in ds)
    # Keylime matches excludes with re.match at the start of the path
    rules = tuple(Rule(x, "regex", IGNORE, "Keylime exclude") for x in policy.excludes)
    return ReferenceManifest(files, rules, buffers)


def from_reference(manifest: ReferenceManifest, log_hash_alg: str = "sha1") -> RuntimePolicy:
    """Keylime has no 'any digest' rule: such rules become excludes (the file is then not checked)."""
    if not isinstance(manifest.files, dict):
        raise TypeError("a manifest loaded with load_compact cannot be converted")
    digests = {p: tuple(d.split(":", 1)[1] for d in manifest.digests(p)) for p in manifest.files}
    ima_buf = {n: tuple(d.split(":", 1)[1] for d in ds) for n, ds in manifest.buffers.items()}
    excludes = tuple(r.regex() if r.kind == "glob" else r.pattern for r in manifest.rules)
    return RuntimePolicy(digests=digests, excludes=excludes, ima_buf=ima_buf, log_hash_alg=log_hash_alg)
