"""manifest.json: the signed contract between build, verify, boot and attest, as one typed record.

`Manifest` (frozen dataclasses, below) is the whole file as the build writes it: the image's
name and version, the tools, the spec it was built from, every artifact and rootfs file with
its digest and signature, the IMA reference, the kernel command line, PCR 11's events and
predicted value, the /var disk. `parse(bytes, source) -> Manifest` is strict: an unknown key,
a missing one or a wrong type is refused in one line naming the field (`pcrs.events[2].digest`);
`serialize(Manifest) -> bytes` writes canonical JSON (sorted keys, one-space indent), so the
same build gives the same bytes and `serialize(parse(data)) == data` for every manifest the
build wrote. Both are driven by the record declarations alone: the fields and their types are
the schema, `meta(...)` adds what a type cannot say (allowed values, a pattern, a key that is
absent rather than null).

The detached signature `manifest.json.sig` is JSON holding the algorithm, the signature over
SHA-256/384/512 of manifest.json's exact bytes, and the signing certificate (PEM), so
`image verify` needs only the customer CA. It is checked over the bytes read, never over a
re-serialized record.
"""

from __future__ import annotations

import base64
import dataclasses
import difflib
import functools
import hashlib
import json
import re
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from obelisk.core.errors import InputError, ParseError
from obelisk.core.jsonsafe import load_json
from obelisk.ima_policy import reference
from obelisk.image.disk_image import DiskLayout
from obelisk.tpm.prediction import PcrPrediction
from obelisk.tpm.prediction_json import predictions_from_json

SCHEMA = "obelisk.image-manifest/2"  # 2: the UKI, disk.raw, Secure Boot, PCRs 4/7/11 (issue 13)
SIG_SCHEMA = "obelisk.image-manifest-signature/1"
MANIFEST = "manifest.json"
SIGNATURE = "manifest.json.sig"
MAX_MANIFEST_BYTES = 256 * 1024 * 1024
DEFAULT_VAR_SIZE_MIB = 64  # spec disk.size_mib's default, for manifests written before disk.size_mib

_HEX64 = r"[0-9a-f]{64}"


def meta(*, choices: tuple[str, ...] = (), pattern: str | None = None, omitted: bool = False) -> Any:
    """A field's constraints: allowed values, a regular expression, or `omitted` (absent from the
    JSON when None; such a field is optional on parse and never written as null)."""
    md = {"choices": choices, "pattern": re.compile(pattern) if pattern else None, "omitted": omitted}
    return field(default=None, metadata=md) if omitted else field(metadata=md)


# --- the record: one class per JSON object of manifest.json ---

@dataclass(frozen=True)
class Image:
    name: str
    version: str


@dataclass(frozen=True)
class Tool:
    name: str  # "obelisk"
    version: str  # obelisk's version
    gensquashfs: str  # `gensquashfs --version`, first line


@dataclass(frozen=True)
class Signing:
    key_id: str  # IMA key id (last 4 bytes of the subject key identifier), hex
    hash: str = meta(choices=("sha256", "sha384", "sha512"))
    certificate_sha256: str = meta(pattern=_HEX64)


@dataclass(frozen=True)
class Artifact:
    sha256: str = meta(pattern=_HEX64)
    size: int = meta()


FILE, DIR, SLINK = "file", "dir", "slink"
# Which keys each kind of entry has, besides path and type (uid and gid appear on any, only when not 0).
_FILE_KEYS = {FILE: ({"mode", "size", "sha256"}, {"ima"}), DIR: ({"mode"}, set()), SLINK: ({"target"}, set())}


class _Invalid(ValueError):
    def __init__(self, key: str, message: str):
        super().__init__(message)
        self.key = key


