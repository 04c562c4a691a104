"""Command implementations behind `obelisk kernel ...` (I/O at the edges; logic in the modules)."""

from __future__ import annotations

import argparse
import os

from obelisk.cli.common import emit_report, emit_result
from obelisk.core.errors import InputError
from obelisk.core.findings import Report, Subject


def run_profiles(args: argparse.Namespace) -> int:
    from obelisk.kernel_hardening.profile import available_profiles, load_profile

    rows = []
    for name in available_profiles():
        p = load_profile(name)
        rows.append({"name": name, "description": p.description,
                     **{kind: len(p.of_kind(kind)) for kind in ("kconfig", "cmdline", "sysctl")}})
    text = "".join(f"{r['name']:14} {r['kconfig']:4} kconfig {r['cmdline']:3} cmdline {r['sysctl']:3} sysctl  "
                   f"{r['description'][:80]}\n" for r in rows)
    return emit_result(args, {"profiles": rows}, text)


def run_check(args: argparse.Namespace) -> int:
    from obelisk.core.waivers import apply_waivers, load_waivers
    from obelisk.kernel_hardening import inputs as kin
    from obelisk.kernel_hardening import kconfig_file
    from obelisk.kernel_hardening.check import Inputs, check
    from obelisk.kernel_hardening.profile import load_profile

    profile = load_profile(args.profile)
    if not (args.config or args.cmdline or args.sysctl or args.running):
        raise InputError("nothing to check: give --config, --cmdline, --sysctl or --running")
    config = cmdline = sysctls = None
    if args.running:
        config_path = args.config or "/proc/config.gz"
        if not os.path.exists(config_path):
            raise InputError("the running kernel exposes no configuration (needs CONFIG_IKCONFIG_PROC)",
                             source=config_path)
        config = kconfig_file.read(config_path)
        cmdline = kin.read_cmdline(args.cmdline or "/proc/cmdline")
        sysctls = (kin.read_sysctl_file(args.sysctl) if args.sysctl else
                   kin.read_running_sysctls([r.name for r in profile.of_kind("sysctl")]))
    else:
        if args.config:
            config = kconfig_file.read(args.config)
        if args.cmdline:
            cmdline = kin.read_cmdline(args.cmdline)
        if args.sysctl:
            sysctls = kin.read_sysctl_file(args.sysctl)
    tree = None
    if args.kernel_source:
        from obelisk.kernel_hardening.source import source_tree
        from obelisk.kernel_hardening.tree_index import load_index

        tree = load_index(source_tree(args.kernel_source))
    findings = check(profile, Inputs(config=config, cmdline=cmdline, sysctls=sysctls, tree=tree))
    if args.waivers:
        findings = apply_waivers(findings, load_waivers(args.waivers))
    name = "running kernel" if args.running else (args.config or args.cmdline or args.sysctl)
    attributes = [("profile", profile.name)]
    if config is not None and config.version:
        attributes.append(("config_version", config.version))
    if tree is not None:
        attributes.append(("kernel_source", tree.root))
        attributes.append(("kernel_source_version", tree.version))
    report = Report(findings=findings, subject=Subject(kind="kernel", name=str(name),
                                                       attributes=tuple(sorted(attributes))),
                    command="obelisk kernel check")
    return emit_report(args, report)


def run_config(args: argparse.Namespace) -> int:
    from obelisk.kernel_hardening.resolve_cmd import run

    return run(args)


def run_build(args: argparse.Namespace) -> int:
    from obelisk.kernel_hardening.build import run

    return run(args)


def run_inspect(args: argparse.Namespace) -> int:
    from obelisk.kernel_hardening.inspect import run

    return run(args)
