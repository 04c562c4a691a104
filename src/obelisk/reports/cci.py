"""CCI -> NIST SP 800-53 control mapping, and OSCAL control ids.

Findings carry `nist-800-53` references directly; with DISA's CCI list (`--cci-list
U_CCI_List_*.xml`) the CCIs of STIG findings are also mapped (Revision 5 preferred, else 4).
"""

from __future__ import annotations

import re
from pathlib import Path

from obelisk.core.errors import InputError
from obelisk.core.findings import Finding
from obelisk.reports.xmlsafe import parse_xml_file

_CCI_NS = "http://iase.disa.mil/cci"
# "AC-3", "AC-2 (4)", "AC-1 a 1", "SC-7(5)", "ac-2.4"
_CONTROL = re.compile(r"^\s*([A-Za-z]{2})-(\d+)(?:\s*[\(.]\s*(\d+)\s*\)?)?")


def control_id(text: str) -> str | None:
    """NIST control text -> OSCAL catalog id: "AC-3" -> "ac-3", "AC-2 (4)" -> "ac-2.4"."""
    m = _CONTROL.match(text)
    if not m:
        return None
    family, number, enhancement = m.groups()
    out = f"{family.lower()}-{int(number)}"
    return f"{out}.{int(enhancement)}" if enhancement else out


def display_control(oscal_id: str) -> str:
    """"ac-2.4" -> "AC-2(4)"."""
    base, _, enh = oscal_id.partition(".")
    return base.upper() + (f"({enh})" if enh else "")


def load_cci_list(path: str | Path) -> dict[str, tuple[str, ...]]:
    """{CCI-000213: ("ac-3",)} from DISA's CCI list XML."""
    root = parse_xml_file(path)
    if root.tag != f"{{{_CCI_NS}}}cci_list":
        raise InputError("not a DISA CCI list (root element cci_list expected)", source=str(path))
    out: dict[str, tuple[str, ...]] = {}
    for item in root.iter(f"{{{_CCI_NS}}}cci_item"):
        by_rev: dict[str, list[str]] = {}
        for ref in item.iter(f"{{{_CCI_NS}}}reference"):
            title = ref.get("title", "")
            if not title.startswith("NIST SP 800-53 Revision"):
                continue
            cid = control_id(ref.get("index", ""))
            if cid:
                by_rev.setdefault(ref.get("version", ""), []).append(cid)
        controls = by_rev.get("5") or by_rev.get("4") or []
        if controls:
            out[item.get("id", "")] = tuple(dict.fromkeys(controls))
    return out


def finding_controls(finding: Finding, cci_map: dict[str, tuple[str, ...]] | None = None) -> list[str]:
    """OSCAL control ids a finding bears on: its nist-800-53 refs, plus its CCIs through the list."""
    out: dict[str, None] = {}
    for ref in finding.references:
        if ref.scheme == "nist-800-53":
            cid = control_id(ref.id)
            if cid:
                out[cid] = None
        elif ref.scheme == "cci" and cci_map:
            for cid in cci_map.get(ref.id, ()):
                out[cid] = None
    return list(out)
