"""Digests of files and directory trees: the one place obelisk hashes content it did not make.

Files are hashed through one reusable 1 MiB buffer per process: signing a rootfs is mostly
small files, where a fresh read buffer (or hashlib's 256 KiB one) costs more than the hashing.

Two tree digests, because they answer two questions:

- `tree_content_digest`: are these two trees the same, byte for byte? Every entry's relative
  path, mode, symlink target and file content. The image build's step cache keys on it.
- `tree_stat_digest`: has this (large) tree been touched since? Every regular file's path,
  size and modification time, no content read. The kernel build cache keys a kernel source
  directory on it: hashing 80,000 source files on every build would cost more than it saves.

Build caches are keyed on these values: a change here invalidates every cache entry, so
tests/core/test_digest.py pins them to known values.
"""

from __future__ import annotations

import functools
import hashlib
import os
import stat
from collections.abc import Callable

# A path as os.open takes it: tree_content_digest walks with bytes paths (any file name, even not UTF-8).
FilePath = str | bytes | os.PathLike[str] | os.PathLike[bytes]

_BUFFER_SIZE = 1 << 20
_buffer: bytearray | None = None
_view: memoryview | None = None
# hashlib.sha256 and its kind, found once: hashlib.new(name) looks the name up on every call (1 us,
# a tenth of hashing a small file)
_constructors: dict[str, Callable[[], hashlib._Hash]] = {}


def _constructor(algo: str) -> Callable[[], hashlib._Hash]:
    found = _constructors.get(algo)
    if found is None:
        found = _constructors[algo] = getattr(hashlib, algo, None) or functools.partial(hashlib.new, algo)
    return found


def digest_fd(fd: int, algo: str = "sha256") -> bytes:
    """Hash everything from `fd`'s position to end of file with hashlib's `algo`."""
    global _buffer, _view
    if _buffer is None or _view is None:
        _buffer = bytearray(_BUFFER_SIZE)
        _view = memoryview(_buffer)
    buffers, view = [_buffer], _view
    h = _constructor(algo)()
    while True:
        n = os.readv(fd, buffers)
        if not n:
            return h.digest()
        h.update(view[:n])


def open_for_digest(path: FilePath, *, follow_symlinks: bool = True) -> int:
    """A read-only descriptor; with follow_symlinks=False a symlink swapped in after a walk is refused (ELOOP)."""
    flags = os.O_RDONLY | os.O_CLOEXEC | (0 if follow_symlinks else os.O_NOFOLLOW)
    return os.open(path, flags)


def file_digest(path: FilePath, algo: str = "sha256", *, follow_symlinks: bool = True) -> bytes:
    """The raw digest of a file's content."""
    fd = open_for_digest(path, follow_symlinks=follow_symlinks)
    try:
        return digest_fd(fd, algo)
    finally:
        os.close(fd)


def file_hexdigest(path: str | os.PathLike[str], algo: str = "sha256") -> str:
    """The hex digest of a file's content (symlinks followed), as cache keys and manifests spell it."""
    return file_digest(path, algo).hex()


def tree_content_digest(root: str | os.PathLike[str]) -> str:
    """SHA-256 over every entry of `root`, sorted: relative path, mode, symlink target, file content.

    Two trees with the same digest have the same files with the same bytes and modes; times are ignored.
    """
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
                h.update(file_digest(full))
    return h.hexdigest()


def tree_stat_digest(root: str | os.PathLike[str]) -> str:
    """SHA-256 over every file of `root`, sorted: relative path, size, modification time (ns); no content read.

    Cheap for large trees, and changes whenever a file is edited, added, removed or touched.
    """
    h = hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            p = os.path.join(dirpath, name)
            try:
                st = os.lstat(p)
            except OSError:
                continue
            h.update(f"{os.path.relpath(p, root)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()
