"""A compact, cached summary of a kernel tree's Kconfig: what `kernel check` needs, fast.

Parsing the 6.1 Kconfig with kconfiglib takes seconds; `kernel check` must answer in well
under a second. The first run parses the tree and stores, per symbol, its type, where it is
defined, its dependency expression and what selects it, in the obelisk cache. Later runs
load that summary after checking that no Kconfig file read by the parse has changed
(size and mtime of each file, and the compiler, which Kconfig probes).
"""

from __future__ import annotations

import hashlib
import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from obelisk.core import atomic
from obelisk.kernel_hardening import cache

FORMAT = 3

# Serialized expression: ("sym", name) | ("const", value) | ("and", a, b) | ("or", a, b)
# | ("not", a) | (op, a, b) with op one of = != < <= > >=
Expr = tuple[Any, ...]


@dataclass(frozen=True)
class SymbolInfo:
    name: str  # without CONFIG_
    type: str  # bool, tristate, string, int, hex, unknown
    locations: tuple[tuple[str, int], ...]
    depends: Expr  # direct dependencies ("const", "y") when none
    selected_by: tuple[str, ...]
    has_prompt: bool


@dataclass(frozen=True)
class TreeIndex:
    root: str
    version: str
    arch: str
    # name -> (type, locations, depends, selected_by, has_prompt): plain tuples unpickle fast
    rows: dict[str, tuple[Any, ...]]

    def get(self, config_name: str) -> SymbolInfo | None:
        name = config_name.removeprefix("CONFIG_")
        row = self.rows.get(name)
        return None if row is None else SymbolInfo(name, *row)

    def defines(self, name: str) -> bool:
        return name.removeprefix("CONFIG_") in self.rows

    def location(self, name: str) -> str:
        row = self.rows.get(name.removeprefix("CONFIG_"))
        if row is None or not row[1]:
            return ""
        f, line = row[1][0]
        return f"{f}:{line}"


def _expr(e: Any) -> Expr:
    import kconfiglib as k

    if isinstance(e, tuple):
        op = e[0]
        if op == k.AND:
            return ("and", _expr(e[1]), _expr(e[2]))
        if op == k.OR:
            return ("or", _expr(e[1]), _expr(e[2]))
        if op == k.NOT:
            return ("not", _expr(e[1]))
        rel = {k.EQUAL: "=", k.UNEQUAL: "!=", k.LESS: "<", k.LESS_EQUAL: "<=",
               k.GREATER: ">", k.GREATER_EQUAL: ">="}[op]
        return (rel, _expr(e[1]), _expr(e[2]))
    if isinstance(e, k.Choice):
        return ("const", "y")
    if e.is_constant:
        return ("const", e.name)
    return ("sym", e.name)


def _selectors(e: Any, out: list[str]) -> None:
    import kconfiglib as k

    if isinstance(e, tuple):
        if e[0] in (k.AND,):  # "select X if COND": the selector is the first operand
            _selectors(e[1], out)
            return
        for sub in e[1:]:
            _selectors(sub, out)
    elif isinstance(e, k.Symbol) and not e.is_constant:
        out.append(e.name)


def build_index(kconf: Any, root: str, version: str, arch: str) -> TreeIndex:
    import kconfiglib as k

    types = {k.BOOL: "bool", k.TRISTATE: "tristate", k.STRING: "string", k.INT: "int", k.HEX: "hex"}
    rows = {}
    for sym in kconf.unique_defined_syms:
        selected: list[str] = []
        _selectors(sym.rev_dep, selected)
        rows[sym.name] = (types.get(sym.orig_type, "unknown"),
                          tuple((n.filename, n.linenr) for n in sym.nodes),
                          _expr(sym.direct_dep),
                          tuple(dict.fromkeys(selected)),
                          any(n.prompt for n in sym.nodes))
    return TreeIndex(root=root, version=version, arch=arch, rows=rows)


def _stamp(root: Path, files: list[str]) -> list[tuple[str, int, int]]:
    out = []
    for rel in files:
        try:
            st = os.stat(root / rel)
            out.append((rel, st.st_size, st.st_mtime_ns))
        except OSError:
            out.append((rel, -1, -1))
    return out


