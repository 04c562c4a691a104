"""Where obelisk keeps its caches: the one place that reads OBELISK_CACHE.

`$OBELISK_CACHE` if set, else `$XDG_CACHE_HOME/obelisk`, else `~/.cache/obelisk`. Each
component keeps its entries in a subdirectory of its own: `image/` (the build's step cache),
`kernel/` (extracted sources, Kconfig indexes, kernel builds).
"""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    env = os.environ.get("OBELISK_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "obelisk"


def component_cache(component: str, *parts: str, create: bool = False) -> Path:
    """`<cache root>/<component>/<parts...>`, created (with its parents) if `create`."""
    path = cache_root().joinpath(component, *parts)
    if create:
        path.mkdir(parents=True, exist_ok=True)
    return path