@dataclass(frozen=True)
class FileRecord:
    """One entry of the rootfs as the image holds it (files, directories and symlinks)."""

    path: str = meta(pattern=r"(?s)/.*")
    type: str = meta(choices=(FILE, DIR, SLINK))
    mode: str | None = meta(pattern=r"[0-7]{4}", omitted=True)  # files and directories
    size: int | None = meta(omitted=True)  # files
    sha256: str | None = meta(pattern=_HEX64, omitted=True)  # files
    ima: str | None = meta(omitted=True)  # files: security.ima, base64, when the image is signed
    target: str | None = meta(omitted=True)  # symlinks
    uid: int | None = meta(omitted=True)  # only when not root
    gid: int | None = meta(omitted=True)

    def __post_init__(self) -> None:
        required, optional = _FILE_KEYS.get(self.type, (set(), set()))
        for key in ("mode", "size", "sha256", "ima", "target"):
            present = getattr(self, key) is not None
            if key in required and not present:
                raise _Invalid(key, f"missing (a {self.type} entry has {', '.join(sorted(required))})")
            if present and key not in required | optional:
                raise _Invalid(key, f"not expected on a {self.type} entry")
        if (self.uid is None) != (self.gid is None):
            raise _Invalid("gid" if self.gid is None else "uid", "uid and gid come together")

    @property
    def owner(self) -> tuple[int, int]:
        return (self.uid or 0, self.gid or 0)


@dataclass(frozen=True)
class Devices:
    root: str
    var: str
    config: str


@dataclass(frozen=True)
class Uki:
    """The Unified Kernel Image at \\EFI\\BOOT\\BOOTX64.EFI in disk.raw's ESP (also OUT/uki.efi)."""

    sections: Mapping[str, str]  # section name -> sha256 of its contents (.linux, .osrel, .cmdline, .initrd, ...)
    authenticode_sha256: str = meta(pattern=_HEX64)  # what the firmware measures into PCR 4 and Secure Boot checks
    signed_by: str | None = meta()  # sha256 of the db certificate that signed it (secure_boot), else None


@dataclass(frozen=True)
class Verity:
    """dm-verity over the root partition; the root hash is on the UKI's command line."""

    root_hash: str = meta(pattern=_HEX64)
    salt: str = meta(pattern=_HEX64)
    hash_algorithm: str = meta(choices=("sha256",))
    data_block_size: int = meta()
    hash_block_size: int = meta()


@dataclass(frozen=True)
class SecureBoot:
    """The customer's Secure Boot keys enrolled in OUT/ovmf-vars.fd (certificate sha256s, DER)."""

    pk_sha256: str = meta(pattern=_HEX64)
    kek_sha256: str = meta(pattern=_HEX64)
    db_sha256: str = meta(pattern=_HEX64)
    variables: str = meta()  # the artifact holding the OVMF variable store


@dataclass(frozen=True)
class CmdlineWaiver:
    """A kernel profile's command-line check the image's line fails, waived by the spec's kernel.waivers."""

    id: str  # the check, e.g. kernel.cmdline.pti
    observed: str | None = meta()  # what the line holds (None: the parameter is missing)
    expected: str = meta()
    reason: str = meta()
    approver: str = meta()
    expires: str = meta(pattern=r"[0-9]{4}-[0-9]{2}-[0-9]{2}")


@dataclass(frozen=True)
class Boot:
    cmdline: str  # byte for byte the UKI's .cmdline, measured into PCR 11 by systemd-stub
    devices: Devices
    uki: Uki | None = meta(omitted=True)  # absent: no kernel in this build
    verity: Verity | None = meta(omitted=True)
    disk_image: DiskLayout | None = meta(omitted=True)  # disk.raw's GPT and each partition's digest
    secure_boot: SecureBoot | None = meta(omitted=True)
    # the kernel profile's command-line checks this line fails, each waived in the spec (absent: none)
    waived: tuple[CmdlineWaiver, ...] | None = meta(omitted=True)


@dataclass(frozen=True)
class Pcrs:
    bank: str = meta(choices=("sha256",))
    predicted: Mapping[int, bytes] = meta()  # PCR -> value on a running node (4, 7, 11)
    predictions: tuple[PcrPrediction, ...] = meta()  # the events behind each predicted value, in order
    note: str = meta()

    def prediction(self, pcr: int) -> PcrPrediction | None:
        return next((p for p in self.predictions if p.pcr == pcr), None)


