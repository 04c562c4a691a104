"""disk.raw, checked with the reference tools: sfdisk --json, mtools, fsck.fat, veritysetup, qemu-img."""

from __future__ import annotations

import hashlib
import json
import os
import re
import struct
import zlib
from pathlib import Path

import pytest

from obelisk.core import tools
from obelisk.core.errors import InputError, ParseError
from obelisk.image import disk_image, dmverity
from obelisk.image.disk_image import DiskLayout

SEED = "0f3c9d1e2b4a59687766554433221100ffeeddccbbaa99887766554433221100"
EPOCH = 1700000000
UKI = "EFI/BOOT/BOOTX64.EFI"


def _inputs(directory: Path) -> dict[str, Path]:
    """A stand-in UKI and root image (random, fixed by a seeded generator) and the root's hash tree."""
    directory.mkdir(parents=True, exist_ok=True)
    stream = hashlib.shake_256(b"disk image test inputs").digest(3 * 1024 * 1024 + 4096 * 700)
    (directory / "uki.efi").write_bytes(stream[:3 * 1024 * 1024 + 123])
    (directory / "root.squashfs").write_bytes(stream[3 * 1024 * 1024:])
    (directory / "loader.conf").write_text("timeout 0\n")
    tree = dmverity.format_hash_tree(directory / "root.squashfs", directory / "root.verity", seed=SEED)
    (directory / "root-hash").write_text(tree.root_hash)
    return {"uki": directory / "uki.efi", "root": directory / "root.squashfs", "verity": directory / "root.verity",
            "loader": directory / "loader.conf"}


def _build(directory: Path, files: dict[str, Path]) -> tuple[Path, DiskLayout]:
    out = directory / "disk.raw"
    layout = disk_image.build_disk_image(
        out, esp_files={UKI: files["uki"], "loader/loader.conf": files["loader"]}, root=files["root"],
        root_verity=files["verity"], var_size=64 << 20, seed=SEED, source_date_epoch=EPOCH)
    return out, layout


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    base = tmp_path_factory.mktemp("disk")
    files = _inputs(base / "in")
    disk, layout = _build(base / "out", files)
    return disk, layout, files


def _sfdisk_json(disk: Path) -> dict:
    return json.loads(tools.run("sfdisk", ["--json", disk]).stdout)["partitiontable"]


def test_sfdisk_reads_the_discoverable_partition_types_names_and_uuids(built):
    disk, layout, _ = built
    table = _sfdisk_json(disk)
    assert table["label"] == "gpt" and table["id"].lower() == layout.disk_guid
    assert table["sectorsize"] == 512
    # the type GUIDs systemd itself knows by these names (systemd-id128 show, systemd 252)
    known = dict(line.split() for line in tools.run("systemd-id128", ["show"]).stdout.decode().splitlines()[1:]
                 if len(line.split()) == 2)
    rows = table["partitions"]
    assert [row["name"] for row in rows] == ["esp", "root-a", "root-a-verity", "boot-b", "root-b", "root-b-verity",
                                             "var"]
    dps = {"esp": "esp", "root-a": "root-x86-64", "root-a-verity": "root-x86-64-verity", "boot-b": "xbootldr",
           "root-b": "root-x86-64", "root-b-verity": "root-x86-64-verity", "var": "var"}
    for row, part in zip(rows, layout.partitions, strict=True):
        assert row["type"].lower() == part.type_guid
        assert row["type"].lower().replace("-", "") == known[dps[part.name]]
        assert row["uuid"].lower() == part.uuid == disk_image.partition_uuid(SEED, part.name)
        assert row["start"] * 512 == part.start and row["size"] * 512 == part.size
        assert part.start % (1 << 20) == 0 and part.size % (1 << 20) == 0
        assert row.get("attrs") == ("GUID:60" if part.name.startswith("root") else None)
    assert tools.run("sfdisk", ["--verify", disk]).returncode == 0


