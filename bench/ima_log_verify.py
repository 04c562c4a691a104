#!/usr/bin/env python3
"""Benchmark: verify one 1,000,000-entry ima-ng list with obelisk, Keylime and evmctl.

Every tool runs as a whole process on the same list (binary for obelisk and evmctl,
the same list in ascii for Keylime, which reads only ascii) and checks it against
the same PCR 10 values; obelisk then checks it against a reference manifest too.
Prints entries/s and the ratios. Keylime must be installed in a throwaway venv
(default /tmp/keylime-venv; see docs/ima_policy.md), never into the project.

    python bench/ima_log_verify.py [--entries 1000000] [--dir /tmp/obelisk-bench-ima]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from obelisk.ima_policy.measurement_list import digest_field, make_entry, name_field, serialize_ascii, serialize_binary
from obelisk.ima_policy.replay import replay

KEYLIME_SCRIPT = r'''
import json, sys, types
sys.modules.setdefault("gpg", types.ModuleType("gpg"))  # keylime imports gpg; unused for IMA checks
from keylime.common.algorithms import Hash
from keylime.ima import ima
with open(sys.argv[1]) as f:
    lines = f.read().splitlines()
policy = None
if sys.argv[2] != "-":
    with open(sys.argv[2]) as f:
        policy = json.load(f)
running_hash, failure = ima.process_measurement_list(None, lines, policy, pcrval=sys.argv[3], hash_alg=Hash.SHA1)
print("keylime: ok" if not failure else f"keylime: FAILED {failure.get_event_ids()}")
'''


BOOT_AGGREGATE = hashlib.sha256(bytes(32 * 10)).digest()


def generate(n: int, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    # PCRs 0-9 are left zero in the PCR files, so boot_aggregate is the digest of 10 zero PCRs
    entries = [make_entry("ima-ng", [digest_field("sha256", BOOT_AGGREGATE), name_field("boot_aggregate")])]
    files = {}
    for i in range(1, n):
        path = f"/usr/lib/x86_64-linux-gnu/lib{i % 5000}/obj{i}.so.1"
        digest = hashlib.sha256(b"%d" % i).digest()
        entries.append(make_entry("ima-ng", [digest_field("sha256", digest), name_field(path)], number=i + 1))
        files[path] = f"sha256:{digest.hex()}"
    (out / "list.bin").write_bytes(serialize_binary(entries))
    (out / "list.ascii").write_bytes(serialize_ascii(entries))
    values = replay(entries, ["sha1", "sha256"])
    for bank in ("sha1", "sha256"):  # evmctl reads PCR-00 .. PCR-23 in order
        (out / f"pcr-{bank}").write_text("".join(
            f"PCR-{i:02d}: {(values[bank] if i == 10 else bytes(len(values[bank]))).hex()}\n" for i in range(24)))
    (out / "reference.json").write_text(json.dumps({"schema": "obelisk.ima-reference/1", "files": files}))
    keylime_policy = {"meta": {"version": 1, "generator": 0}, "release": 0,
                      "digests": {"boot_aggregate": [BOOT_AGGREGATE.hex()],
                                  **{p: [d.split(":", 1)[1]] for p, d in files.items()}},
                      "excludes": [], "keyrings": {}, "ima": {"ignored_keyrings": [], "log_hash_alg": "sha1",
                                                              "dm_policy": None},
                      "ima-buf": {}, "verification-keys": ""}
    (out / "keylime-policy.json").write_text(json.dumps(keylime_policy))
    (out / "n").write_text(str(n))


def timed(cmd: list[str], env: dict[str, str] | None = None) -> tuple[float, float, int, subprocess.CompletedProcess]:
    """Wall seconds, CPU seconds (user+sys of the process and all its workers) and peak RSS in KB of
    the largest of the process and its workers, as GNU time reports it (a Python parent's own RSS,
    which ru_maxrss carries across fork and exec, does not count)."""
    with tempfile.NamedTemporaryFile("r", prefix="bench-time-") as report:
        t = time.perf_counter()
        proc = subprocess.run(["/usr/bin/time", "-f", "%M %U %S", "-o", report.name, *cmd], capture_output=True,
                              text=True, env=env)
        wall = time.perf_counter() - t
        rss, user, system = report.read().split()[-3:]
    return wall, float(user) + float(system), int(rss), proc


def ok(proc: subprocess.CompletedProcess) -> bool:
    return proc.returncode == 0


def keylime_ok(proc: subprocess.CompletedProcess) -> bool:
    return proc.returncode == 0 and "keylime: ok" in proc.stdout


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--entries", type=int, default=1_000_000)
    ap.add_argument("--dir", default="/tmp/obelisk-bench-ima")
    ap.add_argument("--keylime-python", default="/tmp/keylime-venv/bin/python")
    ap.add_argument("--skip-keylime", action="store_true")
    ap.add_argument("--repeat", type=int, default=3, help="runs per tool (round robin); the median is printed")
    ap.add_argument("--baseline-src", metavar="DIR",
                    help="also time obelisk from this source tree (e.g. a checkout of main): before/after in one run")
    args = ap.parse_args()
    d = Path(args.dir)
    if not (d / "n").exists() or (d / "n").read_text() != str(args.entries):
        print(f"generating {args.entries} entries in {d} ...", file=sys.stderr)
        generate(args.entries, d)
    n = args.entries
    pcrs = [f"sha1,{d / 'pcr-sha1'}", f"sha256,{d / 'pcr-sha256'}"]
    py = sys.executable
    verify = [py, "-m", "obelisk", "ima", "log", "verify", "--format", "json", "--quiet"]
    quoted = ["--pcrs", pcrs[0], "--pcrs", pcrs[1]]
    trees = [("obelisk", ROOT / "src")] + ([("baseline", Path(args.baseline_src))] if args.baseline_src else [])
    tools: list[tuple[str, list[str], Callable, dict[str, str] | None]] = []
    for name, src in trees:
        env = dict(os.environ, PYTHONPATH=str(src))
        tools += [(f"{name} (binary, sha1+sha256)", verify + [str(d / "list.bin"), *quoted], ok, env),
                  (f"{name} (ascii, sha1+sha256)", verify + [str(d / "list.ascii"), *quoted], ok, env),
                  (f"{name} (binary) + reference", verify + [str(d / "list.bin"), *quoted, "--reference",
                                                             str(d / "reference.json")], ok, env)]
    evmctl = shutil.which("evmctl")
    if evmctl:
        tools.append(("evmctl ima_measurement", [evmctl, "ima_measurement", "--pcrs", pcrs[0], "--pcrs", pcrs[1],
                                                 str(d / "list.bin")], ok, None))
    keylime = not args.skip_keylime and Path(args.keylime_python).exists()
    if keylime:
        script = d / "keylime_check.py"
        script.write_text(KEYLIME_SCRIPT)
        pcr10 = (d / "pcr-sha1").read_text().splitlines()[10].split()[1]
        tools += [("keylime (ascii, sha1, no policy)", [args.keylime_python, str(script), str(d / "list.ascii"), "-",
                                                        pcr10], keylime_ok, None),
                  ("keylime (ascii, sha1) + policy", [args.keylime_python, str(script), str(d / "list.ascii"),
                                                      str(d / "keylime-policy.json"), pcr10], keylime_ok, None)]
    load_before = os.getloadavg()[0]
    runs: dict[str, list[tuple[float, float, int, bool]]] = {label: [] for label, *_ in tools}
    for _ in range(args.repeat):  # round robin: a change in the machine's load hits every tool alike
        for label, cmd, check, env in tools:
            seconds, cpu, rss, proc = timed(cmd, env)
            good = check(proc)
            if not good:
                print((proc.stdout + proc.stderr)[-2000:], file=sys.stderr)
            runs[label].append((seconds, cpu, rss, good))
    print(f"{'':<36} {'wall (min-max)':>20} {'entries/s':>10} {'cpu (min-max)':>20} {'peak RSS':>9}   "
          f"(median of {args.repeat}; load average {load_before:.1f} -> {os.getloadavg()[0]:.1f} "
          f"on {os.cpu_count()} cores)")
    results: dict[str, tuple[float, float]] = {}
    for label, rs in runs.items():
        walls, cpus = [r[0] for r in rs], [r[1] for r in rs]
        seconds, cpu = statistics.median(walls), statistics.median(cpus)
        rss = max(r[2] for r in rs)
        print(f"{label:<36} {seconds:6.2f} s ({min(walls):5.2f}-{max(walls):5.2f})  {n / seconds:10,.0f} "
              f"{cpu:6.2f} s ({min(cpus):5.2f}-{max(cpus):5.2f})  {rss / 1024:6.0f} MB  "
              f"{'ok' if all(r[3] for r in rs) else 'FAILED'}")
        results[label] = (seconds, cpu)
    for name, _ in trees:
        for ref_label, target in (("evmctl ima_measurement", 1.5), ("keylime (ascii, sha1, no policy)", None),
                                  ("keylime (ascii, sha1) + policy", None)):
            if ref_label not in results:
                continue
            rwall, rcpu = results[ref_label]
            mine = ([f"{name} (binary) + reference"] if "+ policy" in ref_label
                    else [f"{name} (binary, sha1+sha256)", f"{name} (ascii, sha1+sha256)"])
            for label in mine:
                wall, cpu = results[label]
                goal = f" (target >= {target}x wall)" if target else ""
                print(f"{label} vs {ref_label}: {rwall / wall:5.2f}x faster (wall), {rcpu / cpu:5.2f}x less CPU{goal}")
    if not keylime:
        print(f"keylime: skipped ({args.keylime_python} not found; see docs/ima_policy.md to install it)")
    print("note: wall-clock ratios are only meaningful on an otherwise idle machine; see the load average")
    return 0


if __name__ == "__main__":
    sys.exit(main())