@dataclass(frozen=True)
class Disk:
    var: str = meta(choices=("plain", "luks2"))
    policy: str | None = meta(choices=("pcr", "signed"))  # with luks2
    sealed_to: Mapping[int, bytes] = meta()  # PCR -> value /var's key opens under (luks2): 11 at leave-initrd, 7
    signed_policy: str | None = meta()  # the artifact holding the signed PCR 11 policy (policy signed; also .pcrsig)
    policy_certificate: str | None = meta()  # PEM of the key approving PCR policies (policy signed)
    size_mib: int | None = meta(omitted=True)  # the /var disk; absent from manifests built before it was added
    # spec upgrade.rollback_index / advance_rollback_index (docs/upgrade.md): absent without rollback protection
    rollback_index: int | None = meta(omitted=True)
    advance_rollback_index: bool | None = meta(omitted=True)


@dataclass(frozen=True)
class Kubernetes:
    role: str
    version: str
    binaries: str


@dataclass(frozen=True)
class Manifest:
    image: Image
    tool: Tool
    source_date_epoch: int
    spec: Mapping[str, Any]  # the spec as given, for people: no reader uses it (its values have fields here)
    signing: Signing | None  # None: an unsigned image
    artifacts: Mapping[str, Artifact]  # file name in OUT -> digest and size
    files: tuple[FileRecord, ...]  # sorted by path
    ima_reference: reference.ReferenceManifest  # also written as ima-reference.json
    boot: Boot
    pcrs: Pcrs
    disk: Disk
    kubernetes: Kubernetes
    sbom: str  # the SBOM artifact's name

    def regular_files(self) -> tuple[FileRecord, ...]:
        return tuple(f for f in self.files if f.type == FILE)

    def var_size_mib(self) -> int:
        """The /var disk's size. Manifests written before `disk.size_mib` existed only had it in their
        copy of the spec: read there for them, and nowhere else."""
        if self.disk.size_mib is not None:
            return self.disk.size_mib
        spec_disk = self.spec.get("disk")
        legacy = spec_disk.get("size_mib") if isinstance(spec_disk, Mapping) else None
        return legacy if isinstance(legacy, int) and not isinstance(legacy, bool) else DEFAULT_VAR_SIZE_MIB


# --- parse and serialize: one engine, driven by the declarations above ---

def _where(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


_JSON_NAMES = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", int: "an integer",
               float: "a number", type(None): "null"}


def _type_name(value: Any) -> str:
    return _JSON_NAMES.get(type(value), type(value).__name__)


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _decode(tp: Any, value: Any, path: str) -> Any:
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        assert len(inner) == 1, tp
        return _decode(inner[0], value, path)
    if tp is str or tp is int or tp is bool:
        if type(value) is not tp:
            raise ParseError(f"{path}: expected {_JSON_NAMES[tp]}, got {_type_name(value)}")
        return value
    if tp is bytes:
        if not isinstance(value, str) or not re.fullmatch(r"(?:[0-9a-f]{2})*", value):
            raise ParseError(f"{path}: expected lowercase hex, got {str(value)[:80]!r}")
        return bytes.fromhex(value)
    if origin is tuple and typing.get_args(tp)[0] is PcrPrediction:
        # the predictions' own strict reader (PCR ranges, digest sizes, a PCR predicted twice)
        try:
            return predictions_from_json(value, path)
        except InputError as exc:
            raise ParseError(str(exc)) from None
    if origin is tuple:
        if not isinstance(value, list):
            raise ParseError(f"{path}: expected a list, got {_type_name(value)}")
        item = typing.get_args(tp)[0]
        return tuple(_decode(item, v, f"{path}[{i}]") for i, v in enumerate(value))
    if origin is Mapping:
        key_type, item = typing.get_args(tp)
        if not isinstance(value, dict):
            raise ParseError(f"{path}: expected an object, got {_type_name(value)}")
        bad = next((k for k in value if key_type is int and not re.fullmatch(r"0|[1-9][0-9]{0,2}", k)), None)
        if bad is not None:
            raise ParseError(f"{_where(path, bad)}: expected a PCR index (a decimal number) as the key")
        return {(int(k) if key_type is int else k): _decode(item, v, _where(path, k)) for k, v in value.items()}
    if tp is reference.ReferenceManifest:
        return _reference(value, path)
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return _record(tp, value, path)
    raise TypeError(f"no JSON form for {tp!r}")  # a declaration this engine does not know: a bug here


