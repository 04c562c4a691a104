"""Walking the trees to sign or verify: regular files only, in a stable order."""

from __future__ import annotations

import os
import stat
from collections import Counter
from dataclasses import dataclass, field

from obelisk.core.errors import InputError


@dataclass(frozen=True)
class TreeFile:
    root: str  # the PATH given on the command line
    path: str  # absolute or root-joined path to open
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


def walk(paths: list[str]) -> TreeWalk:
    """Collect regular files under each path (a file path stands for itself), sorted by path."""
    result = TreeWalk()
    for root in paths:
        try:
            st = os.lstat(root)
        except OSError as exc:
            raise InputError(f"cannot read: {exc.strerror}", source=root) from None
        if stat.S_ISREG(st.st_mode):
            result.files.append(TreeFile(root, root, os.fsencode(os.path.basename(root))))
            continue
        if not stat.S_ISDIR(st.st_mode):
            result.skipped[_kind(st.st_mode)] += 1
            continue
        stack = [b""]
        root_b = os.fsencode(root)
        found: list[TreeFile] = []
        while stack:
            rel = stack.pop()
            directory = os.path.join(root_b, rel) if rel else root_b
            try:
                entries = list(os.scandir(directory))
            except OSError as exc:
                result.errors.append(f"{os.fsdecode(directory)}: {exc.strerror}")
                continue
            for entry in entries:
                child = os.path.join(rel, entry.name) if rel else entry.name
                try:
                    mode = entry.stat(follow_symlinks=False).st_mode
                except OSError as exc:
                    result.errors.append(f"{os.fsdecode(entry.path)}: {exc.strerror}")
                    continue
                if stat.S_ISDIR(mode):
                    stack.append(child)
                elif stat.S_ISREG(mode):
                    found.append(TreeFile(root, os.fsdecode(entry.path), child))
                else:
                    result.skipped[_kind(mode)] += 1
        found.sort(key=lambda f: f.relpath)
        result.files.extend(found)
    return result
