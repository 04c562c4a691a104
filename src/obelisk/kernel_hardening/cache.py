"""Where the kernel component keeps extracted trees, Kconfig summaries and builds.

`<cache root>/kernel` (core.cachedir decides the root: $OBELISK_CACHE, else
$XDG_CACHE_HOME/obelisk, else ~/.cache/obelisk). Entries are keyed by content digests and
created atomically, so a crash never leaves a half-written entry that looks complete.
"""

from __future__ import annotations

from pathlib import Path

from obelisk.core.cachedir import component_cache

COMPONENT = "kernel"


def root() -> Path:
    return component_cache(COMPONENT)


def cache_dir(*parts: str) -> Path:
    return component_cache(COMPONENT, *parts, create=True)
