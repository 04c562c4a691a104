"""`obelisk kernel check|profiles|config|build|inspect|boot`: argument parsing and rendering only."""

from __future__ import annotations

import argparse
from typing import Any


def register(sub: argparse._SubParsersAction) -> None:
    from obelisk.cli.common import add_output_options, add_quiet
    from obelisk.cli.main import subcommand_group

    group = subcommand_group(sub, "kernel", "hardened kernels: check configs, resolve, build, inspect")

    p = group.add_parser("check", help="check a kernel config, command line and sysctls against a hardening profile")
    p.add_argument("--config", metavar="FILE", help="kernel .config (plain or gzip, e.g. /proc/config.gz)")
    p.add_argument("--cmdline", metavar="FILE", help="kernel command line (e.g. a copy of /proc/cmdline)")
    p.add_argument("--sysctl", metavar="FILE", help="sysctl settings (sysctl.conf syntax)")
    p.add_argument("--running", action="store_true",
                   help="check this machine: /proc/config.gz, /proc/cmdline, /proc/sys")
    p.add_argument("--kernel-source", metavar="DIR", help="classify each option against this kernel tree's Kconfig")
    p.add_argument("--profile", default="module-less", help="profile name or YAML file (default: module-less)")
    p.add_argument("--waivers", metavar="FILE", help="waivers (id, reason, approver, expires)")
    add_output_options(p)
    p.set_defaults(handler=_check)

    p = group.add_parser("profiles", help="list the built-in hardening profiles")
    add_output_options(p)
    p.set_defaults(handler=_profiles)

    p = group.add_parser("config", help="resolve a profile against a kernel tree into a .config, explaining drops")
    p.add_argument("--kernel-source", metavar="DIR|TARBALL", required=True)
    p.add_argument("--profile", default="module-less", help="profile name or YAML file (default: module-less)")
    p.add_argument("--base", default="tinyconfig",
                   help="starting point: tinyconfig, allnoconfig, or a .config file (default: tinyconfig)")
    p.add_argument("--fragment", metavar="FILE", action="append", default=[],
                   help="extra .config fragment applied after the profile (repeatable)")
    p.add_argument("--randstruct-seed", metavar="FILE",
                   help="the customer's secret seed file (0600) the build will use: keeps RANDSTRUCT in the "
                        "config (without it, RANDSTRUCT is left out and the report says why)")
    p.add_argument("-o", "--output", metavar="FILE", required=True, help="the resolved .config")
    p.add_argument("--input-out", metavar="FILE",
                   help="also write the merged input (base + requests + dependency closure) that "
                        "`make olddefconfig` turns into the same .config")
    p.add_argument("--report", metavar="FILE", help="write the explanation report to FILE (JSON)")
    p.add_argument("--format", choices=("text", "json"), default=None)
    p.add_argument("-v", "--verbose", action="store_true", help="text: also list requests that took effect")
    p.add_argument("--strict", action="store_true", help="exit 1 if an applicable request did not take effect")
    add_quiet(p)
    p.set_defaults(handler=_config)

    p = group.add_parser("build", help="build bzImage + vmlinux with the customer CA built in (reproducible, cached)")
    p.add_argument("--kernel-source", metavar="DIR|TARBALL", required=True)
    p.add_argument("--config", metavar="FILE", required=True)
    p.add_argument("--ca", metavar="CA.pem", required=True, help="customer CA certificate (PEM) to trust")
    p.add_argument("-o", "--output", metavar="DIR", required=True)
    p.add_argument("-j", "--jobs", type=int, default=2)
    p.add_argument("--randstruct-seed", metavar="FILE",
                   help="the customer's secret seed file (0600) for CONFIG_RANDSTRUCT: the same seed rebuilds "
                        "the same kernel (required when the config sets RANDSTRUCT)")
    p.add_argument("--format", choices=("text", "json"), default=None)
    add_quiet(p)
    p.set_defaults(handler=_build)

    p = group.add_parser("inspect", help="prove a built kernel image is what was intended (module-less, config, CA)")
    p.add_argument("image", metavar="IMAGE", help="bzImage or vmlinux (stripped or not)")
    p.add_argument("--config", metavar="FILE", help="the intended .config to compare the embedded one with")
    p.add_argument("--ca", metavar="CA.pem", help="customer CA that must be among the embedded certificates")
    add_output_options(p)
    p.set_defaults(handler=_inspect)

    p = group.add_parser("boot", help="boot a kernel under QEMU with swtpm to a busybox shell; report IMA and TPM")
    p.add_argument("image", metavar="BZIMAGE")
    p.add_argument("--timeout", type=float, default=900, help="seconds (software emulation is slow)")
    p.add_argument("--workdir", metavar="DIR", help="keep the initramfs, console log and TPM state here")
    add_output_options(p)
    p.set_defaults(handler=_boot)


