"""The check catalogue: data/checks.yaml joined with the generated STIG facts (data/stig-k8s.yaml).

A `Check` is one line of the catalogue made typed: which CIS recommendation and STIG rules it
answers, which component it applies to, and the test (the typed record of its kind, interpreted
by engine.py). The whole catalogue is validated when it is read: an unknown or misspelt key, in an
entry or in its test, is refused with one line naming the file, the check and the key.
`references()` gives the exact Reference list every finding of the check carries; the reports
component renders CKL and OSCAL from these schemes (documented in docs/cis_checks.md).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from obelisk.cis_checks.engine import parse_test
from obelisk.cis_checks.testspec import Spec
from obelisk.core.errors import InputError
from obelisk.core.findings import Reference, Severity
from obelisk.core.yamlsafe import load_yaml_file

DATA = Path(__file__).with_name("data")
CIS_BENCHMARK = "cis-1.12"
STIG_BENCHMARK = "stig-k8s"
# obelisk's own checks of the node's container runtime (containerd, the kernel's cgroup/LSM/seccomp, how
# containers are confined): neither the CIS Kubernetes Benchmark nor the Kubernetes STIG covers them
RUNTIME_BENCHMARK = "obelisk-runtime"
BENCHMARKS = (CIS_BENCHMARK, STIG_BENCHMARK, RUNTIME_BENCHMARK)
SECTIONS = ("control-plane", "etcd", "worker", "node", "policies", "runtime")
COMPONENTS = ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "etcd", "kubelet", "kube-proxy",
              "containerd")
_SEVERITY_RANK = {Severity.INFO: 0, Severity.LOW: 1, Severity.MEDIUM: 2, Severity.HIGH: 3, Severity.CRITICAL: 4}


def _digits(text: str) -> bool:
    """ASCII digits only: str.isdigit() also accepts '²', which int() rejects."""
    return text.isascii() and text.isdigit()



@dataclass(frozen=True)
class StigFacts:
    """Facts of one STIG rule in one release (no DISA text)."""

    vid: str
    version: str  # CNTR-K8-...
    release: str  # V1R9, V2R1, or the release of a user-supplied benchmark
    rule_id: str  # SV-...r..._rule
    severity: Severity
    ccis: tuple[str, ...]
    nist: tuple[str, ...]  # NIST SP 800-53 Rev 5 controls of those CCIs
    title: str = ""  # DISA's title, only when read from a user-supplied benchmark file


@dataclass(frozen=True)
class Check:
    id: str  # finding id: "cis-1.2.1"; for STIG-only checks "stig-V-242376"; obelisk's own "obelisk-runtime.1"
    title: str
    section: str
    assessment: str  # CIS's classification (automated | manual); STIG-only checks: how obelisk runs it
    cis: str | None
    stig: tuple[StigFacts, ...]
    component: str | None
    test: Spec | None = field(default=None, compare=False, hash=False)
    guidance: str = ""
    remediation: str = ""
    severity: Severity = Severity.MEDIUM
    obelisk: str | None = None  # the id of one of obelisk's own checks ("runtime.1"): the obelisk-runtime benchmark

    @property
    def benchmarks(self) -> tuple[str, ...]:
        return tuple(b for b, on in ((CIS_BENCHMARK, self.cis is not None), (STIG_BENCHMARK, bool(self.stig)),
                                     (RUNTIME_BENCHMARK, self.obelisk is not None)) if on)

    def references(self) -> tuple[Reference, ...]:
        refs: list[Reference] = []
        if self.cis is not None:
            refs.append(Reference("cis", self.cis))
        for facts in self.stig:
            refs.append(Reference("stig", facts.vid))
            refs.append(Reference("stig-rule", facts.rule_id))
            refs.append(Reference("stig-version", facts.version))
        seen: set[tuple[str, str]] = set()
        for scheme, values in (("cci", [c for f in self.stig for c in f.ccis]),
                               ("nist-800-53", [n for f in self.stig for n in f.nist])):
            for value in values:
                if (scheme, value) not in seen:
                    seen.add((scheme, value))
                    refs.append(Reference(scheme, value))
        return tuple(refs)


def _release_key(release: str) -> tuple[int, int]:
    v, _, r = release.removeprefix("V").partition("R")
    return (int(v) if _digits(v) else 0, int(r) if _digits(r) else 0)


@functools.lru_cache(maxsize=1)
def _stig_data() -> dict[str, Any]:
    data = load_yaml_file(DATA / "stig-k8s.yaml", floats_as_text=True)
    if not isinstance(data, dict) or not isinstance(data.get("rules"), dict):
        raise InputError("expected 'rules' mapping", source=str(DATA / "stig-k8s.yaml"))
    return data


def stig_releases() -> tuple[str, ...]:
    releases = {r for rule in _stig_data()["rules"].values() for r in rule["releases"]}
    return tuple(sorted(releases, key=_release_key))


def stig_facts(release: str | None = None, benchmark_file: str | Path | None = None) -> dict[str, StigFacts]:
    """V-ID -> facts. Default: each rule from the newest release that has it.

    `release` ("V1R9") prefers that release where the rule exists in it. `benchmark_file`, a DISA
    XCCDF the user supplies, overrides rule ids, severities and CCIs and adds DISA's titles.
    """
    data = _stig_data()
    if release is not None and release not in stig_releases():
        raise InputError(f"--stig-release: {release!r} is not one of {', '.join(stig_releases())}")
    cci_map: dict[str, list[str]] = data.get("cci_nist_800_53_rev5") or {}
    out: dict[str, StigFacts] = {}
    for vid, rule in data["rules"].items():
        releases = rule["releases"]
        chosen = release if release is not None and release in releases else max(releases, key=_release_key)
        r = releases[chosen]
        ccis = tuple(r.get("ccis") or ())
        nist = tuple(dict.fromkeys(n for c in ccis for n in cci_map.get(c, ())))
        out[vid] = StigFacts(vid=vid, version=str(rule["version"]), release=chosen, rule_id=r["rule"],
                             severity=Severity(r["severity"]), ccis=ccis, nist=nist)
    if benchmark_file is not None:
        from obelisk.cis_checks.stig import read_xccdf

        for rule in read_xccdf(benchmark_file):
            known = out.get(rule.vid)
            ccis = rule.ccis or (known.ccis if known else ())
            nist = tuple(dict.fromkeys(n for c in ccis for n in cci_map.get(c, ())))
            if not nist and known is not None:
                nist = known.nist
            out[rule.vid] = StigFacts(vid=rule.vid, version=rule.version or (known.version if known else ""),
                                      release=rule.release, rule_id=rule.rule_id,
                                      severity=Severity({"high": "high", "low": "low"}.get(rule.severity, "medium")),
                                      ccis=ccis, nist=nist, title=rule.title)
    return out


# the keys of one catalogue entry (Check's fields as written in checks.yaml)
ENTRY_KEYS = ("cis", "stig", "obelisk", "assessment", "section", "component", "title", "test", "guidance",
              "remediation", "severity")


def _check_label(entry: dict[str, Any]) -> str | None:
    """The check's id as far as the entry gives it, for messages about the entry."""
    cis, vids, own = entry.get("cis"), entry.get("stig"), entry.get("obelisk")
    if isinstance(cis, str):
        return f"cis-{cis}"
    if isinstance(own, str):
        return f"obelisk-{own}"
    if isinstance(vids, list) and vids and isinstance(vids[0], str):
        return f"stig-{vids[0]}"
    return None


