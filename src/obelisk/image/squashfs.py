"""SquashFS through squashfs-tools-ng: pack a staged tree with IMA xattrs, read it back.

`pack` runs `gensquashfs --pack-dir TREE -A XATTRS`, which needs no root: modes are the staged
tree's (the rootfs step sets them from the spec), owners root except where the spec says
otherwise (set under fakeroot, so no root is needed for those either), every timestamp is
SOURCE_DATE_EPOCH. squashfs-tools-ng 1.2 (Debian 12) ignores `-A` when a
pack file (`-F`) is used, so the directory form is the one that carries signatures.

`read_back` lists the image with `rdsquashfs -d`, unpacks file contents and reads each
regular file's xattrs with `rdsquashfs -x`: what `image verify` checks is what is inside
the image, not what the build meant to put there.
"""

from __future__ import annotations

import base64
import contextlib
import os
import re
import shlex
import shutil
import signal
import tempfile
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from obelisk.core import tools
from obelisk.core.errors import ParseError


@dataclass(frozen=True)
class ImageFile:
    path: str  # absolute path inside the image, "/bin/busybox"
    kind: str  # file, dir, slink, nod, ...
    mode: int
    uid: int
    gid: int
    target: str = ""  # symlink target


# Everything that shapes the image's bytes besides the tree, the xattrs and the owners; part of the cache key.
RECIPE = "zstd/131072/owners-by-fakeroot"

# Sets the owners fakeroot reports to gensquashfs (FAKEROOTDONTTRYCHOWN: the staged tree, a cached
# build step, is never really changed, even when the build runs as root), then packs.
_PACK_AS_OWNERS = """set -e
tree=$1; lists=$2; shift 2
chown -R -h 0:0 "$tree"
for list in "$lists"/*; do
  [ -e "$list" ] || continue
  (cd "$tree" && xargs -0 -r chown -h "$(basename "$list")" -- < "$list")
done
exec "$@"
"""


def pack(tree: Path, xattr_file: Path | None, out: Path, epoch: int,
         owners: Sequence[tuple[str, int, int]] = ()) -> None:
    """Pack `tree` into `out` reproducibly; every entry owned by root except `owners` (relative path, uid, gid)."""
    args: list[str | os.PathLike[str]] = ["--pack-dir", tree, "--defaults", f"uid=0,gid=0,mode=0755,mtime={epoch}",
            "--compressor", "zstd", "--block-size", "131072", "--num-jobs", "2", "--quiet", "--force"]
    if xattr_file is not None:
        args += ["--xattr-file", xattr_file]
    env = {"SOURCE_DATE_EPOCH": str(epoch)}
    if not owners:
        tools.run("gensquashfs", [*args, "--all-root", out], env=env)
        return
    with tempfile.TemporaryDirectory(prefix="obelisk-owners-") as lists:
        groups: dict[str, list[bytes]] = {}
        for path, uid, gid in owners:
            groups.setdefault(f"{uid}:{gid}", []).append(os.fsencode(path))
        for owner, paths in groups.items():
            Path(lists, owner).write_bytes(b"\0".join(sorted(paths)) + b"\0")
        tools.run("fakeroot", ["--", "sh", "-c", _PACK_AS_OWNERS, "sh", tree, lists, tools.which("gensquashfs"),
                               *args, out], env={**env, "FAKEROOTDONTTRYCHOWN": "1"})


_DESCRIBE = re.compile(r"^(\w+) (\"(?:[^\"\\]|\\.)*\"|\S+) ([0-7]+) (\d+) (\d+)(?: (.*))?$")


def describe(image: Path) -> list[ImageFile]:
    """Every inode of the image (`rdsquashfs -d`), paths absolute."""
    text = tools.run("rdsquashfs", ["-d", image]).stdout.decode("utf-8", errors="surrogateescape")
    out = []
    for line_no, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        m = _DESCRIBE.match(line)
        if m is None:
            raise ParseError(f"unexpected rdsquashfs line {line_no}: {line[:80]!r}", source=str(image))
        kind, raw_path, mode, uid, gid, rest = m.groups()
        path = shlex.split(raw_path)[0] if raw_path.startswith('"') else raw_path
        out.append(ImageFile("/" + path.lstrip("/"), kind, int(mode, 8), int(uid), int(gid),
                             (rest or "") if kind == "slink" else ""))
    return out


def read_xattrs(image: Path, path: str) -> dict[str, bytes]:
    text = tools.run("rdsquashfs", ["-x", path, image]).stdout.decode("utf-8", errors="replace")
    out = {}
    for line in text.splitlines():
        name, sep, value = line.partition("=")
        if not sep:
            continue
        if value.startswith("0x"):
            out[name] = bytes.fromhex(value[2:])
        elif value.startswith("0s"):
            out[name] = base64.b64decode(value[2:])
        else:
            out[name] = value.strip('"').encode()
    return out


