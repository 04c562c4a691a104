"""Reading untrusted input files with a size bound, as one-line errors on failure."""

from __future__ import annotations

import os

from obelisk.core.errors import InputError


def read_bounded(path: str | os.PathLike[str], what: str, limit: int) -> bytes:
    """Read `path` (at most `limit` bytes); a missing, unreadable or oversized file is an InputError."""
    name = os.fspath(path)
    try:
        with open(name, "rb") as handle:
            data = handle.read(limit + 1)
    except FileNotFoundError:
        raise InputError(f"{what} not found", source=name) from None
    except IsADirectoryError:
        raise InputError(f"{what} is a directory", source=name) from None
    except OSError as exc:
        raise InputError(f"cannot read {what}: {exc.strerror}", source=name) from None
    if len(data) > limit:
        raise InputError(f"{what} larger than {limit} bytes", source=name)
    return data
