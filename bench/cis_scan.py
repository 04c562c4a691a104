#!/usr/bin/env python3
"""Benchmark: `obelisk scan` of a root tree with 5 Kubernetes components (target: under 1 s).

Renders a control-plane tree (kube-apiserver, kube-controller-manager, kube-scheduler, etcd and
the kubelet: 5 components), then times (a) the in-process `scan()` API, as the node agent calls it,
and (b) the whole `obelisk scan` command in a fresh process, as a user runs it.

kube-bench, the reference tool, only audits a live node's processes (it cannot scan a root
directory); when it is on PATH its run against this host is timed too, for scale.

    python bench/cis_scan.py [--runs 20]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

TARGET_SECONDS = 1.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()

    from obelisk.cis_checks.node import NodeView
    from obelisk.cis_checks.render import render_tree
    from obelisk.cis_checks.scan import scan

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "node"
        render_tree(root, "control-plane", "1.31")
        components = sorted(NodeView(root).components)
        assert len(components) == 5, components

        t0 = time.perf_counter()
        first = scan(root)
        cold = time.perf_counter() - t0
        times = []
        for _ in range(args.runs):
            t0 = time.perf_counter()
            report = scan(root)
            times.append(time.perf_counter() - t0)
        assert not report.failed and len(report.findings) == len(first.findings)

        env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
        cli_times = []
        for _ in range(max(3, args.runs // 5)):
            t0 = time.perf_counter()
            done = subprocess.run([sys.executable, "-m", "obelisk", "scan", "--root", str(root), "--format", "json",
                                   "-o", str(Path(tmp) / "report.json")], env=env, capture_output=True)
            cli_times.append(time.perf_counter() - t0)
            assert done.returncode == 0, done.stderr

    median = statistics.median(times)
    cli = statistics.median(cli_times)
    print(f"components: {', '.join(components)}")
    print(f"checks per scan: {len(first.findings)}")
    print(f"scan() first call (catalogue load): {cold * 1000:.1f} ms")
    print(f"scan() median of {args.runs}: {median * 1000:.1f} ms  ({median / TARGET_SECONDS:.3f} of the 1 s target)")
    print(f"obelisk scan command (new process, incl. Python start-up): {cli * 1000:.0f} ms  "
          f"({cli / TARGET_SECONDS:.2f} of the 1 s target)")
    kube_bench = shutil.which("kube-bench")
    if kube_bench:
        t0 = time.perf_counter()
        subprocess.run([kube_bench, "run", "--json"], capture_output=True)
        kb = time.perf_counter() - t0
        print(f"kube-bench run on this host: {kb * 1000:.0f} ms (ratio obelisk command / kube-bench: {cli / kb:.2f})")
    else:
        print("kube-bench: not installed (it audits live processes only; no root-directory mode to compare)")
    return 0 if cli < TARGET_SECONDS else 1


if __name__ == "__main__":
    sys.exit(main())