def test_our_gpt_parser_reads_the_same_table_as_sfdisk(built):
    disk, layout, _ = built
    table = disk_image.read_gpt(disk)
    rows = _sfdisk_json(disk)["partitions"]
    assert table.disk_guid == layout.disk_guid
    ours = [(p.number, p.name, p.type_guid, p.uuid, p.first_lba, p.last_lba + 1 - p.first_lba)
            for p in table.partitions]
    theirs = [(i + 1, r["name"], r["type"].lower(), r["uuid"].lower(), r["start"], r["size"])
              for i, r in enumerate(rows)]
    assert ours == theirs
    assert table.partitions[1].attributes == disk_image.READ_ONLY_ATTRIBUTE


def test_the_esp_holds_the_uki_as_mtools_and_fsck_fat_read_it(built, tmp_path):
    disk, layout, files = built
    esp = layout.partition("esp")
    image = f"{disk}@@{esp.start}"
    env = {"MTOOLS_SKIP_CHECK": "1", "TZ": "UTC"}
    listing = tools.run("mdir", ["-i", image, "::/EFI/BOOT"], env=env).stdout.decode()
    size = files["uki"].stat().st_size
    assert re.search(rf"^BOOTX64\s+EFI\s+{size}\s+2023-11-14\s+22:13", listing, re.M), listing  # SOURCE_DATE_EPOCH
    tools.run("mcopy", ["-i", image, "::/EFI/BOOT/BOOTX64.EFI", tmp_path / "back.efi"], env=env)
    assert (tmp_path / "back.efi").read_bytes() == files["uki"].read_bytes()
    tools.run("mcopy", ["-i", image, "::/loader/loader.conf", tmp_path / "loader.conf"], env=env)
    assert (tmp_path / "loader.conf").read_text() == "timeout 0\n"
    # the file system itself is sound (dosfstools' checker, read-only)
    with open(disk, "rb") as src:
        src.seek(esp.start)
        (tmp_path / "esp.img").write_bytes(src.read(esp.size))
    fsck = tools.run("fsck.vfat", ["-n", tmp_path / "esp.img"], check=False)
    assert fsck.returncode == 0, fsck.stdout.decode() + fsck.stderr.decode()
    volume_id = disk_image.esp_volume_id(SEED).upper()
    assert "Volume in drive : is OBELISK-ESP" in listing
    assert f"Volume Serial Number is {volume_id[:4]}-{volume_id[4:]}" in listing


def test_the_root_partitions_verify_with_veritysetup_from_the_disk(built, tmp_path):
    disk, layout, files = built
    with open(disk, "rb") as src:
        for name in ("root-a", "root-a-verity"):
            part = layout.partition(name)
            src.seek(part.start)
            (tmp_path / name).write_bytes(src.read(part.size))
    root_hash = (files["root"].parent / "root-hash").read_text()
    verify = ["verify", tmp_path / "root-a", tmp_path / "root-a-verity", root_hash]
    assert tools.run("veritysetup", verify, check=False).returncode == 0
    with open(tmp_path / "root-a", "r+b") as part_file:
        part_file.seek(4096 * 500 + 7)
        byte = part_file.read(1)
        part_file.seek(-1, os.SEEK_CUR)
        part_file.write(bytes([byte[0] ^ 0x80]))
    assert tools.run("veritysetup", verify, check=False).returncode != 0


def test_the_layout_records_each_partitions_digest_and_round_trips(built):
    disk, layout, files = built
    assert DiskLayout.from_json(json.loads(json.dumps(layout.to_json()))) == layout
    assert layout.size == disk.stat().st_size
    root = layout.partition("root-a")
    content = files["root"].read_bytes()
    assert root.sha256 == hashlib.sha256(content + bytes(root.size - len(content))).hexdigest()
    assert layout.partition("var").sha256 is None
    assert [layout.partition(name).sha256 for name in ("boot-b", "root-b", "root-b-verity")] == [None] * 3
    # both slots have the same sizes: an upgrade writes either
    assert [layout.partition(n).size for n in ("esp", "root-a", "root-a-verity")] == \
        [layout.partition(n).size for n in ("boot-b", "root-b", "root-b-verity")]
    disk_image.verify_disk_image(disk, layout)
    # var is left as a hole: the file holds far fewer blocks than its length
    assert disk.stat().st_blocks * 512 < layout.size - layout.partition("var").size // 2


