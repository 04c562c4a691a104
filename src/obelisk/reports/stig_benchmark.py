"""A DISA STIG XCCDF benchmark file, read into typed rules.

The user brings DISA's file (`--stig-benchmark U_Kubernetes_STIG_V1R9_Manual-xccdf.xml`); titles,
discussion, check and fix text are DISA's words and are only ever read from that file.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from obelisk.core.errors import InputError
from obelisk.reports.xmlsafe import parse_xml_file

_XCCDF_NAMESPACES = ("http://checklists.nist.gov/xccdf/1.1", "http://checklists.nist.gov/xccdf/1.2")
_CCI_SYSTEM = "http://cyber.mil/cci"


@dataclass(frozen=True)
class StigRule:
    vuln_id: str  # V-242381 (the XCCDF Group id)
    rule_id: str  # SV-242381r879522_rule
    version: str  # CNTR-K8-000220
    severity: str  # high | medium | low
    group_title: str  # SRG-APP-...
    title: str
    discussion: str
    check: str
    fix: str
    ccis: tuple[str, ...]
    weight: str = "10.0"
    check_ref: str = "M"
    legacy_ids: tuple[str, ...] = ()


@dataclass(frozen=True)
class StigBenchmark:
    benchmark_id: str  # Kubernetes_STIG
    title: str
    version: str
    release_info: str  # "Release: 9 Benchmark Date: 27 Apr 2023"
    filename: str
    rules: tuple[StigRule, ...]

    def by_vuln_id(self) -> dict[str, StigRule]:
        return {r.vuln_id: r for r in self.rules}

    @property
    def release(self) -> str:
        m = re.search(r"Release:\s*(\S+)", self.release_info)
        return m.group(1) if m else ""


def _text(el: Any, tag: str, ns: str) -> str:
    child = el.find(f"{{{ns}}}{tag}")
    return (child.text or "").strip() if child is not None and child.text else ""


def _vuln_discussion(description: str) -> str:
    # DISA wraps the discussion in pseudo-XML inside the description text.
    m = re.search(r"<VulnDiscussion>(.*?)</VulnDiscussion>", description, re.S)
    return (m.group(1) if m else description).strip()


def load_stig_benchmark(path: str | Path) -> StigBenchmark:
    root = parse_xml_file(path)
    ns = root.tag[1:].split("}", 1)[0] if root.tag.startswith("{") else ""
    if ns not in _XCCDF_NAMESPACES or root.tag.rsplit("}", 1)[-1] != "Benchmark":
        raise InputError("not an XCCDF 1.1/1.2 Benchmark (root element "
                         f"{root.tag.rsplit('}', 1)[-1]!r})", source=str(path))
    release_info = ""
    for pt in root.findall(f"{{{ns}}}plain-text"):
        if pt.get("id") == "release-info":
            release_info = (pt.text or "").strip()
    rules = []
    for group in root.iter(f"{{{ns}}}Group"):
        rule = group.find(f"{{{ns}}}Rule")
        if rule is None:
            continue
        fix = rule.find(f"{{{ns}}}fixtext")
        check = rule.find(f"{{{ns}}}check")
        check_content = check.find(f"{{{ns}}}check-content") if check is not None else None
        check_ref = check.find(f"{{{ns}}}check-content-ref") if check is not None else None
        idents = rule.findall(f"{{{ns}}}ident")
        rules.append(StigRule(
            vuln_id=group.get("id", ""),
            rule_id=rule.get("id", ""),
            version=_text(rule, "version", ns),
            severity=rule.get("severity", "medium"),
            group_title=_text(group, "title", ns),
            title=_text(rule, "title", ns),
            discussion=_vuln_discussion(_text(rule, "description", ns)),
            check=(check_content.text or "").strip() if check_content is not None else "",
            fix=(fix.text or "").strip() if fix is not None else "",
            ccis=tuple((i.text or "").strip() for i in idents if i.get("system") == _CCI_SYSTEM),
            weight=rule.get("weight", "10.0"),
            check_ref=check_ref.get("name", "M") if check_ref is not None else "M",
            legacy_ids=tuple((i.text or "").strip() for i in idents
                             if i.get("system", "").endswith("legacy")),
        ))
    if not rules:
        raise InputError("XCCDF benchmark holds no rules", source=str(path))
    return StigBenchmark(benchmark_id=root.get("id", ""), title=_text(root, "title", ns),
                         version=_text(root, "version", ns), release_info=release_info,
                         filename=Path(path).name, rules=tuple(rules))
