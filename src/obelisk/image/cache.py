"""The build cache: each step's output stored under the digest of its inputs.

A step is keyed by its name and a JSON description of every input (file digests, settings,
tool versions). Outputs are directories built under a temporary name and renamed into
place, so a killed build never leaves a cache entry that looks complete.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CACHE_VERSION = "1"


def default_cache_dir() -> Path:
    env = os.environ.get("OBELISK_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "obelisk"


def file_digest(path: str | os.PathLike[str], algo: str = "sha256") -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, algo).hexdigest()


def tree_digest(root: str | os.PathLike[str]) -> str:
    """Digest of a directory tree: every entry's relative path, type, mode and content, in sorted order."""
    h = hashlib.sha256()
    root_b = os.fsencode(root)
    for dirpath, dirnames, filenames in os.walk(root_b):
        dirnames.sort()
        rel_dir = os.path.relpath(dirpath, root_b)
        for name in sorted(dirnames + filenames):
            full = os.path.join(dirpath, name)
            rel = os.path.normpath(os.path.join(rel_dir, name))
            st = os.lstat(full)
            h.update(rel + b"\0" + b"%o\0" % st.st_mode)
            if stat.S_ISLNK(st.st_mode):
                h.update(os.readlink(full) + b"\0")
            elif stat.S_ISREG(st.st_mode):
                h.update(bytes.fromhex(file_digest(full)))
    return h.hexdigest()


def inputs_digest(step: str, inputs: dict[str, Any]) -> str:
    text = json.dumps({"cache": CACHE_VERSION, "step": step, "inputs": inputs}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True)
class StepCache:
    root: Path
    enabled: bool = True

    def run(self, step: str, inputs: dict[str, Any], produce: Callable[[Path], None]) -> tuple[Path, bool]:
        """The output directory of `step` for `inputs`, producing it if absent. Returns (dir, was_cached)."""
        key = inputs_digest(step, inputs)
        final = self.root / step / key
        if self.enabled and final.is_dir():
            return final, True
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{key[:16]}.", suffix=".tmp", dir=final.parent))
        try:
            produce(tmp)
            (tmp / ".inputs.json").write_text(json.dumps(inputs, sort_keys=True, indent=1, default=str))
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return final, False
