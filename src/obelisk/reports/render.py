"""Format name -> renderer. Each renderer is `render(bundle, options) -> bytes` in its own module."""

from __future__ import annotations

import datetime as _dt
import importlib
from dataclasses import dataclass

from obelisk.core.errors import InputError
from obelisk.reports.model import Bundle
from obelisk.reports.options import RenderOptions


@dataclass(frozen=True)
class Format:
    name: str
    module: str
    extension: str
    media_type: str
    description: str


FORMATS: dict[str, Format] = {f.name: f for f in (
    Format("html", "obelisk.reports.html", "html", "text/html", "self-contained HTML for people (prints to PDF)"),
    Format("json", "obelisk.reports.jsonreport", "json", "application/json", "merged obelisk.report/1 JSON"),
    Format("junit", "obelisk.reports.junit", "xml", "application/xml", "JUnit XML for CI"),
    Format("sarif", "obelisk.reports.sarif", "sarif", "application/sarif+json", "SARIF 2.1.0"),
    Format("oscal", "obelisk.reports.oscal", "json", "application/oscal+json", "OSCAL assessment results"),
    Format("ckl", "obelisk.reports.ckl", "ckl", "application/xml", "STIG Viewer 2 checklist"),
    Format("cklb", "obelisk.reports.cklb", "cklb", "application/json", "STIG Viewer 3 checklist"),
    Format("csv", "obelisk.reports.csvreport", "csv", "text/csv", "one row per finding"),
)}


def now_rfc3339() -> str:
    return _dt.datetime.now(_dt.UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def render(bundle: Bundle, fmt: str, options: RenderOptions | None = None) -> bytes:
    spec = FORMATS.get(fmt)
    if spec is None:
        raise InputError(f"unknown report format {fmt!r} (one of {', '.join(FORMATS)})")
    options = options or RenderOptions()
    if not options.rendered_at:
        from dataclasses import replace

        options = replace(options, rendered_at=now_rfc3339())
    return importlib.import_module(spec.module).render(bundle, options)
