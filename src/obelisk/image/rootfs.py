"""Rootfs assembly: a base userland, then obelisk's files, then modes from the spec.

Each function takes explicit inputs and writes into a directory it is given; the build
pipeline caches their outputs by the digest of those inputs. Nothing here needs root:
owners are not taken from the staged tree (the SquashFS step forces root), modes are.
"""

from __future__ import annotations

import fnmatch
import os
import shutil
import stat
import tarfile
from dataclasses import dataclass
from pathlib import Path

from obelisk.core import tools
from obelisk.core.errors import InputError
from obelisk.image.spec import Permission

# Applets that would give someone a way in: the node has no login, no getty, no remote shell.
LOGIN_APPLETS = frozenset({"login", "getty", "su", "sulogin", "passwd", "telnetd", "telnet", "ftpd", "httpd",
                           "tcpsvd", "udpsvd", "inetd", "nc", "ssl_client", "adduser", "addgroup", "chpasswd",
                           "cryptpw", "mkpasswd", "vlock"})
# Paths whose presence means a login path into the node: the build refuses them.
FORBIDDEN = ("usr/sbin/sshd", "sbin/sshd", "usr/bin/sshd", "sbin/getty", "sbin/agetty", "usr/sbin/agetty",
             "usr/sbin/getty", "bin/login", "usr/bin/login", "bin/su", "usr/bin/su", "sbin/sulogin",
             "usr/sbin/sulogin", "usr/sbin/dropbear", "usr/sbin/telnetd", "usr/sbin/in.telnetd")
# Debian's Essential set ships login, su, sulogin and agetty: dpkg leaves them out of node images.
DEBIAN_EXCLUDES = tuple(f"/{d}/{name}" for d in ("bin", "usr/bin", "sbin", "usr/sbin")
                        for name in ("login", "su", "sulogin", "agetty", "getty", "nologin.real"))
MMDEBSTRAP_RECIPE = "2"  # bump when the arguments below change: the cache key includes it
BASE_DIRS = ("bin", "sbin", "etc", "dev", "proc", "sys", "run", "tmp", "var", "root", "usr/bin", "usr/sbin",
             "etc/obelisk", "etc/ima", "etc/keys", "opt/kubernetes/bin")


def busybox_applets() -> list[str]:
    """Installed paths of every applet of Debian's busybox (`busybox --list-full`), minus the login ones."""
    out = tools.run("busybox", ["--list-full"]).stdout.decode()
    applets = []
    for line in out.splitlines():
        path = line.strip().lstrip("/")
        if path and os.path.basename(path) not in LOGIN_APPLETS:
            applets.append(path)
    return sorted(applets)


def base_busybox(dest: Path, busybox: Path) -> None:
    """A minimal userland: Debian's static busybox, its applets as symlinks, no login applets."""
    for d in BASE_DIRS:
        (dest / d).mkdir(parents=True, exist_ok=True)
    shutil.copyfile(busybox, dest / "bin/busybox")
    os.chmod(dest / "bin/busybox", 0o755)
    for path in busybox_applets():
        link = dest / path
        if link.exists() or link.is_symlink() or path == "bin/busybox":
            continue
        link.parent.mkdir(parents=True, exist_ok=True)
        os.symlink("/bin/busybox", link)
    (dest / "etc/passwd").write_text("root:x:0:0:root:/root:/sbin/nologin\n")
    (dest / "etc/group").write_text("root:x:0:\n")
    (dest / "etc/shadow").write_text("root:!:1::::::\n")
    (dest / "sbin/nologin").write_text("#!/bin/sh\necho 'This node has no login.' >&2\nexit 1\n")
    os.chmod(dest / "sbin/nologin", 0o755)


def base_directory(dest: Path, source: Path) -> None:
    shutil.copytree(source, dest, symlinks=True, dirs_exist_ok=True)


def base_tarball(dest: Path, tarball: Path) -> None:
    """Extract a user's rootfs tarball safely: no paths outside dest, no device nodes (devtmpfs provides them)."""
    try:
        with tarfile.open(tarball) as tar:
            members = [m for m in tar.getmembers() if not (m.ischr() or m.isblk() or m.isfifo())]
            tar.extractall(dest, members=members, filter="tar")
    except (tarfile.TarError, OSError) as exc:
        raise InputError(f"cannot extract rootfs tarball: {exc}", source=str(tarball)) from None


def base_debian(dest: Path, suite: str, mirror: str, packages: tuple[str, ...], epoch: int) -> None:
    """A minimal Debian userland from Debian's archive (mmdebstrap minbase), unpacked into dest."""
    tarball = dest.parent / f".{dest.name}.debian.tar"
    include = ",".join(packages)
    # essential: only Essential:yes packages plus what `packages` needs (no apt on a node image).
    args = ["--variant=essential", "--mode=auto", "--quiet",
            *[f"--dpkgopt=path-exclude=/usr/share/{d}/*" for d in ("doc", "man", "info", "locale", "lintian")],
            "--dpkgopt=path-include=/usr/share/doc/*/copyright",
            *[f"--dpkgopt=path-exclude={p}" for p in DEBIAN_EXCLUDES],
            "--customize-hook=rm -f \"$1\"/etc/machine-id \"$1\"/var/cache/ldconfig/aux-cache",
            "--customize-hook=rm -rf \"$1\"/var/lib/apt/lists/* \"$1\"/var/cache/apt/* \"$1\"/var/log/*"]
    if include:
        args.append(f"--include={include}")
    try:
        tools.run("mmdebstrap", [*args, suite, tarball, mirror], env={"SOURCE_DATE_EPOCH": str(epoch)})
        base_tarball(dest, tarball)
    finally:
        tarball.unlink(missing_ok=True)


