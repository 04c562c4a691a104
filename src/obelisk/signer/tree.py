"""Walking the trees to sign or verify: regular files only.

`iter_files` streams files as directories are read, so signing starts at once;
`walk` collects them in a stable, sorted order.
"""

from __future__ import annotations

import os
import stat
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

from obelisk.core.errors import InputError


@dataclass(frozen=True)
class TreeFile:
    root: str  # the PATH given on the command line
    path: str  # root-joined path to open
    relpath: bytes  # relative to root, raw bytes (what the xattr dump names)


@dataclass
class TreeWalk:
    files: list[TreeFile] = field(default_factory=list)
    skipped: Counter[str] = field(default_factory=Counter)  # symlink, device, socket, fifo
    errors: list[str] = field(default_factory=list)  # directories that could not be read


def _kind(mode: int) -> str:
    if stat.S_ISLNK(mode):
        return "symlink"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "device"
    if stat.S_ISSOCK(mode):
        return "socket"
    if stat.S_ISFIFO(mode):
        return "fifo"
    return "other"


def check_roots(paths: list[str]) -> None:
    """Fail early, before any work, on a PATH that does not exist."""
    for root in paths:
        try:
            os.lstat(root)
        except OSError as exc:
            raise InputError(f"cannot read: {exc.strerror}", source=root) from None


def iter_files(paths: list[str], stats: TreeWalk) -> Iterator[TreeFile]:
    """Yield regular files under each path (a file path stands for itself); count what is skipped."""
    for root, relpath, path in iter_paths(paths, stats):
        yield TreeFile(root, os.fsdecode(path), relpath)


def iter_paths(paths: list[str], stats: TreeWalk) -> Iterator[tuple[str, bytes, bytes]]:
    """`iter_files` as (root, relpath, path as bytes): no record per file, for a signer that walks
    thousands of files per second while its workers sign."""
    for root in paths:
        try:
            st = os.lstat(root)
        except OSError as exc:
            raise InputError(f"cannot read: {exc.strerror}", source=root) from None
        if stat.S_ISREG(st.st_mode):
            yield root, os.fsencode(os.path.basename(root)), os.fsencode(root)
            continue
        if not stat.S_ISDIR(st.st_mode):
            stats.skipped[_kind(st.st_mode)] += 1
            continue
        stack = [b""]
        root_b = os.fsencode(root)
        while stack:
            rel = stack.pop()
            directory = os.path.join(root_b, rel) if rel else root_b
            try:
                entries = list(os.scandir(directory))
            except OSError as exc:
                stats.errors.append(f"{os.fsdecode(directory)}: {exc.strerror}")
                continue
            for entry in entries:
                child = rel + b"/" + entry.name if rel else entry.name
                try:
                    # d_type answers these without a stat call on most filesystems
                    if entry.is_dir(follow_symlinks=False):
                        stack.append(child)
                    elif entry.is_file(follow_symlinks=False):
                        yield root, child, entry.path
                    else:
                        stats.skipped[_kind(entry.stat(follow_symlinks=False).st_mode)] += 1
                except OSError as exc:
                    stats.errors.append(f"{os.fsdecode(entry.path)}: {exc.strerror}")


def walk(paths: list[str]) -> TreeWalk:
    """Collect regular files under each path, sorted by path within each root."""
    result = TreeWalk()
    by_root: dict[str, list[TreeFile]] = {}
    for f in iter_files(paths, result):
        by_root.setdefault(f.root, []).append(f)
    for root in dict.fromkeys(paths):
        result.files.extend(sorted(by_root.get(root, []), key=lambda f: f.relpath))
    return result
