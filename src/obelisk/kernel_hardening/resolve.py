"""Resolve a profile against a kernel tree's Kconfig into a .config, explaining every drop.

The result is exactly what `make olddefconfig` makes of the same input (kconfiglib implements
the same algorithm; `tests/kernel_hardening/test_resolve.py` proves it byte for byte). The
input is: the base (tinyconfig, allnoconfig or a file), the profile's requests, the user's
fragments, and a dependency closure obelisk adds where it can (enabling SECURITY so that
SECURITY_LOCKDOWN_LSM can take effect, and so on). What `olddefconfig` drops silently,
obelisk names: the unmet dependency with file and line, the selector forcing an option on,
the missing prompt.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from obelisk.core.errors import InputError
from obelisk.kernel_hardening import kconfig_file
from obelisk.kernel_hardening.kconfig_tree import config_header, kernel_version, load_kconfig
from obelisk.kernel_hardening.profile import Profile, Requirement
from obelisk.kernel_hardening.tree_index import build_index, expr_text, symbols_in, unmet

MAX_ROUNDS = 10
# Structure layout randomisation needs a seed: a random one makes the build unreproducible, a known one
# (in the tree, or derived from public inputs) makes the layout predictable to attackers. Only a customer
# secret does both jobs (kernel_hardening/build.py, spec kernel.randstruct_seed).
RANDSTRUCT_OPTIONS = ("CONFIG_RANDSTRUCT_FULL", "CONFIG_RANDSTRUCT_PERFORMANCE", "CONFIG_GCC_PLUGIN_RANDSTRUCT")
NO_SEED = ("left out: no randstruct seed given (a customer secret file, 0600: spec kernel.randstruct_seed or "
           "--randstruct-seed); a random seed would make the build unreproducible and a public one the "
           "structure layout predictable")

APPLIED = "applied"
NOT_APPLICABLE = "not-applicable"
MOOT = "moot"
DROPPED = "dropped"


@dataclass(frozen=True)
class Request:
    name: str  # CONFIG_X as written in the tree
    value: str
    origin: str  # "profile <name>" or a fragment path
    requirement: Requirement | None = None


@dataclass(frozen=True)
class Outcome:
    request: Request
    status: str  # applied | not-applicable | moot | dropped
    result: str | None  # the value in the resolved config (None: not in the tree)
    reason: str = ""
    location: str = ""  # file:line of the option's definition


@dataclass(frozen=True)
class Resolution:
    version: str
    base: str
    config_text: str  # the resolved .config (what make olddefconfig writes)
    input_text: str  # base + requests + closure, as fed to olddefconfig
    outcomes: tuple[Outcome, ...]
    closure: dict[str, str] = field(default_factory=dict)  # dependencies obelisk added

    def by_status(self, status: str) -> list[Outcome]:
        return [o for o in self.outcomes if o.status == status]


def _write(kconf: Any, header: str) -> str:
    fd, tmp = tempfile.mkstemp(prefix="obelisk-kconfig-", suffix=".config")
    os.close(fd)
    try:
        kconf.write_config(tmp, header=header, save_old=False)
        return Path(tmp).read_text()
    finally:
        os.unlink(tmp)


def _load_text(kconf: Any, text: str, replace: bool = True) -> None:
    fd, tmp = tempfile.mkstemp(prefix="obelisk-kconfig-", suffix=".config")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        kconf.load_config(tmp, replace=replace)
    finally:
        os.unlink(tmp)


def base_config(kconf: Any, tree: Path, base: str, header: str, arch: str = "x86") -> str:
    """The starting .config: tinyconfig / allnoconfig as `make` builds them, or a file."""
    if base in ("tinyconfig", "allnoconfig"):
        for sym in kconf.unique_defined_syms:
            sym.set_value(2 if sym.is_allnoconfig_y else 0)
        if base == "tinyconfig":
            # make tinyconfig: KCONFIG_ALLCONFIG=tiny-base.config allnoconfig, then merge tiny.config
            kconf.load_config(str(tree / "kernel/configs/tiny-base.config"), replace=False)
            _load_text(kconf, _write(kconf, header))
            for frag in ("kernel/configs/tiny.config", f"arch/{arch}/configs/tiny.config"):
                if (tree / frag).is_file():
                    kconf.load_config(str(tree / frag), replace=False)
        return _write(kconf, header)
    path = Path(base)
    kconfig_file.read(path)  # validates: one-line error if it is not a kernel config
    return path.read_text()


def _wanted_for(req: Requirement) -> str | None:
    return req.requested_value()


def requests_from(profile: Profile, kconf: Any, fragments: list[str],
                  withheld: Mapping[str, str] | None = None) -> tuple[list[Request], list[Outcome]]:
    """`withheld`: requirements the build leaves out on purpose (name -> why), reported as dropped."""
    requests: dict[str, Request] = {}
    skipped: list[Outcome] = []
    for req in profile.of_kind("kconfig"):
        names = [n for n in req.names if n.removeprefix("CONFIG_") in kconf.syms
                 and kconf.syms[n.removeprefix("CONFIG_")].nodes]
        value = _wanted_for(req)
        if value is None:
            continue
        why = next((w for n, w in (withheld or {}).items() if n in req.names), None)
        if why is not None:
            skipped.append(Outcome(Request(names[0] if names else req.name, value, f"profile {profile.name}", req),
                                   DROPPED, None, why))
            continue
        if not names:
            skipped.append(Outcome(Request(req.name, value, f"profile {profile.name}", req), NOT_APPLICABLE, None,
                                   f"{' / '.join(req.names)} does not exist in this tree"))
            continue
        moot = _moot(req, profile)
        if moot:
            skipped.append(Outcome(Request(names[0], value, f"profile {profile.name}", req), MOOT, None, moot))
            continue
        requests[names[0]] = Request(names[0], value, f"profile {profile.name}", req)
    for frag in fragments:
        cfg = kconfig_file.read(frag)
        for name, value in cfg.values.items():
            if name.removeprefix("CONFIG_") not in kconf.syms or not kconf.syms[name.removeprefix("CONFIG_")].nodes:
                skipped.append(Outcome(Request(name, value, frag), NOT_APPLICABLE, None,
                                       f"{name} does not exist in this tree"))
                requests.pop(name, None)
                continue
            requests[name] = Request(name, value, frag)
    return list(requests.values()), skipped


def _moot(req: Requirement, profile: Profile) -> str:
    if not req.moot_if:
        return ""
    for name, value in req.moot_if:
        other = profile.kconfig_request(name)
        if other is None or other.requested_value() != value:
            return ""
    return "moot by policy: " + ", ".join(f"{n}={v}" for n, v in req.moot_if)


def _str_value(sym: Any) -> str:
    return sym.str_value if sym.str_value != "" or sym.orig_type not in (1, 2) else "n"


def _current(kconf: Any, name: str) -> str:
    sym = kconf.syms[name.removeprefix("CONFIG_")]
    import kconfiglib

    if sym.orig_type in (kconfiglib.BOOL, kconfiglib.TRISTATE):
        return sym.str_value or "n"
    return sym.str_value


class _Unfixable(Exception):
    pass


def _needs(kconf: Any, expr: Any, requested: dict[str, str]) -> dict[str, str]:
    """Assignments that would make `expr` true (y), without contradicting explicit requests."""
    import kconfiglib as k

    if isinstance(expr, tuple):
        op = expr[0]
        if k.expr_value(expr) == 2:
            return {}
        if op == k.AND:
            out = _needs(kconf, expr[1], requested)
            out.update(_needs(kconf, expr[2], requested))
            return out
        if op == k.OR:
            for sub in (expr[1], expr[2]):
                try:
                    return _needs(kconf, sub, requested)
                except _Unfixable:
                    continue
            raise _Unfixable()
        if op == k.NOT and isinstance(expr[1], k.Symbol) and not expr[1].is_constant:
            name = "CONFIG_" + expr[1].name
            if requested.get(name, "n") not in ("n",) and name in requested:
                raise _Unfixable()
            return {name: "n"}
        if op == k.EQUAL and isinstance(expr[1], k.Symbol) and isinstance(expr[2], k.Symbol) \
                and not expr[1].is_constant and expr[2].is_constant:
            name = "CONFIG_" + expr[1].name
            if name in requested and requested[name] != expr[2].name:
                raise _Unfixable()
            return {name: expr[2].name}
        raise _Unfixable()
    if isinstance(expr, k.Choice):
        return {} if expr.tri_value == 2 else _needs(kconf, expr.direct_dep, requested)
    if expr.is_constant:
        if expr.tri_value == 2:
            return {}
        raise _Unfixable()
    if expr.tri_value == 2:
        return {}
    name = "CONFIG_" + expr.name
    if name in requested and requested[name] == "n":
        raise _Unfixable()
    if not any(n.prompt for n in expr.nodes):
        raise _Unfixable()  # only select/default can set it
    return {name: "y"}


def _with_choices(kconf: Any, overlay: dict[str, str], explicit: dict[str, str]) -> dict[str, str]:
    """A choice member requested y: the other members of its choice go to n (unless requested)."""
    out = dict(overlay)
    for name, value in overlay.items():
        sym = kconf.syms.get(name.removeprefix("CONFIG_"))
        if value != "y" or sym is None or sym.choice is None:
            continue
        for other in sym.choice.syms:
            other_name = "CONFIG_" + other.name
            if other is not sym and other_name not in explicit:
                out[other_name] = "n"
    return out


def _render_input(base_values: dict[str, str], overlay: dict[str, str], types: dict[str, str], header: str) -> str:
    values = dict(base_values)
    values.update(overlay)
    return header + kconfig_file.serialize(values, types)


def resolve(tree: Path, profile: Profile, *, base: str = "tinyconfig", fragments: list[str] | None = None,
            arch: str = "x86", randstruct_seed: bool = True) -> Resolution:
    """`randstruct_seed` False: no customer seed, so structure layout randomisation is left out (explained)."""
    import kconfiglib

    kconf = load_kconfig(tree, arch)
    version = kernel_version(tree)
    header = config_header(version, arch)
    base_text = base_config(kconf, tree, base, header, arch)
    base_cfg = kconfig_file.parse(base_text.encode(), base)
    withheld = {} if randstruct_seed else {name: NO_SEED for name in RANDSTRUCT_OPTIONS}
    requests, outcomes = requests_from(profile, kconf, list(fragments or []), withheld)
    types = {"CONFIG_" + s.name: ("string" if s.orig_type == kconfiglib.STRING else "other")
             for s in kconf.unique_defined_syms}
    explicit = {r.name: r.value for r in requests}
    closure: dict[str, str] = {}
    failed_closure: set[str] = set()
    for _ in range(MAX_ROUNDS):
        overlay = _with_choices(kconf, {**closure, **explicit}, explicit)
        _load_text(kconf, _render_input(base_cfg.values, overlay, types, header))
        additions: dict[str, str] = {}
        for name, value in overlay.items():
            if value == "n" or _current(kconf, name) == value:
                continue
            sym = kconf.syms[name.removeprefix("CONFIG_")]
            try:
                needed = _needs(kconf, sym.direct_dep, explicit)
            except _Unfixable:
                continue
            for dep, dep_value in needed.items():
                if dep not in overlay and dep not in additions and dep not in failed_closure:
                    additions[dep] = dep_value
        if not additions:
            break
        closure.update(additions)
    # drop closure entries that did not take effect (invisible symbols): they would change nothing
    overlay = _with_choices(kconf, {**closure, **explicit}, explicit)
    _load_text(kconf, _render_input(base_cfg.values, overlay, types, header))
    closure = {n: v for n, v in closure.items() if _current(kconf, n) == v}
    input_text = _render_input(base_cfg.values, _with_choices(kconf, {**closure, **explicit}, explicit),
                               types, header)
    _load_text(kconf, input_text)
    config_text = _write(kconf, header)
    final = kconfig_file.parse(config_text.encode(), "resolved").values
    index = build_index(kconf, str(tree), version, arch)
    for req in requests:
        outcomes.append(_explain(req, kconf, index, final, closure))
    return Resolution(version=version, base=base, config_text=config_text, input_text=input_text,
                      outcomes=tuple(outcomes), closure=closure)


def _explain(req: Request, kconf: Any, index: Any, final: dict[str, str], closure: dict[str, str]) -> Outcome:
    name = req.name
    got = final.get(name, "n") if name in final or index.get(name).type in ("bool", "tristate") else final.get(name)
    info = index.get(name)
    where = index.location(name)
    if got == req.value:
        return Outcome(req, APPLIED, got, "", where)
    sym = kconf.syms[name.removeprefix("CONFIG_")]
    if req.value != "n":
        failing = unmet(info.depends, final)
        if failing:
            parts = []
            for cond in failing:
                locs = ", ".join(f"{s} at {index.location(s)}" for s in symbols_in(cond)[:3] if index.defines(s))
                parts.append(expr_text(cond) + (f" ({locs})" if locs else ""))
            return Outcome(req, DROPPED, got, "unmet dependencies: " + "; ".join(parts), where)
        if not info.has_prompt:
            return Outcome(req, DROPPED, got, "has no prompt: only a select or default can set it, "
                                              "and nothing in this config does", where)
        if sym.choice is not None:
            chosen = sym.choice.selection.name if sym.choice.selection is not None else "none"
            return Outcome(req, DROPPED, got, f"member of a choice; CONFIG_{chosen} is selected instead", where)
        if req.value == "m" and got == "y":
            return Outcome(req, DROPPED, got, "built in (y): modules are off", where)
        return Outcome(req, DROPPED, got, f"Kconfig set {got!r} (range or type of the option)", where)
    active = [s for s in info.selected_by if final.get("CONFIG_" + s, "n") != "n"]
    if active:
        sel = ", ".join(f"CONFIG_{s} ({index.location(s)})" for s in active[:5])
        return Outcome(req, DROPPED, got, f"forced on: selected by {sel}", where)
    if not info.has_prompt:
        return Outcome(req, DROPPED, got, "has no prompt and defaults on; it cannot be turned off", where)
    return Outcome(req, DROPPED, got, "Kconfig kept it on (default of a visible option)", where)


def check_tree_clean(tree: Path) -> None:
    if (tree / ".config").exists():
        raise InputError("kernel tree has a .config; obelisk builds out of tree and needs a clean source tree",
                         source=str(tree))
