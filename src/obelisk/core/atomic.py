"""Write outputs under a temporary name and rename them when complete.

An interrupted command must never leave a file (or directory) that looks finished,
so every artifact obelisk writes goes through here.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any


def _temp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike[str], mode: int = 0o644, binary: bool = True) -> Iterator[IO[Any]]:
    """Open a temporary file beside `path`; on success fsync and rename it over `path`.

    A target that is a character device or a FIFO (`-o /dev/null`, `-o /dev/stdout`, a pipe) is
    written in place: renaming over it would replace the device node itself (as root, /dev/null
    became a regular file). Any other non-regular target (a directory, a socket) is refused.
    """
    target = Path(path)
    try:
        existing = os.stat(target).st_mode
    except (FileNotFoundError, NotADirectoryError):
        existing = None
    if existing is not None and not stat.S_ISREG(existing):
        if stat.S_ISCHR(existing) or stat.S_ISFIFO(existing):
            with open(target, "wb" if binary else "w", encoding=None if binary else "utf-8") as stream:
                yield stream
            return
        from obelisk.core.errors import InputError

        raise InputError("is not a regular file, a character device or a FIFO: not overwritten", source=str(target))
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        os.fchmod(fd, mode)
        handle: IO[Any] = os.fdopen(fd, "wb") if binary else os.fdopen(fd, "w", encoding="utf-8")
        with handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_bytes(path: str | os.PathLike[str], data: bytes, mode: int = 0o644) -> None:
    with atomic_output(path, mode=mode) as handle:
        handle.write(data)


def write_text(path: str | os.PathLike[str], text: str, mode: int = 0o644) -> None:
    write_bytes(path, text.encode("utf-8"), mode=mode)


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Build a directory under a temporary name; rename it into place only when complete.

    An existing directory at `path` is replaced only after the new one is finished.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        yield tmp
        if target.exists():
            old = _temp_name(target).with_suffix(".old")
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike[str], mode: int = 0o644) -> Iterator[Path]:
    """A temporary path beside `path` for tools that write a file by name (sfdisk, mkfs.vfat);
    on success it is fsynced and renamed over `path`, on any error removed. The temporary name
    starts with a dot and ends in .tmp, so an interrupted build leaves nothing named `path`."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        os.chmod(tmp, mode)
        yield Path(tmp)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
