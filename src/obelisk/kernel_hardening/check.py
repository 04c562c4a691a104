"""The kernel check engine: a profile's requirements against a config, a command line and sysctls.

With a kernel tree's Kconfig summary each Kconfig requirement is also classified:
- not applicable: the option (under any of its names) does not exist in this tree -> skip;
- not applicable to the architecture: its dependencies name symbols this arch never defines -> skip;
- moot by policy: the profile itself turns off what the option hardens (module signing with
  CONFIG_MODULES=n) -> skip;
- blocked: dependencies unmet in this config, named with file and line -> fail, explained.
Without a tree the kernel version from the config header decides whether an absent option
exists at all.
"""

from __future__ import annotations

from dataclasses import dataclass

from obelisk.core.findings import Evidence, Finding, Reference, Report, Status, Subject
from obelisk.kernel_hardening.inputs import Cmdline, Sysctls
from obelisk.kernel_hardening.kconfig_file import KernelConfig
from obelisk.kernel_hardening.profile import Profile, Requirement, Version, _vtext, load_profile, parse_version
from obelisk.kernel_hardening.tree_index import Expr, TreeIndex, expr_text, symbols_in, unmet

BENCHMARK = "kernel-hardening"


@dataclass(frozen=True)
class Inputs:
    config: KernelConfig | None = None
    cmdline: Cmdline | None = None
    sysctls: Sysctls | None = None
    tree: TreeIndex | None = None


def _references(req: Requirement) -> tuple[Reference, ...]:
    return (Reference(scheme=req.source, id=req.name),)


def _finding(req: Requirement, status: Status, *, observed: str | None, detail: str, target: str,
             evidence: tuple[Evidence, ...] = ()) -> Finding:
    return Finding(
        id=req.id, title=_title(req),
        status=status, severity=req.severity, target=target, observed=observed, expected=req.expected,
        evidence=evidence, remediation=_remediation(req), references=_references(req), benchmark=BENCHMARK,
        section=req.section, detail=detail if detail else req.explained,
    )


def _title(req: Requirement) -> str:
    if req.kind == "kconfig":
        return f"{req.name} = {req.expected}"
    if req.kind == "cmdline":
        return f"kernel parameter {req.name}: {req.expected}"
    return f"sysctl {req.name} = {req.expected}"


def _remediation(req: Requirement) -> str:
    if req.kind == "kconfig":
        value = req.requested_value()
        return (f"Set {req.name}={value} in the kernel configuration" if value != "n"
                else f"Disable {req.name} in the kernel configuration") + f" ({req.explained})"
    if req.kind == "cmdline":
        if req.absent:
            return f"Remove {req.name} from the kernel command line"
        if req.not_in:
            return f"Do not set {req.name}={'/'.join(req.not_in)} on the kernel command line"
        return f"Add {req.name}{'' if req.present else '=' + (req.requested_value() or '')} to the kernel command line"
    return f"Set sysctl {req.name} = {req.requested_value()} (e.g. in /etc/sysctl.d/)"


def moot_reason(req: Requirement, config: KernelConfig | None, profile: Profile) -> str | None:
    """Why the requirement is moot, if the conditions of `moot_if` hold."""
    if not req.moot_if:
        return None
    for name, value in req.moot_if:
        observed: str | None
        if config is not None:
            observed = config.get(name) or "n"
        else:
            wanted = profile.kconfig_request(name)
            observed = wanted.requested_value() if wanted else None
        if observed != value:
            return None
    conds = ", ".join(f"{n}={v}" for n, v in req.moot_if)
    return f"moot by policy: {conds}, so {req.name} has nothing to protect"


def check(profile: Profile, inputs: Inputs) -> tuple[Finding, ...]:
    findings: list[Finding] = []
    if inputs.config is not None:
        findings += [_check_kconfig(r, inputs, profile) for r in profile.of_kind("kconfig")]
    if inputs.cmdline is not None:
        findings += [_check_cmdline(r, inputs, profile) for r in profile.of_kind("cmdline")]
    if inputs.sysctls is not None:
        findings += [_check_sysctl(r, inputs, profile) for r in profile.of_kind("sysctl")]
    return tuple(findings)


def _version(inputs: Inputs) -> Version | None:
    if inputs.tree is not None:
        return parse_version(inputs.tree.version)
    if inputs.config is not None:
        return parse_version(inputs.config.version)
    return None


