#!/usr/bin/env python3
"""Prove `obelisk kernel build` is reproducible: build the same inputs in two fresh cache roots
(different extraction, different build directory) and compare the bzImage and vmlinux digests.

Usage: bench/kernel_reproducible.py CONFIG CA.pem [TARBALL]   (takes two full kernel builds)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    config, ca = sys.argv[1], sys.argv[2]
    tarball = sys.argv[3] if len(sys.argv) > 3 else "/usr/src/linux-source-6.1.tar.xz"
    digests = []
    with tempfile.TemporaryDirectory(prefix="obelisk-repro-") as tmp:
        for i in (1, 2):
            env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), OBELISK_CACHE=f"{tmp}/cache{i}", CI="1")
            proc = subprocess.run([sys.executable, "-m", "obelisk", "kernel", "build", "--kernel-source", tarball,
                                   "--config", config, "--ca", ca, "-o", f"{tmp}/out{i}", "--format", "json"],
                                  env=env, capture_output=True, text=True, check=True)
            info = json.loads(proc.stdout)
            digests.append((info["bzImage_sha256"], info["vmlinux_sha256"]))
            print(f"build {i}: {info['seconds']} s bzImage {info['bzImage_sha256']} vmlinux {info['vmlinux_sha256']}")
    print("reproducible:", digests[0] == digests[1])


if __name__ == "__main__":
    main()
