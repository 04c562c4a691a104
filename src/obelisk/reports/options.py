"""What a renderer may be given besides the report: reference data the user brings."""

from __future__ import annotations

from dataclasses import dataclass, field

from obelisk.reports.panels import Cell, Panel
from obelisk.reports.stig_benchmark import StigBenchmark


@dataclass(frozen=True)
class RenderOptions:
    stig_benchmark: StigBenchmark | None = None
    cci_map: dict[str, tuple[str, ...]] = field(default_factory=dict)
    rendered_at: str = ""  # when the document was produced (RFC 3339); the scan time is in the report
    title: str = ""
    # HTML only: tables shown before the summary, links at the top, and a live page's reload period
    panels: tuple[Panel, ...] = ()
    nav: tuple[Cell, ...] = ()
    refresh_seconds: int = 0


# Above this many findings, JSON formats are written without indentation: CPython's C encoder
# only runs without `indent`, and a 10,000-finding OSCAL document is read by tools, not people.
PRETTY_JSON_LIMIT = 2000


def dump_json(doc: object, findings: int) -> bytes:
    import json

    indent = 2 if findings <= PRETTY_JSON_LIMIT else None
    return (json.dumps(doc, indent=indent, ensure_ascii=False) + "\n").encode("utf-8")
