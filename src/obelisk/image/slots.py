"""The node's A/B slots: which one booted, writing the other, its one trial boot, commit and rollback.

A slot is a boot partition (FAT, the UKI as EFI/BOOT/BOOTX64.EFI), a root and its hash tree
(`disk_image.SLOTS`). The initramfs records the slot it mounted in /run/obelisk/slot (it picks the
slot whose hash tree matches the UKI's root hash, so the booted UKI and the mounted root are one
image). What the firmware boots next is in UEFI variables (`efiboot`):

- `Boot5100` / `Boot5101`: one entry per slot (HD(PARTUUID)/File(\\EFI\\BOOT\\BOOTX64.EFI));
- `BootOrder`: the committed slot first, then the other;
- a trial: the new slot is `BootNext` (the firmware boots it once and deletes it) and obelisk's own
  `ObeliskTrial` variable names it. The trial boot commits (BootOrder puts it first, ObeliskTrial is
  deleted, `ObeliskLastTrial` says committed) only once its agent answers and its self-check passed.
  If it does not (agent never up, kernel panic, hang until `upgrade.trial_seconds`), the node reboots
  and the firmware follows BootOrder to the committed slot, whose boot finds ObeliskTrial naming the
  other slot and records the failed trial in ObeliskLastTrial.

`SlotWriter` writes a slot's partitions from a stream, hashing as it writes, root first and the hash
tree last: a slot whose writing was cut short has no top hash block matching any root hash, and no
boot entry points at it until every digest matched.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

from obelisk.core.errors import InputError, ParseError
from obelisk.image import disk_image, efiboot

# Boot#### numbers whose hex has digits only: EDK2 names the variable it reads with "%04x" (lower case),
# Linux and efibootmgr write upper case, and UEFI variable names compare case-sensitively (found under OVMF)
SLOT_ENTRIES = {"a": 0x5100, "b": 0x5101}
UKI_PATH = "\\EFI\\BOOT\\BOOTX64.EFI"
TRIAL, LAST_TRIAL = "ObeliskTrial", "ObeliskLastTrial"
SLOT_FILE = "/run/obelisk/slot"
_CHUNK = 1 << 20


class Reader(Protocol):
    def read(self, n: int = -1, /) -> bytes: ...


class SlotError(Exception):
    """The slot cannot be written or switched; the message says why (nothing was activated)."""


def other(slot: str) -> str:
    if slot not in disk_image.SLOTS:
        raise InputError(f"slot {slot!r}: expected a or b")
    return "b" if slot == "a" else "a"


def booted_slot(path: str | os.PathLike[str] = SLOT_FILE) -> str:
    """The slot this boot mounted its root from (written by the initramfs)."""
    try:
        slot = Path(path).read_text().strip()
    except OSError as exc:
        raise SlotError(f"which slot booted is unknown ({path}: {exc.strerror}): not an A/B node") from None
    if slot not in disk_image.SLOTS:
        raise SlotError(f"{path}: {slot!r} is not a slot")
    return slot


@dataclass(frozen=True)
class TrialRecord:
    """A trial boot: the slot and image it tried, when, and (once known) how it ended."""

    slot: str
    image: str
    version: str
    started: int  # Unix time the slot was written
    deadline: int = 300  # seconds the trial boot has to commit (the new image's upgrade.trial_seconds)
    preserve_var: bool = True  # the new image's upgrade.preserve_var
    result: str | None = None  # None while in progress; "committed" | "failed"
    ended: int | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def parse_trial(data: bytes, source: str) -> TrialRecord:
    try:
        obj = json.loads(data.decode())
    except (UnicodeDecodeError, ValueError) as exc:
        raise ParseError(f"not JSON: {exc}", source=source, offset=0) from None
    if not isinstance(obj, dict) or set(obj) != set(TrialRecord.__dataclass_fields__):
        raise ParseError(f"expected the fields {sorted(TrialRecord.__dataclass_fields__)}", source=source, offset=0)
    if obj["slot"] not in disk_image.SLOTS or obj["result"] not in (None, "committed", "failed"):
        raise ParseError("slot or result out of range", source=source, offset=0)
    return TrialRecord(**obj)


def serialize_trial(record: TrialRecord) -> bytes:
    return json.dumps(record.to_json(), sort_keys=True).encode()


def boot_entry(slot: str, table: disk_image.GptTable, prefix: bytes = b"") -> efiboot.LoadOption:
    """The load option of `slot`'s boot partition on the node's disk (`prefix`: the disk's device path)."""
    name = disk_image.SLOTS[slot].boot
    for part in table.partitions:
        if part.name == name:
            return efiboot.LoadOption(description=f"obelisk slot {slot}", partition_number=part.number,
                                      partition_start=part.first_lba,
                                      partition_size=part.last_lba + 1 - part.first_lba, partition_uuid=part.uuid,
                                      path=UKI_PATH, prefix=prefix)
    raise SlotError(f"the node's disk has no partition {name!r}: not an A/B disk")


def disk_prefix(efivars: efiboot.EfiVars) -> bytes:
    """The node's disk as the firmware names it: the device path before the first media node of the entry
    this boot came from (BootCurrent: the firmware's own entry for the disk, or ours); empty if unknown."""
    current = efivars.boot_current()
    if current is None:
        return b""
    data = efivars.read(efiboot.boot_name(current))
    if data is None:
        return b""
    try:
        return efiboot.device_prefix(data, efiboot.boot_name(current))
    except ParseError:
        return b""


def _order(first: str, rest: tuple[int, ...]) -> list[int]:
    mine = [SLOT_ENTRIES[first], SLOT_ENTRIES[other(first)]]
    return mine + [n for n in rest if n not in mine]


@dataclass(frozen=True)
class SlotState:
    booted: str
    committed: str  # the slot BootOrder starts with (after this boot's bookkeeping)
    trial: TrialRecord | None  # in progress: this boot is the trial when trial.slot == booted
    last_trial: TrialRecord | None

    @property
    def in_trial(self) -> bool:
        return self.trial is not None and self.trial.slot == self.booted

    def to_json(self) -> dict[str, Any]:
        return {"booted": self.booted, "committed": self.committed, "in_trial": self.in_trial,
                "trial": self.trial.to_json() if self.trial else None,
                "last_trial": self.last_trial.to_json() if self.last_trial else None}


def _read_trial(efivars: efiboot.EfiVars, name: str) -> TrialRecord | None:
    data = efivars.read(name, efiboot.OBELISK_VARIABLE)
    return parse_trial(data, name) if data is not None else None


def _committed(efivars: efiboot.EfiVars, booted: str) -> str:
    for number in efivars.boot_order():
        for slot, entry in SLOT_ENTRIES.items():
            if number == entry:
                return slot
    return booted  # no slot entries yet: the factory boot (slot a through the removable path)


def state(efivars: efiboot.EfiVars, booted: str) -> SlotState:
    return SlotState(booted=booted, committed=_committed(efivars, booted), trial=_read_trial(efivars, TRIAL),
                     last_trial=_read_trial(efivars, LAST_TRIAL))


def record_boot(efivars: efiboot.EfiVars, booted: str, now: Callable[[], float] = time.time) -> SlotState:
    """At every boot: a trial naming another slot than the one booted has failed (the firmware went back):
    record it and forget the trial. Returns the state after that."""
    trial = _read_trial(efivars, TRIAL)
    if trial is not None and trial.slot != booted:
        failed = TrialRecord(**{**trial.to_json(), "result": "failed", "ended": int(now())})
        efivars.write(LAST_TRIAL, serialize_trial(failed), efiboot.OBELISK_VARIABLE)
        efivars.delete(TRIAL, efiboot.OBELISK_VARIABLE)
    return state(efivars, booted)


def start_trial(efivars: efiboot.EfiVars, table: disk_image.GptTable, booted: str, record: TrialRecord) -> None:
    """Boot `record.slot` once: entries for both slots, BootOrder with the booted slot first (where a failed
    trial returns to), the trial record, then BootNext."""
    if record.slot == booted:
        raise SlotError(f"slot {booted} is the one running: write the other")
    prefix = disk_prefix(efivars)
    for slot, number in SLOT_ENTRIES.items():
        efivars.write(efiboot.boot_name(number), efiboot.serialize_load_option(boot_entry(slot, table, prefix)))
    efivars.write("BootOrder", efiboot.serialize_boot_order(_order(booted, efivars.boot_order())))
    efivars.write(TRIAL, serialize_trial(record), efiboot.OBELISK_VARIABLE)
    efivars.write("BootNext", efiboot.serialize_boot_order([SLOT_ENTRIES[record.slot]]))


def commit(efivars: efiboot.EfiVars, booted: str, now: Callable[[], float] = time.time) -> TrialRecord | None:
    """This trial boot came up: BootOrder starts with it from now on. Returns the committed record (None
    when this boot was not a trial: nothing changes)."""
    trial = _read_trial(efivars, TRIAL)
    if trial is None or trial.slot != booted:
        return None
    efivars.write("BootOrder", efiboot.serialize_boot_order(_order(booted, efivars.boot_order())))
    done = TrialRecord(**{**trial.to_json(), "result": "committed", "ended": int(now())})
    efivars.write(LAST_TRIAL, serialize_trial(done), efiboot.OBELISK_VARIABLE)
    efivars.delete(TRIAL, efiboot.OBELISK_VARIABLE)
    return done


def check_layout(table: disk_image.GptTable, layout: disk_image.DiskLayout, slot: str) -> None:
    """The new image's slot partitions are where the node's disk has them (same GUIDs, places, sizes)."""
    on_disk = {p.name: p for p in table.partitions}
    for name in disk_image.SLOTS[slot].partitions:
        want = layout.partition(name)
        have = on_disk.get(name)
        if have is None:
            raise SlotError(f"the node's disk has no partition {name}")
        got = (have.uuid, have.first_lba * disk_image.SECTOR, (have.last_lba + 1 - have.first_lba) * disk_image.SECTOR)
        if got != (want.uuid, want.start, want.size):
            raise SlotError(f"partition {name}: the new image has {want.uuid} at {want.start} ({want.size} bytes), "
                            f"the node {got[0]} at {got[1]} ({got[2]} bytes): another disk layout")


@dataclass(frozen=True)
class Part:
    """One piece of a slot to write: which partition, how many bytes, and the sha256 they must have (of
    the bytes alone, or with zeros up to `digest_size` as disk.raw's partition digests are taken)."""

    partition: str  # GPT name
    length: int
    sha256: str
    digest_size: int | None = None


class SlotWriter:
    """Writes a slot's parts into the node's disk (a block device or a disk image file)."""

    def __init__(self, disk: str | os.PathLike[str], table: disk_image.GptTable):
        self.disk = os.fspath(disk)
        self.table = table
        self.written = 0

    def _extent(self, name: str) -> tuple[int, int]:
        for part in self.table.partitions:
            if part.name == name:
                return part.first_lba * disk_image.SECTOR, (part.last_lba + 1 - part.first_lba) * disk_image.SECTOR
        raise SlotError(f"the node's disk has no partition {name}")

    def invalidate(self, slot: str) -> None:
        """Zero the slot's hash tree superblock and top block first: until the tree is written again, last,
        no root hash matches this slot."""
        start, _ = self._extent(disk_image.SLOTS[slot].verity)
        with open(self.disk, "r+b") as disk:
            disk.seek(start)
            disk.write(bytes(8192))
            disk.flush()
            os.fsync(disk.fileno())

    def write(self, part: Part, source: Reader, progress: Callable[[int], None] | None = None) -> None:
        start, size = self._extent(part.partition)
        if part.length > size:
            raise SlotError(f"{part.partition}: {part.length} bytes do not fit its {size} bytes")
        digest = hashlib.sha256()
        remaining = part.length
        with open(self.disk, "r+b") as disk:
            disk.seek(start)
            while remaining:
                chunk = source.read(min(_CHUNK, remaining))
                if not chunk:
                    raise SlotError(f"{part.partition}: the stream ended {remaining} bytes early")
                digest.update(chunk)
                disk.write(chunk)
                remaining -= len(chunk)
                self.written += len(chunk)
                if progress:
                    progress(len(chunk))
            disk.flush()
            os.fsync(disk.fileno())
        if part.digest_size is not None:
            zeros = bytes(_CHUNK)
            left = part.digest_size - part.length
            while left > 0:
                digest.update(zeros[:min(left, _CHUNK)])
                left -= _CHUNK
        if digest.hexdigest() != part.sha256:
            raise SlotError(f"{part.partition}: sha256 {digest.hexdigest()}, the signed manifest says {part.sha256}")


def _partition_entry(partition_name: str, sysfs: str) -> Path | None:
    """The sysfs entry of the block device whose GPT name is `partition_name`."""
    for entry in sorted(Path(sysfs).iterdir()):
        try:
            uevent = (entry / "uevent").read_text()
        except OSError:
            continue
        if f"PARTNAME={partition_name}" in uevent.splitlines():
            return entry
    return None


def disk_of(partition_name: str = disk_image.VAR, sysfs: str = "/sys/class/block") -> str:
    """The node's disk: the whole disk holding the partition named `partition_name` (/dev/vda)."""
    entry = _partition_entry(partition_name, sysfs)
    if entry is None:
        raise SlotError(f"no partition named {partition_name}: not an obelisk disk")
    return "/dev/" + entry.resolve().parent.name


def disk_of_partition(partition_name: str, sysfs: str = "/sys/class/block") -> str:
    """The device of the partition named `partition_name` (/dev/vda7)."""
    entry = _partition_entry(partition_name, sysfs)
    if entry is None:
        raise SlotError(f"no partition named {partition_name}")
    return "/dev/" + entry.name