def _boot(args: argparse.Namespace) -> int:
    from obelisk.cli.common import emit_report
    from obelisk.lab.kernel_boot import boot_report

    return emit_report(args, boot_report(args.image, workdir=args.workdir, timeout=args.timeout))


def _check(args: argparse.Namespace) -> int:
    from obelisk.cli.common import emit_report
    from obelisk.kernel_hardening.check import check_report

    return emit_report(args, check_report(args.profile, config=args.config, cmdline=args.cmdline,
                                          sysctl=args.sysctl, running=args.running,
                                          kernel_source=args.kernel_source, waivers=args.waivers))


def _profiles(args: argparse.Namespace) -> int:
    from obelisk.cli.common import emit_result
    from obelisk.kernel_hardening.profile import available_profiles, load_profile

    rows: list[dict[str, Any]] = []
    for name in available_profiles():
        p = load_profile(name)
        rows.append({"name": name, "description": p.description,
                     **{kind: len(p.of_kind(kind)) for kind in ("kconfig", "cmdline", "sysctl")}})
    text = "".join(f"{r['name']:14} {r['kconfig']:4} kconfig {r['cmdline']:3} cmdline {r['sysctl']:3} sysctl  "
                   f"{r['description'][:80]}\n" for r in rows)
    return emit_result(args, {"profiles": rows}, text)


def _config(args: argparse.Namespace) -> int:
    import sys

    from obelisk.cli.common import output_format
    from obelisk.core import atomic, findings
    from obelisk.kernel_hardening.profile import load_profile
    from obelisk.kernel_hardening.resolve import DROPPED, check_tree_clean, resolve
    from obelisk.kernel_hardening.resolve_report import render_text, resolution_report
    from obelisk.kernel_hardening.source import source_tree

    profile = load_profile(args.profile)
    tree = source_tree(args.kernel_source, quiet=args.quiet)
    check_tree_clean(tree)
    if args.randstruct_seed:
        from obelisk.kernel_hardening.randstruct import read_seed

        read_seed(args.randstruct_seed)  # a secret file, before the work
    res = resolve(tree, profile, base=args.base, fragments=args.fragment, randstruct_seed=bool(args.randstruct_seed))
    atomic.write_text(args.output, res.config_text)
    if args.input_out:
        atomic.write_text(args.input_out, res.input_text)
    report = resolution_report(res, output=args.output, profile=profile.name, tree=str(tree))
    if args.report:
        atomic.write_text(args.report, findings.serialize(report))
    if output_format(args) == "json":
        sys.stdout.write(findings.serialize(report))
    else:
        sys.stdout.write(render_text(res, output=args.output, profile=profile.name, verbose=args.verbose))
    return 1 if (args.strict and res.by_status(DROPPED)) else 0


def _build(args: argparse.Namespace) -> int:
    from obelisk.cli.common import emit_result
    from obelisk.kernel_hardening.build import build
    from obelisk.kernel_hardening.randstruct import read_seed

    seed = read_seed(args.randstruct_seed) if args.randstruct_seed else None
    result = build(args.kernel_source, args.config, args.ca, args.output, jobs=args.jobs, quiet=args.quiet,
                   randstruct_seed=seed)
    data = {"output": str(result.output), "cached": result.cached, "seconds": round(result.seconds, 1),
            **{k: result.info.get(k) for k in ("kernel_release", "bzImage_sha256", "vmlinux_sha256",
                                                "config_sha256", "ca_sha256", "build_seconds")}}
    how = "from cache" if result.cached else f"built in {data['seconds']} s"
    text = (f"kernel {data['kernel_release']} -> {result.output}/bzImage ({how})\n"
            f"bzImage sha256 {data['bzImage_sha256']}\n")
    # -o names the output directory here, not a file for the result: print the result
    shown = argparse.Namespace(format=args.format, output=None)
    return emit_result(shown, data, text)


def _inspect(args: argparse.Namespace) -> int:
    from obelisk.cli.common import emit_report
    from obelisk.kernel_hardening.inspect import inspect_file

    return emit_report(args, inspect_file(args.image, config=args.config, ca=args.ca))
