"""`obelisk ima policy lint`: a policy checked against the kernel's grammar and for rules that
would be rejected, never match, or make a node unbootable or slow.

Each check is a row in CHECKS (id, severity, what it means); the functions below only decide
which rules a check hits. Findings name the line.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from obelisk.core.errors import InputError
from obelisk.core.findings import Evidence, Finding, Report, Severity, Status, Subject
from obelisk.ima_policy import policy as policy_format
from obelisk.ima_policy.policy import BUFFER_FUNCS, KERNEL_LOAD_FUNCS, KEYWORDS, Policy, Rule

# Filesystems that must not be appraised (no signatures possible, or remote and slow) -- magic: name
PSEUDO_FS = {0x9FA0: "procfs", 0x62656572: "sysfs", 0x64626720: "debugfs", 0x1021994: "tmpfs",
             0x858458F6: "ramfs", 0x1CD1: "devpts", 0x73636673: "securityfs", 0x27E0EB: "cgroup",
             0x63677270: "cgroup2", 0x6E736673: "nsfs", 0xCAFE4A11: "bpffs", 0xDE5E81E4: "efivarfs"}
NETWORK_FS = {0xC36400: "cephfs", 0x6969: "nfs", 0xFF534D42: "cifs", 0xFE534D42: "smb2", 0x65735546: "fuse"}
MAX_POLICY_BYTES = 4 * 1024 * 1024


@dataclass(frozen=True)
class Check:
    id: str
    severity: Severity
    title: str
    remediation: str


CHECKS: dict[str, Check] = {c.id: c for c in (
    Check("grammar", Severity.HIGH, "rule does not parse against the kernel's IMA policy grammar",
          "fix the rule: the kernel rejects the whole policy when one rule is invalid"),
    Check("combination", Severity.HIGH, "impossible combination: the kernel rejects this rule",
          "remove the option or condition that does not apply to this action or function"),
    Check("shadowed", Severity.MEDIUM, "rule never applies: an earlier rule of the same action matches first",
          "move the rule above the earlier one, or remove it"),
    Check("appraise-pseudo-fs", Severity.HIGH,
          "appraises files on filesystems that cannot carry signatures: the node will not boot",
          "scope the rule with fsuuid= (the image's root filesystem) or add dont_appraise fsmagic= rules first"),
    Check("appraise-network-fs", Severity.HIGH,
          "appraises files on network filesystems: every access is denied or slow",
          "scope the rule with fsuuid=, or add dont_appraise fsmagic= for cephfs/nfs/cifs/fuse first"),
    Check("appraise-every-open", Severity.HIGH,
          "requires a signature on every file opened, also on writable filesystems: the node will not boot",
          "limit the rule to func=BPRM_CHECK/MMAP_CHECK, or scope it with fsuuid= to the read-only image"),
    Check("measure-network-fs", Severity.MEDIUM,
          "measures files on network filesystems: slows volume I/O (CephFS by up to 60x)",
          "add dont_measure fsmagic= rules for cephfs/nfs/cifs/fuse before it, or scope it with fsuuid="),
    Check("measure-every-read", Severity.MEDIUM,
          "measures every file read: the log and PCR 10 grow without bound and file access slows",
          "limit it with func=BPRM_CHECK/MMAP_CHECK, uid=0/fowner=0 or fsuuid="),
    Check("signatures-not-built", Severity.HIGH,
          "requires signatures but the build signs nothing: every appraised file is denied",
          "sign the image (obelisk ima sign) or drop appraise_type=imasig"),
    Check("hash-appraisal", Severity.LOW,
          "appraises by file hash only: without EVM an offline attacker can rewrite the hash",
          "use appraise_type=imasig"),
    Check("policy-unsigned", Severity.MEDIUM,
          "policy requires signatures but does not appraise the policy itself: root can load a weaker one",
          "add 'appraise func=POLICY_CHECK appraise_type=imasig' as the first appraise rule"),
)}


def _fsmagic(rule: Rule) -> int | None:
    v = rule.get("fsmagic")
    try:
        return int(v, 16) if v else None
    except ValueError:
        return None


def _combination(rule: Rule) -> Iterator[str]:
    base = rule.action.removeprefix("dont_")
    func = rule.get("func")
    for t in rule.terms:
        kw = KEYWORDS.get(t.key)
        if kw is None or kw.kind != "option":
            continue
        if rule.action.startswith("dont_") and t.key != "permit_directio":
            yield f"{t.key} has no meaning on {rule.action}"
        elif kw.only_actions and base not in kw.only_actions:
            yield f"{t.key} is only valid with {' or '.join(kw.only_actions)}"
    if func in BUFFER_FUNCS and base in ("appraise", "hash", "audit"):
        yield f"func={func} measures a buffer, it cannot be {base}d"
    if rule.get("keyrings") is not None and func != "KEY_CHECK":
        yield "keyrings= needs func=KEY_CHECK"
    if rule.get("label") is not None and func != "CRITICAL_DATA":
        yield "label= needs func=CRITICAL_DATA"
    if rule.get("appraise_type") == "imasig|modsig" and func not in ("MODULE_CHECK", "KEXEC_KERNEL_CHECK"):
        yield "appraise_type=imasig|modsig needs func=MODULE_CHECK or KEXEC_KERNEL_CHECK"
    if rule.get("appraise_type") == "sigv3" and rule.get("digest_type") != "verity":
        yield "appraise_type=sigv3 needs digest_type=verity"
    if rule.get("mask") is not None and func in BUFFER_FUNCS:
        yield f"mask= has no meaning with func={func}"


def _earlier_excludes(policy: Policy, rule: Rule, action: str, magics: dict[int, str]) -> set[int]:
    """Filesystems in `magics` that an earlier unconditional `action fsmagic=X` rule takes out."""
    out: set[int] = set()
    for r in policy.rules:
        if r.line >= rule.line:
            break
        m = _fsmagic(r)
        if r.action == action and m in magics and r.conditions() <= rule.conditions() | {("fsmagic",) + _t(r)}:
            out.add(m)
    return out


def _t(r: Rule) -> tuple[str, str]:
    for t in r.terms:
        if t.key == "fsmagic":
            return t.normalized()[1:]
    return ("=", "")


ZERO_UUID = "00000000-0000-0000-0000-000000000000"


def _scoped_to_fs(rule: Rule) -> bool:
    # every filesystem without a UUID (tmpfs, proc, memfd, NFS, SquashFS) reports all zeros:
    # fsuuid=0...0 scopes nothing, unless earlier rules excluded those filesystems by type
    fsuuid = rule.get("fsuuid")
    return (fsuuid is not None and fsuuid != ZERO_UUID) or rule.get("fsmagic") is not None \
        or rule.get("fsname") is not None


def _fs_findings(policy: Policy, rule: Rule, base: str) -> Iterator[tuple[str, str]]:
    func = rule.get("func")
    if func in KERNEL_LOAD_FUNCS or func in BUFFER_FUNCS:
        return
    magic = _fsmagic(rule)
    if magic is not None:
        if base == "appraise" and magic in PSEUDO_FS:
            yield "appraise-pseudo-fs", f"fsmagic={hex(magic)} is {PSEUDO_FS[magic]}"
        if base == "appraise" and magic in NETWORK_FS:
            yield "appraise-network-fs", f"fsmagic={hex(magic)} is {NETWORK_FS[magic]}"
        if base == "measure" and magic in NETWORK_FS:
            yield "measure-network-fs", f"fsmagic={hex(magic)} is {NETWORK_FS[magic]}"
        return
    if _scoped_to_fs(rule):
        return
    if base == "appraise":
        left = set(PSEUDO_FS) - _earlier_excludes(policy, rule, "dont_appraise", PSEUDO_FS)
        if left:
            yield "appraise-pseudo-fs", "not excluded: " + ", ".join(sorted(PSEUDO_FS[m] for m in left))
        left = set(NETWORK_FS) - _earlier_excludes(policy, rule, "dont_appraise", NETWORK_FS)
        if left:
            yield "appraise-network-fs", "not excluded: " + ", ".join(sorted(NETWORK_FS[m] for m in left))
        if func in (None, "FILE_CHECK") and rule.get("mask") in (None, "MAY_READ", "MAY_WRITE", "MAY_APPEND") \
                and rule.get("appraise_type") is not None and rule.get("fsuuid") is None:
            yield "appraise-every-open", "no func= or func=FILE_CHECK, not scoped to the image's filesystem"
    if base == "measure":
        left = set(NETWORK_FS) - _earlier_excludes(policy, rule, "dont_measure", NETWORK_FS)
        if left:
            yield "measure-network-fs", "not excluded: " + ", ".join(sorted(NETWORK_FS[m] for m in left))
        scoped = any(rule.get(k) is not None for k in ("uid", "euid", "fowner", "gid", "egid", "fgroup"))
        if func in (None, "FILE_CHECK") and not scoped and rule.get("mask") != "MAY_EXEC":
            yield "measure-every-read", "no func= or func=FILE_CHECK, not limited by owner or filesystem"


def lint(policy: Policy, *, signed_build: bool = True) -> list[tuple[str, Rule | None, str]]:
    """(check id, rule, detail) for every problem."""
    out: list[tuple[str, Rule | None, str]] = []
    good = [r for r in policy.rules if not r.errors]
    for rule in policy.rules:
        for err in rule.errors:
            out.append(("grammar", rule, err))
    for rule in good:
        for problem in _combination(rule):
            out.append(("combination", rule, problem))
    for i, rule in enumerate(good):
        for earlier in good[:i]:
            if earlier.group == rule.group and earlier.conditions() <= rule.conditions():
                out.append(("shadowed", rule, f"line {earlier.line} ({earlier.text}) matches everything it does"))
                break
        if rule.action in ("appraise", "measure"):
            for check, detail in _fs_findings(policy, rule, rule.action):
                out.append((check, rule, detail))
        if rule.action == "appraise":
            atype = rule.get("appraise_type")
            if atype is None:
                out.append(("hash-appraisal", rule, "no appraise_type="))
            elif not signed_build:
                out.append(("signatures-not-built", rule, f"appraise_type={atype}"))
    if any(r.action == "appraise" and r.get("appraise_type") for r in good):
        if not any(r.action == "appraise" and r.get("func") == "POLICY_CHECK" and r.get("appraise_type")
                   for r in good):
            out.append(("policy-unsigned", None, "no 'appraise func=POLICY_CHECK appraise_type=imasig' rule"))
    return out


MAX_RULES = 2000
MAX_SHOWN = 512  # characters of a rule repeated in a finding


def _shown(text: str) -> str:
    return text if len(text) <= MAX_SHOWN else text[:MAX_SHOWN - 3] + "..."


def lint_policy(data: bytes, source: str, *, signed_build: bool = True) -> Report:
    if len(data) > MAX_POLICY_BYTES:
        raise InputError("policy larger than 4 MiB", source=source)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"not UTF-8 text (byte {exc.start})", source=source) from None
    policy = policy_format.parse(text)
    if len(policy.rules) > MAX_RULES:
        raise InputError(f"more than {MAX_RULES} rules: not an IMA policy obelisk lints "
                         f"(the shadowing check compares every pair)", source=source)
    problems = lint(policy, signed_build=signed_build)
    findings = []
    counts: dict[str, int] = {}
    for check_id, rule, detail in problems:
        check = CHECKS[check_id]
        where = f"line {rule.line}" if rule else "policy"
        n = counts[f"{check_id}:{where}"] = counts.get(f"{check_id}:{where}", 0) + 1
        suffix = f".{n}" if n > 1 else ""
        findings.append(Finding(
            id=f"ima.policy.{check_id}.{where.replace(' ', '-')}{suffix}", title=check.title, status=Status.FAIL,
            severity=check.severity, target=source, observed=_shown(rule.text) if rule else None, detail=detail,
            remediation=check.remediation, benchmark="ima-policy", section=check_id,
            evidence=(Evidence("config", source, detail=_shown(rule.text) if rule else "", location=where),)))
    if not any(p[0] == "grammar" for p in problems):
        findings.insert(0, Finding("ima.policy.grammar", CHECKS["grammar"].title.replace("does not parse",
                                   "parses").replace("rule", "every rule"), Status.PASS, Severity.HIGH,
                                   target=source, observed=f"{len(policy.rules)} rules", benchmark="ima-policy",
                                   section="grammar"))
    if not policy.rules:
        findings.append(Finding("ima.policy.empty", "policy has no rules", Status.FAIL, Severity.MEDIUM,
                                target=source, benchmark="ima-policy", section="grammar",
                                detail="an empty policy measures and appraises nothing"))
    return Report(tuple(findings), Subject("policy", source), command="ima policy lint")