def test_a_changed_byte_in_the_root_partition_is_named_by_verify_disk_image(built, tmp_path):
    disk, layout, _ = built
    copy = tmp_path / "disk.raw"
    copy.write_bytes(disk.read_bytes())
    with open(copy, "r+b") as handle:
        handle.seek(layout.partition("root-a").start + 12345)
        handle.write(b"\xff")
    with pytest.raises(InputError, match="partition root-a: sha256"):
        disk_image.verify_disk_image(copy, layout)
    with pytest.raises(InputError, match="bytes, expected"):
        os.truncate(copy, layout.size - 512)
        disk_image.verify_disk_image(copy, layout)


def test_two_builds_from_the_same_inputs_are_byte_identical(built, tmp_path):
    disk, layout, _ = built
    files = _inputs(tmp_path / "in")  # written again now: other mtimes, other inode numbers
    for path in files.values():
        os.utime(path, (EPOCH + 12345, EPOCH + 12345))
    again, layout_again = _build(tmp_path / "out", files)
    assert layout_again == layout
    assert hashlib.sha256(again.read_bytes()).hexdigest() == hashlib.sha256(disk.read_bytes()).hexdigest()


def test_a_build_interrupted_midway_leaves_no_disk(tmp_path, monkeypatch):
    files = _inputs(tmp_path / "in")
    calls = []
    real_copy = disk_image._copy_into

    def copy_then_die(disk, source, start, size):
        calls.append(start)
        if len(calls) == 2:
            raise KeyboardInterrupt  # killed while copying the root partition
        return real_copy(disk, source, start, size)

    monkeypatch.setattr(disk_image, "_copy_into", copy_then_die)
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(KeyboardInterrupt):
        _build(out, files)
    assert list(out.iterdir()) == []


def test_bad_inputs_are_refused_before_any_work(tmp_path):
    files = _inputs(tmp_path / "in")
    out = tmp_path / "out" / "disk.raw"
    common = {"root": files["root"], "root_verity": files["verity"], "seed": SEED, "source_date_epoch": EPOCH}
    with pytest.raises(InputError, match="ESP path"):
        disk_image.build_disk_image(out, esp_files={"EFI/../x": files["uki"]}, var_size=64 << 20, **common)
    with pytest.raises(InputError, match="var size"):
        disk_image.build_disk_image(out, esp_files={UKI: files["uki"]}, var_size=1 << 20, **common)
    with pytest.raises(InputError, match="ESP file"):
        disk_image.build_disk_image(out, esp_files={UKI: tmp_path / "missing.efi"}, var_size=64 << 20, **common)
    with pytest.raises(InputError, match="unknown partition"):
        disk_image.partition_uuid(SEED, "home")
    assert not out.exists()


def test_the_esp_grows_with_its_content(tmp_path):
    big = tmp_path / "big.efi"
    with open(big, "wb") as handle:
        handle.truncate(80 << 20)
    size = disk_image.esp_size_for({UKI: big})
    assert size >= (80 << 20) * 5 // 4 and size % (1 << 20) == 0
    assert disk_image.esp_size_for({}) == disk_image.ESP_MIN_SIZE


def test_qcow2_beside_it_has_the_same_content(built, tmp_path):
    disk, _, _ = built
    disk_image.convert_to_qcow2(disk, tmp_path / "a.qcow2")
    disk_image.convert_to_qcow2(disk, tmp_path / "b.qcow2")
    compare = ["compare", "-q", "-f", "raw", "-F", "qcow2", disk, tmp_path / "a.qcow2"]
    assert tools.run("qemu-img", compare, check=False).returncode == 0
    # qcow2 has no timestamps: the conversion is reproducible too
    assert (tmp_path / "a.qcow2").read_bytes() == (tmp_path / "b.qcow2").read_bytes()


# ---- the GPT parser on damaged tables ----------------------------------------------------------------

