#!/usr/bin/env python3
"""Benchmark: hostile input files into every command that parses a file; counts of how each run ended.

Each run is a fresh `python -m obelisk` held to 2 GiB of address space (RLIMIT_AS) and a timeout
(20 s by default). The classes are those of issue 18: random bytes, empty and NUL files, deep
nesting, huge integers, Infinity, wrong types, YAML and XML bombs, invalid UTF-8, a 20 MB XML
attribute, FIFOs, /dev/zero, sparse 4 GiB files, repeated-keyword IMA policies and a gzip bomb
behind a bzImage header (bit flips and truncations of valid files are in the per-package
tests/*/test_fuzz*.py).

    python bench/fuzz_commands.py [--timeout 20] [--jobs 3] [--seed 1] [-v]

Prints: inputs tried, exit 2, exit 1, exit 0, exit 3 (goal 0), hangs (goal 0), out-of-memory
(goal 0: a MemoryError or death by a signal), and how many runs printed more than one stderr line
(goal 0). `-v` lists every run that did not end in exit 1 or 2. `OBELISK_SRC=DIR` runs another src tree.
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import zlib
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ADDRESS_SPACE = 2 << 30

Maker = Callable[[Path], Path]


def _write(data: bytes) -> Maker:
    def make(path: Path) -> Path:
        path.write_bytes(data)
        return path
    return make


def _fifo(path: Path) -> Path:
    os.mkfifo(path)
    return path


def _sparse(path: Path) -> Path:
    with open(path, "wb") as handle:
        handle.truncate(4 << 30)
    return path


def _dev_zero(path: Path) -> Path:
    return Path("/dev/zero")


def _bzimage_bomb(path: Path) -> Path:
    """A bzImage header whose payload is a gzip stream of 1,000 MiB of zeros (about 1 MB)."""
    z = zlib.compressobj(9, zlib.DEFLATED, 31)  # one gzip member
    zeros = b"\0" * (1 << 20)
    payload = b"".join(z.compress(zeros) for _ in range(1000)) + z.flush()
    setup_sects = 4
    header = bytearray(512 * (setup_sects + 1))
    header[0x1F1] = setup_sects
    header[0x1FE:0x200] = b"\x55\xaa"
    header[0x202:0x206] = b"HdrS"
    header[0x206:0x208] = (0x020F).to_bytes(2, "little")
    header[0x248:0x24C] = (0).to_bytes(4, "little")  # payload_offset
    header[0x24C:0x250] = len(payload).to_bytes(4, "little")  # payload_length
    return _write(bytes(header) + payload)(path)


def classes(rng: random.Random) -> dict[str, Maker]:
    deep_json = b"[" * 100_000 + b"]" * 100_000
    big_int = b'{"schema": 1, "x": ' + b"9" * 5000 + b"}"
    deep_yaml = b"a: " + b"[" * 50_000 + b"]" * 50_000 + b"\n"
    yaml_bomb = b"\n".join([b"a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
                           + [f"a{i}: &a{i} [*a{i-1}, *a{i-1}, *a{i-1}, *a{i-1}, *a{i-1}, *a{i-1}, *a{i-1}, "
                              f"*a{i-1}, *a{i-1}, *a{i-1}]".encode() for i in range(1, 9)]) + b"\n"
    xml_bomb = (b'<?xml version="1.0"?><!DOCTYPE l [<!ENTITY a "aaaaaaaaaa">'
                + b"".join(f'<!ENTITY {chr(98 + i)} "{("&" + chr(97 + i) + ";") * 10}">'.encode() for i in range(8))
                + b']><l>&i;</l>')
    xml_attr = b'<?xml version="1.0"?><Benchmark id="' + b"A" * (20 << 20) + b'"/>'
    lint = b"measure " + b"func=FILE_CHECK " * 5000 + b"\n"  # 80 KB
    lint_big = b"measure " + b"func=FILE_CHECK " * 20000 + b"\n"  # 320 KB
    return {
        "random": _write(rng.randbytes(4096)),
        "empty": _write(b""),
        "binary-nul": _write(b"\0" * 1024),
        "deep-json": _write(deep_json),
        "big-int-json": _write(big_int),
        "big-int-yaml": _write(b"schema: 1\nx: " + b"9" * 5000 + b"\n"),
        "infinity-json": _write(b'{"schema": 1, "x": Infinity, "y": NaN}'),
        "type-swap-json": _write(b'{"schema": true, "artifacts": {"ima-policy": "x"}, "qualified_name": "zz", '
                                 b'"results": "x", "findings": 1}'),
        "json-list": _write(b"[1, 2, 3]"),
        "deep-yaml": _write(deep_yaml),
        "yaml-bomb": _write(yaml_bomb),
        "yaml-bad-utf8": _write(b"name: \xff\xfe\x80 bad\n"),
        "yaml-type-swap": _write(b"extends: [../../../../etc/shadow]\nsource_date_epoch: 9223372036854775808\n"
                                 b"disk: {size_mib: 99999999999999}\n"),
        "xml-bomb": _write(xml_bomb),
        "xml-huge-attr": _write(xml_attr),
        "lint-amplify": _write(lint),
        "lint-amplify-320k": _write(lint_big),
        "bzimage-gzip-bomb": _bzimage_bomb,
        "fifo": _fifo,
        "sparse-4g": _sparse,
        "dev-zero": _dev_zero,
    }


# Each command: arguments with "{F}" where the hostile file goes. Other slots get harmless values.
COMMANDS: dict[str, list[str]] = {
    "ima policy lint": ["ima", "policy", "lint", "{F}"],
    "ima log verify": ["ima", "log", "verify", "{F}"],
    "ima log verify --pcrs": ["ima", "log", "verify", "--pcrs", "{F}", "{EMPTYLOG}"],
    "ima verify --xattr-file": ["ima", "verify", "--cert", "{F}", "--xattr-file", "{F}", "{DIR}"],
    "kernel check --config": ["kernel", "check", "--config", "{F}"],
    "kernel check --profile": ["kernel", "check", "--config", "{EMPTY}", "--profile", "{F}"],
    "kernel check --waivers": ["kernel", "check", "--config", "{EMPTY}", "--waivers", "{F}"],
    "kernel inspect": ["kernel", "inspect", "{F}"],
    "attest eventlog": ["attest", "eventlog", "{F}"],
    "attest verify": ["attest", "verify", "--nonce", "00", "--ak", "{F}", "{F}"],
    "attest checkquote": ["attest", "checkquote", "--ak", "{F}", "--message", "{F}", "--signature", "{F}",
                          "--pcrs", "{F}", "--nonce", "00"],
    "report render": ["report", "render", "--format", "json", "-o", "/dev/null", "{F}"],
    "report render --stig-benchmark": ["report", "render", "--format", "ckl", "-o", "/dev/null",
                                       "--stig-benchmark", "{F}", "{EMPTYRESULTS}"],
    "report diff": ["report", "diff", "{F}", "{F}"],
    "report verify": ["report", "verify", "--cert", "{F}", "--signature", "{F}", "{F}"],
    "image check-spec": ["image", "check-spec", "{F}"],
    "image verify": ["image", "verify", "--ca", "{CA}", "{IMGDIR}"],
    "scan --waivers": ["scan", "--root", "{DIR}", "--offline", "-q", "--waivers", "{F}"],
}


def fixed_files(base: Path) -> dict[str, str]:
    """The harmless files the commands need besides the hostile one (a directory, empty files, a CA)."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    (base / "dir").mkdir(exist_ok=True)
    (base / "empty").write_bytes(b"")
    (base / "empty.log").write_bytes(b"")
    (base / "results.json").write_text(json.dumps({"schema": 1, "findings": []}))
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fuzz CA")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True).sign(key, hashes.SHA256()))
    (base / "ca.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return {"{DIR}": str(base / "dir"), "{EMPTY}": str(base / "empty"), "{EMPTYLOG}": str(base / "empty.log"),
            "{EMPTYRESULTS}": str(base / "results.json"), "{CA}": str(base / "ca.pem")}


