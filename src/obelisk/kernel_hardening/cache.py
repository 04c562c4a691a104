"""Where the kernel component keeps extracted trees, Kconfig summaries and builds.

`$OBELISK_CACHE/kernel` if set, else `$XDG_CACHE_HOME/obelisk/kernel` (~/.cache/obelisk/kernel).
Entries are keyed by content digests and created atomically, so a crash never leaves a
half-written entry that looks complete.
"""

from __future__ import annotations

import os
from pathlib import Path


def root() -> Path:
    base = os.environ.get("OBELISK_CACHE")
    if base:
        return Path(base) / "kernel"
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(xdg) / "obelisk" / "kernel"


def cache_dir(*parts: str) -> Path:
    path = root().joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path
