"""Errors that end a command with a one-line message.

Exit codes across obelisk: 0 every check passed, 1 checks ran and something failed,
2 bad input or usage. Anything raised as an `ObeliskError` is printed as one line
on stderr by the CLI, never as a traceback.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_INTERNAL = 3


class ObeliskError(Exception):
    """Base of every error that the CLI reports as one line."""

    exit_code = EXIT_BAD_INPUT


class InputError(ObeliskError):
    """Bad input: a file, field, offset or argument the user must fix. Exit 2."""

    def __init__(self, message: str, *, source: str | None = None, offset: int | None = None):
        self.source = source
        self.offset = offset
        where = ""
        if source is not None:
            where = f"{source}"
            if offset is not None:
                where += f" (offset {offset})"
            where += ": "
        elif offset is not None:
            where = f"offset {offset}: "
        super().__init__(f"{where}{message}")


class ParseError(InputError):
    """Untrusted bytes that do not parse. Names the offset or field."""


class ToolMissingError(ObeliskError):
    """An external program obelisk wraps is not installed."""

    def __init__(self, tool: str, package: str | None = None):
        hint = f" (Debian package {package}; run scripts/setup)" if package else ""
        super().__init__(f"required program '{tool}' not found{hint}")


class ToolFailedError(ObeliskError):
    """An external program ran and failed; carries the last line it printed."""

    def __init__(self, tool: str, returncode: int, detail: str):
        last = detail.strip().splitlines()[-1] if detail.strip() else "no output"
        super().__init__(f"{tool} failed with exit code {returncode}: {last}")
        self.returncode = returncode
        self.detail = detail
