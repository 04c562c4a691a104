"""The merged report as `obelisk.report/1` JSON, with the input files it was merged from."""

from __future__ import annotations

from obelisk.reports.model import Bundle
from obelisk.reports.options import RenderOptions, dump_json


def render(bundle: Bundle, options: RenderOptions) -> bytes:
    data = bundle.report.to_json()
    if bundle.sources:
        # Extra key: Report.from_json ignores it, so the output is still a valid results file.
        data["sources"] = [{"path": s.path, "sha256": s.sha256, "command": s.command,
                            "generated_at": s.generated_at, "subject": s.subject.to_json(),
                            "findings": s.findings} for s in bundle.sources]
    return dump_json(data, len(bundle.report.findings))
