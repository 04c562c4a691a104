"""What a renderer may be given besides the report: reference data the user brings."""

from __future__ import annotations

from dataclasses import dataclass, field

from obelisk.reports.stig_benchmark import StigBenchmark


@dataclass(frozen=True)
class RenderOptions:
    stig_benchmark: StigBenchmark | None = None
    cci_map: dict[str, tuple[str, ...]] = field(default_factory=dict)
    rendered_at: str = ""  # when the document was produced (RFC 3339); the scan time is in the report
    title: str = ""
