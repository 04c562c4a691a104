"""Kernel sources given as a directory or a tarball; tarballs are extracted once into the cache.

The extracted tree lives under `<cache>/src/<sha256 of the tarball, 16 hex>/` and is renamed
into place only when extraction finished, so an interrupted extraction is never reused.
"""

from __future__ import annotations

import os
import tarfile
from pathlib import Path

from obelisk.core.atomic import atomic_directory
from obelisk.core.digest import file_hexdigest
from obelisk.core.errors import InputError
from obelisk.kernel_hardening import cache


def _single_tree(root: Path) -> Path:
    if (root / "Kconfig").is_file():
        return root
    subdirs = [p for p in root.iterdir() if p.is_dir()]
    if len(subdirs) == 1 and (subdirs[0] / "Kconfig").is_file():
        return subdirs[0]
    raise InputError("not a kernel source tree (no top-level Kconfig)", source=str(root))


def source_tree(spec: str | os.PathLike[str], quiet: bool = True) -> Path:
    """The kernel tree for a directory or a tarball (.tar, .tar.xz, .tar.gz, ...)."""
    path = Path(spec)
    if path.is_dir():
        return _single_tree(path.resolve())
    if not path.is_file():
        raise InputError("kernel source not found", source=str(spec))
    try:
        digest = file_hexdigest(path)
    except OSError as exc:
        raise InputError(f"cannot read: {exc.strerror}", source=str(spec)) from None
    target = cache.cache_dir("src") / digest[:16]
    if target.is_dir():
        return _single_tree(target)
    from obelisk.core.progress import progress

    try:
        with tarfile.open(path) as tar, atomic_directory(target) as tmp, \
                progress(f"extracting {path.name}", quiet=quiet) as bar:
            for member in tar:
                tar.extract(member, tmp, filter="data")
                bar.advance()
    except tarfile.TarError as exc:
        raise InputError(f"not a readable tarball: {exc}", source=str(spec)) from None
    return _single_tree(target)

