"""`obelisk kernel check|config|build|inspect`: argument parsing only; the work is in the modules."""

from __future__ import annotations

import argparse


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
    from obelisk.kernel_hardening.bootcheck import run

    return run(args)


def _check(args: argparse.Namespace) -> int:
    from obelisk.kernel_hardening.commands import run_check

    return run_check(args)


def _profiles(args: argparse.Namespace) -> int:
    from obelisk.kernel_hardening.commands import run_profiles

    return run_profiles(args)


def _config(args: argparse.Namespace) -> int:
    from obelisk.kernel_hardening.commands import run_config

    return run_config(args)


def _build(args: argparse.Namespace) -> int:
    from obelisk.kernel_hardening.commands import run_build

    return run_build(args)


def _inspect(args: argparse.Namespace) -> int:
    from obelisk.kernel_hardening.commands import run_inspect

    return run_inspect(args)