def _check_kconfig(req: Requirement, inputs: Inputs, profile: Profile) -> Finding:
    config = inputs.config
    assert config is not None
    tree = inputs.tree
    target = config.source
    version = _version(inputs)
    present = [n for n in req.names if n in config.values]
    name = present[0] if present else req.name_for(version)
    observed = config.get(name)
    evidence: tuple[Evidence, ...] = ()
    if name in config.lines:
        evidence = (Evidence(kind="config", source=config.source, detail=f"{name}={observed}",
                             location=f"line {config.lines[name]}"),)
    moot = moot_reason(req, config, profile)
    if req.accepts(observed):
        return _finding(req, Status.PASS, observed=observed, detail="", target=target, evidence=evidence)
    if moot:
        return _finding(req, Status.SKIP, observed=observed, detail=moot, target=target, evidence=evidence)
    if tree is not None:
        in_tree = [n for n in req.names if tree.get(n) is not None]
        if not in_tree:
            return _finding(req, Status.SKIP, observed=observed, target=target, evidence=evidence,
                            detail=f"not applicable: {' / '.join(req.names)} does not exist in the "
                                   f"{tree.version} tree ({tree.root})")
        name = in_tree[0]
        info = tree.get(name)
        assert info is not None
        where = tree.location(name)
        wanted = req.requested_value()
        if wanted != "n":
            failing = unmet(info.depends, config.values)
            if failing:
                return _blocked(req, name, where, failing, config, tree, profile, observed, target, evidence)
        elif info.selected_by:
            active = [s for s in info.selected_by if config.is_set("CONFIG_" + s)]
            if active:
                sel = ", ".join(f"CONFIG_{s} ({tree.location(s)})" for s in active[:5])
                return _finding(req, Status.FAIL, observed=observed, target=target, evidence=evidence,
                                detail=f"{name} ({where}) is forced on: selected by {sel}")
        return _finding(req, Status.FAIL, observed=observed, target=target, evidence=evidence,
                        detail=f"{name} ({where}) is {_shown(observed)}; expected {req.expected}. {req.explained}")
    if observed is None and version is not None and not req.exists_in(version):
        return _finding(req, Status.SKIP, observed=None, target=target,
                        detail=f"not applicable: {req.name} does not exist in kernel {_vtext(version)}")
    return _finding(req, Status.FAIL, observed=observed, target=target, evidence=evidence,
                    detail=f"{name} is {_shown(observed)}; expected {req.expected}. {req.explained}")


def _shown(observed: str | None) -> str:
    return "not set" if observed in (None, "n") else repr(observed)


def _blocked(req: Requirement, name: str, where: str, failing: list[Expr], config: KernelConfig, tree: TreeIndex,
             profile: Profile, observed: str | None, target: str, evidence: tuple[Evidence, ...]) -> Finding:
    parts = []
    impossible = True
    moot_by = []
    for cond in failing:
        syms = symbols_in(cond)
        defined = [s for s in syms if tree.defines(s)]
        if defined or not syms:
            impossible = False
        for s in syms:
            wanted = profile.kconfig_request("CONFIG_" + s)
            if wanted is not None and wanted.requested_value() == "n" and cond[0] != "not":
                moot_by.append(f"CONFIG_{s}=n")
        locs = ", ".join(f"{s} at {tree.location(s)}" for s in defined[:3])
        parts.append(f"{expr_text(cond)}" + (f" ({locs})" if locs else ""))
    unmet_text = "; ".join(parts)
    if impossible:
        return _finding(req, Status.SKIP, observed=observed, target=target, evidence=evidence,
                        detail=f"not applicable to {tree.arch}: {name} ({where}) depends on {unmet_text}, "
                               f"which this architecture never defines")
    if moot_by and len(moot_by) == len(failing):
        return _finding(req, Status.SKIP, observed=observed, target=target, evidence=evidence,
                        detail=f"moot by policy: {name} ({where}) depends on {unmet_text}, "
                               f"and the profile sets {', '.join(dict.fromkeys(moot_by))}")
    return _finding(req, Status.FAIL, observed=observed, target=target, evidence=evidence,
                    detail=f"blocked: {name} ({where}) has unmet dependencies: {unmet_text}")


def _satisfied_by(req: Requirement, config: KernelConfig | None) -> str | None:
    if not req.satisfied_by_kconfig or config is None:
        return None
    for name, value in req.satisfied_by_kconfig:
        if (config.get(name) or "n") != value:
            return None
    return ", ".join(f"{n}={v}" for n, v in req.satisfied_by_kconfig)