def _cache_file(root: Path, arch: str) -> Path:
    key = hashlib.sha256(f"{FORMAT}\0{root}\0{arch}\0{os.environ.get('CC', 'gcc')}".encode()).hexdigest()[:24]
    return cache.cache_dir("kconfig-index") / f"{key}.pickle"


def load_index(tree: str | os.PathLike[str], arch: str = "x86") -> TreeIndex:
    """The tree's Kconfig summary: from the cache if still valid, else parsed and cached."""
    from obelisk.kernel_hardening.kconfig_tree import check_tree, load_kconfig

    info = check_tree(tree)
    path = _cache_file(info.root, arch)
    try:
        with open(path, "rb") as handle:
            stored = pickle.load(handle)  # noqa: S301 - our own cache file, written by this function
        if (stored.get("format") == FORMAT and stored["stamp"] == _stamp(info.root, [s[0] for s in stored["stamp"]])
                and stored["version"] == info.version):
            return TreeIndex(root=str(info.root), version=info.version, arch=arch, rows=stored["rows"])
    except (OSError, pickle.UnpicklingError, EOFError, KeyError, AttributeError, TypeError, ValueError):
        pass
    kconf = load_kconfig(info.root, arch)
    index = build_index(kconf, str(info.root), info.version, arch)
    stamp = _stamp(info.root, list(dict.fromkeys(kconf.kconfig_filenames)))
    atomic.write_bytes(path, pickle.dumps({"format": FORMAT, "stamp": stamp, "version": info.version,
                                           "rows": index.rows},
                                          protocol=pickle.HIGHEST_PROTOCOL))
    return index


# --- evaluating dependencies against a configuration ---

def _value(name: str, values: dict[str, str]) -> str:
    return values.get("CONFIG_" + name, "n")


def _tri(text: str) -> int:
    return {"y": 2, "m": 1}.get(text, 0)


def _operand(e: Expr, values: dict[str, str]) -> str:
    if e[0] == "const":
        return e[1]
    if e[0] == "sym":
        return _value(e[1], values)
    return {2: "y", 1: "m", 0: "n"}[evaluate(e, values)]


def evaluate(e: Expr, values: dict[str, str]) -> int:
    """Tristate value (0, 1, 2) of a dependency expression under `values` (CONFIG_X -> value)."""
    op = e[0]
    if op == "const":
        return _tri(e[1])
    if op == "sym":
        return _tri(_value(e[1], values))
    if op == "and":
        return min(evaluate(e[1], values), evaluate(e[2], values))
    if op == "or":
        return max(evaluate(e[1], values), evaluate(e[2], values))
    if op == "not":
        return 2 - evaluate(e[1], values)
    a, b = _operand(e[1], values), _operand(e[2], values)
    try:
        x, y = int(a, 0), int(b, 0)
        cmp = (x > y) - (x < y)
    except ValueError:
        cmp = (a > b) - (a < b)
    return 2 if {"=": cmp == 0, "!=": cmp != 0, "<": cmp < 0, "<=": cmp <= 0,
                 ">": cmp > 0, ">=": cmp >= 0}[op] else 0


def expr_text(e: Expr) -> str:
    op = e[0]
    if op in ("const", "sym"):
        return e[1]
    if op == "not":
        inner = expr_text(e[1])
        return f"!{inner}" if e[1][0] in ("sym", "const") else f"!({inner})"
    if op in ("and", "or"):
        parts = []
        for sub in e[1:]:
            t = expr_text(sub)
            if sub[0] in ("and", "or") and sub[0] != op:
                t = f"({t})"
            parts.append(t)
        return (" && " if op == "and" else " || ").join(parts)
    return f"{expr_text(e[1])} {op} {expr_text(e[2])}"


def unmet(e: Expr, values: dict[str, str]) -> list[Expr]:
    """The smallest failing parts of a dependency: the conjuncts that evaluate to n."""
    if evaluate(e, values):
        return []
    if e[0] == "and":
        return unmet(e[1], values) + unmet(e[2], values)
    return [e]


def symbols_in(e: Expr) -> list[str]:
    if e[0] == "sym":
        return [e[1]]
    if e[0] == "const":
        return []
    return [s for sub in e[1:] for s in symbols_in(sub)]
