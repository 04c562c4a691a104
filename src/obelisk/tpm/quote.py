"""TPM2 quote structures, parsed strictly: TPMS_ATTEST (of type quote) and TPMT_SIGNATURE.

These bytes come from the node and are untrusted. The parser checks the magic, the structure
type, every size against the bytes left and against the TPM's own limits, and that nothing
trails; failures are `ParseError`s naming the field and offset. TPM structures are big-endian.

Signature checking uses `cryptography` with an explicit allow-list of hash algorithms.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from obelisk.core.errors import InputError, ParseError
from obelisk.tpm import algorithms
from obelisk.tpm.algorithms import ECDSA, RSAPSS, RSASSA

TPM_GENERATED_VALUE = 0xFF544347
TPM_ST_ATTEST_QUOTE = 0x8018

# Quotes select, and sign with, the SHA-1/SHA-2 banks only (algorithms.SHA_BANKS).
BANKS = algorithms.SHA_BANKS
# sha1 signatures are refused: collisions are practical.
ALLOWED_SIGNATURE_HASHES = frozenset({"sha256", "sha384", "sha512"})

MAX_NAME = 2 + 64  # nameAlg + largest digest
MAX_EXTRA_DATA = 64  # sizeof(TPMU_HA)
MAX_PCR_BANKS = 16  # TPM2_NUM_PCR_BANKS
MAX_SELECT = 4  # PCR_SELECT_MAX for 24..32 PCRs
MAX_RSA_SIG = 512  # 4096-bit keys
MAX_ECC_PARAM = 66  # P-521


@dataclass(frozen=True)
class PCRSelection:
    bank: str
    pcrs: tuple[int, ...]
    size_of_select: int = 3


@dataclass(frozen=True)
class ClockInfo:
    clock: int
    reset_count: int
    restart_count: int
    safe: bool


@dataclass(frozen=True)
class Attest:
    """TPMS_ATTEST whose attested member is TPMS_QUOTE_INFO."""

    qualified_signer: bytes
    extra_data: bytes
    clock_info: ClockInfo
    firmware_version: int
    selections: tuple[PCRSelection, ...]
    pcr_digest: bytes
    magic: int = TPM_GENERATED_VALUE
    type: int = TPM_ST_ATTEST_QUOTE


@dataclass(frozen=True)
class Signature:
    """TPMT_SIGNATURE: RSASSA/RSAPSS carry one blob, ECDSA carries r and s."""

    sig_alg: int
    hash_alg: int
    rsa: bytes = b""
    ecdsa_r: bytes = b""
    ecdsa_s: bytes = b""

    @property
    def hash_name(self) -> str:
        return algorithms.name_of(self.hash_alg) if algorithms.is_known(self.hash_alg, BANKS) \
            else f"alg_0x{self.hash_alg:04x}"

    @property
    def scheme_name(self) -> str:
        return algorithms.scheme_name(self.sig_alg)


class _Reader:
    __slots__ = ("data", "pos", "what")

    def __init__(self, data: bytes, what: str):
        self.data = data
        self.pos = 0
        self.what = what

    def fail(self, message: str, at: int | None = None) -> ParseError:
        return ParseError(message, source=self.what, offset=self.pos if at is None else at)

    def take(self, n: int, field: str) -> bytes:
        if n > len(self.data) - self.pos:
            raise self.fail(f"{field}: needs {n} bytes, {len(self.data) - self.pos} left")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def u8(self, field: str) -> int:
        return self.take(1, field)[0]

    def u16(self, field: str) -> int:
        return struct.unpack(">H", self.take(2, field))[0]

    def u32(self, field: str) -> int:
        return struct.unpack(">I", self.take(4, field))[0]

    def u64(self, field: str) -> int:
        return struct.unpack(">Q", self.take(8, field))[0]

    def tpm2b(self, field: str, limit: int) -> bytes:
        at = self.pos
        size = self.u16(f"{field} size")
        if size > limit:
            raise self.fail(f"{field} size {size} exceeds {limit}", at)
        return self.take(size, field)

    def end(self) -> None:
        if self.pos != len(self.data):
            raise self.fail(f"{len(self.data) - self.pos} trailing bytes after the structure")


@dataclass(frozen=True)
class AttestHeader:
    """What every TPMS_ATTEST starts with, whatever it attests."""

    magic: int
    type: int
    qualified_signer: bytes
    extra_data: bytes
    clock_info: ClockInfo
    firmware_version: int


def read_attest_header(r: _Reader, expected_type: int, type_name: str) -> AttestHeader:
    """magic | type | qualifiedSigner | extraData | clockInfo | firmwareVersion, the type checked."""
    magic = r.u32("magic")
    if magic != TPM_GENERATED_VALUE:
        raise r.fail(f"magic 0x{magic:08x} is not TPM_GENERATED_VALUE (0xff544347): not made by a TPM", 0)
    st = r.u16("type")
    if st != expected_type:
        raise r.fail(f"type 0x{st:04x} is not {type_name} (0x{expected_type:04x})", 4)
    signer = r.tpm2b("qualifiedSigner", MAX_NAME)
    extra = r.tpm2b("extraData", MAX_EXTRA_DATA)
    clock = r.u64("clock")
    reset = r.u32("resetCount")
    restart = r.u32("restartCount")
    at = r.pos
    safe = r.u8("safe")
    if safe > 1:
        raise r.fail(f"safe is {safe}, must be 0 or 1", at)
    firmware = r.u64("firmwareVersion")
    return AttestHeader(magic, st, signer, extra, ClockInfo(clock, reset, restart, bool(safe)), firmware)


def parse_attest(data: bytes, what: str = "quote") -> Attest:
    r = _Reader(bytes(data), what)
    h = read_attest_header(r, TPM_ST_ATTEST_QUOTE, "TPM_ST_ATTEST_QUOTE")
    at = r.pos
    count = r.u32("pcrSelect count")
    if count > MAX_PCR_BANKS:
        raise r.fail(f"pcrSelect count {count} exceeds {MAX_PCR_BANKS}", at)
    selections = []
    for i in range(count):
        at = r.pos
        alg = r.u16(f"pcrSelect[{i}].hash")
        if not algorithms.is_known(alg, BANKS):
            raise r.fail(f"pcrSelect[{i}].hash 0x{alg:04x} is not a hash obelisk knows", at)
        at = r.pos
        size = r.u8(f"pcrSelect[{i}].sizeofSelect")
        if size > MAX_SELECT:
            raise r.fail(f"pcrSelect[{i}].sizeofSelect {size} exceeds {MAX_SELECT}", at)
        bitmap = r.take(size, f"pcrSelect[{i}].pcrSelect")
        pcrs = tuple(b * 8 + bit for b in range(size) for bit in range(8) if bitmap[b] & (1 << bit))
        selections.append(PCRSelection(algorithms.name_of(alg), pcrs, size))
    digest = r.tpm2b("pcrDigest", 64)
    r.end()
    return Attest(qualified_signer=h.qualified_signer, extra_data=h.extra_data, clock_info=h.clock_info,
                  firmware_version=h.firmware_version, selections=tuple(selections), pcr_digest=digest,
                  magic=h.magic, type=h.type)


def serialize_attest(a: Attest) -> bytes:
    out = bytearray(struct.pack(">IH", a.magic, a.type))
    out += struct.pack(">H", len(a.qualified_signer)) + a.qualified_signer
    out += struct.pack(">H", len(a.extra_data)) + a.extra_data
    ci = a.clock_info
    out += struct.pack(">QIIBQ", ci.clock, ci.reset_count, ci.restart_count, int(ci.safe), a.firmware_version)
    out += struct.pack(">I", len(a.selections))
    for sel in a.selections:
        bitmap = bytearray(sel.size_of_select)
        for p in sel.pcrs:
            bitmap[p // 8] |= 1 << (p % 8)
        out += struct.pack(">HB", algorithms.by_name(sel.bank, BANKS).alg_id, sel.size_of_select) + bytes(bitmap)
    out += struct.pack(">H", len(a.pcr_digest)) + a.pcr_digest
    return bytes(out)


def parse_signature(data: bytes, what: str = "signature") -> Signature:
    r = _Reader(bytes(data), what)
    alg = r.u16("sigAlg")
    at = r.pos
    halg = r.u16("hash")
    if not algorithms.is_known(halg, BANKS):
        raise r.fail(f"signature hash 0x{halg:04x} is not a hash obelisk knows", at)
    if alg in (RSASSA, RSAPSS):
        sig = Signature(alg, halg, rsa=r.tpm2b("signature", MAX_RSA_SIG))
    elif alg == ECDSA:
        sig = Signature(alg, halg, ecdsa_r=r.tpm2b("signatureR", MAX_ECC_PARAM),
                        ecdsa_s=r.tpm2b("signatureS", MAX_ECC_PARAM))
    else:
        raise r.fail(f"sigAlg 0x{alg:04x} is not RSASSA, RSAPSS or ECDSA", 0)
    r.end()
    return sig


def serialize_signature(s: Signature) -> bytes:
    out = struct.pack(">HH", s.sig_alg, s.hash_alg)
    if s.sig_alg == ECDSA:
        return out + struct.pack(">H", len(s.ecdsa_r)) + s.ecdsa_r + struct.pack(">H", len(s.ecdsa_s)) + s.ecdsa_s
    return out + struct.pack(">H", len(s.rsa)) + s.rsa


class SignatureError(Exception):
    """The signature does not verify; the message says why."""


def verify_signature(public_key: object, sig: Signature, message: bytes) -> None:
    """Raise SignatureError unless `sig` over `message` verifies under `public_key` (a cryptography key)."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
    from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

    if sig.hash_name not in ALLOWED_SIGNATURE_HASHES:
        raise SignatureError(f"signature hash {sig.hash_name} is not allowed "
                             f"(allowed: {', '.join(sorted(ALLOWED_SIGNATURE_HASHES))})")
    algorithm = {"sha256": hashes.SHA256(), "sha384": hashes.SHA384(), "sha512": hashes.SHA512()}[sig.hash_name]
    try:
        if sig.sig_alg == ECDSA:
            if not isinstance(public_key, ec.EllipticCurvePublicKey):
                raise SignatureError("ECDSA signature but the AK is not an ECC key")
            der = encode_dss_signature(int.from_bytes(sig.ecdsa_r, "big"), int.from_bytes(sig.ecdsa_s, "big"))
            public_key.verify(der, message, ec.ECDSA(algorithm))
        else:
            if not isinstance(public_key, rsa.RSAPublicKey):
                raise SignatureError(f"{sig.scheme_name} signature but the AK is not an RSA key")
            pad = padding.PKCS1v15() if sig.sig_alg == RSASSA else padding.PSS(
                mgf=padding.MGF1(algorithm), salt_length=padding.PSS.AUTO)
            public_key.verify(sig.rsa, message, pad, algorithm)
    except InvalidSignature:
        raise SignatureError("signature does not verify under the AK") from None