def _check_cmdline(req: Requirement, inputs: Inputs, profile: Profile) -> Finding:
    cmdline = inputs.cmdline
    assert cmdline is not None
    found, value = cmdline.get(req.name)
    observed = None if not found else (req.name if value is None else f"{req.name}={value}")
    compare = None if not found else (value if value is not None else "")
    evidence = (Evidence(kind="cmdline", source=cmdline.source, detail=cmdline.text[:500]),)
    if req.accepts(compare):
        return _finding(req, Status.PASS, observed=observed, detail="", target=cmdline.source, evidence=evidence)
    if not found:
        by = _satisfied_by(req, inputs.config)
        if by:
            return _finding(req, Status.PASS, observed=None, target=cmdline.source, evidence=evidence,
                            detail=f"not on the command line, but the kernel default already applies ({by})")
    moot = moot_reason(req, inputs.config, profile)
    if moot:
        return _finding(req, Status.SKIP, observed=observed, detail=moot, target=cmdline.source, evidence=evidence)
    what = "missing" if not found else f"set to {observed}"
    return _finding(req, Status.FAIL, observed=observed, target=cmdline.source, evidence=evidence,
                    detail=f"{req.name} is {what}; expected {req.expected}. {req.explained}")


def _check_sysctl(req: Requirement, inputs: Inputs, profile: Profile) -> Finding:
    sysctls = inputs.sysctls
    assert sysctls is not None
    observed = sysctls.get(req.name)
    evidence: tuple[Evidence, ...] = ()
    if observed is not None:
        loc = f"line {sysctls.lines[req.name]}" if req.name in sysctls.lines else ""
        evidence = (Evidence(kind="sysctl", source=sysctls.source, detail=f"{req.name} = {observed}", location=loc),)
    if observed is not None and req.accepts(observed):
        return _finding(req, Status.PASS, observed=observed, detail="", target=sysctls.source, evidence=evidence)
    moot = moot_reason(req, inputs.config, profile)
    if moot:
        return _finding(req, Status.SKIP, observed=observed, detail=moot, target=sysctls.source, evidence=evidence)
    version = _version(inputs)
    if observed is None and version is not None and not req.exists_in(version):
        return _finding(req, Status.SKIP, observed=None, target=sysctls.source,
                        detail=f"not applicable: {req.name} does not exist in kernel {_vtext(version)}")
    if observed is None:
        where = "this kernel has no such sysctl" if sysctls.running else f"not set in {sysctls.source}"
        return _finding(req, Status.FAIL, observed=None, target=sysctls.source,
                        detail=f"{req.name}: {where}; expected {req.expected}. {req.explained}")
    return _finding(req, Status.FAIL, observed=observed, target=sysctls.source, evidence=evidence,
                    detail=f"{req.name} is {observed}; expected {req.expected}. {req.explained}")


def check_report(profile_name: str, *, config: str | None = None, cmdline: str | None = None,
                 sysctl: str | None = None, running: bool = False, kernel_source: str | None = None,
                 waivers: str | None = None) -> Report:
    """`obelisk kernel check`: read the inputs named (or this machine's, with `running`), check them."""
    import os

    from obelisk.core.errors import InputError
    from obelisk.core.waivers import apply_waivers, load_waivers
    from obelisk.kernel_hardening import inputs as kin
    from obelisk.kernel_hardening import kconfig_file

    profile = load_profile(profile_name)
    if not (config or cmdline or sysctl or running):
        raise InputError("nothing to check: give --config, --cmdline, --sysctl or --running")
    kconfig = command_line = sysctls = None
    if running:
        config_path = config or "/proc/config.gz"
        if not os.path.exists(config_path):
            raise InputError("the running kernel exposes no configuration (needs CONFIG_IKCONFIG_PROC)",
                             source=config_path)
        kconfig = kconfig_file.read(config_path)
        command_line = kin.read_cmdline(cmdline or "/proc/cmdline")
        sysctls = (kin.read_sysctl_file(sysctl) if sysctl else
                   kin.read_running_sysctls([r.name for r in profile.of_kind("sysctl")]))
    else:
        if config:
            kconfig = kconfig_file.read(config)
        if cmdline:
            command_line = kin.read_cmdline(cmdline)
        if sysctl:
            sysctls = kin.read_sysctl_file(sysctl)
    tree = None
    if kernel_source:
        from obelisk.kernel_hardening.source import source_tree
        from obelisk.kernel_hardening.tree_index import load_index

        tree = load_index(source_tree(kernel_source))
    findings = check(profile, Inputs(config=kconfig, cmdline=command_line, sysctls=sysctls, tree=tree))
    if waivers:
        findings = apply_waivers(findings, load_waivers(waivers))
    name = "running kernel" if running else (config or cmdline or sysctl)
    attributes = [("profile", profile.name)]
    if kconfig is not None and kconfig.version:
        attributes.append(("config_version", kconfig.version))
    if tree is not None:
        attributes.append(("kernel_source", tree.root))
        attributes.append(("kernel_source_version", tree.version))
    return Report(findings=findings, subject=Subject(kind="kernel", name=str(name),
                                                     attributes=tuple(sorted(attributes))),
                  command="obelisk kernel check")
