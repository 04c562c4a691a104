"""The module-less kernel maps a dm-verity root from disk.raw by itself (DM_INIT, DM_VERITY, EFI_PARTITION).

A direct-kernel QEMU boot (lab/qemu.py) of the built kernel with a busybox initramfs and disk.raw
as a virtio disk; the command line carries `dm-mod.create=` naming the root and verity partitions
by PARTUUID=. The genuine disk mounts from /dev/dm-0 and reads back; with one byte flipped in the
root partition, reading the file that holds it fails and the kernel names the corrupted block.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

import pytest

from obelisk.image import disk_image, dmverity, squashfs
from obelisk.lab import kernel_boot
from obelisk.lab.qemu import Drive, QemuRun, run_kernel

SEED = "verity-boot-test"
EPOCH = 1700000000
HELLO = "genuine root\n"

INIT = """#!/bin/busybox sh
/bin/busybox mkdir -p /proc /sys /dev /mnt
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sysfs /sys
/bin/busybox mount -t devtmpfs devtmpfs /dev 2>/dev/null
fact() { echo "OBELISK-FACT $1=$2"; }
echo OBELISK-BOOT-BEGIN
fact dm_name "$(/bin/busybox cat /sys/block/dm-0/dm/name 2>/dev/null)"
fact dm_ro "$(/bin/busybox cat /sys/block/dm-0/ro 2>/dev/null)"
fact dm_sectors "$(/bin/busybox cat /sys/block/dm-0/size 2>/dev/null)"
if /bin/busybox mount -t squashfs -o ro /dev/dm-0 /mnt; then fact mount ok; else fact mount failed; fi
fact hello "$(/bin/busybox cat /mnt/hello.txt 2>/dev/null)"
if /bin/busybox cat /mnt/big.bin > /dev/null 2>&1; then fact big_read ok; else fact big_read failed; fi
fact big_sha256 "$(/bin/busybox sha256sum /mnt/big.bin 2>/dev/null | /bin/busybox cut -d' ' -f1)"
echo OBELISK-BOOT-END
/bin/busybox poweroff -f
"""


def _disk(workdir: Path) -> tuple[Path, dmverity.VerityTree, bytes]:
    tree_dir = workdir / "tree"
    tree_dir.mkdir(parents=True)
    (tree_dir / "hello.txt").write_text(HELLO)
    big = hashlib.shake_256(b"incompressible").digest(2 * 1024 * 1024)  # stored uncompressed: findable on disk
    (tree_dir / "big.bin").write_bytes(big)
    squashfs.pack(tree_dir, None, workdir / "root.squashfs", EPOCH)
    tree = dmverity.format_hash_tree(workdir / "root.squashfs", workdir / "root.verity", seed=SEED)
    (workdir / "uki.efi").write_bytes(b"MZ not booted here")
    disk_image.build_disk_image(workdir / "disk.raw", esp_files={"EFI/BOOT/BOOTX64.EFI": workdir / "uki.efi"},
                                root=workdir / "root.squashfs", root_verity=workdir / "root.verity",
                                var_size=64 << 20, seed=SEED, source_date_epoch=EPOCH)
    return workdir / "disk.raw", tree, big


def _boot(kernel: Path, disk: Path, tree: dmverity.VerityTree, workdir: Path) -> str:
    (workdir / "initramfs.cpio").write_bytes(kernel_boot.initramfs(Path("/bin/busybox"), INIT))
    create = disk_image.verity_root_argument(tree, SEED)
    run = QemuRun(kernel=kernel, initramfs=workdir / "initramfs.cpio", console=workdir / "serial.log",
                  cmdline=f"console=ttyS0 panic=-1 {create}", drives=(Drive(disk),))
    result = run_kernel(run, timeout=300, until=kernel_boot.END)
    return result.console


def boot_and_check(kernel: Path, workdir: Path) -> tuple[str, str]:
    """Boot the genuine disk, then a copy with one byte of big.bin flipped; return both consoles."""
    disk, tree, big = _disk(workdir)
    genuine = _boot(kernel, disk, tree, workdir)
    facts = kernel_boot.facts(genuine)
    assert facts.get("dm_name") == "root-a" and facts.get("dm_ro") == "1", genuine[-3000:]
    assert facts.get("dm_sectors") == str(tree.data_sectors)
    assert facts.get("mount") == "ok" and facts.get("hello") == HELLO.strip(), genuine[-3000:]
    assert facts.get("big_read") == "ok" and facts.get("big_sha256") == hashlib.sha256(big).hexdigest()

    layout = disk_image.read_gpt(disk)
    root = next(p for p in layout.partitions if p.name == disk_image.ROOT)
    content = disk.read_bytes()[root.first_lba * 512:(root.last_lba + 1) * 512]
    at = content.find(big[1024 * 1024:1024 * 1024 + 64])
    assert at > 0, "big.bin's data not found uncompressed in the root partition"
    changed = workdir / "changed"
    changed.mkdir()
    copy = changed / "disk.raw"
    with open(disk, "rb") as src, open(copy, "wb") as dst:
        while chunk := src.read(1 << 22):
            dst.write(chunk)
    with open(copy, "r+b") as handle:
        handle.seek(root.first_lba * 512 + at + 5)
        byte = handle.read(1)
        handle.seek(-1, os.SEEK_CUR)
        handle.write(bytes([byte[0] ^ 0x01]))
    corrupted = _boot(kernel, copy, tree, changed)
    facts = kernel_boot.facts(corrupted)
    assert facts.get("mount") == "ok" and facts.get("hello") == HELLO.strip(), corrupted[-3000:]
    assert facts.get("big_read") == "failed", corrupted[-3000:]
    assert re.search(r"device-mapper: verity: .*data block \d+ is corrupted", corrupted), corrupted[-3000:]
    return genuine, corrupted


@pytest.mark.kernel_build
@pytest.mark.qemu
def test_the_kernel_maps_the_verity_root_by_partuuid_and_refuses_a_changed_block(built_kernel, tmp_path):
    boot_and_check(built_kernel / "build" / "bzImage", tmp_path)
