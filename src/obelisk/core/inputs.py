"""Reading untrusted input files with a size bound, as one-line errors on failure.

Every file obelisk reads on a user's behalf (keys, certificates, logs, evidence, reports) goes
through `read_bounded`: at most `limit` bytes, and only a regular file. A FIFO, a device or a
socket named by mistake (or by an attacker who controls a path) is refused by its name, without
blocking: the file is opened with O_NONBLOCK and checked with fstat before anything is read.
"""

from __future__ import annotations

import mmap
import os
import stat

from obelisk.core.errors import InputError

_CHUNK = 1 << 20  # a 1 GiB limit must not mean a 1 GiB buffer for a small file
_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"),
          (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))


def _kind(mode: int) -> str:
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


def _open_regular(name: str, what: str) -> tuple[int, os.stat_result]:
    """An fd of the regular file `name`, opened without blocking (a FIFO, device or socket is refused by kind)."""
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    except FileNotFoundError:
        raise InputError(f"cannot read {what}: not found", source=name) from None
    except OSError as exc:
        raise InputError(f"cannot read {what}: {exc.strerror}", source=name) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise InputError(f"cannot read {what}: it is {_kind(st.st_mode)}, not a regular file", source=name)
    except BaseException:
        os.close(fd)
        raise
    return fd, st


def read_bounded(path: str | os.PathLike[str], what: str, limit: int) -> bytes:
    """The content of the regular file `path` (at most `limit` bytes).

    A missing, unreadable, oversized or non-regular file is an InputError naming `what`.
    """
    name = os.fspath(path)
    fd, _ = _open_regular(name, what)
    try:
        chunks: list[bytes] = []
        size = 0
        while size <= limit:
            chunk = os.read(fd, min(limit + 1 - size, _CHUNK))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except OSError as exc:
        raise InputError(f"cannot read {what}: {exc.strerror}", source=name) from None
    finally:
        os.close(fd)
    if size > limit:
        raise InputError(f"{what} larger than {limit} bytes", source=name)
    return b"".join(chunks)


def map_bounded(path: str | os.PathLike[str], what: str, limit: int) -> bytes | mmap.mmap:
    """A read-only mapping of the regular file `path`, for inputs read once from start to end
    that may be larger than memory; pseudo files that report size 0 (securityfs, procfs) and
    empty files are read with `read_bounded` instead. Same errors as `read_bounded`."""
    name = os.fspath(path)
    fd, st = _open_regular(name, what)
    try:
        if st.st_size > limit:
            raise InputError(f"{what} larger than {limit} bytes", source=name)
        if st.st_size == 0:
            return read_bounded(name, what, limit)
        return mmap.mmap(fd, 0, access=mmap.ACCESS_READ)
    except OSError as exc:
        raise InputError(f"cannot read {what}: {exc.strerror}", source=name) from None
    finally:
        os.close(fd)
