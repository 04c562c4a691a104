"""Loading a kernel tree's Kconfig with kconfiglib, without touching the user's tree.

kconfiglib 14.1 predates two keywords of the kernel's Kconfig language: the bare
`modules` attribute (kernel 5.13+, formerly `option modules`) and `transitional`
(6.18+). `KernelKconfig` rewrites those lines in memory while kconfiglib reads the
files; line numbers are kept so locations in explanations point at the real file.

Transitional symbols are read from an old .config but never written (as in the C
tool): they get a prompt so kconfiglib honours their value, and `write_config` drops them.
"""

from __future__ import annotations

import io
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from obelisk.core.errors import InputError

if TYPE_CHECKING:
    import kconfiglib

_MODULES_LINE = re.compile(r"^(\s*)modules\s*(#.*)?$")
_TRANSITIONAL_LINE = re.compile(r"^\s*transitional\s*(#.*)?$")
_CONFIG_LINE = re.compile(r"^\s*(?:menu)?config\s+([A-Za-z0-9_]+)\s*$")


def rewrite_kconfig_text(text: str) -> tuple[str, frozenset[str]]:
    """Rewrite keywords kconfiglib 14.1 cannot parse; return the text and the transitional symbols.

    Every line keeps its number (`transitional` becomes a prompt line).
    """
    out: list[str] = []
    transitional: set[str] = set()
    current: str | None = None
    for line in text.splitlines(keepends=True):
        ending = "\n" if line.endswith("\n") else ""
        body = line.rstrip("\n")
        m = _CONFIG_LINE.match(body)
        if m:
            current = m.group(1)
        elif _MODULES_LINE.match(body):
            indent = _MODULES_LINE.match(body).group(1)  # type: ignore[union-attr]
            body = f"{indent}option modules"
        elif _TRANSITIONAL_LINE.match(body):
            if current:
                transitional.add(current)
            # A transitional symbol takes its value from an old .config although it has no
            # prompt; a prompt is the way to make kconfiglib honour that value.
            indent = body[: len(body) - len(body.lstrip())]
            body = f'{indent}prompt "transitional"'

        out.append(body + ending)
    return "".join(out), frozenset(transitional)


def kernel_version(tree: Path) -> str:
    """`VERSION.PATCHLEVEL.SUBLEVEL` from the tree's top Makefile."""
    try:
        head = (tree / "Makefile").read_text(errors="replace")[:4096]
    except OSError as exc:
        raise InputError(f"not a kernel source tree: cannot read Makefile ({exc.strerror})", source=str(tree)) from None
    fields = {}
    for key in ("VERSION", "PATCHLEVEL", "SUBLEVEL"):
        m = re.search(rf"^{key}\s*=\s*(\d+)\s*$", head, re.M)
        if not m:
            raise InputError(f"not a kernel source tree: Makefile has no {key}", source=str(tree))
        fields[key] = m.group(1)
    return f"{fields['VERSION']}.{fields['PATCHLEVEL']}.{fields['SUBLEVEL']}"


def kconfig_environment(tree: Path, arch: str = "x86") -> dict[str, str]:
    """The variables the kernel's Makefile exports to Kconfig (scripts/kconfig/Makefile)."""
    version = kernel_version(tree)
    return {
        "srctree": str(tree),
        "ARCH": arch,
        "SRCARCH": arch,
        "KERNELVERSION": version,
        "CC": os.environ.get("CC", "gcc"),
        "LD": os.environ.get("LD", "ld"),
        "HOSTCC": os.environ.get("HOSTCC", "gcc"),
        "HOSTCXX": os.environ.get("HOSTCXX", "g++"),
        "RUSTC": os.environ.get("RUSTC", "rustc"),
        "BINDGEN": os.environ.get("BINDGEN", "bindgen"),
        "PAHOLE": os.environ.get("PAHOLE", "pahole"),
        "CLANG_FLAGS": "",
        # tools the top Makefile exports; Kconfig probes some of them ($(success,$(OBJCOPY) ...))
        **{var: os.environ.get(var, default) for var, default in (
            ("AS", "as"), ("CPP", "gcc -E"), ("AR", "ar"), ("NM", "nm"), ("STRIP", "strip"),
            ("OBJCOPY", "objcopy"), ("OBJDUMP", "objdump"), ("READELF", "readelf"), ("AWK", "awk"),
            ("PERL", "perl"), ("PYTHON3", "python3"), ("LEX", "flex"), ("YACC", "bison"),
            ("HOSTPKG_CONFIG", "pkg-config"), ("CONFIG_SHELL", "sh"), ("BASH", "bash"))},
        "CC_VERSION_TEXT": compiler_version_text(),
        "objtree": str(tree),
    }


