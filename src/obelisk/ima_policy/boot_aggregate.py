"""The `boot_aggregate` entry: IMA's digest over the boot PCRs, first in every list.

SHA-1 covers PCR 0-7. Since kernel 5.8 the other banks cover PCR 0-9 (boot loaders
measure the kernel and its command line into 8 and 9); before, 0-7 only. The entry's
digest algorithm names the bank it was computed from.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass

SHA1_PCRS = tuple(range(8))
NEW_PCRS = tuple(range(10))
OLD_PCRS = tuple(range(8))
NAME = "boot_aggregate"


def compute(bank: str, pcr_values: Mapping[int, bytes], pcrs: tuple[int, ...]) -> bytes:
    h = hashlib.new(bank)
    for i in pcrs:
        h.update(pcr_values[i])
    return h.digest()


def candidate_ranges(bank: str) -> tuple[tuple[int, ...], ...]:
    return (SHA1_PCRS,) if bank == "sha1" else (NEW_PCRS, OLD_PCRS)


@dataclass(frozen=True)
class AggregateCheck:
    bank: str
    expected: bytes  # from the list
    computed: dict[str, bytes]  # "0-9"/"0-7" -> digest over the given PCRs
    matched_range: str | None  # which range reproduced it

    @property
    def ok(self) -> bool:
        return self.matched_range is not None


def check(bank: str, expected: bytes, pcr_values: Mapping[int, bytes]) -> AggregateCheck | None:
    """Compare the list's boot_aggregate with one computed from `pcr_values` (of `bank`).

    None when the PCRs needed are not all given.
    """
    computed: dict[str, bytes] = {}
    for pcrs in candidate_ranges(bank):
        if all(i in pcr_values for i in pcrs):
            computed[f"0-{pcrs[-1]}"] = compute(bank, pcr_values, pcrs)
    if not computed:
        return None
    matched = next((k for k, v in computed.items() if v == expected), None)
    return AggregateCheck(bank, expected, computed, matched)