def command_argv(template: list[str], path: Path, fixed: dict[str, str], imgdir: Path) -> list[str]:
    """The arguments for one run: {F} is the hostile file; {IMGDIR} an image directory whose manifest.json is it."""
    if "{IMGDIR}" in template and not imgdir.exists():
        imgdir.mkdir()
        (imgdir / "manifest.json").symlink_to(path)
        (imgdir / "manifest.json.sig").symlink_to(path)
    values = {**fixed, "{IMGDIR}": str(imgdir)}
    return [values.get(a, a).replace("{F}", str(path)) for a in template]


KUBELET_UNIT = "[Service]\nExecStart=/usr/bin/kubelet --config=/var/lib/kubelet/config.yaml\n"


def fifo_root(root: Path, rel: str) -> None:
    """A node tree whose kubelet (a systemd unit) or static pod manifest `rel` is a FIFO nobody writes to."""
    unit = root / "usr/lib/systemd/system/kubelet.service"
    unit.parent.mkdir(parents=True)
    unit.write_text(KUBELET_UNIT)
    (root / rel).parent.mkdir(parents=True, exist_ok=True)
    os.mkfifo(root / rel)


def _limit() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE, ADDRESS_SPACE))


def run_one(argv: list[str], timeout: float) -> tuple[str, str]:
    env = dict(os.environ, PYTHONPATH=os.environ.get("OBELISK_SRC", str(ROOT / "src")))
    env.pop("OBELISK_DEBUG", None)
    try:
        proc = subprocess.run([sys.executable, "-m", "obelisk", *argv], capture_output=True, timeout=timeout,
                              env=env, preexec_fn=_limit, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return "hang", ""
    err = proc.stderr.decode(errors="replace")
    if "MemoryError" in err or proc.returncode < 0:
        return "oom", err
    outcome = {0: "exit 0", 1: "exit 1", 2: "exit 2", 3: "exit 3"}.get(proc.returncode, f"exit {proc.returncode}")
    if len([line for line in err.splitlines() if line.strip()]) > 1:
        outcome += " multiline"
    return outcome, err


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--timeout", type=float, default=20.0)
    ap.add_argument("--jobs", type=int, default=3)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args()
    rng = random.Random(args.seed)
    makers = classes(rng)
    with tempfile.TemporaryDirectory(prefix="obelisk-fuzz-") as tmp:
        base = Path(tmp)
        fixed = fixed_files(base)
        jobs = []
        for cname, maker in makers.items():
            path = maker(base / f"in-{cname}")
            for name, template in COMMANDS.items():
                jobs.append((name, cname, command_argv(template, path, fixed, base / f"img-{cname}")))
        # the static-pod manifest and the kubelet config as FIFOs under --root
        for rel in ("etc/kubernetes/manifests/kube-apiserver.yaml", "var/lib/kubelet/config.yaml"):
            root = base / ("root-" + rel.replace("/", "_"))
            fifo_root(root, rel)
            jobs.append(("scan --root", "fifo:" + rel, ["scan", "--root", str(root), "--offline", "-q"]))
        counts: collections.Counter[str] = collections.Counter()
        bad: list[str] = []
        with concurrent.futures.ThreadPoolExecutor(args.jobs) as pool:
            futures = {pool.submit(run_one, argv, args.timeout): (name, cname) for name, cname, argv in jobs}
            for fut in concurrent.futures.as_completed(futures):
                name, cname = futures[fut]
                outcome, err = fut.result()
                counts["inputs tried"] += 1
                counts[outcome.split(" multiline")[0]] += 1
                if "multiline" in outcome:
                    counts["more than one stderr line"] += 1
                if outcome not in ("exit 1", "exit 2"):
                    last = err.strip().splitlines()[-1][:160] if err.strip() else ""
                    bad.append(f"{outcome:18} {name:32} {cname:22} {last}")
    order = ["inputs tried", "exit 2", "exit 1", "exit 0", "exit 3", "hang", "oom", "more than one stderr line"]
    labels = {"exit 3": "exit 3 (goal 0)", "hang": "hangs (goal 0)", "oom": "out-of-memory (goal 0)",
              "more than one stderr line": "more than one stderr line (goal 0)"}
    for key in order + sorted(set(counts) - set(order)):
        print(f"{labels.get(key, key):36} {counts.get(key, 0)}")
    if args.verbose:
        for line in sorted(bad):
            print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
