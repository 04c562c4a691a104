"""Options and output shared by every command.

Every command that reports takes `--format text|json` (text by default on a terminal,
JSON when stdout is a pipe or `-o` names a file) and `-o FILE` (written atomically).
`--format` always means the output format. An old spelling that still works prints one
line on stderr: `obelisk: warning: disk unlock --json is deprecated; use --format json`.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # imported lazily: commands that only sign should not pay for the result model
    from obelisk.core.findings import Report


OUTPUT_FORMATS = ("text", "json")


def add_output_options(parser: argparse.ArgumentParser, *, format_option: bool = True, output_file: bool = True,
                       verbose: bool = True, default: str | None = None) -> None:
    """`--format text|json`, `-o FILE` and `-v`.

    format_option=False: the command adds its own `--format` (one that also accepts an old meaning).
    default: the format on stdout when `--format` is not given (None: text on a terminal, json otherwise).
    """
    if format_option:
        when = f"default: {default}" if default else "default: text on a terminal, json otherwise"
        parser.add_argument("--format", choices=OUTPUT_FORMATS, default=None, help=f"output format ({when})")
    if default:
        parser.set_defaults(default_format=default)
    if output_file:
        parser.add_argument("-o", "--output", metavar="FILE", help="write the result to FILE (atomically)")
    if verbose:
        parser.add_argument("-v", "--verbose", action="store_true", help="text: also list passing checks")


def warn_deprecated(parser: argparse.ArgumentParser, old: str, new: str) -> None:
    """One line on stderr: `obelisk: warning: COMMAND OLD is deprecated; use NEW`."""
    command = parser.prog.split(" ", 1)[1] if " " in parser.prog else parser.prog
    print(f"obelisk: warning: {command} {old} is deprecated; use {new}", file=sys.stderr)


class DeprecatedJsonFlag(argparse.Action):
    """`--json`: the old spelling of `--format json` (still works, with a deprecation warning)."""

    def __init__(self, option_strings: list[str], dest: str, **kwargs: Any) -> None:
        kwargs.setdefault("help", "deprecated: use --format json")
        super().__init__(option_strings, dest="format", nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: str | Sequence[Any] | None, option_string: str | None = None) -> None:
        warn_deprecated(parser, option_string or "--json", "--format json")
        namespace.format = "json"


def add_json_alias(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action=DeprecatedJsonFlag)


def output_format(args: argparse.Namespace) -> str:
    if getattr(args, "format", None):
        return args.format
    if getattr(args, "output", None):
        return "json"
    if getattr(args, "default_format", None):
        return args.default_format
    if not sys.stdout.isatty():
        return "json"
    return "text"


def _write(args: argparse.Namespace, text: str, mode: int = 0o644) -> None:
    if getattr(args, "output", None):
        from obelisk.core import atomic  # here: pathlib and tempfile cost every command 8 ms of start-up

        atomic.write_text(args.output, text, mode=mode)
    else:
        sys.stdout.write(text)
        sys.stdout.flush()


def emit_report(args: argparse.Namespace, report: Report) -> int:
    """Render `report` as asked; return the exit code (0 all passed, 1 something failed)."""
    from obelisk.core import findings
    from obelisk.core.textreport import render_text

    if output_format(args) == "json":
        _write(args, findings.serialize(report))
    else:
        _write(args, render_text(report, verbose=getattr(args, "verbose", False)))
    return report.exit_code()


def emit_result(args: argparse.Namespace, data: dict[str, Any],
                text: Callable[[dict[str, Any]], str] | str, exit_code: int = 0, *, mode: int = 0o644) -> int:
    """Render a command result that is not a findings report (keys made, files signed, ...).

    mode: of the `-o` file (0o600 when the result holds a secret, such as a recovery key).
    """
    if output_format(args) == "json":
        _write(args, json.dumps(data, indent=2, sort_keys=True) + "\n", mode)
    else:
        _write(args, text if isinstance(text, str) else text(data), mode)
    return exit_code


def add_quiet(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress display")