def check_no_login(root: Path) -> None:
    for rel in FORBIDDEN:
        if os.path.lexists(root / rel):
            raise InputError(f"the rootfs contains {rel}: obelisk nodes have no login or SSH server "
                             "(remove the package or the file)", source="rootfs")


# What an encrypted /var needs on the node (image/node_init.py), as paths in the rootfs.
ENCRYPTION_TOOLS = (("cryptsetup", ("usr/sbin/cryptsetup", "sbin/cryptsetup")),
                    ("mke2fs", ("usr/sbin/mke2fs", "sbin/mke2fs")),
                    ("python3", ("usr/bin/python3",)))


def _require_tools(root: Path, tools: tuple[tuple[str, tuple[str, ...]], ...], setting: str, purpose: str) -> None:
    """InputError naming the first tool none of whose paths is in the rootfs."""
    for name, paths in tools:
        if not any(os.path.lexists(root / p) for p in paths):
            raise InputError(f"{setting}: the rootfs has no {name}, which the node needs to {purpose}",
                             source="rootfs")


def check_encryption_tools(root: Path) -> None:
    _require_tools(root, ENCRYPTION_TOOLS, "disk.encryption", "unlock /var")
    if not list(root.glob("usr/lib/python3*/dist-packages/tpm2_pytss")):
        raise InputError("disk.encryption: the rootfs has no tpm2_pytss (Debian: python3-tpm2-pytss), which "
                         "the node needs to unseal /var's key", source="rootfs")


# What runtime.enabled runs on the node (image/node_runtime.py), as paths in the rootfs.
RUNTIME_TOOLS = (("containerd", ("usr/bin/containerd",)), ("ctr", ("usr/bin/ctr",)),
                 ("containerd-shim-runc-v2", ("usr/bin/containerd-shim-runc-v2",)),
                 ("runc", ("usr/sbin/runc", "usr/bin/runc")), ("apparmor_parser", ("usr/sbin/apparmor_parser",
                                                                              "sbin/apparmor_parser")),
                 ("python3", ("usr/bin/python3",)))


def check_runtime_tools(root: Path) -> None:
    _require_tools(root, RUNTIME_TOOLS, "runtime.enabled", "run containers")


@dataclass(frozen=True)
class ExtraFile:
    """A file obelisk adds to the rootfs (policy, certificates, agent, Kubernetes configuration)."""

    path: str  # relative to the root
    data: bytes
    mode: int = 0o644


def add_files(root: Path, files: list[ExtraFile] | tuple[ExtraFile, ...]) -> None:
    for f in files:
        target = root / f.path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.is_symlink():
            target.unlink()
        target.write_bytes(f.data)
        os.chmod(target, f.mode)


def normalize_modes(root: Path, permissions: tuple[Permission, ...]) -> None:
    """Directories 0755, executables 0755, other files 0644, then the spec's globs in order.

    setuid/setgid bits are dropped unless the spec asks for them: a node has no use for
    privilege-raising binaries it did not declare.
    """
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            st = os.lstat(full)
            if stat.S_ISLNK(st.st_mode):
                continue
            rel = os.path.relpath(full, root)
            if stat.S_ISDIR(st.st_mode):
                mode = 0o755
            elif stat.S_ISREG(st.st_mode):
                mode = 0o755 if st.st_mode & 0o111 else 0o644
            else:
                os.unlink(full)  # devices, fifos, sockets: devtmpfs and the running system create them
                continue
            for p in permissions:
                if fnmatch.fnmatchcase(rel, p.glob):
                    mode = p.mode
            os.chmod(full, mode)
    os.chmod(root, 0o755)


def owners(root: Path, permissions: tuple[Permission, ...]) -> list[tuple[str, int, int]]:
    """(relative path, uid, gid) of every entry whose last matching permission gives it an owner other
    than root, sorted; everything else is root's. Symlinks included (their own owner, as lchown sets it)."""
    if not any(p.uid or p.gid for p in permissions):
        return []
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            rel = os.path.relpath(os.path.join(dirpath, name), root)
            uid = gid = 0
            for p in permissions:
                if fnmatch.fnmatchcase(rel, p.glob):
                    uid, gid = p.uid, p.gid
            if uid or gid:
                out.append((rel, uid, gid))
    return sorted(out, key=lambda entry: os.fsencode(entry[0]))


def regular_files(root: Path) -> list[str]:
    """Relative paths of every regular file, sorted as bytes (the order manifests use)."""
    out = []
    root_b = os.fsencode(root)
    for dirpath, _, filenames in os.walk(root_b):
        for name in filenames:
            full = os.path.join(dirpath, name)
            if stat.S_ISREG(os.lstat(full).st_mode):
                out.append(os.path.relpath(full, root_b))
    return [os.fsdecode(p) for p in sorted(out)]
