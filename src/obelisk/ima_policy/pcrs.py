"""Quoted PCR values read from a file: `tpm2_pcrread` YAML, evmctl's `PCR-NN: hex`
lines, or tsspcrread's `N: hex` lines.

    sha256:                      PCR-10: 3134...          pcrread: tsspcrread -halg sha1
      10 : 0x1F2E...             (bank from the digest      10: 3134641a...
                                  size, or `bank,FILE`)
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from obelisk.core.errors import InputError
from obelisk.ima_policy.replay import BANK_SIZES, bank_for_size

MAX_PCR_FILE = 1024 * 1024
_LINE = re.compile(r"^\s*(?:PCR-?)?(\d{1,2})\s*[:=]?\s*(?:0x)?([0-9a-fA-F]+)\s*$")
_HALG = re.compile(r"-halg\s+(sha\d+)")


@dataclass
class PcrValues:
    """bank -> {pcr index -> value}."""

    banks: dict[str, dict[int, bytes]] = field(default_factory=dict)

    def get(self, bank: str, index: int) -> bytes | None:
        return self.banks.get(bank, {}).get(index)

    def merge(self, other: PcrValues) -> None:
        for bank, values in other.banks.items():
            self.banks.setdefault(bank, {}).update(values)


def parse(text: str, source: str = "pcrs", bank: str | None = None) -> PcrValues:
    """Parse one PCR file; `bank` forces the bank of a file of plain lines."""
    if len(text) > MAX_PCR_FILE:
        raise InputError("PCR file too large", source=source)
    stripped = [ln for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    if not stripped:
        raise InputError("no PCR values", source=source)
    if re.match(r"^\s*(sha1|sha256|sha384|sha512|sm3_256)\s*:\s*$", stripped[0]) \
            or re.search(r"^pcrs:\s*$", text, re.M):
        return _parse_yaml(text, source)
    return _parse_lines(stripped, source, bank)


def _parse_yaml(text: str, source: str) -> PcrValues:
    from obelisk.core.yamlsafe import load_yaml  # here: PyYAML's import is a cost every verification would pay

    data = load_yaml(text, source)
    if not isinstance(data, dict):
        raise InputError("expected tpm2_pcrread output (bank: {index: value})", source=source)
    if isinstance(data.get("pcrs"), dict):  # tpm2_eventlog prints the replayed PCRs under 'pcrs:'
        data = data["pcrs"]
    out = PcrValues()
    for bank, values in data.items():
        if bank not in BANK_SIZES:
            continue
        if not isinstance(values, dict):
            raise InputError(f"{bank}: expected index: value pairs", source=source)
        size = BANK_SIZES[bank]
        for index, value in values.items():
            if not isinstance(index, int) or not 0 <= index < 64:
                raise InputError(f"{bank}: PCR index {index!r} invalid", source=source)
            if isinstance(value, int):  # YAML reads 0x... as an integer
                if value < 0 or value.bit_length() > size * 8:
                    raise InputError(f"{bank}.{index}: value does not fit {size} bytes", source=source)
                raw = value.to_bytes(size, "big")
            elif isinstance(value, str):
                raw = _hex(value.removeprefix("0x"), source, f"{bank}.{index}")
            else:
                raise InputError(f"{bank}.{index}: expected a hex value", source=source)
            if len(raw) != size:
                raise InputError(f"{bank}.{index}: expected {size} bytes, got {len(raw)}", source=source)
            out.banks.setdefault(bank, {})[index] = raw
    if not out.banks:
        raise InputError("no sha1/sha256/sha384/sha512 bank found", source=source)
    return out


def _parse_lines(lines: list[str], source: str, bank: str | None) -> PcrValues:
    out = PcrValues()
    current = bank
    for lineno, line in enumerate(lines, 1):
        halg = _HALG.search(line)
        if line.startswith("pcrread:") or halg:
            if halg and bank is None:
                current = halg.group(1)
            continue
        m = _LINE.match(line)
        if not m:
            raise InputError(f"line {lineno}: expected 'PCR-NN: hex' or 'N: hex'", source=source)
        index = int(m.group(1))
        raw = _hex(m.group(2), source, f"line {lineno}")
        line_bank = current or bank_for_size(len(raw))
        if line_bank is None or BANK_SIZES.get(line_bank) != len(raw):
            raise InputError(f"line {lineno}: {len(raw)}-byte value does not fit bank {line_bank}", source=source)
        out.banks.setdefault(line_bank, {})[index] = raw
    return out


def _hex(text: str, source: str, where: str) -> bytes:
    try:
        return bytes.fromhex(text)
    except ValueError:
        raise InputError(f"{where}: invalid hex", source=source) from None


def load(spec: str) -> PcrValues:
    """The PCR file `FILE`, or evmctl's `bank,FILE`."""
    bank = None
    path = spec
    head, comma, tail = spec.partition(",")
    if comma and head in BANK_SIZES:
        bank, path = head, tail
    from obelisk.core.inputs import read_bounded

    data = read_bounded(path, "PCR file", MAX_PCR_FILE)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise InputError("PCR file is not text", source=path) from None
    return parse(text, path, bank)
