#!/usr/bin/env python3
"""Sign the same tree with obelisk and with `evmctl ima_sign -r`, in one run, and compare.

Prints files/s for each, the ratio, and the machine's raw sign rate on all cores
(`openssl speed -multi N`), which is the ceiling any signer can reach.

    .venv/bin/python bench/ima_sign.py [--files 5000] [--size 4096]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from obelisk.core import tools
from obelisk.signer import keygen


def make_tree(root: Path, files: int, size: int) -> None:
    for i in range(files):
        d = root / f"d{i // 250:03d}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"f{i:05d}").write_bytes(os.urandom(size))


def timed(cmd: list[str], env: dict[str, str] | None = None) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    return time.perf_counter() - start


def openssl_rate(algo: str, cores: int) -> float:
    out = subprocess.run([tools.which("openssl"), "speed", "-seconds", "2", "-multi", str(cores), algo],
                         capture_output=True, text=True, check=True).stdout
    # summary lines: "rsa 2048 bits 0.000600s 0.000020s 1666.7 50000.0" and
    # " 256 bits ecdsa (nistp256)   0.0000s   0.0001s  40000.0  12000.0" (sign/s is the second to last)
    for line in out.splitlines():
        if algo.startswith("rsa") and re.match(r"^rsa\s+2048\s+bits", line.strip()):
            return float(line.split()[-2])
        if algo.startswith("ecdsa") and "nistp256" in line and "ecdsa" in line:
            return float(line.split()[-2])
    raise RuntimeError(f"could not read openssl speed output for {algo}:\n{out}")


def crypto_rate(key_path: Path, cores: int, seconds: float = 1.0) -> float:
    """Signs/s on all cores with `cryptography` in-process (one core timed, times `cores`): the limit
    a Python signer can reach, measured in the same run."""
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
    from cryptography.hazmat.primitives.asymmetric.utils import Prehashed

    key = serialization.load_pem_private_key(key_path.read_bytes(), None)
    digest = os.urandom(32)
    if isinstance(key, rsa.RSAPrivateKey):
        rsa_key = key

        def sign() -> None:
            rsa_key.sign(digest, padding.PKCS1v15(), Prehashed(hashes.SHA256()))
    else:
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        ec_key = key

        def sign() -> None:
            ec_key.sign(digest, ec.ECDSA(Prehashed(hashes.SHA256())))
    count, start = 0, time.process_time()
    while time.process_time() - start < seconds:
        for _ in range(50):
            sign()
        count += 50
    return cores * count / (time.process_time() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=5000)
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--repeat", type=int, default=3, help="best of N runs for each tool (machines are noisy)")
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    # An installed obelisk has its bytecode compiled; make sure this checkout's is, even where
    # PYTHONDONTWRITEBYTECODE is set, so start-up is measured as users get it.
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(ROOT / "src" / "obelisk")], check=True)
    print(f"tree: {args.files} files of {args.size} bytes; {cores} cores")
    with tempfile.TemporaryDirectory(prefix="obelisk-bench-") as tmp:
        base = Path(tmp) / "tree"
        make_tree(base, args.files, args.size)
        for key_type, speed_algo in (("rsa-2048", "rsa2048"), ("ecdsa-p256", "ecdsap256")):
            keys = keygen.generate(Path(tmp) / key_type, key_type)
            ours_tree, evm_tree = Path(tmp) / f"o-{key_type}", Path(tmp) / f"e-{key_type}"
            shutil.copytree(base, ours_tree)
            shutil.copytree(base, evm_tree)
            evm = ours = float("inf")
            for _ in range(args.repeat):  # interleaved, so both see the same machine
                evm = min(evm, timed([tools.which("evmctl"), "ima_sign", "-r", "--key", str(keys.ima_key),
                                      str(evm_tree)]))
                ours = min(ours, timed([sys.executable, "-m", "obelisk", "ima", "sign", "--quiet", "--format", "json",
                                        "--key", str(keys.ima_key), "--cert", str(keys.ima_cert), str(ours_tree)],
                                       env=env))
            ceiling = openssl_rate(speed_algo, cores)
            limit = crypto_rate(keys.ima_key, cores)
            start = min(timed([sys.executable, "-c", "pass"]) for _ in range(3))
            ours_rate, evm_rate = args.files / ours, args.files / evm
            print(f"{key_type:11} obelisk {ours_rate:8.0f} files/s ({ours:.2f} s)   evmctl {evm_rate:7.0f} files/s   "
                  f"ratio {ours_rate / evm_rate:5.1f}x   openssl speed -multi {cores}: {ceiling:8.0f} signs/s   "
                  f"obelisk at {100 * ours_rate / ceiling:4.0f}% of it; cryptography in-process x{cores}: "
                  f"{limit:8.0f} signs/s, obelisk at {100 * ours_rate / limit:4.0f}% of it "
                  f"(load average {os.getloadavg()[0]:.1f})", flush=True)
            if key_type == "ecdsa-p256":
                print(f"{'':11} P-256: {ours:.2f} s for {args.files} files; target 0.25 s + interpreter start "
                      f"({start:.2f} s) = {0.25 + start:.2f} s: {'OK' if ours <= 0.25 + start else 'MISSED'}")


if __name__ == "__main__":
    main()
