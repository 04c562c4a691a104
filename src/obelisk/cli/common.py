"""Options and output shared by every command.

Every command that reports takes `--format text|json` (text by default on a terminal,
JSON when stdout is a pipe or `-o` names a file) and `-o FILE` (written atomically).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from obelisk.core import atomic

if TYPE_CHECKING:  # imported lazily: commands that only sign should not pay for the result model
    from obelisk.core.findings import Report


def add_output_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--format", choices=("text", "json"), default=None,
                        help="output format (default: text on a terminal, json otherwise)")
    parser.add_argument("-o", "--output", metavar="FILE", help="write the result to FILE (atomically)")
    parser.add_argument("-v", "--verbose", action="store_true", help="text: also list passing checks")


def output_format(args: argparse.Namespace) -> str:
    if getattr(args, "format", None):
        return args.format
    if getattr(args, "output", None) or not sys.stdout.isatty():
        return "json"
    return "text"


def _write(args: argparse.Namespace, text: str) -> None:
    if getattr(args, "output", None):
        atomic.write_text(args.output, text)
    else:
        sys.stdout.write(text)
        sys.stdout.flush()


def emit_report(args: argparse.Namespace, report: "Report") -> int:
    """Render `report` as asked; return the exit code (0 all passed, 1 something failed)."""
    from obelisk.core import findings
    from obelisk.core.textreport import render_text

    if output_format(args) == "json":
        _write(args, findings.serialize(report))
    else:
        _write(args, render_text(report, verbose=getattr(args, "verbose", False)))
    return report.exit_code()


def emit_result(args: argparse.Namespace, data: dict[str, Any],
                text: Callable[[dict[str, Any]], str] | str, exit_code: int = 0) -> int:
    """Render a command result that is not a findings report (keys made, files signed, ...)."""
    if output_format(args) == "json":
        _write(args, json.dumps(data, indent=2, sort_keys=True) + "\n")
    else:
        _write(args, text if isinstance(text, str) else text(data))
    return exit_code


def add_quiet(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress display")
