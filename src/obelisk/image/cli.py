"""Commands of the image pipeline: build, image verify/spec-docs, boot, attest node."""

from __future__ import annotations

import argparse

from obelisk.cli.common import add_output_options, add_quiet, emit_report, emit_result


def register(sub: argparse._SubParsersAction) -> None:
    from obelisk.cli.main import subcommand_group

    p = sub.add_parser("build", help="build a node image from a spec: kernel, initramfs, signed SquashFS, manifest")
    p.add_argument("spec", metavar="SPEC.yaml")
    p.add_argument("-o", "--out", required=True, metavar="OUT", help="output directory (replaced atomically)")
    p.add_argument("--cache-dir", metavar="DIR", help="step cache (default $OBELISK_CACHE or ~/.cache/obelisk)")
    p.add_argument("--no-cache", action="store_true", help="rebuild every step")
    p.add_argument("--format", choices=("text", "json"), default=None)
    add_quiet(p)
    p.set_defaults(handler=_build)

    image = subcommand_group(sub, "image", "node images: verify, spec reference")
    v = image.add_parser("verify", help="check the manifest signature, every artifact and every file signature")
    v.add_argument("out", metavar="OUT")
    v.add_argument("--ca", required=True, metavar="CA", help="the customer CA certificate (PEM or DER)")
    add_output_options(v)
    v.set_defaults(handler=_verify)
    d = image.add_parser("spec-docs", help="print the spec reference (docs/image-spec.md) generated from the model")
    d.add_argument("-o", "--output", metavar="FILE")
    d.set_defaults(handler=_spec_docs)
    e = image.add_parser("spec-example", help="print a spec skeleton with every key and its default")
    e.set_defaults(handler=_spec_example)
    c = image.add_parser("check-spec", help="validate a spec without building")
    c.add_argument("spec", metavar="SPEC.yaml")
    c.set_defaults(handler=_check_spec)


def _build(args: argparse.Namespace) -> int:
    from pathlib import Path

    from obelisk.image.build import build
    from obelisk.image.cache import StepCache, default_cache_dir
    from obelisk.image.spec import load_spec

    spec = load_spec(args.spec)
    cache = StepCache(Path(args.cache_dir) if args.cache_dir else default_cache_dir(), enabled=not args.no_cache)
    result = build(spec, Path(args.out), cache=cache, quiet=args.quiet)

    def text(d: dict) -> str:
        lines = [f"built {spec.name} {spec.version} into {d['out']} ({d['files']} files signed)"]
        lines += [f"  {name:18} sha256:{a['sha256']}  {a['size']} bytes" for name, a in d["artifacts"].items()]
        lines.append("  steps: " + ", ".join(f"{k} {v}" for k, v in d["steps"].items()))
        return "\n".join(lines) + "\n"

    args.output = None
    return emit_result(args, result.to_json(), text)


def _verify(args: argparse.Namespace) -> int:
    from pathlib import Path

    from obelisk.image.verify import verify_image

    return emit_report(args, verify_image(Path(args.out), Path(args.ca)))


def _spec_docs(args: argparse.Namespace) -> int:
    import sys

    from obelisk.core import atomic
    from obelisk.image.spec import render_docs

    if args.output:
        atomic.write_text(args.output, render_docs())
    else:
        sys.stdout.write(render_docs())
    return 0


def _spec_example(args: argparse.Namespace) -> int:
    import sys

    from obelisk.image.spec import example_yaml

    sys.stdout.write(example_yaml())
    return 0


def _check_spec(args: argparse.Namespace) -> int:
    from obelisk.image.spec import load_spec

    spec = load_spec(args.spec)
    print(f"{args.spec}: valid ({spec.name} {spec.version})")
    return 0