def _entry_str(entry: dict[str, Any], key: str, where: str, default: str | None = None) -> str:
    value = entry.get(key, default)
    if not isinstance(value, str):
        raise InputError(f"{where}.{key}: expected a string, got {type(value).__name__}")
    return value


def load_checks(path: str | Path | None = None, *, stig_release: str | None = None,
                stig_benchmark: str | Path | None = None) -> tuple[Check, ...]:
    """Read a check catalogue (default: the built-in one) into typed checks."""
    if path is None and stig_benchmark is None:
        return _builtin_checks(stig_release)
    return _load_checks(path, stig_release, stig_benchmark)


@functools.lru_cache(maxsize=4)
def _builtin_checks(stig_release: str | None) -> tuple[Check, ...]:
    return _load_checks(None, stig_release, None)


def _load_checks(path: str | Path | None, stig_release: str | None,
                 stig_benchmark: str | Path | None) -> tuple[Check, ...]:
    source = Path(path) if path is not None else DATA / "checks.yaml"
    data = load_yaml_file(source, floats_as_text=True)
    entries = data.get("checks") if isinstance(data, dict) else None
    if not isinstance(entries, list):
        raise InputError("expected a list under 'checks'", source=str(source))
    facts = stig_facts(stig_release, stig_benchmark)
    checks: list[Check] = []
    seen: set[str] = set()
    for i, entry in enumerate(entries):
        where = f"checks[{i}]"
        if not isinstance(entry, dict):
            raise InputError(f"{where}: expected a mapping", source=str(source))
        label = _check_label(entry)
        if label is not None:
            where = f"{where} ({label})"
        try:
            unknown = [str(k) for k in entry if k not in ENTRY_KEYS]
            if unknown:
                raise InputError(f"{where}: unknown key {unknown[0]!r} (allowed: {', '.join(ENTRY_KEYS)})")
            cis = entry.get("cis")
            if cis is not None and not isinstance(cis, str):
                raise InputError(f"{where}.cis: ids are strings; quote {cis!r}")
            vids = entry.get("stig") or []
            if not isinstance(vids, list) or not all(isinstance(v, str) for v in vids):
                raise InputError(f"{where}.stig: expected a list of V-IDs")
            unknown = [v for v in vids if v not in facts]
            if unknown:
                raise InputError(f"{where}.stig: unknown V-ID(s) {', '.join(unknown)}")
            own = entry.get("obelisk")
            if own is not None and not (isinstance(own, str) and own.startswith("runtime.")):
                raise InputError(f"{where}.obelisk: expected an id of obelisk's own checks, 'runtime.N'")
            if cis is None and not vids and own is None:
                raise InputError(f"{where}: a check needs a cis id, stig V-IDs or an obelisk id")
            section = _entry_str(entry, "section", where)
            if section not in SECTIONS:
                raise InputError(f"{where}.section: {section!r} is not one of {', '.join(SECTIONS)}")
            component = entry.get("component")
            if component is not None and component not in COMPONENTS:
                raise InputError(f"{where}.component: {component!r} is not one of {', '.join(COMPONENTS)}")
            test = entry.get("test")
            spec = parse_test(test, f"{where}.test") if test is not None else None
            stig = tuple(facts[v] for v in vids)
            severity = Severity(entry["severity"]) if "severity" in entry else (
                max((f.severity for f in stig), key=_SEVERITY_RANK.__getitem__) if stig else Severity.MEDIUM)
            check_id = f"cis-{cis}" if cis is not None else f"stig-{vids[0]}" if vids else f"obelisk-{own}"
            if check_id in seen:
                raise InputError(f"{where}: duplicate check id {check_id}")
            seen.add(check_id)
            checks.append(Check(
                id=check_id, title=_entry_str(entry, "title", where), section=section,
                assessment=_entry_str(entry, "assessment", where, "automated"), cis=cis, stig=stig,
                component=component, test=spec, guidance=_entry_str(entry, "guidance", where, ""),
                remediation=_entry_str(entry, "remediation", where, ""), severity=severity, obelisk=own))
        except InputError as exc:
            raise InputError(str(exc), source=str(source)) from None
        except ValueError as exc:
            raise InputError(f"{where}: {exc}", source=str(source)) from None
    return tuple(checks)


def benchmark_ids(checks: tuple[Check, ...], benchmark: str) -> set[str]:
    """The recommendation ids a benchmark covers: CIS ids, STIG V-IDs, or obelisk's own ids."""
    if benchmark == CIS_BENCHMARK:
        return {c.cis for c in checks if c.cis is not None}
    if benchmark == RUNTIME_BENCHMARK:
        return {c.obelisk for c in checks if c.obelisk is not None}
    if benchmark == STIG_BENCHMARK:
        return {f.vid for c in checks for f in c.stig}
    raise InputError(f"unknown benchmark {benchmark!r} (known: {', '.join(BENCHMARKS)})")