def selected_in_order(attest: Attest) -> list[tuple[str, int]]:
    """(bank, pcr) in the order the TPM concatenated them: selections in order, PCRs ascending."""
    return [(sel.bank, p) for sel in attest.selections for p in sel.pcrs]


# ---- tpm2-tools' "serialized" PCR file (tpm2_quote -o, tpm2_checkquote -f) ----------------------
# It is the C structs in host (little-endian) memory layout: TPML_PCR_SELECTION (count + 16 slots of
# {u16 hash, u8 sizeofSelect, u8[4] select, 1 pad}), u32 n, then n TPML_DIGEST (count + 8 slots of
# {u16 size, u8[64]}), each holding at most 8 values in selection order.

_SEL_SLOTS, _DIGEST_SLOTS, _DIGEST_BUF = 16, 8, 64
_SEL_SIZE = 4 + _SEL_SLOTS * 8
_TPML_DIGEST_SIZE = 4 + _DIGEST_SLOTS * (2 + _DIGEST_BUF)


def serialize_tools_pcrs(bank: str, values: list[tuple[int, bytes]]) -> bytes:
    """tpm2-tools' serialized PCR file for one bank; `values` as (pcr, value) in ascending order."""
    bitmap = bytearray(3)
    for p, _ in values:
        bitmap[p // 8] |= 1 << (p % 8)
    out = bytearray(struct.pack("<I", 1))
    out += struct.pack("<HB", algorithms.by_name(bank, BANKS).alg_id, 3) + bytes(bitmap) + b"\0" * 2
    out += b"\0" * (8 * (_SEL_SLOTS - 1))
    chunks = [values[i:i + _DIGEST_SLOTS] for i in range(0, len(values), _DIGEST_SLOTS)]
    out += struct.pack("<I", len(chunks))
    for chunk in chunks:
        out += struct.pack("<I", len(chunk))
        for _, v in chunk:
            out += struct.pack("<H", len(v)) + v.ljust(_DIGEST_BUF, b"\0")
        out += b"\0" * ((2 + _DIGEST_BUF) * (_DIGEST_SLOTS - len(chunk)))
    return bytes(out)


def parse_tools_pcrs(data: bytes, what: str = "PCR file") -> list[tuple[str, int, bytes]]:
    """(bank, pcr, value) in selection order from tpm2-tools' serialized PCR file."""
    r = _Reader(bytes(data), what)
    count = struct.unpack("<I", r.take(4, "selection count"))[0]
    if count > _SEL_SLOTS:
        raise r.fail(f"selection count {count} exceeds {_SEL_SLOTS}", 0)
    order: list[tuple[str, int]] = []
    for i in range(_SEL_SLOTS):
        at = r.pos
        alg, size = struct.unpack("<HB", r.take(3, f"selection[{i}]"))
        bitmap = r.take(4, f"selection[{i}].pcrSelect")
        r.take(1, "padding")
        if i >= count:
            continue
        if not algorithms.is_known(alg, BANKS) or size > MAX_SELECT:
            raise r.fail(f"selection[{i}]: hash 0x{alg:04x} / sizeofSelect {size} invalid", at)
        order += [(algorithms.name_of(alg), b * 8 + bit)
                  for b in range(size) for bit in range(8) if bitmap[b] & (1 << bit)]
    at = r.pos
    lists = struct.unpack("<I", r.take(4, "digest list count"))[0]
    if lists > (len(order) + _DIGEST_SLOTS - 1) // _DIGEST_SLOTS + 1:
        raise r.fail(f"digest list count {lists} does not fit {len(order)} selected PCRs", at)
    values: list[bytes] = []
    for i in range(lists):
        at = r.pos
        n = struct.unpack("<I", r.take(4, f"digests[{i}].count"))[0]
        if n > _DIGEST_SLOTS:
            raise r.fail(f"digests[{i}].count {n} exceeds {_DIGEST_SLOTS}", at)
        for j in range(_DIGEST_SLOTS):
            at = r.pos
            size = struct.unpack("<H", r.take(2, f"digests[{i}][{j}].size"))[0]
            buf = r.take(_DIGEST_BUF, f"digests[{i}][{j}]")
            if j < n:
                if size > _DIGEST_BUF:
                    raise r.fail(f"digests[{i}][{j}].size {size} exceeds {_DIGEST_BUF}", at)
                values.append(buf[:size])
    r.end()
    if len(values) != len(order):
        raise ParseError(f"{len(values)} PCR values for {len(order)} selected PCRs", source=what)
    return [(bank, p, v) for (bank, p), v in zip(order, values)]


def quoted_pcr_values(attest: Attest, data: bytes, what: str = "PCR file",
                      quote_what: str = "quote") -> tuple[str, dict[int, bytes]]:
    """(bank, {pcr: value}) for the PCRs `attest` selects, from a PCR file in either form tpm2-tools
    writes: the values concatenated in selection order (`tpm2_quote -F values`), recognised by its exact
    size, else the serialized PCR file (`tpm2_quote -o`, the default). The quote must select one bank."""
    order = selected_in_order(attest)
    banks = {b for b, _ in order}
    if len(banks) != 1:
        raise InputError(f"quote selects banks {sorted(banks)}: checkquote takes one bank", source=quote_what)
    bank = banks.pop()
    size = algorithms.by_name(bank, BANKS).digest_size
    if len(data) == size * len(order):  # -F values: the digests concatenated in selection order
        return bank, {p: data[i * size:(i + 1) * size] for i, (_, p) in enumerate(order)}
    listed = parse_tools_pcrs(data, what)  # tpm2-tools' default serialized file
    if [(b, p) for b, p, _ in listed] != order:
        raise InputError("the PCR file selects other PCRs than the quote", source=what)
    return bank, {p: v for _, p, v in listed}
