"""The build cache: each step's output stored under the digest of its inputs.

A step is keyed by its name and a JSON description of every input (file and tree digests from
core.digest, settings, tool versions). Outputs are directories built under a temporary name and
renamed into place, so a killed build never leaves a cache entry that looks complete. Where the
cache lives is core.cachedir's decision.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CACHE_VERSION = "1"


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
            try:
                os.rename(tmp, final)
            except OSError as exc:
                if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                    raise
                if self.enabled:
                    # another build of the same inputs (a second process on this cache) finished first:
                    # its output is this one's; removing it could pull it from under that build
                    shutil.rmtree(tmp, ignore_errors=True)
                    return final, False
                old = final.with_name(f".{key[:16]}.{os.getpid()}.old")  # a forced rebuild replaces it
                os.rename(final, old)
                os.rename(tmp, final)
                shutil.rmtree(old, ignore_errors=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return final, False
