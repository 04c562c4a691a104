#!/usr/bin/env python3
"""Benchmark issue 13's targets on a built image OUT (e.g. the demo's or the e2e test's):

1. What producing the UKI and disk.raw costs a warm build: `build.step_boot_chain` (dm-verity tree,
   UKI assembly, the .pcrsig signature, Secure Boot signing, the variable store, the ESP and the GPT
   disk) timed on OUT's own kernel, initramfs and SquashFS, against the 10 s target.
2. Boot to an answering agent under OVMF (Secure Boot on, swtpm): a new node (provisioning, first
   boot, /var created and sealed) and then a reboot of the same node, against the 30 s target.
   QEMU runs under TCG unless OBELISK_QEMU_ACCEL says otherwise: OVMF's SMM build needs it on
   machines whose KVM is nested (no SMM); the ratio line says which accelerator was measured.

    python bench/boot_uefi.py OUT --spec SPEC --keys KEYS [--runs 1]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from obelisk.image import build as buildmod
from obelisk.image.spec import load_spec
from obelisk.lab import boot as bootmod

DISK_TARGET_S = 10.0
BOOT_TARGET_S = 30.0


def time_boot_chain(out: Path, spec_path: Path) -> float:
    plan = buildmod.preflight(load_spec(spec_path))
    with tempfile.TemporaryDirectory(prefix="bench-disk-") as tmp:
        started = time.perf_counter()
        buildmod.step_boot_chain(plan, out / "rootfs.squashfs", out / "initramfs.cpio", out / "bzImage", Path(tmp))
        seconds = time.perf_counter() - started
        same = (Path(tmp) / "disk.raw").read_bytes() == (out / "disk.raw").read_bytes()
    print(f"UKI + disk.raw: {seconds:.1f} s (target {DISK_TARGET_S:.0f} s: {seconds / DISK_TARGET_S:.2f}x of it); "
          f"disk.raw byte-identical to OUT's: {same}")
    return seconds


def time_boots(out: Path, keys: Path) -> tuple[float, float]:
    accel = os.environ.get("OBELISK_QEMU_ACCEL") or "tcg"
    with tempfile.TemporaryDirectory(prefix="bench-boot-") as tmp:
        run = Path(tmp) / "run"
        times = []
        for label in ("new node (first boot creates /var)", "reboot"):
            started = time.perf_counter()
            bootmod.boot(out, run, ca=keys / "ca.pem", ca_key=keys / "ca.key", timeout=600)
            seconds = time.perf_counter() - started
            bootmod.stop(run)
            times.append(seconds)
            print(f"{label}: agent answering after {seconds:.1f} s under {accel} "
                  f"(target {BOOT_TARGET_S:.0f} s: {seconds / BOOT_TARGET_S:.2f}x of it)")
        shutil.rmtree(run, ignore_errors=True)
    return times[0], times[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--spec", type=Path, required=True, help="the spec OUT was built from")
    parser.add_argument("--keys", type=Path, required=True, help="the key directory (ca.pem, ca.key)")
    parser.add_argument("--no-boot", action="store_true", help="only the disk.raw part")
    args = parser.parse_args()
    time_boot_chain(args.out, args.spec)
    if not args.no_boot:
        time_boots(args.out, args.keys)
    return 0


if __name__ == "__main__":
    sys.exit(main())
