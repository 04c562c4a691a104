"""DISA STIG facts: rule ids, severities, CNTR-K8 versions, CCIs and their NIST SP 800-53 Rev 5 controls.

Reads DISA's XCCDF benchmarks (the manual XCCDF 1.1 release and the SCAP 1.3 data stream with
XCCDF 1.2 inside) and the CCI list. Only facts are taken into obelisk's own data (see
`gen_stig_data.py`); DISA's titles are read at run time from a file the user supplies
(`obelisk scan --stig-benchmark FILE`) and never stored in the project.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from obelisk.core.errors import InputError
from obelisk.core.findings import Severity

# DISA CAT levels as XCCDF severities.
CAT_SEVERITY = {"high": Severity.HIGH, "medium": Severity.MEDIUM, "low": Severity.LOW}
CAT_NAME = {"high": "CAT I", "medium": "CAT II", "low": "CAT III"}

_MAX_XML_BYTES = 64 * 1024 * 1024


def _digits(text: str) -> bool:
    """ASCII digits only: str.isdigit() also accepts '²', which int() rejects."""
    return text.isascii() and text.isdigit()



@dataclass(frozen=True)
class StigRule:
    vid: str  # "V-242381"
    rule_id: str  # "SV-242381r960768_rule"
    version: str  # "CNTR-K8-000220"
    severity: str  # "high" | "medium" | "low"
    ccis: tuple[str, ...]
    release: str  # "V1R9", "V2R1"
    title: str = ""  # only filled from a user-supplied file, never stored in obelisk's data


def _parse_xml(path: Path) -> Any:  # an lxml ElementTree (lxml has no type information)
    from lxml import etree

    try:
        size = path.stat().st_size
    except OSError as exc:
        raise InputError(f"cannot read: {exc.strerror}", source=str(path)) from None
    if size > _MAX_XML_BYTES:
        raise InputError(f"larger than {_MAX_XML_BYTES} bytes", source=str(path))
    parser = etree.XMLParser(resolve_entities=False, no_network=True, huge_tree=False, remove_comments=True)
    try:
        return etree.parse(str(path), parser)
    except (etree.XMLSyntaxError, OSError) as exc:
        raise InputError(f"not a readable XML file: {exc}", source=str(path)) from None


def _local(tag: object) -> str:
    if not isinstance(tag, str):
        return ""
    return tag.rsplit("}", 1)[-1]


def _release_of(root: Any) -> str:
    """'V1R9' from <version>1</version> and the release-info plain-text of an XCCDF Benchmark."""
    version = ""
    release = ""
    for child in root:
        name = _local(child.tag)
        if name == "version" and not version:
            # "1" in the manual release, "002.001" (version.release) in SCAP data streams
            parts = (child.text or "").strip().split(".")
            version = str(int(parts[0])) if _digits(parts[0]) else ""
            if len(parts) > 1 and _digits(parts[1]):
                release = str(int(parts[1]))
        elif name == "plain-text" and (child.get("id") or "").endswith("release-info") and not release:
            m = re.search(r"Release:\s*(?:\d+\.)?(\d+)", child.text or "")
            if m:
                release = m.group(1)
    return f"V{version}R{release}" if version and release else ""


def read_xccdf(path: str | Path) -> list[StigRule]:
    """Every rule of a DISA XCCDF benchmark (1.1 file or a SCAP data stream holding XCCDF 1.2)."""
    path = Path(path)
    tree = _parse_xml(path)
    benchmarks = [el for el in tree.getroot().iter() if _local(el.tag) == "Benchmark"]
    if not benchmarks:
        raise InputError("no XCCDF Benchmark element", source=str(path))
    rules: list[StigRule] = []
    for bench in benchmarks:
        release = _release_of(bench)
        for group in bench.iter():
            if _local(group.tag) != "Group":
                continue
            vid = (group.get("id") or "").removeprefix("xccdf_mil.disa.stig_group_")
            if not vid.startswith("V-"):
                continue
            for rule in group:
                if _local(rule.tag) != "Rule":
                    continue
                rule_id = (rule.get("id") or "").removeprefix("xccdf_mil.disa.stig_rule_")
                version = title = ""
                ccis: list[str] = []
                for child in rule:
                    name = _local(child.tag)
                    if name == "version":
                        version = (child.text or "").strip()
                    elif name == "title":
                        title = " ".join((child.text or "").split())
                    elif name == "ident" and (child.text or "").startswith("CCI-"):
                        ccis.append(child.text.strip())
                rules.append(StigRule(vid=vid, rule_id=rule_id, version=version,
                                      severity=(rule.get("severity") or "medium").lower(),
                                      ccis=tuple(ccis), release=release, title=title))
    if not rules:
        raise InputError("no STIG rules (Group id='V-...') found", source=str(path))
    return rules


_CONTROL = re.compile(r"^([A-Z]{2})-(\d+)(?:\s*\((\d+)\))?")


def nist_control(index: str) -> str:
    """'AC-17 (2)' -> 'AC-17(2)'; 'CM-6 b' -> 'CM-6'; statement parts are dropped, enhancements kept."""
    m = _CONTROL.match(index.strip())
    if not m:
        return ""
    family, number, enhancement = m.groups()
    return f"{family}-{number}" + (f"({enhancement})" if enhancement else "")


def read_cci_rev5(path: str | Path, wanted: set[str] | None = None) -> dict[str, tuple[str, ...]]:
    """CCI -> NIST SP 800-53 Revision 5 controls (de-duplicated, in list order)."""
    tree = _parse_xml(Path(path))
    out: dict[str, tuple[str, ...]] = {}
    for item in tree.getroot().iter():
        if _local(item.tag) != "cci_item":
            continue
        cci = item.get("id") or ""
        if wanted is not None and cci not in wanted:
            continue
        controls: list[str] = []
        for ref in item.iter():
            if _local(ref.tag) == "reference" and ref.get("version") == "5":
                control = nist_control(ref.get("index") or "")
                if control and control not in controls:
                    controls.append(control)
        out[cci] = tuple(controls)
    return out


def titles_from_benchmark(path: str | Path) -> dict[str, str]:
    """V-ID -> DISA's official title, from a benchmark file the user supplies."""
    return {r.vid: r.title for r in read_xccdf(path) if r.title}
