"""`obelisk kernel build`: bzImage and vmlinux from a kernel tree, a .config and the customer CA.

- The CA is compiled in as a built-in trusted key: it is copied to `obelisk-ca.pem` in the
  build directory and `CONFIG_SYSTEM_TRUSTED_KEYS` names that relative path, so the embedded
  config never contains a machine-specific path.
- Reproducible: KBUILD_BUILD_TIMESTAMP, KBUILD_BUILD_USER/HOST and KBUILD_BUILD_VERSION are
  fixed, LC_ALL=C and TZ=UTC, the build directory path derives from the inputs' digest.
- Cached: the key is the digest of the source (tarball digest, or every file's path, size and
  mtime for a directory), the config, the CA and this recipe. A finished build is stored under
  `<cache>/build/<key>/` (renamed into place when complete) and copied to the output directory.
- Outputs are written atomically: an interrupted build leaves no directory that looks finished
  (the object directory under `<cache>/work/<key>/` is kept, so a rerun continues incrementally).
- One build per key at a time (a lock file beside the object directory).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from obelisk.core import tools
from obelisk.core.atomic import atomic_directory
from obelisk.core.errors import InputError, ToolFailedError
from obelisk.kernel_hardening import cache, kconfig_file

RECIPE = "obelisk-kernel-build/1"
CA_NAME = "obelisk-ca.pem"
BUILD_TIMESTAMP = "Thu Jan  1 00:00:00 UTC 1970"
BUILD_ENV = {
    "KBUILD_BUILD_TIMESTAMP": BUILD_TIMESTAMP,
    "KBUILD_BUILD_USER": "obelisk",
    "KBUILD_BUILD_HOST": "obelisk",
    "KBUILD_BUILD_VERSION": "1",
    "SOURCE_DATE_EPOCH": "0",
    "LC_ALL": "C",
    "TZ": "UTC",
}
OUTPUTS = ("bzImage", "vmlinux", "config", "System.map")
_STEP = re.compile(r"^\s{2}([A-Z][A-Z0-9_]{1,12})\s+(\S+)")


@dataclass(frozen=True)
class BuildResult:
    output: Path
    key: str
    cached: bool
    seconds: float
    info: dict


def read_ca(path: str | os.PathLike[str]) -> bytes:
    from cryptography import x509

    from obelisk.core.inputs import read_bounded

    data = read_bounded(path, "CA certificate", 1 << 20)
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError:
        raise InputError("not a PEM X.509 certificate", source=str(path)) from None
    if not certs:
        raise InputError("no certificate in the file", source=str(path))
    return data


def intended_config(config_text: str) -> str:
    """The config as built: CONFIG_SYSTEM_TRUSTED_KEYS pointing at the CA obelisk places."""
    out, seen = [], False
    for line in config_text.splitlines():
        if line.startswith("CONFIG_SYSTEM_TRUSTED_KEYS=") or line.startswith("# CONFIG_SYSTEM_TRUSTED_KEYS "):
            line, seen = f'CONFIG_SYSTEM_TRUSTED_KEYS="{CA_NAME}"', True
        out.append(line)
    if not seen:
        out.append(f'CONFIG_SYSTEM_TRUSTED_KEYS="{CA_NAME}"')
    return "\n".join(out) + "\n"


def build_key(source_digest: str, config_text: str, ca: bytes, randstruct_seed: str | None = None) -> str:
    h = hashlib.sha256()
    seed = "" if randstruct_seed is None else hashlib.sha256(randstruct_seed.encode()).hexdigest()
    for part in (RECIPE, source_digest, config_text, ca.decode(errors="replace"),
                 json.dumps(BUILD_ENV, sort_keys=True), *((seed,) if seed else ())):
        h.update(part.encode())
        h.update(b"\0")
    return h.hexdigest()


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _copy_outputs(src: Path, dest: Path) -> None:
    with atomic_directory(dest) as tmp:
        for name in (*OUTPUTS, "build.json"):
            shutil.copy2(src / name, tmp / name)


def build(source: str | os.PathLike[str], config_path: str | os.PathLike[str], ca_path: str | os.PathLike[str],
          output: str | os.PathLike[str], *, jobs: int = 2, quiet: bool = False,
          randstruct_seed: str | None = None) -> BuildResult:
    """`randstruct_seed`: the seed from randstruct.read_seed; a config with CONFIG_RANDSTRUCT=y needs one."""
    from obelisk.core.digest import file_hexdigest, tree_stat_digest
    from obelisk.kernel_hardening.resolve import check_tree_clean
    from obelisk.kernel_hardening.source import source_tree

    started = time.monotonic()
    config_text = Path(config_path).read_text(errors="replace") if Path(config_path).is_file() else None
    if config_text is None:
        raise InputError("config not found", source=str(config_path))
    kconfig_file.read(config_path)  # one-line error if it is not a kernel config
    if kconfig_file.parse(config_text.encode(), str(config_path)).get("CONFIG_RANDSTRUCT") == "y" \
            and randstruct_seed is None:
        raise InputError("CONFIG_RANDSTRUCT is set but no randstruct seed was given: the kernel would pick a random "
                         "one and the build would not be reproducible (give the customer's seed file, or leave "
                         "RANDSTRUCT out)", source=str(config_path))
    ca = read_ca(ca_path)
    tree = source_tree(source, quiet=quiet)
    check_tree_clean(tree)
    source_digest = file_hexdigest(source) if Path(source).is_file() else tree_stat_digest(tree)
    wanted = intended_config(config_text)
    key = build_key(source_digest, wanted, ca, randstruct_seed)[:32]
    entry = cache.cache_dir("build") / key
    if (entry / "build.json").is_file():
        _copy_outputs(entry, Path(output))
        info = json.loads((entry / "build.json").read_text())
        return BuildResult(Path(output), key, True, time.monotonic() - started, info)

    # one build per key at a time: a second caller waits, then finds the finished entry
    lock = open(cache.cache_dir("work") / f"{key}.lock", "w")  # noqa: SIM115 - held until the build ends
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (entry / "build.json").is_file():
            _copy_outputs(entry, Path(output))
            info = json.loads((entry / "build.json").read_text())
            return BuildResult(Path(output), key, True, time.monotonic() - started, info)
        return _build_locked(tree, source, config_path, wanted, ca, key, entry, output, jobs, quiet,
                             source_digest, started, randstruct_seed)
    finally:
        lock.close()


def _build_locked(tree: Path, source: str | os.PathLike[str], config_path: str | os.PathLike[str], wanted: str,
                  ca: bytes, key: str, entry: Path, output: str | os.PathLike[str], jobs: int, quiet: bool,
                  source_digest: str, started: float, randstruct_seed: str | None) -> BuildResult:
    from obelisk.core.progress import progress
    from obelisk.kernel_hardening import randstruct

    objdir = cache.cache_dir("work") / key
    objdir.mkdir(parents=True, exist_ok=True)
    os.chmod(objdir, 0o700)  # the randstruct seed ends up in generated headers here
    (objdir / CA_NAME).write_bytes(ca)
    (objdir / ".config").write_text(wanted)
    make_args = ["-C", str(tree), f"O={objdir}", f"-j{max(1, jobs)}"]
    if randstruct_seed is not None:
        # the seed goes in a file the generator reads, never on a command line
        seed_file, generator = objdir / "obelisk-randstruct.seed", objdir / "obelisk-gen-randstruct-seed.sh"
        fd = os.open(seed_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(randstruct_seed)
        generator.write_text(randstruct.generator_script(str(seed_file)))
        generator.chmod(0o700)
        make_args.append(f"gen-randstruct-seed={generator}")
    steps_file = cache.root() / "last-build-steps"
    try:
        total = int(steps_file.read_text()) if steps_file.is_file() else None
    except ValueError:
        total = None
    count = 0
    with progress("building kernel", total=total, quiet=quiet) as bar:
        def on_line(line: str) -> None:
            nonlocal count
            m = _STEP.match(line)
            if m:
                count += 1
                bar.advance()
                bar.stage(f"kernel: {m.group(1)} {m.group(2)[-50:]}")

        try:
            bar.stage("kernel: olddefconfig")
            tools.run_streaming("make", [*make_args, "olddefconfig"], on_line, env=BUILD_ENV, nice=10)
            resolved = (objdir / ".config").read_text()
            if kconfig_file.meaningful_lines(resolved) != kconfig_file.meaningful_lines(wanted):
                diff = sorted(set(kconfig_file.meaningful_lines(wanted)) ^ set(kconfig_file.meaningful_lines(resolved)))
                raise InputError(f"the config is not resolved for this tree ({len(diff)} lines change under "
                                 f"olddefconfig, first: {diff[0]!r}); run `obelisk kernel config` first",
                                 source=str(config_path))
            tools.run_streaming("make", [*make_args, "bzImage"], on_line, env=BUILD_ENV, nice=10)
            release = tools.run("make", ["-s", *make_args, "kernelrelease"], env=BUILD_ENV).stdout.decode().strip()
        except ToolFailedError as exc:
            lines = exc.detail.splitlines()
            first_error = next((ln for ln in lines if "error" in ln.lower() and "make" not in ln[:6]),
                               lines[-1] if lines else "")
            raise ToolFailedError("make", exc.returncode, first_error) from None
    steps_file.write_text(str(count))
    seconds = time.monotonic() - started
    with atomic_directory(entry) as tmp:
        shutil.copy2(objdir / "arch/x86/boot/bzImage", tmp / "bzImage")
        shutil.copy2(objdir / "vmlinux", tmp / "vmlinux")
        shutil.copy2(objdir / ".config", tmp / "config")
        shutil.copy2(objdir / "System.map", tmp / "System.map")
        info = {
            "recipe": RECIPE, "key": key, "kernel_release": release, "source": str(source),
            "source_digest": source_digest, "config_sha256": hashlib.sha256(wanted.encode()).hexdigest(),
            "ca_sha256": hashlib.sha256(ca).hexdigest(), "environment": BUILD_ENV,
            "bzImage_sha256": _sha256(tmp / "bzImage"), "vmlinux_sha256": _sha256(tmp / "vmlinux"),
            "build_seconds": round(seconds, 1), "jobs": jobs,
        }
        (tmp / "build.json").write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
    shutil.rmtree(objdir, ignore_errors=True)
    _copy_outputs(entry, Path(output))
    return BuildResult(Path(output), key, False, seconds, info)


def build_from_profile(source: str | os.PathLike[str], ca_path: str | os.PathLike[str],
                       output: str | os.PathLike[str], *, profile: str = "module-less", base: str = "tinyconfig",
                       fragments: tuple[str, ...] = (), jobs: int = 2, quiet: bool = True,
                       randstruct_seed: str | None = None) -> BuildResult:
    """`kernel config` then `kernel build` in one call (the API the image pipeline uses)."""
    import tempfile

    from obelisk.core import atomic
    from obelisk.kernel_hardening.profile import load_profile
    from obelisk.kernel_hardening.resolve import check_tree_clean, resolve
    from obelisk.kernel_hardening.source import source_tree

    tree = source_tree(source, quiet=quiet)
    check_tree_clean(tree)
    resolution = resolve(tree, load_profile(profile), base=base, fragments=list(fragments),
                         randstruct_seed=randstruct_seed is not None)
    with tempfile.TemporaryDirectory(prefix="obelisk-kconfig-") as tmp:
        config = Path(tmp) / ".config"
        atomic.write_text(config, resolution.config_text)
        return build(source, config, ca_path, output, jobs=jobs, quiet=quiet, randstruct_seed=randstruct_seed)
