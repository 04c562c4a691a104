#!/usr/bin/env python3
"""Benchmark: what producing disk.raw adds to a warm build (issue 13 budget: at most 10 s).

The timed steps are the ones the build adds after the SquashFS and the UKI exist: the dm-verity
hash tree over the root (`veritysetup format`), disk.raw itself (sfdisk on a file, the FAT32 ESP
with mkfs.vfat + mtools, the partitions copied into place and hashed) and, separately, a qcow2
beside it. Inputs are incompressible random files of the real sizes: a 56 MB root and a 40 MB UKI
by default, with a 1 GiB /var left as a hole.

    python bench/disk_image.py [--root-mb 56] [--uki-mb 40] [--var-mb 1024] [--runs 5] [--qcow2]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from obelisk.image import disk_image, dmverity  # noqa: E402

SEED = "bench-disk-image"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root-mb", type=int, default=56)
    parser.add_argument("--uki-mb", type=int, default=40)
    parser.add_argument("--var-mb", type=int, default=1024)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--qcow2", action="store_true", help="also time qemu-img convert to qcow2")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="obelisk-bench-disk-") as tmp:
        work = Path(tmp)
        root, uki = work / "root.squashfs", work / "uki.efi"
        root.write_bytes(os.urandom(args.root_mb * 1024 * 1024 // 4096 * 4096))
        uki.write_bytes(os.urandom(args.uki_mb * 1000 * 1000))
        timings: dict[str, list[float]] = {"verity": [], "disk": [], "total": [], "qcow2": []}
        for run in range(args.runs):
            started = time.perf_counter()
            tree = dmverity.format_hash_tree(root, work / "root.verity", seed=SEED)
            verity_done = time.perf_counter()
            disk_image.build_disk_image(work / "disk.raw", esp_files={"EFI/BOOT/BOOTX64.EFI": uki}, root=root,
                                        root_verity=work / "root.verity", var_size=args.var_mb << 20, seed=SEED,
                                        source_date_epoch=1700000000)
            done = time.perf_counter()
            timings["verity"].append(verity_done - started)
            timings["disk"].append(done - verity_done)
            timings["total"].append(done - started)
            if args.qcow2:
                disk_image.convert_to_qcow2(work / "disk.raw", work / "disk.qcow2")
                timings["qcow2"].append(time.perf_counter() - done)
            assert tree.data_blocks * 4096 == root.stat().st_size, run
        result = {"root_mb": args.root_mb, "uki_mb": args.uki_mb, "var_mb": args.var_mb, "runs": args.runs,
                  "disk_bytes": (work / "disk.raw").stat().st_size,
                  "disk_allocated_bytes": (work / "disk.raw").stat().st_blocks * 512,
                  **{f"{name}_median_s": round(statistics.median(values), 3)
                     for name, values in timings.items() if values}}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
