"""Hashing file contents fast: one reusable buffer per process, no per-file allocation.

Signing a rootfs is mostly small files, where a fresh 1 MiB read buffer (or hashlib's
256 KiB one) costs more than the hashing itself.
"""

from __future__ import annotations

import os

from obelisk.signer.hashalgo import HashAlgo

_BUFFER_SIZE = 1 << 20
_buffer: bytearray | None = None


def digest_fd(fd: int, algo: HashAlgo) -> bytes:
    """Hash everything from `fd`'s position to end of file."""
    global _buffer
    if _buffer is None:
        _buffer = bytearray(_BUFFER_SIZE)
    view = memoryview(_buffer)
    h = algo.new()
    while True:
        n = os.readv(fd, [_buffer])
        if not n:
            return h.digest()
        h.update(view[:n])


def open_file(path: str) -> int:
    """Open a file for hashing without following a symlink swapped in after the walk."""
    return os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)


def file_digest(path: str, algo: HashAlgo) -> bytes:
    fd = open_file(path)
    try:
        return digest_fd(fd, algo)
    finally:
        os.close(fd)
