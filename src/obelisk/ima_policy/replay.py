"""Replay of IMA measurements into PCR values, per TPM bank.

Kernels >= 5.8 extend each bank with the template data hashed by that bank's
algorithm. Older kernels extend the SHA-1 template hash zero-padded to the bank's
size into every bank. A violation (listed as zeros) extends all ones: the full
bank size on >= 5.8, 20 bytes of 0xff zero-padded before.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from obelisk.core.errors import InputError
from obelisk.ima_policy.measurement_list import Entry
from obelisk.tpm import algorithms
from obelisk.tpm.pcr import extend

BANK_SIZES: dict[str, int] = {a.name: a.digest_size for a in algorithms.SHA_BANKS}
BANKS: tuple[str, ...] = tuple(BANK_SIZES)
IMA_PCR = 10

PER_BANK = "per-bank"  # kernel >= 5.8
SHA1_PADDED = "sha1-padded"  # kernel < 5.8
MODES = (PER_BANK, SHA1_PADDED)


def check_banks(banks: Iterable[str]) -> tuple[str, ...]:
    out = tuple(banks)
    for bank in out:
        if bank not in BANK_SIZES:
            raise InputError(f"unknown PCR bank {bank!r} (known: {', '.join(BANKS)})")
    return out


def extend_digest(entry: Entry, bank: str, mode: str = PER_BANK) -> bytes:
    """What the kernel extends into `bank` for this entry."""
    size = BANK_SIZES[bank]
    if mode == SHA1_PADDED:
        base = b"\xff" * 20 if entry.violation else entry.template_digest
        return base.ljust(size, b"\0")
    if entry.violation:
        return b"\xff" * size
    return hashlib.new(bank, entry.template_data).digest()


def replay(entries: Iterable[Entry], banks: Iterable[str] = BANKS, *, pcr: int = IMA_PCR,
           mode: str = PER_BANK) -> dict[str, bytes]:
    """PCR `pcr` per bank after extending every entry recorded for that PCR, from all zeros."""
    banks = check_banks(banks)
    values = {b: bytes(BANK_SIZES[b]) for b in banks}
    for entry in entries:
        if entry.pcr != pcr:
            continue
        for bank in banks:
            values[bank] = extend(values[bank], extend_digest(entry, bank, mode), bank)
    return values


@dataclass(frozen=True)
class PrefixMatch:
    """Where replaying a list reaches a quoted PCR value."""

    bank: str
    mode: str
    entries: int | None  # number of leading entries whose replay equals the PCR; None if none does
    total: int  # entries in the list

    @property
    def matched(self) -> bool:
        return self.entries is not None

    @property
    def whole_list(self) -> bool:
        return self.entries == self.total


def match_prefix(entries: list[Entry] | tuple[Entry, ...], bank: str, target: bytes, *, pcr: int = IMA_PCR,
                 mode: str = PER_BANK) -> PrefixMatch:
    """The longest prefix of the list (the whole list first) whose replay equals `target`.

    A list read after the PCRs may hold entries the PCR value does not cover yet.
    """
    value = bytes(BANK_SIZES[bank])
    found = 0 if value == target else None
    for i, entry in enumerate(entries, 1):
        if entry.pcr != pcr:
            continue
        value = extend(value, extend_digest(entry, bank, mode), bank)
        if value == target:
            found = i
    return PrefixMatch(bank, mode, found, len(entries))


def replay_all_pcrs(entries: Iterable[Entry], banks: Iterable[str] = BANKS, mode: str = PER_BANK
                    ) -> dict[int, dict[str, bytes]]:
    """Every PCR the list extends (policies may direct rules to PCRs other than 10)."""
    banks = check_banks(banks)
    out: dict[int, dict[str, bytes]] = {}
    for entry in entries:
        values = out.setdefault(entry.pcr, {b: bytes(BANK_SIZES[b]) for b in banks})
        for bank in banks:
            values[bank] = extend(values[bank], extend_digest(entry, bank, mode), bank)
    return out


def bank_for_size(size: int) -> str | None:
    return next((b for b, s in BANK_SIZES.items() if s == size), None)


def hexdict(values: Mapping[str, bytes]) -> dict[str, str]:
    return {k: v.hex() for k, v in values.items()}