_LIST = re.compile(r"^([-dlcbps][rwxsStT-]{9}) (\d+)/(\d+) +([0-9.]+)([kKMGTPEZY]?) (.*)$")
_UNITS = "kMGTPEZY"

# What `read_back` may unpack at most: the regular files' sizes as the image declares them, never more
# than MAX_UNPACK_RATIO times the image file (SquashFS compresses a root file system about 3:1) nor
# MAX_UNPACK_BYTES. An 8 KiB image holding a sparse 64 GiB file is refused before anything is written.
MAX_UNPACK_RATIO = 64
MAX_UNPACK_BYTES = 64 << 30
MIN_UNPACK_BUDGET = 256 << 20


def file_sizes(image: Path, files: Sequence[ImageFile]) -> dict[str, int]:
    """Each regular file's size as the image declares it, at least (`rdsquashfs -l` of every directory).

    rdsquashfs shows sizes of 1024 bytes and more rounded to a unit (1982256 bytes as 2M), so a size
    shown as N units counts as N - 1 units: a lower bound, enough to refuse a 64G file in a small image."""
    sizes: dict[str, int] = {}
    for d in dict.fromkeys(["/", *(f.path for f in files if f.kind == "dir")]):
        text = tools.run("rdsquashfs", ["-l", d, image]).stdout.decode("utf-8", errors="surrogateescape")
        for line in text.splitlines():
            m = _LIST.match(line)
            if m is None or not m.group(1).startswith("-"):
                continue
            unit = 1024 ** (_UNITS.index(m.group(5).replace("K", "k")) + 1) if m.group(5) else 1
            shown = float(m.group(4))
            sizes[d.rstrip("/") + "/" + m.group(6)] = int(max(0.0, shown - 1) * unit) if unit > 1 else int(shown)
    return sizes


def unpack_budget(image: Path, declared: int | None = None) -> int:
    """Bytes `read_back` may write: min(declared, ratio x image size, MAX_UNPACK_BYTES)."""
    budget = min(MAX_UNPACK_BYTES, max(MIN_UNPACK_BUDGET, MAX_UNPACK_RATIO * image.stat().st_size))
    return budget if declared is None else min(budget, declared)


def check_unpack_size(image: Path, files: Sequence[ImageFile], declared: int | None = None) -> None:
    """ParseError, before anything is unpacked, when the files inside would exceed the budget."""
    total = sum(file_sizes(image, files).values())
    budget = unpack_budget(image, declared)
    if total > budget:
        raise ParseError(f"its regular files add up to at least {total} bytes, more than the {budget} bytes "
                         f"it may unpack (the manifest's file sizes, at most {MAX_UNPACK_RATIO} times the image): "
                         "not unpacked",
                         source=str(image))


@dataclass(frozen=True)
class ReadBack:
    files: tuple[ImageFile, ...]
    xattrs: dict[str, dict[str, bytes]]  # path -> xattrs, regular files only
    unpacked: Path  # contents, for hashing; caller owns the temporary directory


def read_back(image: Path, workdir: Path, jobs: int = 4, declared: int | None = None) -> ReadBack:
    """Unpack `image` under workdir/root and read every regular file's xattrs from the image.

    Nothing is unpacked when the image's files add up to more than `unpack_budget` (`declared`:
    what the manifest says they add up to). With the privilege to set security.* attributes
    (root), rdsquashfs restores them while unpacking (one process); otherwise each file's
    attributes are listed with `rdsquashfs -x`.
    """
    files = describe(image)
    check_unpack_size(image, files, declared)
    root = workdir / "root"
    regular = [f.path for f in files if f.kind == "file"]
    base: list[str | os.PathLike[str]] = ["--quiet", "--no-dev", "--no-sock", "--no-fifo", "-u", "/", "-p", root]
    root.mkdir(parents=True, exist_ok=True)
    if tools.run("rdsquashfs", [*base, "--set-xattr", image], check=False).returncode == 0:
        values = {p: _disk_xattrs(root / p.lstrip("/")) for p in regular}
        return ReadBack(tuple(files), values, root)
    shutil.rmtree(root)
    root.mkdir()
    tools.run("rdsquashfs", [*base, image])
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        values = dict(zip(regular, pool.map(lambda p: read_xattrs(image, p), regular)))
    return ReadBack(tuple(files), values, root)


def _disk_xattrs(path: Path) -> dict[str, bytes]:
    out = {}
    for name in os.listxattr(path, follow_symlinks=False):
        out[name] = os.getxattr(path, name, follow_symlinks=False)
    return out


@contextlib.contextmanager
def temp_workdir() -> Iterator[str]:
    """A temporary directory removed on every way out: return, error, Ctrl-C and SIGTERM (a timeout's
    kill), which is turned into SystemExit while the directory exists so that cleanup runs."""
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        with tempfile.TemporaryDirectory(prefix="obelisk-sqfs-") as work:
            yield work
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)
