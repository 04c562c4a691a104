"""PCR arithmetic and PCR selections as users write them."""

from __future__ import annotations

from collections.abc import Iterable

from obelisk.core.errors import InputError
from obelisk.tpm import algorithms


def parse_pcr_list(text: str) -> tuple[int, ...]:
    """A PCR selection as users write it: `7,11`, `0-7`, or both; sorted, each PCR once."""
    out: list[int] = []
    try:
        for part in text.split(","):
            if "-" in part:
                lo, hi = (int(x) for x in part.split("-", 1))
                out += range(lo, hi + 1)
            elif part.strip():
                out.append(int(part))
    except ValueError:
        raise InputError(f"PCR list {text!r}: expected numbers like 0-11 or 7,11") from None
    if not out or any(not 0 <= p <= 23 for p in out):
        raise InputError(f"PCR list {text!r}: PCRs are 0..23")
    return tuple(sorted(set(out)))


def extend(value: bytes, digest: bytes, bank: str) -> bytes:
    """TPM2_PCR_Extend: a PCR of `bank` holding `value` holds H(value || digest) afterwards."""
    return algorithms.by_name(bank).digest(value + digest)


def composite_digest(values: Iterable[bytes], bank: str) -> bytes:
    """The hash of PCR values concatenated in selection order: TPMS_QUOTE_INFO.pcrDigest (hashed with the
    signing key's nameAlg) and PolicyPCR's pcrDigest."""
    h = algorithms.by_name(bank).new()
    for v in values:
        h.update(v)
    return h.digest()


def parse_pcr_values(items: Iterable[str], bank: str, what: str = "PCR value") -> dict[int, bytes]:
    """PCR values as users write them, `N=HEX` each (a later N wins); InputError naming the item."""
    size = algorithms.by_name(bank).digest_size
    out: dict[int, bytes] = {}
    for item in items:
        idx, sep, value = item.partition("=")
        try:
            pcr, digest = int(idx), bytes.fromhex(value)
        except ValueError:
            pcr, digest = -1, b""
        if not sep or not 0 <= pcr <= 23 or len(digest) != size:
            raise InputError(f"{what} {item!r}: expected N={2 * size} hex digits ({bank})")
        out[pcr] = digest
    return out
