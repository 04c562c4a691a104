"""The fleet as one report for the existing renderers (`fleet report`): one input per node.

Each node contributes its status as a finding (`fleet.node.status`: pass when trusted) and the findings
of its last round, every one with the node's id in its target; each node is a `Source` whose subject is
the node (id, image, status), so HTML and OSCAL list one subject per node. The report's subject is the
fleet itself. The HTML page also shows the fleet table (`nodes_panel`): the same page is the live
dashboard (`fleet/dashboard.py`), whose node ids link to each node's page.
"""

from __future__ import annotations

import hashlib
from dataclasses import replace
from typing import Any

from obelisk.core import findings as fmt
from obelisk.core.findings import Finding, Report, Severity, Status, Subject
from obelisk.reports.model import Bundle, Source
from obelisk.reports.panels import Cell, Panel

# A node's status as the report's colours: trusted green, failed red, quarantined orange, waiting blue.
STATUS_BADGE = {"trusted": "pass", "failed": "fail", "quarantined": "error", "pending": "manual",
                "approved": "manual", "unreachable": "skip"}


def node_status_finding(row: dict[str, Any]) -> Finding:
    trusted = row["status"] == "trusted"
    return Finding(id="fleet.node.status", title="Node is trusted: its last round verified against its image",
                   status=Status.PASS if trusted else Status.FAIL, severity=Severity.HIGH, target=row["id"],
                   observed=row["status"], expected="trusted", benchmark="attestation", section="fleet",
                   detail=f"image {row['image']}, last attested {row.get('last_attested') or 'never'}")


def bundle(rows: list[dict[str, Any]], name: str) -> Bundle:
    """rows: the service's `GET /v1/report` (each node with its last round's obelisk.report/1, or None)."""
    all_findings: list[Finding] = []
    sources: list[Source] = []
    times: list[str] = []
    for row in rows:
        node = row["id"]
        own = [node_status_finding(row)]
        generated = row.get("last_attested") or ""
        digest = ""
        if row.get("report"):
            text = row["report"]
            digest = hashlib.sha256(text.encode()).hexdigest()
            last = fmt.parse(text, f"node {node} attestation {row.get('attestation')}")
            own += [replace(f, target=f"{node}: {f.target}" if f.target else node) for f in last.findings]
            generated = last.generated_at or generated
        if generated:
            times.append(generated)
        subject = Subject("node", node, attributes=tuple(sorted({
            "image": row["image"], "status": row["status"], "hostname": row.get("hostname") or ""}.items())))
        sources.append(Source(path=f"fleet:{node}" + (f"/attestations/{row['attestation']}" if row.get("report")
                                                      else ""),
                              sha256=digest, command="fleet round", generated_at=generated, subject=subject,
                              findings=len(own)))
        all_findings += own
    statuses: dict[str, int] = {}
    for row in rows:
        statuses[row["status"]] = statuses.get(row["status"], 0) + 1
    subject = Subject("fleet", name, attributes=tuple(sorted(
        {"nodes": str(len(rows)), **{f"status.{k}": str(v) for k, v in statuses.items()}}.items())))
    report = Report(findings=tuple(all_findings), subject=subject, generated_at=max(times) if times else "",
                    command="fleet report")
    return Bundle(report=report, sources=tuple(sources))


def nodes_panel(rows: list[dict[str, Any]], link: str = "") -> Panel:
    """The fleet table: id, hostname, image, status, last attested and the last round's verdict, one row
    per node. With `link` (the dashboard's base path) each node id and round opens its own page."""
    from urllib.parse import quote

    table = []
    for row in rows:
        node = row["id"]
        if row.get("attestation") is None:
            last = Cell("none yet")
        else:
            passed = _passed(row.get("report"))
            last = Cell(f"#{row['attestation']} {'passed' if passed else 'failed'}", badge="pass" if passed else "fail",
                        href=f"{link}/nodes/{quote(node, safe='')}/rounds/{row['attestation']}" if link else "")
        table.append((Cell(node, mono=True, href=f"{link}/nodes/{quote(node, safe='')}" if link else ""),
                      Cell(row.get("hostname") or ""), Cell(row["image"], mono=True),
                      Cell(row["status"], badge=STATUS_BADGE.get(row["status"], "skip")),
                      Cell(row.get("last_attested") or "never", mono=True), last))
    return Panel("fleet-nodes", f"Nodes ({len(rows)})",
                 ("Node", "Hostname", "Image", "Status", "Last attested", "Last round"), tuple(table),
                 empty="No node has registered yet.")


def _passed(report: str | None) -> bool:
    if not report:
        return False
    return not fmt.parse(report, "last round").failed
