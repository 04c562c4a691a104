"""The one place obelisk runs external programs.

Each program is named once with the Debian package that provides it, so a missing
tool is reported as one clear line instead of a FileNotFoundError traceback.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Mapping, Sequence

from obelisk.core.errors import ToolFailedError, ToolMissingError

# program -> Debian package that provides it
PACKAGES: dict[str, str] = {
    "evmctl": "ima-evm-utils",
    "umoci": "umoci",
    "getfattr": "attr",
    "openssl": "openssl",
    "softhsm2-util": "softhsm2",
    "pkcs11-tool": "opensc",
    "swtpm": "swtpm",
    "swtpm_setup": "swtpm-tools",
    "gensquashfs": "squashfs-tools-ng",
    "rdsquashfs": "squashfs-tools-ng",
    "unsquashfs": "squashfs-tools",
    "cryptsetup": "cryptsetup-bin",
    "cpio": "cpio",
    "qemu-system-x86_64": "qemu-system-x86",
    "busybox": "busybox-static",
    "mmdebstrap": "mmdebstrap",
    "make": "make",
    "gcc": "gcc",
    "nice": "coreutils",
    "chromium": "chromium",
    "certutil": "libnss3-tools",
    "pk12util": "libnss3-tools",
    "dpkg-query": "dpkg",
    "mke2fs": "e2fsprogs",
    "fakeroot": "fakeroot",
    "osslsigncode": "osslsigncode",
    "sbsign": "sbsigntool",
    "sbverify": "sbsigntool",
    "sbattach": "sbsigntool",
    "objdump": "binutils",
    "objcopy": "binutils",
    "veritysetup": "cryptsetup-bin",
    "sfdisk": "fdisk",
    "mkfs.vfat": "dosfstools",
    "fsck.vfat": "dosfstools",
    "mcopy": "mtools",
    "mmd": "mtools",
    "mdir": "mtools",
    "qemu-img": "qemu-utils",
}

# tpm2-tools commands all come from one package
for _cmd in ("tpm2_pcrread", "tpm2_pcrextend", "tpm2_quote", "tpm2_checkquote", "tpm2_startup", "tpm2_flushcontext",
             "tpm2_createek", "tpm2_createak", "tpm2_eventlog", "tpm2_readpublic"):
    PACKAGES[_cmd] = "tpm2-tools"

_SBIN = ("/usr/sbin", "/sbin", "/usr/local/sbin")


def which(tool: str) -> str:
    """Absolute path of `tool`, also looking in sbin directories a non-login PATH may lack."""
    found = shutil.which(tool)
    if found is None:
        path = os.pathsep.join([os.environ.get("PATH", ""), *_SBIN])
        found = shutil.which(tool, path=path)
    if found is None:
        raise ToolMissingError(tool, PACKAGES.get(tool))
    return found


def run(
    tool: str,
    args: Sequence[str | os.PathLike[str]],
    *,
    input: bytes | None = None,
    env: Mapping[str, str] | None = None,
    check: bool = True,
    timeout: float | None = None,
    cwd: str | os.PathLike[str] | None = None,
    pass_fds: Sequence[int] = (),
) -> subprocess.CompletedProcess[bytes]:
    """Run `tool` with `args`, capturing output; raise ToolFailedError on a non-zero exit if `check`.

    `pass_fds` keeps those descriptors open in the child (secrets handed over through pipes as
    /proc/self/fd/N, never through argv or a file).
    """
    full_env = None
    if env is not None:
        full_env = dict(os.environ)
        full_env.update(env)
    proc = subprocess.run(
        [which(tool), *(os.fspath(arg) for arg in args)],
        input=input,
        capture_output=True,
        env=full_env,
        timeout=timeout,
        cwd=cwd,
        check=False,
        pass_fds=tuple(pass_fds),
    )
    if check and proc.returncode != 0:
        raise ToolFailedError(tool, proc.returncode, (proc.stderr or proc.stdout).decode(errors="replace"))
    return proc


def run_streaming(
    tool: str,
    args: Sequence[str | os.PathLike[str]],
    on_line: Callable[[str], None],
    *,
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
    nice: int = 0,
) -> int:
    """Run `tool`, passing each line of its combined output to `on_line` (for progress); return the exit code.

    The last 200 lines are kept; a non-zero exit raises ToolFailedError with them.
    """
    full_env = dict(os.environ)
    full_env.update(env or {})
    argv = [which(tool), *(os.fspath(arg) for arg in args)]
    if nice:
        argv = [which("nice"), "-n", str(nice), *argv]
    tail: list[str] = []
    with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=full_env, cwd=cwd,
                          text=True, errors="replace", bufsize=1) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            tail.append(line.rstrip("\n"))
            del tail[:-200]
            on_line(line.rstrip("\n"))
        code = proc.wait()
    if code != 0:
        raise ToolFailedError(tool, code, "\n".join(tail))
    return code
