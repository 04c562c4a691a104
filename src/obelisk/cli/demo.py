"""`obelisk demo`: the main job on the bundled example, stage by stage, with progress.

Each stage is a small function over a shared context; the demo grows as components land:
keys -> sign the example rootfs -> verify it (and, with the image pipeline, build -> boot ->
attest -> report).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from obelisk.cli.common import add_output_options, add_quiet, emit_result


@dataclass
class DemoContext:
    example: Path
    workdir: Path
    quiet: bool
    results: dict[str, object] = field(default_factory=dict)
    failed: bool = False


def _stage_keys(ctx: DemoContext) -> str:
    from obelisk.signer import keygen

    keys = ctx.workdir / "keys"
    if (keys / "ima.key").exists():
        made = "reused"
    else:
        keygen.generate(keys, "rsa-2048", organization="obelisk demo")
        made = "generated"
    ctx.results["keys"] = str(keys)
    return f"{made} customer CA and IMA signing key in {keys}"


def _stage_rootfs(ctx: DemoContext) -> str:
    """A small userland: busybox-static plus the example's overlay (configuration files)."""
    from obelisk.core import tools

    rootfs = ctx.workdir / "rootfs"
    if rootfs.exists():
        shutil.rmtree(rootfs)
    (rootfs / "bin").mkdir(parents=True)
    shutil.copy2(tools.which("busybox"), rootfs / "bin/busybox")
    overlay = ctx.example / "overlay"
    if overlay.is_dir():
        shutil.copytree(overlay, rootfs, dirs_exist_ok=True, symlinks=True)
    for applet in ("sh", "ls", "cat", "mount"):
        (rootfs / "bin" / applet).symlink_to("busybox")
    ctx.results["rootfs"] = str(rootfs)
    count = sum(1 for p in rootfs.rglob("*") if p.is_file() and not p.is_symlink())
    return f"assembled {rootfs} ({count} regular files)"


def _stage_sign(ctx: DemoContext) -> str:
    from obelisk.signer.keys import load_certificate, load_signing_key
    from obelisk.signer.sign import sign_tree

    keys = Path(str(ctx.results["keys"]))
    dump = ctx.workdir / "rootfs.ima.dump"
    summary = sign_tree([str(ctx.results["rootfs"])], load_signing_key(str(keys / "ima.key")),
                        load_certificate(keys / "ima.pem"), xattr_file=str(dump), quiet=ctx.quiet)
    ctx.results["xattr_file"] = str(dump)
    return f"signed {summary.signed} files with key id {summary.key_id}; signatures in {dump}"


def _stage_squashfs(ctx: DemoContext) -> str:
    from obelisk.core import tools

    image = ctx.workdir / "rootfs.sqfs"
    image.unlink(missing_ok=True)
    tools.run("gensquashfs", ["--pack-dir", str(ctx.results["rootfs"]), "--xattr-file",
                              str(ctx.results["xattr_file"]), "--defaults", "mtime=0", "--quiet", str(image)])
    ctx.results["squashfs"] = str(image)
    return f"packed {image} with the signatures as security.ima xattrs (gensquashfs -A)"


def _stage_verify(ctx: DemoContext) -> str:
    from obelisk.core import atomic
    from obelisk.signer.keys import load_certificate
    from obelisk.signer.verify import verify_tree

    ca_dir = Path(str(ctx.results["keys"]))
    report = verify_tree([str(ctx.results["rootfs"])], [("ima.pem", load_certificate(ca_dir / "ima.pem"))],
                         xattr_file=str(ctx.results["xattr_file"]), quiet=ctx.quiet)
    out = ctx.workdir / "results" / "ima-verify.json"
    atomic.write_text(out, report.dumps())
    ctx.results["verify"] = str(out)
    ctx.failed |= report.failed
    return f"{report.findings[0].observed}: {'PASS' if not report.failed else 'FAIL'} (results in {out})"


STAGES: tuple[tuple[str, Callable[[DemoContext], str]], ...] = (
    ("keys", _stage_keys),
    ("rootfs", _stage_rootfs),
    ("sign", _stage_sign),
    ("squashfs", _stage_squashfs),
    ("verify", _stage_verify),
)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="run the main job on the bundled example: keys, sign, verify, ...")
    p.add_argument("--example", default="examples/node", help="example directory (default examples/node)")
    p.add_argument("--workdir", default="demo-out", help="where keys and outputs go (default demo-out)")
    add_quiet(p)
    add_output_options(p)
    p.set_defaults(handler=_demo)


def _demo(args: argparse.Namespace) -> int:
    from obelisk.core.errors import InputError

    example = Path(args.example)
    if not example.is_dir():
        raise InputError("not a directory", source=str(example))
    ctx = DemoContext(example=example, workdir=Path(args.workdir).resolve(), quiet=args.quiet)
    ctx.workdir.mkdir(parents=True, exist_ok=True)
    timings = {}
    for number, (name, stage) in enumerate(STAGES, start=1):
        start = time.monotonic()
        message = stage(ctx)
        timings[name] = round(time.monotonic() - start, 2)
        if not args.quiet:
            print(f"[{number}/{len(STAGES)}] {name:9} {message} ({timings[name]:.1f} s)", file=sys.stderr)
    data = {"workdir": str(ctx.workdir), "results": ctx.results, "seconds": timings, "passed": not ctx.failed}
    return emit_result(args, data, f"demo {'passed' if not ctx.failed else 'FAILED'}; outputs in {ctx.workdir}\n",
                       exit_code=1 if ctx.failed else 0)