def _record(cls: type, value: Any, path: str) -> Any:
    if not isinstance(value, dict):
        raise ParseError(f"{path}: expected an object, got {_type_name(value)}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in value:
        if key not in fields:
            close = difflib.get_close_matches(key, list(fields), n=1)
            hint = f"did you mean '{close[0]}'?" if close else f"known: {', '.join(fields)}"
            raise ParseError(f"{_where(path, key)}: unknown key ({hint})")
    hints = _hints(cls)
    kwargs = {}
    for name, f in fields.items():
        where = _where(path, name)
        if name not in value:
            if f.metadata.get("omitted"):
                continue
            raise ParseError(f"{where}: missing")
        if value[name] is None and f.metadata.get("omitted"):
            raise ParseError(f"{where}: null (leave the key out instead)")
        item = _decode(hints[name], value[name], where)
        if isinstance(item, str):
            choices, pattern = f.metadata.get("choices"), f.metadata.get("pattern")
            if choices and item not in choices:
                raise ParseError(f"{where}: {item[:80]!r} is not one of {', '.join(choices)}")
            if pattern is not None and not pattern.fullmatch(item):
                raise ParseError(f"{where}: {item[:80]!r} is not {pattern.pattern}")
        kwargs[name] = item
    try:
        return cls(**kwargs)
    except _Invalid as exc:
        raise ParseError(f"{_where(path, exc.key)}: {exc}") from None


_REFERENCE_KEYS = ("schema", "image", "files", "buffers", "rules")


def _reference(value: Any, path: str) -> reference.ReferenceManifest:
    """The IMA component's own format, parsed by its own parser; only unknown keys are refused here."""
    if isinstance(value, dict):
        for key in value:
            if key not in _REFERENCE_KEYS:
                raise ParseError(f"{_where(path, key)}: unknown key (known: {', '.join(_REFERENCE_KEYS)})")
    try:
        return reference.from_json(value, path)
    except InputError as exc:
        raise ParseError(str(exc)) from None


def _encode(value: Any) -> Any:
    if isinstance(value, reference.ReferenceManifest):  # a format of its own, with its own to_json
        return value.to_json()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _encode(getattr(value, f.name)) for f in dataclasses.fields(value)
                if not (f.metadata.get("omitted") and getattr(value, f.name) is None)}
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, (tuple, list)):
        return [_encode(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _encode(v) for k, v in value.items()}
    return value


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        seen: set[str] = set()
        dup = next(k for k, _ in pairs if k in seen or seen.add(k))  # type: ignore[func-returns-value]
        raise ParseError(f"{dup}: the key appears twice in one object")
    return out


def parse(data: bytes | str, source: str) -> Manifest:
    """manifest.json's bytes -> Manifest; anything but a complete manifest is refused, naming the field."""
    if len(data) > MAX_MANIFEST_BYTES:
        raise ParseError("manifest too large", source=source)
    from obelisk.core.jsonsafe import load_json

    doc = load_json(data, source, max_bytes=MAX_MANIFEST_BYTES, object_pairs_hook=_no_duplicates)
    return from_json(doc, source)


def from_json(doc: Any, source: str) -> Manifest:
    """An already decoded manifest.json (a reader that looked at the schema first) -> Manifest."""
    if not is_manifest(doc):
        raise ParseError(f"not an obelisk image manifest (schema {SCHEMA})", source=source)
    try:
        return _record(Manifest, {k: v for k, v in doc.items() if k != "schema"}, "")
    except ParseError as exc:
        raise ParseError(str(exc), source=source) from None


def is_manifest(doc: Any) -> bool:
    """Whether decoded JSON claims to be an image manifest (its schema), before parsing it."""
    return isinstance(doc, dict) and doc.get("schema") == SCHEMA


def to_json(m: Manifest) -> dict[str, Any]:
    return {"schema": SCHEMA, **_encode(m)}


def serialize(m: Manifest) -> bytes:
    return dumps(to_json(m))


def dumps(manifest: Mapping[str, Any]) -> bytes:
    """Canonical JSON as obelisk writes its artifacts: sorted keys, one-space indent, UTF-8, final newline."""
    return (json.dumps(manifest, indent=1, sort_keys=True, ensure_ascii=False) + "\n").encode()


def artifact_record(path: Path) -> Artifact:
    with open(path, "rb") as handle:
        digest = hashlib.file_digest(handle, "sha256").hexdigest()
    return Artifact(sha256=digest, size=path.stat().st_size)


# Paths on a node that hold its own data, outside the signed root: measured entries there may vary.
VARYING = (("/var/**", "the node's own state (LUKS2/ext2 volume), not part of the image"),
           ("/run/**", "tmpfs, created at boot"), ("/tmp/**", "tmpfs, created at boot"),
           ("/dev/**", "devtmpfs"), ("/proc/**", "procfs"), ("/sys/**", "sysfs"))


def ima_reference(files: tuple[FileRecord, ...], image: str) -> reference.ReferenceManifest:
    """The IMA reference manifest (ima_policy's `obelisk.ima-reference/1`): path -> allowed digests."""
    return reference.ReferenceManifest(
        files={f.path: (f"sha256:{f.sha256}",) for f in files if f.type == FILE},
        rules=tuple(reference.Rule(glob, "glob", reference.IGNORE, why) for glob, why in VARYING),
        image=image)

@dataclass(frozen=True)
class ManifestSignature:
    algorithm: str  # sha256 | sha384 | sha512
    signature: bytes
    certificate: x509.Certificate

    def to_json(self) -> dict[str, str]:
        return {"schema": SIG_SCHEMA, "algorithm": self.algorithm,
                "signature": base64.b64encode(self.signature).decode(),
                "certificate": self.certificate.public_bytes(serialization.Encoding.PEM).decode()}

    @classmethod
    def loads(cls, data: bytes, source: str) -> ManifestSignature:
        try:
            d = load_json(data, source, max_bytes=1 << 20)
            if not isinstance(d, dict) or d.get("schema") != SIG_SCHEMA:
                raise InputError(f"not an obelisk manifest signature (schema {SIG_SCHEMA})", source=source)
            algorithm = d["algorithm"]
            if algorithm not in ("sha256", "sha384", "sha512"):
                raise InputError(f"algorithm: {algorithm!r} not accepted", source=source)
            return cls(algorithm, base64.b64decode(d["signature"], validate=True),
                       x509.load_pem_x509_certificate(d["certificate"].encode()))
        except InputError:
            raise
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise InputError(f"malformed manifest signature: {type(exc).__name__}: {exc}", source=source) from None


def sign(manifest_bytes: bytes, key: Any, cert: x509.Certificate, algorithm: str = "sha256") -> ManifestSignature:
    from obelisk.signer import hashalgo

    algo = hashalgo.by_name(algorithm)
    digest = hashlib.new(algorithm, manifest_bytes).digest()
    return ManifestSignature(algorithm, key.sign_digest(digest, algo), cert)


def check_signature(manifest_bytes: bytes, sig: ManifestSignature) -> bool:
    from obelisk.signer import hashalgo
    from obelisk.signer.keys import verify_digest_signature

    digest = hashlib.new(sig.algorithm, manifest_bytes).digest()
    return verify_digest_signature(sig.certificate.public_key(), sig.signature, digest,  # type: ignore[arg-type]
                                   hashalgo.by_name(sig.algorithm))


def chains_to(cert: x509.Certificate, ca: x509.Certificate) -> str | None:
    """None if `cert` was issued by `ca` (names, signature, `ca` a CA); else the reason.

    The kernel's view of an IMA or manifest signing certificate: no validity dates (see obelisk.signer.certs).
    """
    from obelisk.signer.certs import ChainError, check_issued_by

    try:
        check_issued_by(cert, ca)
    except ChainError as exc:
        return str(exc)
    return None


def load(path: Path) -> Manifest:
    from obelisk.core.inputs import read_bounded

    return parse(read_bounded(path, "image manifest", MAX_MANIFEST_BYTES), str(path))
