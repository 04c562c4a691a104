"""`obelisk` entry point. Components add their commands through `register(subparsers)`.

Component CLI modules import only argparse-level code at module level; heavy imports
happen inside handlers so that `obelisk --help` and fast checks start quickly.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from obelisk import __version__
from obelisk.core.errors import EXIT_BAD_INPUT, EXIT_INTERNAL, ObeliskError

# Each module defines register(subparsers: argparse._SubParsersAction) -> None.
COMMAND_MODULES = (
    "obelisk.cli.signer",
    "obelisk.cli.ima",
    "obelisk.cli.kernel",
    "obelisk.cli.cis",
    "obelisk.cli.attest",
    "obelisk.cli.disk",
    "obelisk.cli.reports",
    "obelisk.cli.image",
    "obelisk.cli.demo",
    "obelisk.cli.fleet",
    "obelisk.cli.upgrade",
)

# The top-level commands each module adds (kept equal to what they register by a test): a command
# line imports only the modules of its command, so `obelisk ima sign` does not pay for building
# every other component's parser.
COMMANDS: dict[str, tuple[str, ...]] = {
    "keys": ("obelisk.cli.signer",),
    "ima": ("obelisk.cli.signer", "obelisk.cli.ima"),
    "kernel": ("obelisk.cli.kernel",),
    "scan": ("obelisk.cli.cis",),
    "k8s": ("obelisk.cli.cis",),
    "attest": ("obelisk.cli.attest", "obelisk.cli.image"),
    "disk": ("obelisk.cli.disk",),
    "report": ("obelisk.cli.reports",),
    "build": ("obelisk.cli.image",),
    "image": ("obelisk.cli.image",),
    "boot": ("obelisk.cli.image",),
    "demo": ("obelisk.cli.demo",),
    "fleet": ("obelisk.cli.fleet",),
    "upgrade": ("obelisk.cli.upgrade",),
}


class _Parser(argparse.ArgumentParser):
    """argparse that reports usage errors as one line (exit 2) instead of the usage block."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message}\n")


def _modules_for(argv: list[str] | None) -> tuple[str, ...]:
    """The command modules a command line needs: those of its command, or all (help, typos)."""
    args = sys.argv[1:] if argv is None else argv
    command = next((a for a in args if not a.startswith("-")), None)
    return COMMANDS.get(command or "", COMMAND_MODULES)


def build_parser(argv: list[str] | None = None, *, modules: tuple[str, ...] | None = None) -> argparse.ArgumentParser:
    parser = _Parser(prog="obelisk", description="obelisk: immutable, IMA-signed, hardened Kubernetes node images, "
                     "and proof that running nodes still match them")
    parser.add_argument("--version", action="version", version=f"obelisk {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name in modules if modules is not None else _modules_for(argv):
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name is not None and name.startswith(exc.name):  # component has no CLI yet
                continue
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    handler = getattr(args, "handler", None)
    if handler is None:
        parser.print_help(sys.stderr)
        return EXIT_BAD_INPUT
    try:
        return int(handler(args))
    except ObeliskError as exc:
        print(f"obelisk: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("obelisk: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    except Exception as exc:  # a bug: still one line, unless asked for the traceback
        if os.environ.get("OBELISK_DEBUG"):
            raise
        print(f"obelisk: internal error: {type(exc).__name__}: {exc} (set OBELISK_DEBUG=1 for a traceback)",
              file=sys.stderr)
        return EXIT_INTERNAL


def subcommand_group(sub: argparse._SubParsersAction, name: str, help: str) -> argparse._SubParsersAction:
    """Add (or reuse) a command group such as `ima` that several components contribute to."""
    existing = sub.choices.get(name)
    if existing is None:
        existing = sub.add_parser(name, help=help)
        existing.set_defaults(handler=lambda args, p=existing: (p.print_help(sys.stderr), EXIT_BAD_INPUT)[1])
        group = existing.add_subparsers(dest=f"{name}_command", metavar="COMMAND", parser_class=_Parser)
        existing._obelisk_group = group
        return group
    return existing._obelisk_group