def _damaged(disk: Path, offset: int, data: bytes, *, fix_header_crc: bool = False) -> bytearray:
    table = bytearray(disk.read_bytes()[:34 * 512])
    table[offset:offset + len(data)] = data
    if fix_header_crc:
        table[528:532] = b"\0\0\0\0"
        table[528:532] = struct.pack("<I", zlib.crc32(bytes(table[512:512 + 92])))
    return table + bytearray(disk.stat().st_size - len(table))  # the rest reads as zeros: only the size matters


@pytest.mark.parametrize(("offset", "data", "fix", "message", "where"), [
    (510, b"\0\0", False, "protective MBR", 510),
    (450, b"\x83", False, "expected 0xee", 450),
    (512, b"EFI FART", False, "signature", 512),
    (512 + 40, b"\x01", False, "CRC32", 528),
    (512 + 12, struct.pack("<I", 4096), True, "header size", 524),
    (512 + 80, struct.pack("<I", 100000), True, "partition entries", 592),
    (512 + 84, struct.pack("<I", 7), True, "entry size", 596),
    (512 + 72, struct.pack("<Q", 1), True, "overlap", 584),
    (1024 + 5, b"\x99", False, "entry array CRC32", 600),
])
def test_a_damaged_gpt_is_refused_naming_the_offset(built, offset, data, fix, message, where):
    disk, _, _ = built
    with pytest.raises(ParseError, match=message) as caught:
        disk_image.parse_gpt(bytes(_damaged(disk, offset, data, fix_header_crc=fix)), "disk.raw")
    assert caught.value.offset == where and "disk.raw" in str(caught.value)


def test_a_truncated_disk_is_refused(tmp_path):
    with pytest.raises(ParseError, match="too small"):
        disk_image.parse_gpt(b"\0" * 1000)
    (tmp_path / "fifo").mkdir()
    with pytest.raises(InputError, match="directory"):
        disk_image.read_gpt(tmp_path / "fifo")


def test_serialize_gpt_gives_back_the_bytes_sfdisk_wrote(built):
    """parse then serialize round-trips: both GPT copies equal sfdisk's, byte for byte."""
    disk, _, _ = built
    content = disk.read_bytes()
    table = disk_image.parse_gpt(content, str(disk))
    primary, backup = disk_image.serialize_gpt(table)
    assert primary == content[:len(primary)]
    assert backup == content[(table.alternate_lba + 1) * 512 - len(backup):(table.alternate_lba + 1) * 512]
    assert disk_image.parse_gpt(primary + content[len(primary):]) == table


def test_the_verity_root_argument_names_the_partitions_the_disk_gets(built):
    disk, layout, files = built
    tree = dmverity.format_hash_tree(files["root"], files["root"].parent / "again.verity", seed=SEED)
    argument = disk_image.verity_root_argument(tree, SEED)
    for slot in ("a", "b"):
        assert f"root-{slot},,,ro,0 {tree.data_sectors} verity 1 PARTUUID={layout.partition(f'root-{slot}').uuid} " \
            f"PARTUUID={layout.partition(f'root-{slot}-verity').uuid} " in argument
    assert argument.startswith('dm-mod.create="root-a,,,ro,0 ') and argument.count(tree.root_hash) == 2


def test_random_damage_to_the_gpt_is_a_parse_error_or_a_table_never_a_crash(built):
    import random

    disk, _, _ = built
    content = bytearray(disk.read_bytes())  # damaged in place and restored: one copy of the disk
    original = bytes(content[:34 * 512])
    rng = random.Random(13)
    for _ in range(400):
        for _ in range(rng.randint(1, 4)):
            at = rng.choice([rng.randrange(440, 34 * 512), rng.randrange(512, 512 + 92)])
            content[at] = rng.randrange(256)
        if rng.random() < 0.5:  # also let the damage pass the header CRC check
            content[528:532] = b"\0\0\0\0"
            content[528:532] = struct.pack("<I", zlib.crc32(bytes(content[512:512 + 92])))
        try:
            disk_image.parse_gpt(content, "disk.raw")
        except ParseError as exc:
            assert exc.offset is not None
        content[:34 * 512] = original