def compiler_version_text() -> str:
    """First line of `$CC --version`, as the kernel Makefile exports it to Kconfig."""
    from obelisk.core import tools
    from obelisk.core.errors import ObeliskError

    cc = os.environ.get("CC", "gcc")
    try:
        out = tools.run(cc, ["--version"], env={"LC_ALL": "C"}, check=False).stdout
    except ObeliskError:
        return ""
    first = out.decode(errors="replace").splitlines()[0] if out.strip() else ""
    return first.replace("#", "")


def gcc_plugins_available() -> bool:
    """What scripts/Kconfig.include's HAVE_GCC_PLUGINS probe asks: are GCC's plugin headers installed?"""
    from obelisk.core import tools
    from obelisk.core.errors import ObeliskError

    cc = os.environ.get("CC", "gcc")
    try:
        out = tools.run(cc, ["-print-file-name=plugin"], env={"LC_ALL": "C"}, check=False).stdout
    except ObeliskError:
        return False
    return os.path.isfile(os.path.join(out.decode(errors="replace").strip(), "include", "plugin-version.h"))


def config_header(version: str, arch: str = "x86") -> str:
    """The header `make *config` writes, so obelisk's .config is byte-identical to make's."""
    return f"#\n# Automatically generated file; DO NOT EDIT.\n# Linux/{arch} {version} Kernel Configuration\n#\n"


@dataclass(frozen=True)
class TreeInfo:
    root: Path
    version: str
    arch: str


def check_tree(tree: str | os.PathLike[str]) -> TreeInfo:
    root = Path(tree).resolve()
    if not (root / "Kconfig").is_file() or not (root / "arch").is_dir():
        raise InputError("not a kernel source tree (no Kconfig / arch/)", source=str(tree))
    return TreeInfo(root=root, version=kernel_version(root), arch="x86")


def load_kconfig(tree: str | os.PathLike[str], arch: str = "x86") -> kconfiglib.Kconfig:
    """Parse the tree's Kconfig with kconfiglib (rewriting unsupported keywords in memory).

    Returns a `kconfiglib.Kconfig` with an extra attribute `transitional` (symbol names).
    Sets the Kconfig environment variables in os.environ for the duration of the parse
    (kconfiglib reads them from there) and restores them afterwards.
    """
    import kconfiglib

    info = check_tree(tree)

    class KernelKconfig(kconfiglib.Kconfig):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            self._obelisk_parsing = True
            self.transitional: set[str] = set()
            super().__init__(*args, **kwargs)
            self._obelisk_parsing = False

        def _open(self, filename: str, mode: str) -> IO[str]:
            if mode == "r" and getattr(self, "_obelisk_parsing", False):
                with open(filename, encoding="utf-8", errors="surrogateescape") as handle:
                    text, trans = rewrite_kconfig_text(handle.read())
                self.transitional.update(trans)
                return io.StringIO(text)
            return super()._open(filename, mode)

        def write_config(self, filename: str | os.PathLike[str] | None = None, header: str | None = None,
                         save_old: bool = True, verbose: bool | None = None) -> str:
            _write_implied_like_c(self)
            result = super().write_config(filename, header=header, save_old=save_old, verbose=verbose)
            if self.transitional and filename:
                _drop_symbols(Path(filename), self.transitional)
            return result

    env = kconfig_environment(info.root, arch)
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    cwd = os.getcwd()
    try:
        os.chdir(info.root)  # $(shell,...) macros in Kconfig.include run relative to the tree
        return KernelKconfig(str(info.root / "Kconfig"), warn=False, warn_to_stderr=False)
    except kconfiglib.KconfigError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "parse error"
        raise InputError(f"Kconfig does not parse: {first}", source=str(tree)) from None
    finally:
        os.chdir(cwd)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _write_implied_like_c(kconf: kconfiglib.Kconfig) -> None:
    """Match the C tool (scripts/kconfig/symbol.c, sym_calc_value) for implied symbols.

    An invisible bool/tristate symbol that something `imply`s is written to .config (as
    "is not set" when its own dependencies are unmet); kconfiglib 14.1 only writes it when
    its dependencies are met. Without this, `# CONFIG_STRICT_DEVMEM is not set` (implied by
    HARDENED_USERCOPY, depends on DEVMEM) would be missing compared with `make olddefconfig`.
    """
    import kconfiglib

    for sym in kconf.unique_defined_syms:
        if sym.orig_type not in (kconfiglib.BOOL, kconfiglib.TRISTATE) or sym.choice is not None:
            continue
        # Read only for its side effect: the property computes and caches the value and sets _write_to_conf.
        _ = sym.str_value
        if not sym._write_to_conf and kconfiglib.expr_value(sym.weak_rev_dep):
            sym._write_to_conf = True


def _drop_symbols(path: Path, names: set[str]) -> None:
    keep = []
    for line in path.read_text().splitlines(keepends=True):
        m = re.match(r"^(?:# )?CONFIG_([A-Za-z0-9_]+)[= ]", line)
        if m and m.group(1) in names:
            continue
        keep.append(line)
    path.write_text("".join(keep))
